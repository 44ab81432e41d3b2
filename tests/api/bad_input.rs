//! Every kind of bad input gets a 4xx with the JSON error shape; none gets a 5xx.

use reqwest::{Method, StatusCode};

use crate::lookups::world;
use crate::spawn::spawn_app;

/// (method, path, body, content type, expected status, expected code)
type Case = (
    Method,
    String,
    Option<String>,
    &'static str,
    u16,
    &'static str,
);

#[tokio::test]
async fn bad_input_gets_a_clear_json_4xx() {
    let app = spawn_app().await;
    let w = world(&app).await;
    let (o, l) = (w.org_id().to_owned(), w.lead_id().to_owned());
    let big = format!(
        "{{\"name\": \"{}\", \"phone_number\": \"+15550009999\"}}",
        "x".repeat(70 * 1024)
    );
    let cases: Vec<Case> = vec![
        (Method::GET, "/v1/organizations/by-phone/not-a-phone".into(), None, "", 400, "invalid_phone"),
        (Method::GET, "/v1/organizations/by-phone/%2B1".into(), None, "", 400, "invalid_phone"),
        (Method::GET, "/v1/organizations/by-phone/555-CALL-NOW".into(), None, "", 400, "invalid_phone"),
        (Method::GET, format!("/v1/organizations/by-phone/{}", "9".repeat(300)), None, "", 400, "invalid_phone"),
        (Method::GET, "/v1/leads/not-a-uuid".into(), None, "", 400, "invalid_id"),
        (Method::GET, "/v1/organizations/123".into(), None, "", 400, "invalid_id"),
        (Method::GET, "/v1/leads/by-phone/%2B15550002000".into(), None, "", 400, "missing_parameter"),
        (Method::GET, "/v1/leads/by-phone/%2B15550002000?organization_id=nope".into(), None, "", 400, "invalid_id"),
        (Method::GET, format!("/v1/leads/{l}/greeting?channel=fax"), None, "", 400, "invalid_channel"),
        (Method::GET, format!("/v1/leads/{l}/greeting?channel=VOICE"), None, "", 400, "invalid_channel"),
        (Method::GET, format!("/v1/leads/{l}/history?limit=0"), None, "", 400, "invalid_parameter"),
        (Method::GET, format!("/v1/leads/{l}/history?limit=101"), None, "", 400, "invalid_parameter"),
        (Method::GET, format!("/v1/leads/{l}/history?limit=abc"), None, "", 400, "invalid_parameter"),
        (Method::GET, format!("/v1/leads/{l}/history?offset=-1"), None, "", 400, "invalid_parameter"),
        (Method::GET, format!("/v1/leads/{l}/history?limit=99999999999999999999"), None, "", 400, "invalid_parameter"),
        (Method::GET, "/v1/calls/initiation?callee=%2B15550001000".into(), None, "", 400, "missing_parameter"),
        (Method::GET, "/v1/calls/initiation?caller=x&callee=%2B15550001000".into(), None, "", 400, "invalid_phone"),
        (Method::GET, "/v1/calls/initiation?caller=%2B15550002000&callee=%2B15550001000&channel=pigeon".into(), None, "", 400, "invalid_channel"),
        (Method::POST, "/v1/leads".into(), Some("{not json".into()), "application/json", 400, "malformed_json"),
        (Method::POST, "/v1/leads".into(), Some("".into()), "application/json", 400, "malformed_json"),
        (Method::POST, "/v1/leads".into(), Some(format!("{{\"organization_id\": \"{o}\", \"phone_number\": \"+15550002100\", \"nickname\": \"x\"}}")), "application/json", 422, "invalid_body"),
        (Method::POST, "/v1/leads".into(), Some("{\"phone_number\": \"+15550002100\"}".into()), "application/json", 422, "invalid_body"),
        (Method::POST, "/v1/leads".into(), Some(format!("{{\"organization_id\": {o:?}, \"phone_number\": 5}}")), "application/json", 422, "invalid_body"),
        (Method::POST, "/v1/leads".into(), Some(format!("{{\"organization_id\": {o:?}, \"phone_number\": \"abc\"}}")), "application/json", 400, "invalid_phone"),
        (Method::POST, "/v1/leads".into(), Some("{\"organization_id\": \"nope\", \"phone_number\": \"+15550002100\"}".into()), "application/json", 422, "invalid_value"),
        (Method::POST, "/v1/leads".into(), Some(format!("{{\"organization_id\": {o:?}, \"phone_number\": \"+15550002100\", \"status\": \"vip\"}}")), "application/json", 422, "invalid_value"),
        (Method::POST, "/v1/leads".into(), Some(format!("{{\"organization_id\": {o:?}, \"phone_number\": \"+15550002100\", \"email\": \"nope\"}}")), "application/json", 422, "invalid_value"),
        (Method::POST, "/v1/leads".into(), Some(format!("{{\"organization_id\": {o:?}, \"phone_number\": \"+15550002100\", \"attributes\": [1]}}")), "application/json", 422, "invalid_value"),
        (Method::POST, "/v1/leads".into(), Some("[]".into()), "application/json", 422, "invalid_body"),
        (Method::POST, "/v1/leads".into(), Some(format!("{{\"organization_id\": {o:?}, \"phone_number\": \"+15550002100\"}}")), "text/plain", 415, "unsupported_media_type"),
        (Method::POST, "/v1/leads".into(), Some(format!("{{\"organization_id\": {o:?}, \"phone_number\": \"+15550002100\"}}")), "", 415, "unsupported_media_type"),
        (Method::POST, "/v1/organizations".into(), Some(big), "application/json", 413, "payload_too_large"),
        (Method::POST, "/v1/organizations".into(), Some("{\"name\": \"  \", \"phone_number\": \"+15550009999\"}".into()), "application/json", 422, "invalid_value"),
        (Method::POST, "/v1/organizations".into(), Some("{\"name\": \"A\", \"phone_number\": \"+15550009999\", \"timezone\": \"Mars/Olympus\"}".into()), "application/json", 422, "invalid_value"),
        (Method::POST, "/v1/organizations".into(), Some("{\"name\": \"A\", \"phone_number\": \"+15550009999\", \"settings\": \"x\"}".into()), "application/json", 422, "invalid_value"),
        (Method::POST, format!("/v1/leads/{l}/conversations"), Some("{\"channel\": \"fax\", \"direction\": \"inbound\"}".into()), "application/json", 422, "invalid_value"),
        (Method::POST, format!("/v1/leads/{l}/conversations"), Some("{\"channel\": \"sms\", \"direction\": \"sideways\"}".into()), "application/json", 422, "invalid_value"),
        (Method::POST, format!("/v1/leads/{l}/conversations"), Some("{\"channel\": \"sms\", \"direction\": \"inbound\", \"started_at\": \"yesterday\"}".into()), "application/json", 422, "invalid_body"),
        (Method::POST, format!("/v1/leads/{l}/conversations"), Some("{\"channel\": \"sms\", \"direction\": \"inbound\", \"started_at\": \"2026-01-02T00:00:00Z\", \"ended_at\": \"2026-01-01T00:00:00Z\"}".into()), "application/json", 422, "invalid_value"),
        (Method::PATCH, format!("/v1/leads/{l}"), Some("{\"organization_id\": \"x\"}".into()), "application/json", 422, "invalid_body"),
        (Method::PATCH, format!("/v1/leads/{l}"), Some("{\"first_name\": 7}".into()), "application/json", 422, "invalid_body"),
        (Method::GET, "/v1/nothing-here".into(), None, "", 404, "route_not_found"),
        (Method::PUT, format!("/v1/leads/{l}"), None, "", 405, "method_not_allowed"),
    ];
    expect_errors(&app, cases).await;

    let bad_if_match = app
        .request(
            Method::PATCH,
            &format!("/v1/leads/{l}"),
            Some(serde_json::json!({"status": "lost"})),
            &[("if-match", "seven")],
        )
        .await;
    assert_eq!(bad_if_match.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_if_match.error_code(), "invalid_if_match");
    // None of it changed the lead, and nothing answered 5xx.
    assert_eq!(app.get(&format!("/v1/leads/{l}")).await.version(), 1);
    let text = app.metrics_text().await;
    assert!(
        !crate::prom::series(&text, "sidecache_http_requests_total")
            .any(|s| s.label("status").is_some_and(|v| v.starts_with('5'))),
        "no 5xx recorded"
    );
}

