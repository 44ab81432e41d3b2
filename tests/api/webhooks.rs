//! The voice platforms' call-start webhooks over real HTTP, Postgres and Redis: each platform's
//! known caller, unknown caller and unknown number; signatures (bad, stale, missing); malformed
//! bodies; the call's session; retries; and answers within the deadline when Postgres is slow or
//! cut.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sidecache::config::{Secret, SecretUrl, Settings};
use sidecache::webhooks::Twilio;

use crate::client::Answer;
use crate::fixtures::{database_name, eventually, postgres_addr};
use crate::relay::Relay;
use crate::spawn::{spawn_with_settings, test_settings, TestApp};

const EL_SECRET: &str = "el-secret-0123456789";
const VAPI_SECRET: &str = "vapi-secret-0123456789";
const VAPI_HMAC: &str = "vapi-hmac-0123456789";
const RETELL_KEY: &str = "key_retell_0123456789";
const TWILIO_TOKEN: &str = "twilio-token-0123456789";
const PUBLIC_URL: &str = "https://voice.example.com";

fn with_webhooks(s: &mut Settings) {
    let w = &mut s.webhooks;
    w.elevenlabs.secret = Secret::new(EL_SECRET);
    w.vapi.secret = Secret::new(VAPI_SECRET);
    w.vapi.hmac_secret = Secret::new(VAPI_HMAC);
    w.vapi.default_assistant_id = "asst-default".into();
    w.retell.api_key = Secret::new(RETELL_KEY);
    w.twilio.auth_token = Secret::new(TWILIO_TOKEN);
    w.twilio.public_url = PUBLIC_URL.into();
}

