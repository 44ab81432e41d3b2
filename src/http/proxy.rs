//! Pass-through to the handler app (`proxy.upstream`): every request sidecache does not answer
//! itself goes to the upstream over a pooled hyper client — method, path, query and body bytes
//! untouched, so the app can check a platform's signature itself; headers but the hop-by-hop
//! ones, plus `X-Forwarded-For/-Proto/-Host` — and the answer comes back the same way. Bodies
//! stream both ways: nothing is buffered, so a large upload or an SSE stream from the app passes
//! through as it is produced, and a client that hangs up drops the upstream exchange with it.
//!
//! An upgrade (a WebSocket: Twilio media streams, Retell's custom LLM socket) goes through too:
//! the `Upgrade` request is forwarded with its `Upgrade`/`Connection` headers, and when the app
//! answers 101 the two connections are joined byte for byte until either side closes.
//!
//! Only the answer's head is timed (`proxy.timeout_ms`, else 504 `upstream_timeout`); a body may
//! stream for as long as both ends keep it open. No connection, or one that fails before an
//! answer, is 502 `upstream_unavailable`. sidecache's own body limit and load shedding do not
//! apply: the app sets its own.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Request, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::ApiError;
use crate::config::ProxySettings;
use crate::labels::ProxyOutcome;
use crate::metrics::Metrics;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), dropped both ways.
/// `expect` too: sidecache answered the client's `100-continue` itself when it began reading.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// How long an idle upstream connection is kept for reuse.
const POOL_IDLE: Duration = Duration::from_secs(4);

/// The most of a mirrored call start's answer that is read (and thrown away).
const MIRROR_ANSWER_LIMIT: usize = 1 << 20;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The client side of the pass-through (cheap to share; its connections are pooled).
pub struct Proxy {
    client: Client<HttpConnector, Body>,
    /// `host:port` of the upstream.
    authority: axum::http::uri::Authority,
    timeout: Duration,
    mirror_call_starts: bool,
}

/// The client's address, as the front door saw it (absent for requests built in-process).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

impl Proxy {
    /// The proxy for `settings`, or `None` when no upstream is configured.
    pub fn new(settings: &ProxySettings) -> Option<Self> {
        let rest = settings.upstream.strip_prefix("http://")?;
        let authority = rest.trim_end_matches('/').parse().ok()?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            // Below the idle timeouts of common app servers (Node 5 s, uvicorn 5 s, gunicorn
            // 2 s is the odd one out): a connection the app is about to close is not reused,
            // which would fail a request hyper cannot retry once written.
            .pool_idle_timeout(POOL_IDLE)
            .build(connector);
        Some(Proxy {
            client,
            authority,
            timeout: settings.timeout,
            mirror_call_starts: settings.mirror_call_starts,
        })
    }

    /// Whether answered call starts are also sent to the upstream.
    pub fn mirrors_call_starts(&self) -> bool {
        self.mirror_call_starts
    }

    /// Forwards one request and returns the upstream's answer (its body streaming), or the 502 /
    /// 504 JSON error; counted and timed by outcome.
    pub async fn forward(&self, metrics: &Metrics, mut req: Request<Body>) -> Response {
        let started = Instant::now();
        let upgrade = upgrade_asked(req.headers()).map(|protocol| {
            let client = hyper::upgrade::on(&mut req);
            (protocol, client)
        });
        let (outcome, res) = match self.prepare(req) {
            Ok(mut req) => {
                let client = upgrade.map(|(protocol, client)| {
                    let h = req.headers_mut();
                    h.insert(header::UPGRADE, protocol);
                    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    client
                });
                self.exchange(req, client).await
            }
            Err(e) => (ProxyOutcome::Unavailable, e.into_response()),
        };
        metrics.edge.proxied(outcome);
        metrics
            .edge
            .proxy_duration
            .observe(started.elapsed().as_secs_f64());
        res
    }

    async fn exchange(
        &self,
        req: Request<Body>,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> (ProxyOutcome, Response) {
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Ok(Ok(mut res)) if res.status() == StatusCode::SWITCHING_PROTOCOLS => {
                let Some(client) = upgrade else {
                    tracing::warn!(upstream = %self.authority, "the upstream switched protocols unasked");
                    return (ProxyOutcome::Unavailable, unavailable());
                };
                let upstream = hyper::upgrade::on(&mut res);
                tokio::spawn(tunnel(client, upstream));
                // The 101 as the app sent it, `Upgrade` and `Connection` included.
                let (parts, _) = res.into_parts();
                (
                    ProxyOutcome::Informational,
                    Response::from_parts(parts, Body::empty()),
                )
            }
            Ok(Ok(res)) => {
                let outcome = ProxyOutcome::of_status(res.status().as_u16());
                let (mut parts, body) = res.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                (outcome, Response::from_parts(parts, Body::new(body)))
            }
            Ok(Err(e)) => {
                tracing::warn!(
                    upstream = %self.authority,
                    request_id = %super::request_id(),
                    error = %error_chain(&e),
                    "the upstream did not answer"
                );
                (ProxyOutcome::Unavailable, unavailable())
            }
            Err(_) => {
                tracing::warn!(
                    upstream = %self.authority,
                    request_id = %super::request_id(),
                    timeout_ms = self.timeout.as_millis() as u64,
                    "the upstream's answer did not begin in time"
                );
                (ProxyOutcome::Timeout, timed_out(self.timeout))
            }
        }
    }