/// Sends every case and checks its status and error code.
async fn expect_errors(app: &crate::spawn::TestApp, cases: Vec<Case>) {
    for (method, path, body, ctype, want, code) in cases {
        let mut req = app
            .client
            .request(method.clone(), format!("{}{}", app.addr, path));
        if !ctype.is_empty() {
            req = req.header("content-type", ctype);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let a = crate::spawn::TestApp::answer(req.send().await.unwrap()).await;
        assert_eq!(
            a.status.as_u16(),
            want,
            "{method} {}: {}",
            &path[..path.len().min(120)],
            a.text
        );
        assert_eq!(
            a.error_code(),
            code,
            "{method} {}",
            &path[..path.len().min(120)]
        );
    }
}

#[tokio::test]
async fn bad_session_event_and_rate_limit_input_gets_a_json_4xx_and_stores_nothing() {
    let app = crate::spawn::spawn_app_with(|s| {
        s.rate_limits.limits.insert(
            "voice".into(),
            sidecache::config::LimitSettings {
                limit: std::num::NonZeroU32::new(5).unwrap(),
                period: std::time::Duration::from_secs(60),
                burst: None,
            },
        );
    })
    .await;
    let j = "application/json";
    let big = format!("{{\"data\": {{\"x\": \"{}\"}}}}", "y".repeat(65 * 1024));
    let s = |p: &str| format!("/v1/sessions/{p}");
    let cases: Vec<Case> = vec![
        (
            Method::PUT,
            s("a%20b"),
            Some("{\"data\": {}}".into()),
            j,
            400,
            "invalid_id",
        ),
        (
            Method::PUT,
            s(&"x".repeat(129)),
            Some("{\"data\": {}}".into()),
            j,
            400,
            "invalid_id",
        ),
        (
            Method::PUT,
            s("a*"),
            Some("{\"data\": {}}".into()),
            j,
            400,
            "invalid_id",
        ),
        (
            Method::PUT,
            s("ok"),
            Some("{}".into()),
            j,
            422,
            "invalid_body",
        ),
        (
            Method::PUT,
            s("ok"),
            Some("{\"data\": [1]}".into()),
            j,
            422,
            "invalid_body",
        ),
        (
            Method::PUT,
            s("ok"),
            Some("{\"data\": {}, \"extra\": 1}".into()),
            j,
            422,
            "invalid_body",
        ),
        (
            Method::PUT,
            s("ok"),
            Some("{\"data\": {}, \"ttl_secs\": 0}".into()),
            j,
            422,
            "invalid_value",
        ),
        (
            Method::PUT,
            s("ok"),
            Some("{\"data\": {}, \"ttl_secs\": 86401}".into()),
            j,
            422,
            "invalid_value",
        ),
        (
            Method::PUT,
            s("ok"),
            Some("{\"data\": {}, \"ttl_secs\": -5}".into()),
            j,
            422,
            "invalid_body",
        ),
        (
            Method::PUT,
            s("ok"),
            Some("{\"data\": {}".into()),
            j,
            400,
            "malformed_json",
        ),
        (
            Method::PUT,
            s("ok"),
            Some("{\"data\": {}}".into()),
            "text/plain",
            415,
            "unsupported_media_type",
        ),
        (Method::PUT, s("ok"), Some(big), j, 413, "session_too_large"),
        (
            Method::PATCH,
            s("ok"),
            Some("[1]".into()),
            "application/merge-patch+json",
            422,
            "invalid_body",
        ),
        (
            Method::PATCH,
            s("ok"),
            Some("{".into()),
            "application/merge-patch+json",
            400,
            "malformed_json",
        ),
        (
            Method::PATCH,
            s("ok"),
            Some("{}".into()),
            "text/plain",
            415,
            "unsupported_media_type",
        ),
        (
            Method::PATCH,
            s("ok?ttl_secs=x"),
            Some("{}".into()),
            j,
            400,
            "invalid_query",
        ),
        (
            Method::PATCH,
            s("ok"),
            Some("{}".into()),
            j,
            404,
            "session_not_found",
        ),
        (
            Method::GET,
            s("ok?touch=maybe"),
            None,
            "",
            400,
            "invalid_query",
        ),
        (Method::GET, s("ok"), None, "", 404, "session_not_found"),
        (
            Method::POST,
            s("ok/touch"),
            Some("{\"ttl_secs\": \"1\"}".into()),
            j,
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            s("ok/touch"),
            Some("{\"ttl_secs\": 0}".into()),
            j,
            422,
            "invalid_value",
        ),
        (
            Method::POST,
            s("ok/touch"),
            Some("{}".into()),
            "text/plain",
            415,
            "unsupported_media_type",
        ),
        (
            Method::POST,
            s("ok/touch"),
            None,
            "",
            404,
            "session_not_found",
        ),
        (Method::DELETE, s("ok"), None, "", 404, "session_not_found"),
        (
            Method::GET,
            "/v1/sessions?limit=0".into(),
            None,
            "",
            400,
            "invalid_query",
        ),
        (
            Method::GET,
            "/v1/sessions?limit=1001".into(),
            None,
            "",
            400,
            "invalid_query",
        ),
        (
            Method::GET,
            "/v1/sessions?cursor=a%20b".into(),
            None,
            "",
            400,
            "invalid_query",
        ),
        (
            Method::GET,
            "/v1/sessions?prefix=%2F".into(),
            None,
            "",
            400,
            "invalid_query",
        ),
        (
            Method::POST,
            s("ok/events"),
            Some("{\"type\": \"t\"}".into()),
            j,
            404,
            "session_not_found",
        ),
        (
            Method::POST,
            "/v1/topics/t/events".into(),
            Some("{\"type\": \"a b\"}".into()),
            j,
            422,
            "invalid_value",
        ),
        (
            Method::POST,
            "/v1/topics/t/events".into(),
            Some("{\"type\": \"end\"}".into()),
            j,
            422,
            "invalid_value",
        ),
        (
            Method::POST,
            "/v1/topics/t/events".into(),
            Some("{\"data\": 1}".into()),
            j,
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            "/v1/topics/t/events".into(),
            Some("{\"type\": \"x\", \"more\": 1}".into()),
            j,
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            "/v1/topics/a%2Fb/events".into(),
            Some("{\"type\": \"x\"}".into()),
            j,
            400,
            "invalid_id",
        ),
        (
            Method::GET,
            "/v1/topics/t/events?after=yesterday".into(),
            None,
            "",
            400,
            "invalid_event_id",
        ),
        (
            Method::GET,
            "/v1/topics/t/events?from=then".into(),
            None,
            "",
            400,
            "invalid_query",
        ),
        (
            Method::GET,
            "/v1/topics/t/events?limit=0".into(),
            None,
            "",
            400,
            "invalid_query",
        ),
        (
            Method::POST,
            "/v1/rate-limits/nope/check".into(),
            Some("{\"key\": \"k\"}".into()),
            j,
            404,
            "rate_limit_not_found",
        ),
        (
            Method::POST,
            "/v1/rate-limits/voice/check".into(),
            Some("{\"key\": \"\"}".into()),
            j,
            422,
            "invalid_value",
        ),
        (
            Method::POST,
            "/v1/rate-limits/voice/check".into(),
            Some(format!("{{\"key\": \"{}\"}}", "k".repeat(257))),
            j,
            422,
            "invalid_value",
        ),
        (
            Method::POST,
            "/v1/rate-limits/voice/check".into(),
            Some("{\"key\": \"k\", \"cost\": 6}".into()),
            j,
            422,
            "invalid_value",
        ),
        (
            Method::POST,
            "/v1/rate-limits/voice/check".into(),
            Some("{\"key\": \"k\", \"cost\": -1}".into()),
            j,
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            "/v1/rate-limits/voice/check".into(),
            Some("{\"cost\": 1}".into()),
            j,
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            "/v1/rate-limits/voice/check".into(),
            Some("k".into()),
            j,
            400,
            "malformed_json",
        ),
    ];
    expect_errors(&app, cases).await;
    let bad = app
        .request(
            Method::PUT,
            "/v1/sessions/ok",
            Some(serde_json::json!({"data": {}})),
            &[("if-match", "v1")],
        )
        .await;
    assert_eq!(bad.error_code(), "invalid_if_match");
    let sse = app
        .client
        .get(format!("{}/v1/topics/t/events", app.addr))
        .header("accept", "text/event-stream")
        .header("last-event-id", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), StatusCode::BAD_REQUEST);
    // Nothing was stored: no session, no event, no rate-limit state.
    assert_eq!(app.get("/v1/sessions").await.body["count"], 0);
    let state: Vec<String> = app
        .redis_keys()
        .await
        .into_iter()
        .filter(|k| k.contains(":state:"))
        .collect();
    assert!(state.is_empty(), "{state:?}");
}
