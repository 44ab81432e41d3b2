//! The front door: every request arrives here. It gives the request its id (the caller's
//! `x-request-id` or a new one) for the answer and the log lines, answers the hot requests — a
//! `GET` of a lookup route — itself, and hands everything else to the router.
//!
//! Why a door in front of the router: on an L1 hit, the router and its layers cost about two
//! thirds of the instructions (matching into request extensions, a boxed service cloned per
//! request, a future per layer, label hashing for the metrics). The hot path matches its nine
//! routes by hand and does the same work in one function: load shedding, counting and timing by
//! route template, panics caught. It answers through the same code as the router's handlers
//! ([`lookups::answer`]), so both give the same bytes, headers and errors; anything it does not
//! recognise exactly (a `HEAD`, a segment that does not decode) goes to the router.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderName, Method, Request};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::FutureExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

use super::error::payload_too_large;
use super::extract::{Conditions, QueryPairs};
use super::middleware::{overloaded, panicked, InFlight};
use super::request_id::{RequestIds, REQUEST_ID};
use super::{lookups, ratelimits};
use super::{AppState, Peer};
use crate::labels::LookupRoute;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The service every connection calls (cheap to clone).
#[derive(Clone)]
pub struct Front(Arc<Inner>);

struct Inner {
    state: AppState,
    router: Router,
    ids: RequestIds,
    body_limit: usize,
}

impl Front {
    /// The front door over [`super::router`]`(state, body_limit)`.
    pub fn new(state: AppState, body_limit: usize) -> Self {
        let router = super::router(state.clone(), body_limit);
        Front(Arc::new(Inner {
            state,
            router,
            ids: RequestIds::new(),
            body_limit,
        }))
    }

