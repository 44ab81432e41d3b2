//! Every lookup route: MISS → HIT-L1 → (L1 dropped) HIT-L2, headers, negative entries, ETags.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::spawn::{spawn_app, TestApp};

/// An organization with one lead who has two conversations.
pub struct World {
    pub org: Value,
    pub lead: Value,
}

impl World {
    pub fn org_id(&self) -> &str {
        self.org["id"].as_str().unwrap()
    }
    pub fn lead_id(&self) -> &str {
        self.lead["id"].as_str().unwrap()
    }
}

pub async fn world(app: &TestApp) -> World {
    let org = app.create_org("+15550001000").await;
    let lead = app
        .create_lead(org["id"].as_str().unwrap(), "+15550002000", "Ada")
        .await;
    let lead_id = lead["id"].as_str().unwrap().to_owned();
    app.create_conversation(&lead_id, "first call").await;
    app.create_conversation(&lead_id, "second call").await;
    World { org, lead }
}

fn lookup_paths(w: &World) -> Vec<String> {
    let (o, l) = (w.org_id(), w.lead_id());
    vec![
        format!("/v1/organizations/{o}"),
        "/v1/organizations/by-phone/%2B15550001000".to_string(),
        format!("/v1/leads/{l}"),
        format!("/v1/leads/by-phone/%2B15550002000?organization_id={o}"),
        format!("/v1/leads/{l}/context"),
        format!("/v1/leads/{l}/summary"),
        format!("/v1/leads/{l}/greeting?channel=sms"),
        format!("/v1/leads/{l}/history?limit=1&offset=1"),
    ]
}

#[tokio::test]
async fn every_lookup_goes_miss_then_l1_then_l2() {
    let app = spawn_app().await;
    let w = world(&app).await;
    for path in lookup_paths(&w) {
        let first = app.get(&path).await;
        assert_eq!(first.status, StatusCode::OK, "{path}: {}", first.text);
        assert_eq!(first.cache(), "MISS", "{path}");
        assert!(
            first.header("etag").is_some_and(|e| e.starts_with('"')),
            "{path} has an ETag"
        );
        assert!(
            first
                .header("age")
                .is_some_and(|a| a.parse::<u64>().is_ok()),
            "{path} has an age"
        );
        assert_eq!(first.header("content-type"), Some("application/json"));

        let second = app.get(&path).await;
        assert_eq!(second.cache(), "HIT-L1", "{path}");
        assert_eq!(
            second.text, first.text,
            "{path}: a hit serves the same bytes"
        );

        app.flush_l1();
        let third = app.get(&path).await;
        assert_eq!(third.cache(), "HIT-L2", "{path}");
        assert_eq!(third.text, first.text, "{path}");
        assert_eq!(third.header("etag"), first.header("etag"));

        let fourth = app.get(&path).await;
        assert_eq!(fourth.cache(), "HIT-L1", "{path}: an L2 hit fills L1");
    }
}

#[tokio::test]
async fn answers_have_the_documented_shapes() {
    let app = spawn_app().await;
    let w = world(&app).await;
    let l = w.lead_id();

    let ctx = app.get(&format!("/v1/leads/{l}/context")).await.body;
    assert_eq!(ctx["lead"]["id"], w.lead["id"]);
    assert_eq!(ctx["organization"]["id"], w.org["id"]);
    assert_eq!(ctx["conversation_count"], 2);
    assert_eq!(ctx["recent_conversations"].as_array().unwrap().len(), 2);
    assert_eq!(ctx["dynamic_variables"]["first_name"], "Ada");
    assert!(ctx["dynamic_variables"]
        .as_object()
        .unwrap()
        .values()
        .all(Value::is_string));
    assert!(ctx["last_contact_at"].is_string());

    let summary = app.get(&format!("/v1/leads/{l}/summary")).await.body;
    assert_eq!(summary["lead_id"], w.lead["id"]);
    assert_eq!(summary["conversation_count"], 2);
    let text = summary["summary"].as_str().unwrap();
    assert!(
        text.find("second call").unwrap() < text.find("first call").unwrap(),
        "newest first: {text}"
    );

    let greeting = app.get(&format!("/v1/leads/{l}/greeting")).await.body;
    assert_eq!(greeting["channel"], "voice", "channel defaults to voice");
    let g = greeting["greeting"].as_str().unwrap();
    assert!(g.contains("Ada") && g.contains("Org +15550001000"), "{g}");
    assert!(
        ["morning", "afternoon", "evening"]
            .iter()
            .any(|t| g.contains(t)),
        "{g}"
    );

    let page = app
        .get(&format!("/v1/leads/{l}/history?limit=1"))
        .await
        .body;
    assert_eq!(page["limit"], 1);
    assert_eq!(page["offset"], 0);
    assert_eq!(page["conversations"].as_array().unwrap().len(), 1);
    assert_eq!(page["conversations"][0]["summary"], "second call");
    let page2 = app
        .get(&format!("/v1/leads/{l}/history?limit=1&offset=1"))
        .await
        .body;
    assert_eq!(page2["conversations"][0]["summary"], "first call");
    let default = app.get(&format!("/v1/leads/{l}/history")).await.body;
    assert_eq!(default["limit"], 20);
}

