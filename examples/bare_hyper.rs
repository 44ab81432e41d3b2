//! The limit of sidecache's own stack: a bare hyper HTTP/1 server (same hyper, same tokio
//! runtime, same allocator) answering every request with the same bytes from memory, with a
//! JSON content type and nothing else. `scripts/instructions` counts its instructions per request
//! beside sidecache's, and `cargo bench --bench load` measures its throughput and latency, so
//! that an L1 hit's cost is read against what the stack itself costs.
//!
//!     cargo run --release --example bare_hyper -- <port> <body-file>

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

// The allocator sidecache runs with (src/main.rs), so that the difference is sidecache's own work.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .and_then(|p| p.parse().ok())
        .expect("usage: bare_hyper <port> <body-file>");
    let body = Bytes::from(std::fs::read(args.next().expect("a body file"))?);
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                let mut res = Response::new(Full::new(body.clone()));
                res.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                async move { Ok::<_, Infallible>(res) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