    /// The request as it goes upstream: the same method, path, query and body, the upstream's
    /// authority, the end-to-end headers and the forwarding ones.
    fn prepare(&self, req: Request<Body>) -> Result<Request<Body>, ApiError> {
        let (mut parts, body) = req.into_parts();
        let peer = parts.extensions.get::<Peer>().map(|p| p.0);
        parts.uri = self.upstream_uri(&parts.uri)?;
        forwarding_headers(&mut parts.headers, peer);
        parts.version = Version::HTTP_11;
        Ok(Request::from_parts(parts, body))
    }

    fn upstream_uri(&self, uri: &Uri) -> Result<Uri, ApiError> {
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|_| {
                ApiError::bad_request("invalid_target", "The request target cannot be forwarded.")
            })
    }

    /// Sends an answered call start to the upstream as the platform sent it, in the background
    /// (for [`Proxy::mirrors_call_starts`]); the upstream's answer is only counted
    /// (`sidecache_proxy_mirrors_total`).
    pub fn mirror(&self, metrics: &std::sync::Arc<Metrics>, parts: Parts, body: Bytes) {
        let Ok(req) = self.prepare(Request::from_parts(parts, Body::from(body))) else {
            return;
        };
        let (client, timeout, metrics) = (self.client.clone(), self.timeout, metrics.clone());
        tokio::spawn(async move {
            // The whole exchange within the timeout: an app that answers and then stalls its
            // body must not hold the task and the connection.
            let exchange = async {
                let res = client.request(req).await.ok()?;
                let ok = res.status().is_success();
                // Read the answer out, so the connection goes back to the pool.
                let _ = axum::body::to_bytes(Body::new(res.into_body()), MIRROR_ANSWER_LIMIT).await;
                Some(ok)
            };
            let taken = matches!(
                tokio::time::timeout(timeout, exchange).await,
                Ok(Some(true))
            );
            if !taken {
                tracing::warn!("a mirrored call start was not taken by the upstream");
            }
            metrics.edge.mirrored(taken);
        });
    }
}

/// The comma-separated tokens of every `Connection` header.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// The protocol a request asks to switch to (`Connection: upgrade` and `Upgrade: <protocol>`).
fn upgrade_asked(headers: &HeaderMap) -> Option<HeaderValue> {
    let asked = connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"));
    asked
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Joins an upgraded client connection to the upgraded upstream one until either side closes.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (Ok(client), Ok(upstream)) = tokio::join!(client, upstream) else {
        return;
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// Drops the hop-by-hop headers and those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
}

/// The request's headers as they go upstream: end-to-end ones kept (the `Host` too, as the
/// client sent it), `expect` dropped, the client's address appended to `X-Forwarded-For`, and
/// `X-Forwarded-Proto/-Host` set unless a proxy in front of sidecache already set them.
fn forwarding_headers(headers: &mut HeaderMap, peer: Option<SocketAddr>) {
    strip_hop_by_hop(headers);
    headers.remove(header::EXPECT);
    if let Some(peer) = peer {
        let ip = peer.ip().to_string();
        let value = match headers.get(&X_FORWARDED_FOR).map(HeaderValue::to_str) {
            Some(Ok(before)) if !before.trim().is_empty() => format!("{before}, {ip}"),
            _ => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(X_FORWARDED_FOR, v);
        }
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if !headers.contains_key(&X_FORWARDED_HOST) {
        if let Some(host) = headers.get(header::HOST).cloned() {
            headers.insert(X_FORWARDED_HOST, host);
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn unavailable() -> Response {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "upstream_unavailable",
        "The handler app (proxy.upstream) could not be reached or closed the connection before answering.",
    )
    .into_response()
}

fn timed_out(after: Duration) -> Response {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "upstream_timeout",
        format!(
            "The handler app (proxy.upstream) did not begin its answer within {} ms.",
            after.as_millis()
        ),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Trace-Hop"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("x-trace-hop", "1"),
            ("x-vapi-secret", "s"),
            ("content-length", "12"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "x-vapi-secret"]);
    }

    #[test]
    fn forwarding_headers_append_the_client_and_keep_what_a_front_proxy_set() {
        let peer: SocketAddr = "10.0.0.7:5123".parse().unwrap();
        let mut h = headers(&[("host", "voice.example.com"), ("expect", "100-continue")]);
        forwarding_headers(&mut h, Some(peer));
        assert_eq!(h["x-forwarded-for"], "10.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "voice.example.com");
        assert_eq!(h["host"], "voice.example.com");
        assert!(!h.contains_key("expect"));

        let mut h = headers(&[
            ("host", "app.internal"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "voice.example.com"),
        ]);
        forwarding_headers(&mut h, Some("[::1]:9".parse().unwrap()));
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, ::1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "voice.example.com");
    }

    #[test]
    fn the_target_keeps_path_and_query_and_takes_the_upstream_authority() {
        let p = Proxy::new(&ProxySettings {
            upstream: "http://127.0.0.1:3000/".into(),
            ..ProxySettings::default()
        })
        .unwrap();
        let uri: Uri = "/api/x%20y?a=1&b=%2B".parse().unwrap();
        assert_eq!(
            p.upstream_uri(&uri).unwrap().to_string(),
            "http://127.0.0.1:3000/api/x%20y?a=1&b=%2B"
        );
        assert!(Proxy::new(&ProxySettings::default()).is_none());
    }
}