#[tokio::test]
async fn not_found_is_cached_as_a_negative_entry() {
    let app = spawn_app().await;
    let w = world(&app).await;
    let missing = uuid::Uuid::new_v4();
    let a = app.get(&format!("/v1/leads/{missing}")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.error_code(), "lead_not_found");
    assert_eq!(a.cache(), "MISS");
    let b = app.get(&format!("/v1/leads/{missing}")).await;
    assert_eq!(b.status, StatusCode::NOT_FOUND);
    assert_eq!(b.cache(), "HIT-L1");
    assert!(
        app.in_redis(&format!("lead:id:{missing}")).await,
        "negative entries live in L2 too"
    );
    assert_eq!(
        app.metric(
            "sidecache_cache_lookups_total",
            &[("kind", "lead_id"), ("result", "negative")]
        )
        .await,
        1.0
    );

    for path in [
        format!("/v1/leads/{missing}/context"),
        format!("/v1/leads/{missing}/summary"),
        format!("/v1/leads/{missing}/greeting"),
        format!("/v1/leads/{missing}/history"),
        format!("/v1/organizations/{missing}"),
        "/v1/organizations/by-phone/%2B19998887777".into(),
        format!(
            "/v1/leads/by-phone/%2B19998887777?organization_id={}",
            w.org_id()
        ),
    ] {
        let a = app.get(&path).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
        a.error_code();
    }
}

#[tokio::test]
async fn etags_answer_if_none_match() {
    let app = spawn_app().await;
    let w = world(&app).await;
    let path = format!("/v1/leads/{}", w.lead_id());
    let a = app.get(&path).await;
    assert_eq!(
        a.header("etag"),
        Some("\"1\""),
        "a resource's ETag is its version"
    );
    let b = app
        .request(Method::GET, &path, None, &[("if-none-match", "\"1\"")])
        .await;
    assert_eq!(b.status, StatusCode::NOT_MODIFIED);
    assert_eq!(b.cache(), "HIT-L1");
    assert!(b.text.is_empty());
    app.patch(&path, serde_json::json!({"first_name": "Augusta"}))
        .await;
    let c = app
        .request(Method::GET, &path, None, &[("if-none-match", "\"1\"")])
        .await;
    assert_eq!(c.status, StatusCode::OK);
    assert_eq!(c.header("etag"), Some("\"2\""));
    assert_eq!(c.body["first_name"], "Augusta");

    let ctx_path = format!("/v1/leads/{}/context", w.lead_id());
    let ctx = app.get(&ctx_path).await;
    let tag = ctx.header("etag").unwrap().to_owned();
    let again = app
        .request(Method::GET, &ctx_path, None, &[("if-none-match", &tag)])
        .await;
    assert_eq!(
        again.status,
        StatusCode::NOT_MODIFIED,
        "composite answers have validators too"
    );
}