async fn app_with_webhooks() -> TestApp {
    let mut s = test_settings();
    with_webhooks(&mut s);
    spawn_with_settings(s).await
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn hmac_hex(key: &str, parts: &[&[u8]]) -> String {
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    for p in parts {
        m.update(p);
    }
    hex::encode(m.finalize().into_bytes())
}

/// An organization with every platform's settings, and its lead Ada.
struct World {
    org: String,
    org_phone: String,
    lead: String,
    lead_phone: String,
}

async fn world(app: &TestApp) -> World {
    let n = rand::random::<u32>() % 90_000 + 10_000;
    let (org_phone, lead_phone) = (format!("+1555013{n:05}"), format!("+1555023{n:05}"));
    let org = app
        .post(
            "/v1/organizations",
            json!({"name": "Acme Dental", "phone_number": org_phone, "timezone": "America/New_York",
                "greeting_template": "Hello {first_name}, this is {org_name}.",
                "settings": {"voice": {
                    "elevenlabs": {"overrides": ["first_message"], "dynamic_variable_defaults": {"plan": "none", "vip": false}},
                    "vapi": {"assistant_id": "asst-acme"},
                    "retell": {"override_agent_id": "agent_acme"},
                    "twilio": {"twiml": "<Response><Say voice=\"alice\">{greeting}</Say></Response>"}}}}),
        )
        .await;
    assert_eq!(org.status, StatusCode::CREATED, "{}", org.text);
    let org = org.body["id"].as_str().unwrap().to_owned();
    let lead = app.create_lead(&org, &lead_phone, "Ada").await;
    World {
        org,
        org_phone,
        lead: lead["id"].as_str().unwrap().to_owned(),
        lead_phone,
    }
}

impl TestApp {
    async fn raw_post(&self, path: &str, body: String, headers: &[(&str, String)]) -> Answer {
        let mut req = self.client.post(format!("{}{path}", self.addr)).body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        Self::answer(req.send().await.unwrap()).await
    }

    async fn elevenlabs(&self, caller: &str, callee: &str, call: &str) -> Answer {
        let body = json!({"caller_id": caller, "agent_id": "agent_x", "called_number": callee, "call_sid": call});
        self.raw_post(
            "/v1/webhooks/elevenlabs",
            body.to_string(),
            &[
                ("x-sidecache-secret", EL_SECRET.into()),
                ("content-type", "application/json".into()),
            ],
        )
        .await
    }

    async fn vapi(&self, caller: &str, callee: &str, call: &str) -> Answer {
        let body = json!({"message": {"type": "assistant-request", "timestamp": 1.733e12,
            "call": {"id": call, "customer": {"number": caller}},
            "customer": {"number": caller}, "phoneNumber": {"number": callee}}});
        self.raw_post(
            "/v1/webhooks/vapi",
            body.to_string(),
            &[("x-vapi-secret", VAPI_SECRET.into())],
        )
        .await
    }

    async fn retell_signed(&self, body: &str, at: i64) -> Answer {
        let ts = at.to_string();
        let sig = format!(
            "v={ts},d={}",
            hmac_hex(RETELL_KEY, &[body.as_bytes(), ts.as_bytes()])
        );
        self.raw_post(
            "/v1/webhooks/retell",
            body.to_owned(),
            &[("x-retell-signature", sig)],
        )
        .await
    }

    async fn retell(&self, caller: &str, callee: &str) -> Answer {
        let body = json!({"event": "call_inbound", "call_inbound": {"agent_id": "agent_x", "from_number": caller, "to_number": callee}});
        self.retell_signed(&body.to_string(), now_ms()).await
    }

    async fn twilio(&self, caller: &str, callee: &str, call: &str) -> Answer {
        let params: Vec<(String, String)> = [
            ("AccountSid", "AC123"),
            ("CallSid", call),
            ("CallStatus", "ringing"),
            ("Direction", "inbound"),
            ("From", caller),
            ("To", callee),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let path = "/v1/webhooks/twilio/voice";
        let sig = Twilio::sign(&format!("{PUBLIC_URL}{path}"), &params, TWILIO_TOKEN);
        let form = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&params)
            .finish();
        self.raw_post(
            path,
            form,
            &[
                ("x-twilio-signature", sig),
                ("content-type", "application/x-www-form-urlencoded".into()),
            ],
        )
        .await
    }
}

fn call_id() -> String {
    format!("CA{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn each_platform_answers_known_and_unknown_callers_in_its_format() {
    let app = app_with_webhooks().await;
    let w = world(&app).await;
    let stranger = "+15550209999";
    let nobody = "+15550109999";

    // ElevenLabs: type, enabled override only, every default, what is known wins.
    let call = call_id();
    let a = app.elevenlabs(&w.lead_phone, &w.org_phone, &call).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body["type"], "conversation_initiation_client_data");
    let vars = &a.body["dynamic_variables"];
    assert_eq!(vars["first_name"], "Ada");
    assert_eq!(vars["org_name"], "Acme Dental");
    assert_eq!(vars["plan"], "none");
    assert_eq!(vars["vip"], false);
    assert_eq!(vars["known_caller"], "true");
    assert_eq!(
        a.body["conversation_config_override"],
        json!({"agent": {"first_message": "Hello Ada, this is Acme Dental."}})
    );
    let a = app.elevenlabs(stranger, &w.org_phone, &call_id()).await;
    assert_eq!(a.body["dynamic_variables"]["known_caller"], "false");
    assert_eq!(
        a.body["conversation_config_override"]["agent"]["first_message"],
        "Hello there, this is Acme Dental."
    );
    let a = app.elevenlabs(stranger, nobody, &call_id()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["type"], "conversation_initiation_client_data");

    // The call's session: open by the time the answer went (well within the deadline).
    let session = format!("/v1/sessions/call:{call}");
    let s = app.get(&session).await;
    assert_eq!(s.status, StatusCode::OK, "the call's session is opened");
    let s = s.body;
    assert_eq!(s["data"]["platform"], "elevenlabs");
    assert_eq!(s["data"]["organization_id"], w.org.as_str());
    assert_eq!(s["data"]["lead_id"], w.lead.as_str());
    assert_eq!(s["data"]["caller"], w.lead_phone.as_str());

    // Vapi.
    let a = app.vapi(&w.lead_phone, &w.org_phone, "vapi-call-1").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body["assistantId"], "asst-acme");
    assert_eq!(
        a.body["assistantOverrides"]["variableValues"]["first_name"],
        "Ada"
    );
    assert_eq!(
        a.body["assistantOverrides"]["firstMessage"],
        "Hello Ada, this is Acme Dental."
    );
    let a = app.vapi(&w.lead_phone, nobody, "vapi-call-2").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.body,
        json!({"error": "Sorry, this number is not in service. Goodbye."})
    );

    // Retell: strings only, the agent override, ids in metadata.
    let a = app.retell(&w.lead_phone, &w.org_phone).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let inbound = &a.body["call_inbound"];
    assert_eq!(inbound["override_agent_id"], "agent_acme");
    assert_eq!(inbound["metadata"]["lead_id"], w.lead.as_str());
    assert!(inbound["dynamic_variables"]
        .as_object()
        .unwrap()
        .values()
        .all(Value::is_string));
    let a = app.retell(stranger, nobody).await;
    assert_eq!(a.body, json!({"call_inbound": {"dynamic_variables": {}}}));

    // Twilio: the organization's template, escaped.
    let a = app.twilio(&w.lead_phone, &w.org_phone, &call_id()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(a.header("content-type").unwrap().starts_with("text/xml"));
    assert_eq!(
        a.text,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Say voice=\"alice\">Hello Ada, this is Acme Dental.</Say></Response>"
    );
    let a = app.twilio("anonymous", &w.org_phone, &call_id()).await;
    assert!(a.text.contains("Hello there"), "{}", a.text);
    let a = app.twilio(stranger, nobody, &call_id()).await;
    assert!(a.text.ends_with("<Hangup/></Response>"), "{}", a.text);

    let full = app
        .metric(
            "sidecache_webhook_answers_total",
            &[("platform", "elevenlabs"), ("outcome", "full")],
        )
        .await;
    assert_eq!(full, 2.0);
}

