//! Event streams: delivery to SSE subscribers on another instance, resume with `Last-Event-ID`
//! (every missed event once, in order), `gap` past the retention, `end`, slow subscribers cut,
//! the subscriber bound, and the JSON polling form.

use std::time::Duration;

use futures_util::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::fixtures::eventually;
use crate::spawn::{spawn_app, spawn_app_with, TestApp};

/// One Server-Sent Event as received.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sse {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl Sse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// An open SSE response, read frame by frame.
pub struct SseReader {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
    pub comments: usize,
}

impl SseReader {
    pub async fn open(
        app: &TestApp,
        path: &str,
        last_id: Option<&str>,
    ) -> (StatusCode, Option<SseReader>) {
        let mut req = app
            .client
            .get(format!("{}{path}", app.addr))
            .header("accept", "text/event-stream");
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        if status != StatusCode::OK {
            return (status, None);
        }
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        let reader = SseReader {
            body: res.bytes_stream().boxed(),
            buf: String::new(),
            comments: 0,
        };
        (status, Some(reader))
    }

    /// The next event (comments are counted and skipped); `None` when the stream ended or
    /// nothing came within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let mut e = Sse::default();
                let mut comment = true;
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        e.id = Some(v.trim().to_owned());
                        comment = false;
                    } else if let Some(v) = line.strip_prefix("event:") {
                        e.event = v.trim().to_owned();
                        comment = false;
                    } else if let Some(v) = line.strip_prefix("data:") {
                        e.data.push_str(v.trim_start());
                        comment = false;
                    }
                }
                if comment {
                    self.comments += 1;
                    continue;
                }
                return Some(e);
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .ok()??;
            self.buf.push_str(&String::from_utf8_lossy(&chunk.ok()?));
        }
    }

    /// The next `n` events, each within `within`.
    pub async fn take(&mut self, n: usize, within: Duration) -> Vec<Sse> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.next(within).await {
                Some(e) => out.push(e),
                None => break,
            }
        }
        out
    }
}

const WAIT: Duration = Duration::from_secs(5);