    /// Answers one request from `peer` (never fails: every error is an answer).
    pub async fn handle(
        self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response, Infallible> {
        let id = match req.headers().get(X_REQUEST_ID) {
            Some(id) => id.clone(),
            None => self.0.ids.next(),
        };
        let mut res = REQUEST_ID.scope(id.clone(), self.dispatch(req, peer)).await;
        res.headers_mut().insert(X_REQUEST_ID, id);
        Ok(res)
    }

    async fn dispatch(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response {
        if req.method() == Method::GET {
            if let Some((route, raw)) = hot_route(req.uri().path()) {
                if let Some(param) = decode_segment(raw) {
                    return self.lookup(route, &param, &req).await;
                }
            }
        } else if req.method() == Method::POST {
            if let Some(name) = rate_limit_route(req.uri().path()) {
                if let Some(name) = decode_segment(name) {
                    let name = name.into_owned();
                    return self.rate_limit(&name, req).await;
                }
            }
        }
        if self.0.state.proxy.is_some() {
            // For the upstream's `X-Forwarded-For` (only then: an extension costs an allocation).
            req.extensions_mut().insert(Peer(peer));
        }
        match self.0.router.clone().oneshot(req).await {
            Ok(res) => res,
            Err(never) => match never {},
        }
    }

    /// A lookup route, as the router's `track` middleware and handler would answer it. Written
    /// out rather than through [`Front::guarded`]: the extra future layer measured 700
    /// instructions (4 %) on an L1 hit.
    async fn lookup(&self, route: LookupRoute, param: &str, req: &Request<Incoming>) -> Response {
        let started = Instant::now();
        let state = &self.0.state;
        let res = match state.limiter.try_acquire() {
            Ok(_permit) => {
                state.metrics.in_flight.inc();
                let _counted = InFlight(&state.metrics);
                let conditions = Conditions::of(req.headers());
                let query = QueryPairs::of(req.uri().query());
                let answer = lookups::answer(state, route, param, &query, &conditions);
                match AssertUnwindSafe(answer).catch_unwind().await {
                    Ok(Ok(res)) => res,
                    Ok(Err(e)) => e.into_response(),
                    Err(_) => panicked(),
                }
            }
            Err(_) => overloaded(state),
        };
        let status = res.status();
        state.metrics.lookup_request(
            route,
            status.as_u16(),
            status.as_str(),
            started.elapsed().as_secs_f64(),
        );
        res
    }

    /// `POST /v1/rate-limits/{name}/check`, as the router's `track` middleware and handler would
    /// answer it (checked before every request to a limited action, so as hot as a lookup).
    async fn rate_limit(&self, name: &str, req: Request<Incoming>) -> Response {
        const ROUTE: &str = "/v1/rate-limits/{name}/check";
        let started = Instant::now();
        let state = &self.0.state;
        let (parts, body) = req.into_parts();
        let body = axum::body::Body::new(body);
        let res = self
            .guarded(async {
                match axum::body::to_bytes(body, self.0.body_limit).await {
                    Ok(bytes) => {
                        ratelimits::check_answer(state, name, &parts.headers, &bytes).await
                    }
                    Err(_) => Err(payload_too_large()),
                }
            })
            .await;
        let status = res.status();
        state.metrics.http_request(
            ROUTE,
            "POST",
            status.as_str(),
            started.elapsed().as_secs_f64(),
        );
        res
    }

    /// What the router's layers do around a handler: load shedding, the in-flight gauge, and
    /// a panic answered with the JSON shape.
    async fn guarded(
        &self,
        answer: impl std::future::Future<Output = Result<Response, super::ApiError>>,
    ) -> Response {
        let state = &self.0.state;
        match state.limiter.try_acquire() {
            Ok(_permit) => {
                state.metrics.in_flight.inc();
                let _counted = InFlight(&state.metrics);
                match AssertUnwindSafe(answer).catch_unwind().await {
                    Ok(Ok(res)) => res,
                    Ok(Err(e)) => e.into_response(),
                    Err(_) => panicked(),
                }
            }
            Err(_) => overloaded(state),
        }
    }
}

/// The raw name of `/v1/rate-limits/{name}/check` (a non-empty segment), or `None`.
fn rate_limit_route(path: &str) -> Option<&str> {
    let name = path
        .strip_prefix("/v1/rate-limits/")?
        .strip_suffix("/check")?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// Serves HTTP/1.1 on `listener` until `stop` completes, then stops accepting, lets every
/// connection finish the request it is on (idle keep-alive connections are closed) and returns
/// when the last one is done. Connections may be upgraded (a proxied WebSocket); an upgraded
/// one is the proxy's from then on and is not waited for.
///
/// The graceful part is written out rather than hyper-util's `GracefulShutdown`, which does not
/// take an upgradeable connection: each connection holds a clone of `open` and watches
/// `closing`; the last clone dropped tells the loop every connection is done.
pub async fn serve(
    listener: TcpListener,
    front: Front,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let (closing, closing_rx) = tokio::sync::watch::channel(false);
    let (open, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    let http = http1::Builder::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            // The peer gave up before we took it: nothing to do.
            Err(e) if is_connection_error(&e) => continue,
            // Out of file descriptors and the like: wait rather than spin.
            Err(e) => {
                tracing::error!(error = %e, "accepting a connection failed");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = &mut stop => break,
                }
            }
        };
        // Answers go out in one write; do not hold them back for the next one.
        let _ = stream.set_nodelay(true);
        let front = front.clone();
        let service = service_fn(move |req| front.clone().handle(req, peer));
        let conn = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let (open, mut closing) = (open.clone(), closing_rx.clone());
        tokio::spawn(async move {
            let _open = open;
            let mut conn = std::pin::pin!(conn);
            // A client that goes away mid-answer is not an error of ours.
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = closing.wait_for(|c| *c) => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = closing.send(true);
    drop(open);
    // Every connection's clone of `open` dropped: none is left.
    let _ = all_done.recv().await;
    Ok(())
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// The lookup route a path names, with its raw parameter ("" for initiation); `None` for any
/// other path, and for a shape the router might read otherwise.
fn hot_route(path: &str) -> Option<(LookupRoute, &str)> {
    let mut s = path.strip_prefix("/v1/")?.split('/');
    let (a, b, c, d) = (s.next()?, s.next(), s.next(), s.next());
    let (route, param) = match (a, b, c, d) {
        ("calls", Some("initiation"), None, None) => (LookupRoute::Initiation, ""),
        ("sessions", Some(id), None, None) => (LookupRoute::Session, id),
        ("organizations", Some("by-phone"), Some(p), None) => (LookupRoute::OrgByPhone, p),
        ("organizations", Some(id), None, None) => (LookupRoute::OrgById, id),
        ("leads", Some("by-phone"), Some(p), None) => (LookupRoute::LeadByPhone, p),
        ("leads", Some(id), None, None) => (LookupRoute::LeadById, id),
        ("leads", Some(id), Some(tail), None) => match tail {
            "context" => (LookupRoute::Context, id),
            "summary" => (LookupRoute::Summary, id),
            "greeting" => (LookupRoute::Greeting, id),
            "history" => (LookupRoute::History, id),
            _ => return None,
        },
        _ => return None,
    };
    let plain = route == LookupRoute::Initiation || !(param.is_empty() || param == "by-phone");
    plain.then_some((route, param))
}

/// A path segment percent-decoded as the router decodes it; `None` if it is not UTF-8 then.
fn decode_segment(raw: &str) -> Option<Cow<'_, str>> {
    if !raw.contains('%') {
        return Some(Cow::Borrowed(raw));
    }
    percent_encoding::percent_decode_str(raw).decode_utf8().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_routes_are_matched_exactly() {
        let id = "6f1c1c1e-8a43-4c43-9a8e-1b2b3c4d5e6f";
        let cases: &[(&str, Option<(LookupRoute, &str)>)] = &[
            ("/v1/calls/initiation", Some((LookupRoute::Initiation, ""))),
            ("/v1/organizations/x1", Some((LookupRoute::OrgById, "x1"))),
            (
                "/v1/organizations/by-phone/%2B1555",
                Some((LookupRoute::OrgByPhone, "%2B1555")),
            ),
            (
                "/v1/leads/by-phone/+1555",
                Some((LookupRoute::LeadByPhone, "+1555")),
            ),
            (
                "/v1/leads/by-phone/context",
                Some((LookupRoute::LeadByPhone, "context")),
            ),
            ("/v1/leads/x", Some((LookupRoute::LeadById, "x"))),
            (
                "/v1/sessions/call:1",
                Some((LookupRoute::Session, "call:1")),
            ),
            ("/v1/leads/x/context", Some((LookupRoute::Context, "x"))),
            ("/v1/leads/x/summary", Some((LookupRoute::Summary, "x"))),
            ("/v1/leads/x/greeting", Some((LookupRoute::Greeting, "x"))),
            ("/v1/leads/x/history", Some((LookupRoute::History, "x"))),
            // Left to the router: other routes, empty or ambiguous segments, trailing slashes.
            ("/v1/leads", None),
            ("/v1/leads/", None),
            ("/v1/leads//context", None),
            ("/v1/leads/by-phone", None),
            ("/v1/leads/by-phone/", None),
            ("/v1/organizations/by-phone", None),
            ("/v1/leads/x/context/", None),
            ("/v1/leads/x/conversations", None),
            ("/v1/leads/x/y/z", None),
            ("/v1/calls/initiation/", None),
            ("/v1/calls", None),
            ("/v1/conversations/x", None),
            ("/v1/sessions", None),
            ("/v1/sessions/", None),
            ("/v1/sessions/x/events", None),
            ("/v1/sessions/x/touch", None),
            ("/healthz", None),
            ("/v2/leads/x", None),
            ("v1/leads/x", None),
        ];
        for (path, want) in cases {
            assert_eq!(hot_route(path), *want, "{path}");
        }
        assert_eq!(
            hot_route(&format!("/v1/leads/{id}/greeting")),
            Some((LookupRoute::Greeting, id))
        );
    }

    #[test]
    fn the_rate_limit_route_is_matched_exactly() {
        assert_eq!(
            rate_limit_route("/v1/rate-limits/voice/check"),
            Some("voice")
        );
        assert_eq!(rate_limit_route("/v1/rate-limits/%FF/check"), Some("%FF"));
        for other in [
            "/v1/rate-limits//check",
            "/v1/rate-limits/a/b/check",
            "/v1/rate-limits/voice/check/",
            "/v1/rate-limits/voice",
            "/v1/rate-limits/check",
        ] {
            assert_eq!(rate_limit_route(other), None, "{other}");
        }
    }

    #[test]
    fn segments_decode_as_the_router_decodes_them() {
        assert_eq!(decode_segment("%2B15550100").as_deref(), Some("+15550100"));
        assert_eq!(decode_segment("+1 555").as_deref(), Some("+1 555"));
        assert_eq!(decode_segment("a%20b").as_deref(), Some("a b"));
        assert_eq!(decode_segment("%FF"), None);
    }
}