#[tokio::test]
async fn bad_signatures_and_bodies_are_refused_with_json() {
    let app = app_with_webhooks().await;
    let w = world(&app).await;
    let good = json!({"caller_id": w.lead_phone, "called_number": w.org_phone, "call_sid": "CA1"})
        .to_string();
    type Case<'a> = (&'a str, String, Vec<(&'a str, String)>, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        (
            "/v1/webhooks/elevenlabs",
            good.clone(),
            vec![],
            StatusCode::UNAUTHORIZED,
            "webhook_signature_invalid",
        ),
        (
            "/v1/webhooks/elevenlabs",
            good.clone(),
            vec![("x-sidecache-secret", "wrong".into())],
            StatusCode::UNAUTHORIZED,
            "webhook_signature_invalid",
        ),
        (
            "/v1/webhooks/elevenlabs",
            "{".into(),
            vec![("x-sidecache-secret", EL_SECRET.into())],
            StatusCode::BAD_REQUEST,
            "malformed_webhook",
        ),
        (
            "/v1/webhooks/elevenlabs",
            "{\"caller_id\":\"+1\"}".into(),
            vec![("x-sidecache-secret", EL_SECRET.into())],
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_webhook",
        ),
        (
            "/v1/webhooks/vapi",
            "{}".into(),
            vec![("authorization", "Bearer nope".into())],
            StatusCode::UNAUTHORIZED,
            "webhook_signature_invalid",
        ),
        (
            "/v1/webhooks/vapi",
            "[]".into(),
            vec![("authorization", format!("Bearer {VAPI_SECRET}"))],
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_webhook",
        ),
        (
            "/v1/webhooks/retell",
            "{}".into(),
            vec![("x-retell-signature", "v=1,d=00".into())],
            StatusCode::UNAUTHORIZED,
            "webhook_signature_invalid",
        ),
        (
            "/v1/webhooks/twilio/voice",
            "CallSid=CA1&From=%2B1&To=%2B2".into(),
            vec![("x-twilio-signature", "AAAA".into())],
            StatusCode::UNAUTHORIZED,
            "webhook_signature_invalid",
        ),
    ];
    for (path, body, headers, status, code) in cases {
        let a = app.raw_post(path, body.clone(), &headers).await;
        assert_eq!(a.status, status, "{path} {body}: {}", a.text);
        assert_eq!(a.error_code(), code, "{path} {body}");
    }
    // Retell: a correct signature made 10 minutes ago is stale.
    let body = json!({"event": "call_inbound", "call_inbound": {"from_number": w.lead_phone, "to_number": w.org_phone}}).to_string();
    let a = app.retell_signed(&body, now_ms() - 600_000).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.text.contains("5 minutes"), "{}", a.text);
    // Vapi's HMAC, fresh and stale.
    let ts = now_ms().to_string();
    let body = json!({"message": {"type": "status-update", "status": "ended"}}).to_string();
    let sig = hmac_hex(VAPI_HMAC, &[ts.as_bytes(), b".", body.as_bytes()]);
    let a = app
        .raw_post(
            "/v1/webhooks/vapi",
            body.clone(),
            &[("x-signature", sig.clone()), ("x-timestamp", ts)],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body, json!({}), "another message type is acknowledged");
    let old = (now_ms() - 600_000).to_string();
    let sig = hmac_hex(VAPI_HMAC, &[old.as_bytes(), b".", body.as_bytes()]);
    let a = app
        .raw_post(
            "/v1/webhooks/vapi",
            body,
            &[("x-signature", sig), ("x-timestamp", old)],
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let refused = app
        .metric(
            "sidecache_webhook_answers_total",
            &[("outcome", "auth_failed")],
        )
        .await;
    assert_eq!(refused, 7.0);
}

