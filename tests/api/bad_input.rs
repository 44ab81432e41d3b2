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