async fn post_event(app: &TestApp, path: &str, n: usize) -> String {
    let a = app
        .post(path, json!({"type": "msg", "data": {"n": n}}))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    a.body["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_event_posted_on_one_instance_reaches_a_subscriber_on_another() {
    let a = spawn_app().await;
    let b = a.spawn_peer(|_| {}).await;
    a.put_session("call:1", json!({"data": {}})).await;
    let (_, sub) = SseReader::open(&b, "/v1/sessions/call:1/events", None).await;
    let mut sub = sub.unwrap();
    let posted = a
        .post(
            "/v1/sessions/call:1/events",
            json!({"type": "transcript.line", "data": {"text": "hello"}}),
        )
        .await;
    assert_eq!(posted.status, StatusCode::CREATED);
    assert_eq!(posted.body["type"], "transcript.line");
    assert_eq!(posted.body["data"], json!({"text": "hello"}));
    let e = sub
        .next(WAIT)
        .await
        .expect("delivered on the other instance");
    assert_eq!(e.event, "transcript.line");
    assert_eq!(e.id.as_deref(), posted.body["id"].as_str());
    assert_eq!(e.json(), posted.body, "data is the event as posted");
    assert!(b.metric("sidecache_events_delivered_total", &[]).await >= 1.0);
    assert_eq!(b.metric("sidecache_sse_subscribers", &[]).await, 1.0);
}

#[tokio::test]
async fn a_subscriber_that_resumes_gets_every_missed_event_once_in_order() {
    let a = spawn_app().await;
    let b = a.spawn_peer(|_| {}).await;
    a.put_session("s", json!({"data": {}})).await;
    let path = "/v1/sessions/s/events";
    let mut first = SseReader::open(&b, path, None).await.1.unwrap();
    for n in 0..3 {
        post_event(&a, path, n).await;
    }
    let seen = first.take(3, WAIT).await;
    assert_eq!(seen.len(), 3);
    let last = seen[2].id.clone().unwrap();
    drop(first);
    // Events posted while it was away, on both instances.
    let mut missed = Vec::new();
    for n in 3..13 {
        let app = if n % 2 == 0 { &a } else { &b };
        missed.push(post_event(app, path, n).await);
    }
    let mut again = SseReader::open(&a, path, Some(&last)).await.1.unwrap();
    let got = again.take(10, WAIT).await;
    let ids: Vec<String> = got.iter().map(|e| e.id.clone().unwrap()).collect();
    assert_eq!(ids, missed, "every missed event, once, in order");
    let ns: Vec<i64> = got
        .iter()
        .map(|e| e.json()["data"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, (3..13).collect::<Vec<_>>());
    let live = post_event(&b, path, 13).await;
    let e = again.next(WAIT).await.unwrap();
    assert_eq!(
        e.id.as_deref(),
        Some(live.as_str()),
        "then live, no duplicate"
    );
    // ?after= does the same; ?from=now skips what is there.
    let mut after = SseReader::open(&b, &format!("{path}?after={}", missed[8]), None)
        .await
        .1
        .unwrap();
    assert_eq!(after.next(WAIT).await.unwrap().id, Some(missed[9].clone()));
    let mut now = SseReader::open(&b, &format!("{path}?from=now"), None)
        .await
        .1
        .unwrap();
    let fresh = post_event(&a, path, 14).await;
    assert_eq!(now.next(WAIT).await.unwrap().id, Some(fresh));
    // The polling form.
    let page = b.get(&format!("{path}?after={last}&limit=4")).await;
    let polled: Vec<&str> = page.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        polled,
        missed[..4].iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(page.body["next_after"], missed[3].as_str());
    assert_eq!(page.body["gap"], false);
}

#[tokio::test]
async fn a_resume_point_past_the_retention_gets_a_gap_first() {
    let app = spawn_app_with(|s| s.events.max_len = std::num::NonZeroUsize::new(3).unwrap()).await;
    app.put_session("g", json!({"data": {}})).await;
    let path = "/v1/sessions/g/events";
    let ids: Vec<String> = {
        let mut v = Vec::new();
        for n in 0..6 {
            v.push(post_event(&app, path, n).await);
        }
        v
    };
    let mut sub = SseReader::open(&app, path, Some(&ids[0])).await.1.unwrap();
    let gap = sub.next(WAIT).await.unwrap();
    assert_eq!(gap.event, "gap");
    assert_eq!(gap.json()["missed_after"], ids[0].as_str());
    assert_eq!(
        gap.json()["resumed_after"],
        ids[2].as_str(),
        "ids 1 and 2 were trimmed"
    );
    let rest: Vec<Option<String>> = sub.take(3, WAIT).await.into_iter().map(|e| e.id).collect();
    assert_eq!(rest, ids[3..].iter().cloned().map(Some).collect::<Vec<_>>());
    // Within the retention: no gap.
    let mut ok = SseReader::open(&app, path, Some(&ids[2])).await.1.unwrap();
    assert_eq!(ok.next(WAIT).await.unwrap().id, Some(ids[3].clone()));
    let polled = app.get(&format!("{path}?after={}", ids[0])).await;
    assert_eq!(polled.body["gap"], true);

    // The stream expires while idle (its key gone) and starts over: a reader of its earlier
    // life still learns of the gap.
    let mut c = app.redis.clone();
    let _: i64 = redis::cmd("DEL")
        .arg(app.keys().session_stream("g"))
        .query_async(&mut c)
        .await
        .unwrap();
    let polled = app.get(&format!("{path}?after={}", ids[4])).await;
    assert_eq!(polled.body["gap"], true, "{}", polled.text);
    let polled = app.get(&format!("{path}?after={}", ids[5])).await;
    assert_eq!(
        polled.body["gap"], false,
        "nothing was added after the last one"
    );
    let next = post_event(&app, path, 6).await;
    let mut sub = SseReader::open(&app, path, Some(&ids[4])).await.1.unwrap();
    let gap = sub.next(WAIT).await.unwrap();
    assert_eq!(
        (gap.event.as_str(), &gap.json()["resumed_after"]),
        ("gap", &json!(ids[5]))
    );
    assert_eq!(sub.next(WAIT).await.unwrap().id, Some(next));
}

#[tokio::test]
async fn a_redis_hiccup_does_not_end_a_subscription() {
    let (relay, a) = crate::sessions::behind_relay(Duration::from_millis(200), |settings| {
        settings.events.keepalive = Duration::from_secs(1);
    })
    .await;
    let b = a.spawn_direct_peer().await;
    b.put_session("h", json!({"data": {}})).await;
    let mut sub = SseReader::open(&a, "/v1/sessions/h/events", None)
        .await
        .1
        .unwrap();
    relay.cut();
    assert!(
        sub.next(Duration::from_millis(2500)).await.is_none(),
        "no `end` while Redis is away"
    );
    relay.restore();
    let id = post_event(&b, "/v1/sessions/h/events", 1).await;
    let e = sub.next(WAIT).await.expect("still subscribed");
    assert_eq!(e.id, Some(id), "{e:?}");
}

#[tokio::test]
async fn subscribers_get_end_when_the_session_is_deleted_or_expires() {
    let a = spawn_app_with(|s| s.events.keepalive = Duration::from_secs(1)).await;
    let b = a.spawn_peer(|_| {}).await;
    a.put_session("d", json!({"data": {}})).await;
    let mut sub = SseReader::open(&b, "/v1/sessions/d/events", None)
        .await
        .1
        .unwrap();
    assert_eq!(
        a.delete("/v1/sessions/d").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(sub.next(WAIT).await.unwrap().event, "end");
    assert!(
        sub.next(Duration::from_secs(2)).await.is_none(),
        "closed after end"
    );
    assert_eq!(
        a.post("/v1/sessions/d/events", json!({"type": "x"}))
            .await
            .error_code(),
        "session_not_found"
    );

    // A new session of the same id starts a new stream: no `end`, no old events.
    assert_eq!(
        a.put_session("d", json!({"data": {}})).await.status,
        StatusCode::CREATED
    );
    let mut fresh = SseReader::open(&b, "/v1/sessions/d/events", None)
        .await
        .1
        .unwrap();
    let id = post_event(&a, "/v1/sessions/d/events", 1).await;
    assert_eq!(fresh.next(WAIT).await.unwrap().id, Some(id));

    b.put_session("e", json!({"data": {}, "ttl_secs": 60}))
        .await;
    let mut sub = SseReader::open(&b, "/v1/sessions/e/events", None)
        .await
        .1
        .unwrap();
    b.advance(Duration::from_secs(61));
    let e = sub.next(WAIT).await.unwrap();
    assert_eq!(e.event, "end", "noticed at the next keep-alive");
    assert!(sub.comments <= 1);
}

#[tokio::test]
async fn a_slow_subscriber_is_cut_with_a_final_event_and_can_resume() {
    let app = spawn_app_with(|s| {
        s.events.subscriber_buffer = std::num::NonZeroUsize::new(4).unwrap();
        s.events.slow_cut = Duration::from_secs(1);
        s.events.max_len = std::num::NonZeroUsize::new(10_000).unwrap();
        s.server.body_limit_bytes = 256 * 1024;
    })
    .await;
    app.put_session("slow", json!({"data": {}})).await;
    let path = "/v1/sessions/slow/events";
    let (_, sub) = SseReader::open(&app, path, None).await;
    let mut sub = sub.unwrap();
    // Far more than the socket buffers hold, never read meanwhile.
    let big = "x".repeat(200_000);
    let mut ids = Vec::new();
    for n in 0..60 {
        let a = app
            .post(path, json!({"type": "blob", "data": {"n": n, "pad": big}}))
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        ids.push(a.body["id"].as_str().unwrap().to_owned());
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.metric("sidecache_sse_subscribers_cut_total", &[]).await == 1.0
        })
        .await,
        "cut"
    );
    let mut got = Vec::new();
    let cut = loop {
        let e = sub.next(WAIT).await.expect("the stream ends with `cut`");
        if e.event == "cut" {
            break e;
        }
        got.push(e.id.unwrap());
    };
    assert_eq!(got, ids[..got.len()], "in order up to the cut");
    assert!(got.len() < ids.len(), "it was cut before the end");
    assert_eq!(cut.json()["resume_after"], got.last().unwrap().as_str());
    assert!(sub.next(Duration::from_secs(1)).await.is_none());
    let mut resumed = SseReader::open(&app, path, got.last().map(String::as_str))
        .await
        .1
        .unwrap();
    assert_eq!(
        resumed.next(WAIT).await.unwrap().id,
        Some(ids[got.len()].clone())
    );
}

#[tokio::test]
async fn topics_need_no_session_and_subscribers_are_bounded() {
    let app =
        spawn_app_with(|s| s.events.max_subscribers = std::num::NonZeroUsize::new(2).unwrap())
            .await;
    let path = "/v1/topics/team:7/events";
    let one = SseReader::open(&app, path, None).await.1.unwrap();
    let mut two = SseReader::open(&app, &format!("{path}?from=now"), None)
        .await
        .1
        .unwrap();
    let (status, _) = SseReader::open(&app, path, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        app.metric("sidecache_sse_subscribers_refused_total", &[])
            .await,
        1.0
    );
    let id = post_event(&app, path, 1).await;
    assert_eq!(two.next(WAIT).await.unwrap().id, Some(id));
    drop(one);
    assert!(
        eventually(WAIT, || async {
            SseReader::open(&app, path, None).await.0 == StatusCode::OK
        })
        .await,
        "a slot is free again"
    );
    let none = app.get("/v1/sessions/nope/events").await;
    assert_eq!(none.error_code(), "session_not_found");
}

#[tokio::test]
async fn with_redis_off_events_are_delivered_on_this_instance() {
    let app = spawn_app_with(|s| s.redis.enabled = false).await;
    app.put_session("m", json!({"data": {}})).await;
    let path = "/v1/sessions/m/events";
    let mut sub = SseReader::open(&app, path, None).await.1.unwrap();
    let posted = app.post(path, json!({"type": "t", "data": 1})).await;
    assert_eq!(posted.header("x-session-store"), Some("memory"));
    let e = sub.next(WAIT).await.unwrap();
    assert_eq!(e.id.as_deref(), posted.body["id"].as_str());
    let second = post_event(&app, path, 2).await;
    let page = app
        .get(&format!(
            "{path}?after={}",
            posted.body["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(page.body["events"][0]["id"], second.as_str());
}
