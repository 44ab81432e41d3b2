//! Pass-through to the handler app (`proxy.upstream`) over real HTTP: exact bytes and headers
//! both ways, large and held bodies streamed in both directions, SSE, an upstream that is down
//! (502) or slow (504), a client hanging up mid-stream, and platform messages other than call
//! start forwarded — or mirrored, for answered call starts.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sidecache::config::{Secret, Settings};

use crate::fixtures::eventually;
use crate::spawn::{spawn_app_with, TestApp};
use crate::upstream::{pattern, Upstream};

const VAPI_SECRET: &str = "vapi-secret-0123456789";

async fn proxied(upstream: &Upstream, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let url = upstream.url();
    spawn_app_with(|s| {
        s.proxy.upstream = url;
        tweak(s);
    })
    .await
}

#[tokio::test]
async fn requests_reach_the_upstream_byte_for_byte_with_forwarding_headers() {
    let upstream = Upstream::start().await;
    let app = proxied(&upstream, |_| {}).await;
    // Not UTF-8, not JSON: the upstream must see exactly these bytes (a platform's signature).
    let body: Vec<u8> = (0u8..=255).rev().chain(*b"{\"k\": 1}\r\n").collect();
    let target = "/api/hooks/x%20y?b=%2B1&a=1&a=2";
    let res = app
        .client
        .post(format!("{}{target}", app.addr))
        .header("content-type", "application/octet-stream")
        .header("x-signature", "sha256=abc")
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "keep-alive, x-client-hop")
        .header("x-client-hop", "1")
        .header("proxy-authorization", "Basic eDp5")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let h = res.headers().clone();
    assert_eq!(h["x-upstream"], "echo");
    assert!(
        !h.contains_key("x-upstream-hop") && !h.contains_key("keep-alive"),
        "hop-by-hop headers of the answer are dropped: {h:?}"
    );
    assert!(h.contains_key("x-request-id"));
    assert_eq!(res.bytes().await.unwrap().as_ref(), body.as_slice());

    let seen = upstream.seen_at(target);
    assert_eq!(seen.len(), 1, "{:?}", upstream.seen());
    let seen = &seen[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body.as_ref(), body.as_slice());
    let sh = &seen.headers;
    assert_eq!(sh["x-signature"], "sha256=abc");
    assert_eq!(sh["content-type"], "application/octet-stream");
    assert_eq!(sh["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(sh["x-forwarded-proto"], "http");
    let host = format!("127.0.0.1:{}", app.port);
    assert_eq!(sh["host"], host.as_str(), "the client's Host goes through");
    assert_eq!(sh["x-forwarded-host"], host.as_str());
    for hop in ["x-client-hop", "proxy-authorization"] {
        assert!(!sh.contains_key(hop), "{hop} must not reach the upstream");
    }

    // Other methods, statuses, and an unknown /v1 route are the upstream's too.
    let res = app
        .client
        .delete(format!("{}/status/404", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(res.headers()["x-upstream"], "echo");
    let res = app
        .client
        .get(format!("{}/v1/not-ours?x=1", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-upstream"], "echo");
    assert_eq!(upstream.seen_at("/v1/not-ours?x=1").len(), 1);

    // sidecache's own routes stay its own.
    let before = upstream.seen().len();
    let ours = app.get("/healthz").await;
    assert_eq!(ours.status, StatusCode::OK);
    let missing = app.get("/v1/leads/not-a-uuid").await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(upstream.seen().len(), before);

    assert_eq!(
        app.metric("sidecache_proxy_requests_total", &[("outcome", "2xx")])
            .await,
        2.0
    );
    assert_eq!(
        app.metric("sidecache_proxy_requests_total", &[("outcome", "4xx")])
            .await,
        1.0
    );
}

#[tokio::test]
async fn without_an_upstream_unknown_routes_stay_404() {
    let app = spawn_app_with(|_| {}).await;
    let res = app.get("/api/anything").await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    assert_eq!(res.error_code(), "route_not_found");
}

#[tokio::test]
async fn an_upstream_that_is_down_is_502_and_a_slow_one_504() {
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let app = spawn_app_with(|s| s.proxy.upstream = format!("http://{closed}")).await;
    let res = app.get("/api/x").await;
    assert_eq!(res.status, StatusCode::BAD_GATEWAY);
    assert_eq!(res.error_code(), "upstream_unavailable");
    assert_eq!(
        app.metric(
            "sidecache_proxy_requests_total",
            &[("outcome", "unavailable")]
        )
        .await,
        1.0
    );

    let upstream = Upstream::start().await;
    let app = proxied(&upstream, |s| s.proxy.timeout = Duration::from_millis(300)).await;
    let started = Instant::now();
    let res = app.get("/slow").await;
    assert_eq!(res.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(res.error_code(), "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        app.metric("sidecache_proxy_requests_total", &[("outcome", "timeout")])
            .await,
        1.0
    );
}

#[tokio::test]
async fn bodies_stream_both_ways_without_being_held() {
    let upstream = Upstream::start().await;
    let app = proxied(&upstream, |_| {}).await;

    // Down: the first half arrives while the upstream still holds the second.
    let res = app
        .client
        .get(format!("{}/held", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut stream = res.bytes_stream();
    let mut got = 0usize;
    while got < 64 * 1024 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the first half passes through before the rest exists")
            .unwrap()
            .unwrap();
        assert!(chunk.iter().all(|&b| b == b'a'));
        got += chunk.len();
    }
    upstream.shared.release.notify_one();
    let mut rest = 0usize;
    while let Some(chunk) = stream.next().await {
        rest += chunk.unwrap().len();
    }
    assert_eq!((got, rest), (64 * 1024, 64 * 1024));

    // Up: the upstream reads the first chunk while the client has not sent the second.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(tokio_stream(rx));
    let send = tokio::spawn(
        app.client
            .post(format!("{}/upload", app.addr))
            .body(body)
            .send(),
    );
    tx.send(Ok(vec![7; 1000])).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        upstream.shared.upload_began.notified(),
    )
    .await
    .expect("the upload's first chunk reaches the upstream before the rest is sent");
    tx.send(Ok(vec![8; 1000])).await.unwrap();
    drop(tx);
    let res = send.await.unwrap().unwrap();
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["len"], 2000);

    // Large, both ways, every byte in order.
    let size = 24 * 1024 * 1024;
    let big: Vec<u8> = pattern(0, size).to_vec();
    let want = hex::encode(Sha256::digest(&big));
    let res = app
        .client
        .post(format!("{}/upload", app.addr))
        .body(big)
        .send()
        .await
        .unwrap();
    let v: Value = res.json().await.unwrap();
    assert_eq!(v, json!({"len": size, "sha256": want}));
    let res = app
        .client
        .get(format!("{}/download/{size}", app.addr))
        .send()
        .await
        .unwrap();
    let mut stream = res.bytes_stream();
    let (mut len, mut sha) = (0usize, Sha256::new());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        len += chunk.len();
        sha.update(&chunk);
    }
    assert_eq!((len, hex::encode(sha.finalize())), (size, want));
}

/// A stream over a channel's receiver (for a request body sent piece by piece).
fn tokio_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn sse_passes_through_and_a_client_hanging_up_leaves_nothing_behind() {
    let upstream = Upstream::start().await;
    let app = proxied(&upstream, |_| {}).await;
    let res = app
        .client
        .get(format!("{}/sse", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut stream = res.bytes_stream();
    let mut text = String::new();
    while !text.contains("data: tick 2\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("events arrive as the upstream sends them")
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.starts_with("id: 0\ndata: tick 0\n\n"), "{text}");
    assert_eq!(upstream.open_streams(), 1);
    drop(stream);
    assert!(
        eventually(Duration::from_secs(5), || async {
            upstream.open_streams() == 0
        })
        .await,
        "the upstream's stream ends when the client hangs up"
    );

    // Hanging up mid-upload ends the upstream's read too.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let send = tokio::spawn(
        crate::client::unpooled_client()
            .post(format!("{}/upload", app.addr))
            .body(reqwest::Body::wrap_stream(tokio_stream(rx)))
            .send(),
    );
    tx.send(Ok(vec![1; 4096])).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        upstream.shared.upload_began.notified(),
    )
    .await
    .unwrap();
    assert_eq!(upstream.open_uploads(), 1);
    send.abort();
    drop(tx);
    assert!(
        eventually(Duration::from_secs(5), || async {
            upstream.open_uploads() == 0
        })
        .await,
        "the upstream's upload ends when the client hangs up"
    );
    // And sidecache still serves, with nothing counted in flight.
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(
        app.metric("sidecache_http_requests_in_flight", &[]).await,
        0.0
    );
}

#[tokio::test]
async fn an_upgrade_is_tunnelled_to_the_upstream_until_the_client_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Upstream::start().await;
    let app = proxied(&upstream, |_| {}).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    s.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: voice.example.com\r\nConnection: Upgrade\r\nUpgrade: echo-test\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).await.unwrap(), 1, "the head arrives");
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo-test"), "{head}");
    for msg in [&b"ping"[..], b"a longer message, twice over"] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .expect("the upstream's echo comes back through the tunnel")
            .unwrap();
        assert_eq!(back, msg);
    }
    let seen = upstream.seen_at("/upgrade");
    assert!(
        seen.is_empty(),
        "the upgrade is not recorded as a plain request"
    );
    assert_eq!(upstream.open_tunnels(), 1);
    drop(s);
    assert!(
        eventually(Duration::from_secs(5), || async {
            upstream.open_tunnels() == 0
        })
        .await,
        "the tunnel closes when the client does"
    );
}

