//! A handler app for the proxy tests: it records every request it receives (method, target,
//! headers, body bytes) and answers from a few routes that exercise a pass-through — an echo,
//! a slow answer, a held download, a counted upload, an endless SSE stream — with counters of
//! the streams it has open, so a test can see the proxy let go of them.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use futures_util::StreamExt as _;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Default)]
pub struct Shared {
    pub seen: Mutex<Vec<Seen>>,
    /// SSE streams and downloads the upstream is still producing.
    pub open_streams: AtomicUsize,
    /// Uploads the upstream is still reading.
    pub open_uploads: AtomicUsize,
    /// Upgraded connections the upstream is still echoing on.
    pub open_tunnels: AtomicUsize,
    /// Notified when an upload's first chunk arrives.
    pub upload_began: Notify,
    /// Lets `/held` send its second half.
    pub release: Notify,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start() -> Upstream {
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream { addr, shared, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// The requests received for `target` (path and query).
    pub fn seen_at(&self, target: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.target == target)
            .collect()
    }

    pub fn open_streams(&self) -> usize {
        self.shared.open_streams.load(Ordering::SeqCst)
    }

    pub fn open_uploads(&self) -> usize {
        self.shared.open_uploads.load(Ordering::SeqCst)
    }

    pub fn open_tunnels(&self) -> usize {
        self.shared.open_tunnels.load(Ordering::SeqCst)
    }
}

/// Counts down when the stream or upload holding it ends or is dropped.
struct Open(Arc<Shared>, fn(&Shared) -> &AtomicUsize);

impl Open {
    fn new(shared: &Arc<Shared>, counter: fn(&Shared) -> &AtomicUsize) -> Open {
        counter(shared).fetch_add(1, Ordering::SeqCst);
        Open(shared.clone(), counter)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_sub(1, Ordering::SeqCst);
    }
}

const CHUNK: usize = 64 * 1024;

async fn answer(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    if req.uri().path() == "/upgrade" {
        return upgrade(&shared, req);
    }
    let (parts, body) = req.into_parts();
    let target = parts.uri.path_and_query().unwrap().as_str().to_owned();
    let path = parts.uri.path().to_owned();
    if path == "/upload" {
        return upload(&shared, body).await;
    }
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    shared.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        target,
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    match path.as_str() {
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Response::new(Body::from("late"))
        }
        "/sse" => {
            let open = Open::new(&shared, |s| &s.open_streams);
            let events = futures_util::stream::unfold((0u64, open), |(n, open)| async move {
                if n > 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let event = Bytes::from(format!("id: {n}\ndata: tick {n}\n\n"));
                Some((Ok::<_, std::io::Error>(event), (n + 1, open)))
            });
            let mut res = Response::new(Body::from_stream(events));
            res.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("text/event-stream"),
            );
            res
        }
        "/held" => {
            // Half the body, then the rest only once the test releases it: a proxy that
            // buffered would deliver nothing until then.
            let open = Open::new(&shared, |s| &s.open_streams);
            let shared = shared.clone();
            let halves = futures_util::stream::unfold(0u8, move |i| {
                let shared = shared.clone();
                async move {
                    match i {
                        0 => Some((Ok::<_, std::io::Error>(Bytes::from(vec![b'a'; CHUNK])), 1)),
                        1 => {
                            shared.release.notified().await;
                            Some((Ok(Bytes::from(vec![b'b'; CHUNK])), 2))
                        }
                        _ => None,
                    }
                }
            });
            let halves = halves.map(move |c| {
                let _ = &open;
                c
            });
            Response::new(Body::from_stream(halves))
        }
        _ => {
            if let Some(n) = path.strip_prefix("/download/") {
                let n: usize = n.parse().unwrap();
                let chunks = (0..n.div_ceil(CHUNK)).map(move |i| {
                    Ok::<_, std::io::Error>(pattern(i * CHUNK, CHUNK.min(n - i * CHUNK)))
                });
                return Response::new(Body::from_stream(futures_util::stream::iter(chunks)));
            }
            let status = path
                .strip_prefix("/status/")
                .and_then(|c| c.parse().ok())
                .unwrap_or(200);
            let mut res = Response::new(Body::from(body));
            *res.status_mut() = StatusCode::from_u16(status).unwrap();
            let h = res.headers_mut();
            if let Some(ct) = parts.headers.get("content-type") {
                h.insert("content-type", ct.clone());
            }
            h.insert("x-upstream", HeaderValue::from_static("echo"));
            h.insert("connection", HeaderValue::from_static("x-upstream-hop"));
            h.insert("x-upstream-hop", HeaderValue::from_static("1"));
            h.insert("keep-alive", HeaderValue::from_static("timeout=30"));
            res
        }
    }
}

/// Switches to the protocol asked for and echoes every byte back until the client closes.
fn upgrade(shared: &Arc<Shared>, mut req: Request) -> Response {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(protocol) = req.headers().get("upgrade").cloned() else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(Body::from("no upgrade asked"))
            .unwrap();
    };
    let on = hyper::upgrade::on(&mut req);
    let open = Open::new(shared, |s| &s.open_tunnels);
    tokio::spawn(async move {
        let _open = open;
        let Ok(upgraded) = on.await else { return };
        let mut io = hyper_util::rt::TokioIo::new(upgraded);
        let mut buf = [0u8; 4096];
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", protocol)
        .body(Body::empty())
        .unwrap()
}

/// Reads an upload chunk by chunk; answers `{len, sha256}`.
async fn upload(shared: &Arc<Shared>, body: Body) -> Response {
    let _open = Open::new(shared, |s| &s.open_uploads);
    let mut stream = body.into_data_stream();
    let (mut len, mut sha) = (0usize, Sha256::new());
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return Response::new(Body::from("aborted"));
        };
        if len == 0 {
            shared.upload_began.notify_one();
        }
        len += chunk.len();
        sha.update(&chunk);
    }
    let answer = serde_json::json!({"len": len, "sha256": hex::encode(sha.finalize())});
    Response::new(Body::from(answer.to_string()))
}

/// `len` bytes of a pattern that depends on the offset (so reordered or repeated chunks show).
pub fn pattern(offset: usize, len: usize) -> Bytes {
    (offset..offset + len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}