#[tokio::test]
async fn a_platform_without_a_secret_is_not_mounted() {
    let app = spawn_with_settings(test_settings()).await;
    let a = app
        .raw_post("/v1/webhooks/elevenlabs", "{}".into(), &[])
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.error_code(), "route_not_found");
}

#[tokio::test]
async fn a_retell_retry_gets_the_same_answer_and_one_session() {
    let app = app_with_webhooks().await;
    let w = world(&app).await;
    let first = app.retell(&w.lead_phone, &w.org_phone).await;
    let again = app.retell(&w.lead_phone, &w.org_phone).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.text, again.text, "a retry gets the same answer");
    let session = first.body["call_inbound"]["metadata"]["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(session.starts_with("call:retell-"));
    let listed = || async {
        let a = app.get("/v1/sessions?prefix=call:retell-").await;
        a.body["sessions"].as_array().map_or(0, Vec::len)
    };
    assert!(eventually(Duration::from_secs(5), || async { listed().await == 1 }).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        listed().await,
        1,
        "one session for the call start and its retry"
    );
    let s = app.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(s.body["data"]["platform"], "retell");

    // A retry that reaches another instance of the fleet gets the first answer too, and opens
    // nothing; so does a call start that two instances answer at once.
    let peer = app.spawn_peer(with_webhooks).await;
    let elsewhere = peer.retell(&w.lead_phone, &w.org_phone).await;
    assert_eq!(elsewhere.status, StatusCode::OK);
    assert_eq!(
        elsewhere.text, first.text,
        "the retry elsewhere gets the first answer"
    );
    let race = json!({"event": "call_inbound", "call_inbound": {
        "from_number": w.lead_phone, "to_number": w.org_phone, "agent_id": "agent_race"}})
    .to_string();
    let at = now_ms();
    let (x, y) = tokio::join!(app.retell_signed(&race, at), peer.retell_signed(&race, at));
    assert_eq!((x.status, y.status), (StatusCode::OK, StatusCode::OK));
    assert_eq!(x.text, y.text, "both instances answer the race alike");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        listed().await,
        2,
        "one session per call start, across the fleet"
    );
}

/// ElevenLabs' answer to a new call from the world's lead.
async fn known_caller_answer(app: &TestApp, w: &World) -> Value {
    app.elevenlabs(&w.lead_phone, &w.org_phone, &call_id())
        .await
        .body
}

#[tokio::test]
async fn an_answer_follows_every_change_to_what_it_was_built_from() {
    let app = app_with_webhooks().await;
    let w = world(&app).await;
    let a = known_caller_answer(&app, &w).await;
    assert_eq!(a["dynamic_variables"]["first_name"], "Ada");
    assert_eq!(a["dynamic_variables"]["plan"], "none");

    // Through sidecache: the organization's voice settings, then the lead's name.
    let p = app
        .patch(
            &format!("/v1/organizations/{}", w.org),
            json!({"settings": {"voice": {"elevenlabs": {"overrides": ["first_message", "language"],
                "language": "es", "dynamic_variable_defaults": {"plan": "gold"}}}}}),
        )
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    let a = known_caller_answer(&app, &w).await;
    assert_eq!(a["dynamic_variables"]["plan"], "gold");
    assert_eq!(a["conversation_config_override"]["agent"]["language"], "es");
    let p = app
        .patch(
            &format!("/v1/leads/{}", w.lead),
            json!({"first_name": "Grace"}),
        )
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    let a = known_caller_answer(&app, &w).await;
    assert_eq!(a["dynamic_variables"]["first_name"], "Grace");
    assert_eq!(
        a["conversation_config_override"]["agent"]["first_message"],
        "Hello Grace, this is Acme Dental."
    );

    // Plain SQL behind sidecache's back: the change feed drops the entries, and the next answer
    // is built from the new rows, not from a decoding of the old ones.
    sqlx::query("UPDATE organizations SET name = 'Acme Smiles' WHERE id = $1::uuid")
        .bind(&w.org)
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query("UPDATE leads SET first_name = 'Hedy' WHERE id = $1::uuid")
        .bind(&w.lead)
        .execute(&app.db)
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            let a = known_caller_answer(&app, &w).await;
            a["dynamic_variables"]["first_name"] == "Hedy"
                && a["dynamic_variables"]["org_name"] == "Acme Smiles"
                && a["conversation_config_override"]["agent"]["first_message"]
                    == "Hello Hedy, this is Acme Smiles."
        })
        .await,
        "the answer follows SQL written behind sidecache's back"
    );
}