#[tokio::test]
async fn every_spelling_of_a_phone_is_one_key() {
    let app = spawn_app().await;
    app.create_org("+15551234567").await;
    let spellings = [
        "%2B15551234567",
        "%2B1%20(555)%20123-4567",
        "(555)%20123-4567",
        "555.123.4567",
    ];
    for (i, s) in spellings.iter().enumerate() {
        let a = app.get(&format!("/v1/organizations/by-phone/{s}")).await;
        assert_eq!(a.status, StatusCode::OK, "{s}: {}", a.text);
        assert_eq!(a.cache(), if i == 0 { "MISS" } else { "HIT-L1" }, "{s}");
    }
}

#[tokio::test]
async fn call_initiation_assembles_all_parts_from_cache() {
    let app = spawn_app().await;
    let w = world(&app).await;
    let path = "/v1/calls/initiation?caller=%2B15550002000&callee=%2B15550001000&channel=voice";
    let a = app.get(path).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.cache(), "MISS");
    assert_eq!(a.body["organization"]["id"], w.org["id"]);
    assert_eq!(a.body["lead"]["id"], w.lead["id"]);
    assert_eq!(a.body["context"]["lead"]["id"], w.lead["id"]);
    assert!(a.body["greeting"]["greeting"]
        .as_str()
        .unwrap()
        .contains("Ada"));
    let b = app.get(path).await;
    assert_eq!(b.cache(), "HIT-L1");
    assert_eq!(b.text, a.text);
    assert_eq!(
        b.header("x-cache-detail"),
        Some("organization=HIT-L1, lead=HIT-L1, context=HIT-L1, greeting=HIT-L1")
    );

    // The parts are the same cache entries the single lookups use.
    let ctx = app.get(&format!("/v1/leads/{}/context", w.lead_id())).await;
    assert_eq!(ctx.cache(), "HIT-L1");
    assert_eq!(ctx.body, a.body["context"]);

    // A plus sign left unencoded in the query arrives as a space: still the same number.
    let c = app
        .get("/v1/calls/initiation?caller=+15550002000&callee=+15550001000")
        .await;
    assert_eq!(c.status, StatusCode::OK, "{}", c.text);
    assert_eq!(c.body["lead"]["id"], w.lead["id"]);

    let unknown = app
        .get("/v1/calls/initiation?caller=%2B15557770000&callee=%2B15550001000")
        .await;
    assert_eq!(unknown.status, StatusCode::OK);
    assert!(unknown.body["lead"].is_null() && unknown.body["context"].is_null());
    assert!(
        unknown.body["greeting"]["greeting"]
            .as_str()
            .unwrap()
            .contains("there"),
        "{}",
        unknown.text
    );

    let no_org = app
        .get("/v1/calls/initiation?caller=%2B15550002000&callee=%2B15557770001")
        .await;
    assert_eq!(no_org.status, StatusCode::NOT_FOUND);
    assert_eq!(no_org.error_code(), "organization_not_found");
}

#[tokio::test]
async fn cache_control_no_cache_bypasses_the_tiers() {
    let app = spawn_app().await;
    let w = world(&app).await;
    let path = format!("/v1/leads/{}", w.lead_id());
    app.get(&path).await;
    let a = app
        .request(Method::GET, &path, None, &[("cache-control", "no-cache")])
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.cache(), "BYPASS");
    assert_eq!(app.get(&path).await.cache(), "HIT-L1");
}

#[tokio::test]
async fn every_answer_carries_a_request_id_new_or_the_callers() {
    let app = spawn_app().await;
    let a = app.get("/healthz").await;
    let b = app
        .get("/v1/leads/00000000-0000-4000-8000-000000000001")
        .await;
    let (a, b) = (a.header("x-request-id"), b.header("x-request-id"));
    assert!(a.is_some_and(|id| !id.is_empty()), "{a:?}");
    assert!(b.is_some_and(|id| !id.is_empty()), "{b:?}");
    assert_ne!(a, b, "each request gets its own");
    let mine = app
        .request(
            reqwest::Method::GET,
            "/healthz",
            None,
            &[("x-request-id", "trace-me-7")],
        )
        .await;
    assert_eq!(mine.header("x-request-id"), Some("trace-me-7"));
}