fn vapi_message(kind: &str) -> Value {
    json!({"message": {
        "type": kind,
        "call": {"id": "call-proxy-1"},
        "customer": {"number": "+15550209999"},
        "phoneNumber": {"number": "+15550109999"},
        "status": "in-progress",
    }})
}

#[tokio::test]
async fn platform_messages_other_than_call_start_go_to_the_upstream_and_call_starts_are_mirrored() {
    let upstream = Upstream::start().await;
    let app = proxied(&upstream, |s| {
        s.webhooks.vapi.secret = Secret::new(VAPI_SECRET);
        s.webhooks.vapi.default_assistant_id = "asst-default".into();
        s.proxy.mirror_call_starts = true;
    })
    .await;
    let send = |body: Vec<u8>| {
        app.client
            .post(format!("{}/v1/webhooks/vapi", app.addr))
            .header("x-vapi-secret", VAPI_SECRET)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // A status update: the app's to answer, with the bytes Vapi sent.
    let update = serde_json::to_vec_pretty(&vapi_message("status-update")).unwrap();
    let res = send(update.clone()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-upstream"], "echo");
    assert_eq!(res.bytes().await.unwrap(), update);
    let seen = upstream.seen_at("/v1/webhooks/vapi");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, update);
    assert_eq!(seen[0].headers["x-vapi-secret"], VAPI_SECRET);

    // An end-of-call report with a long transcript: far over a lookup's body limit, still the
    // app's, byte for byte.
    let mut report = vapi_message("end-of-call-report");
    report["message"]["transcript"] = json!("AI: Hello. User: Hi. ".repeat(20_000));
    let report = serde_json::to_vec(&report).unwrap();
    assert!(report.len() > 256 * 1024);
    let res = send(report.clone()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-upstream"], "echo");
    let seen = upstream.seen_at("/v1/webhooks/vapi");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body, report);

    // A call start: sidecache answers; the app gets the same request in the background.
    let start = serde_json::to_vec(&vapi_message("assistant-request")).unwrap();
    let res = send(start.clone()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get("x-upstream").is_none());
    let v: Value = res.json().await.unwrap();
    assert!(
        v.get("assistantId").is_some() || v.get("error").is_some(),
        "{v}"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            upstream.seen_at("/v1/webhooks/vapi").len() == 3
        })
        .await
    );
    let mirrored = &upstream.seen_at("/v1/webhooks/vapi")[2];
    assert_eq!(mirrored.body, start);
    assert_eq!(mirrored.method, "POST");
    assert_eq!(mirrored.headers["x-forwarded-for"], "127.0.0.1");
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.metric("sidecache_proxy_mirrors_total", &[("result", "taken")])
                .await
                == 1.0
        })
        .await
    );
    // A retry of the same call start is answered again but not mirrored twice.
    let res = send(start).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream.seen_at("/v1/webhooks/vapi").len(), 3);
}