#[tokio::test]
async fn slow_postgres_answers_the_organization_within_the_deadline() {
    let mut s = test_settings();
    with_webhooks(&mut s);
    s.webhooks.deadline = Duration::from_millis(300);
    let app = spawn_with_settings(s).await;
    let w = world(&app).await;
    // The caller's lead takes 3 s to load; the organization is quick.
    let org: sidecache::domain::OrgId = w.org.parse().unwrap();
    let phone = sidecache::domain::PhoneNumber::from_e164_unchecked(&w.lead_phone);
    let key = sidecache::cache::CacheKey::lead_by_phone(&phone, org);
    app.delay_fills_of(key.as_str().to_owned(), Duration::from_secs(3));
    let started = Instant::now();
    let a = app.vapi(&w.lead_phone, &w.org_phone, "slow-1").await;
    let took = started.elapsed();
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(
        took < Duration::from_secs(2),
        "answered before the lead loaded: {took:?}"
    );
    assert_eq!(a.body["assistantId"], "asst-acme");
    let vars = &a.body["assistantOverrides"]["variableValues"];
    assert_eq!(vars["org_name"], "Acme Dental");
    assert_eq!(vars["known_caller"], "false");
    let partial = app
        .metric(
            "sidecache_webhook_answers_total",
            &[("platform", "vapi"), ("outcome", "partial")],
        )
        .await;
    assert_eq!(partial, 1.0);
    // The lookup went on in the background: the next call start knows the caller.
    app.state.cache.set_fill_hook(None);
    let known = eventually(Duration::from_secs(6), || async {
        let a = app.vapi(&w.lead_phone, &w.org_phone, &call_id()).await;
        a.body["assistantOverrides"]["variableValues"]["known_caller"] == "true"
    })
    .await;
    assert!(known);
}

#[tokio::test]
async fn postgres_cut_with_nothing_cached_answers_a_valid_fallback() {
    let relay = Relay::start(postgres_addr()).await;
    let mut s = test_settings();
    s.postgres.url = SecretUrl::new(relay.postgres_url(&database_name(&s)));
    with_webhooks(&mut s);
    s.webhooks.deadline = Duration::from_millis(400);
    let app = spawn_with_settings(s).await;
    let w = world(&app).await;
    relay.cut();
    let started = Instant::now();
    let a = app
        .elevenlabs(&w.lead_phone, &w.org_phone, &call_id())
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body["type"], "conversation_initiation_client_data");
    assert_eq!(
        a.body["dynamic_variables"]["greeting"],
        sidecache::webhooks::GENERIC_GREETING
    );
    let a = app.vapi(&w.lead_phone, &w.org_phone, &call_id()).await;
    assert_eq!(a.body["assistantId"], "asst-default");
    let a = app.retell(&w.lead_phone, &w.org_phone).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body["call_inbound"]["dynamic_variables"].is_object());
    let a = app.twilio(&w.lead_phone, &w.org_phone, &call_id()).await;
    assert!(
        a.text.contains("<Say>Hello! Thanks for calling."),
        "{}",
        a.text
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let fallbacks = app
        .metric(
            "sidecache_webhook_answers_total",
            &[("outcome", "fallback")],
        )
        .await;
    assert_eq!(fallbacks, 4.0);
}
