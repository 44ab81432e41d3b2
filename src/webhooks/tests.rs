//! Tables of the platforms' real request bodies and the answers they must get.

use serde_json::{json, Value};

use super::*;
use crate::domain::LeadId;

fn org(settings: Value) -> Organization {
    serde_json::from_value(json!({
        "id": "6f1c1c1e-8a43-4c43-9a8e-1b2b3c4d5e6f",
        "name": "Acme Dental",
        "phone_number": "+15550100001",
        "timezone": "America/New_York",
        "greeting_template": "Hi {first_name}!",
        "settings": settings,
        "version": 1,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
    }))
    .unwrap()
}

fn known(settings: Value) -> Known {
    let org = org(settings);
    let mut variables = Map::new();
    variables.insert("first_name".into(), "Ada".into());
    variables.insert("plan".into(), "premium".into());
    finish_variables(&mut variables, "Good morning, Ada!", "+15550200001", true);
    Known {
        outcome: WebhookOutcome::Full,
        voice: Voice::of(&org).into(),
        org: Some(org.into()),
        lead_id: Some(
            "0b8e8a0e-6a5e-4a43-9a8e-1b2b3c4d5e6f"
                .parse::<LeadId>()
                .unwrap(),
        ),
        variables,
        greeting: "Good morning, Ada!".into(),
    }
}

fn body(r: &Rendered) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

#[test]
fn elevenlabs_parses_its_initiation_request() {
    let real = br#"{"caller_id":"+15550200001","agent_id":"agent_01jx","called_number":"+15550100001","call_sid":"CA5f1b7e1"}"#;
    assert_eq!(
        ElevenLabs::parse(real).unwrap(),
        CallStart {
            caller: "+15550200001".into(),
            callee: "+15550100001".into(),
            call_id: Some("CA5f1b7e1".into()),
            agent_id: Some("agent_01jx".into()),
        }
    );
    type Check = fn(&Refusal) -> bool;
    let cases: &[(&[u8], Check)] = &[
        (b"{", |r| matches!(r, Refusal::Malformed(_))),
        (b"[1]", |r| matches!(r, Refusal::Invalid(_))),
        (
            br#"{"called_number":"+15550100001"}"#,
            |r| matches!(r, Refusal::Invalid(m) if m.contains("caller_id")),
        ),
        (
            br#"{"caller_id":"+1555","called_number":7}"#,
            |r| matches!(r, Refusal::Invalid(m) if m.contains("called_number")),
        ),
    ];
    for (input, want) in cases {
        let got = ElevenLabs::parse(input).unwrap_err();
        assert!(want(&got), "{}: {got:?}", String::from_utf8_lossy(input));
    }
}

#[test]
fn elevenlabs_sends_only_enabled_overrides_and_every_default() {
    let settings = json!({"voice": {"elevenlabs": {
        "overrides": ["first_message", "language"],
        "language": "es", "prompt": "Be brief.", "voice_id": "v1",
        "dynamic_variable_defaults": {"plan": "none", "vip": false, "score": 3, "note": null,
            "tags": ["a"], "system__time": "x"}
    }}});
    let got = body(&ElevenLabs::render(&known(settings)));
    assert_eq!(got["type"], "conversation_initiation_client_data");
    assert_eq!(
        got["conversation_config_override"],
        json!({"agent": {"first_message": "Good morning, Ada!", "language": "es"}})
    );
    let vars = &got["dynamic_variables"];
    assert_eq!(vars["plan"], "premium", "what is known wins over a default");
    assert_eq!(vars["vip"], false);
    assert_eq!(vars["score"], 3);
    assert_eq!(vars["note"], Value::Null);
    assert_eq!(vars["tags"], "[\"a\"]");
    assert!(vars.get("system__time").is_none());
    assert_eq!(vars["known_caller"], "true");

    let all = json!({"voice": {"elevenlabs": {
        "overrides": ["first_message", "language", "prompt", "voice_id"],
        "language": "en", "prompt": "Be brief.", "voice_id": "v1"}}});
    let got = body(&ElevenLabs::render(&known(all)));
    assert_eq!(
        got["conversation_config_override"],
        json!({"agent": {"first_message": "Good morning, Ada!", "language": "en",
            "prompt": {"prompt": "Be brief."}}, "tts": {"voice_id": "v1"}})
    );
    // Nothing enabled: no override object at all (ElevenLabs rejects overrides it did not allow).
    let got = body(&ElevenLabs::render(&known(json!({}))));
    assert!(got.get("conversation_config_override").is_none());
    // A settings.voice of the wrong shape is ignored, not a failed call.
    let got = body(&ElevenLabs::render(&known(
        json!({"voice": {"elevenlabs": {"overrides": "all"}}}),
    )));
    assert!(got.get("conversation_config_override").is_none());
    // Nothing known: still a valid payload.
    let got = body(&ElevenLabs::render(&Known::fallback("+15550200001")));
    assert_eq!(got["type"], "conversation_initiation_client_data");
    assert_eq!(got["dynamic_variables"]["greeting"], GENERIC_GREETING);
}

#[test]
fn elevenlabs_secret_compares_exactly() {
    assert!(ElevenLabs::verify(Some(b"s3cret-value"), "s3cret-value"));
    assert!(!ElevenLabs::verify(Some(b"s3cret-valuE"), "s3cret-value"));
    assert!(!ElevenLabs::verify(Some(b"s3cret"), "s3cret-value"));
    assert!(!ElevenLabs::verify(None, "s3cret-value"));
}

#[test]
fn vapi_parses_server_messages() {
    let real = br#"{"message":{"timestamp":1733000000000,"type":"assistant-request",
        "call":{"id":"b1f4-call","orgId":"o1","type":"inboundPhoneCall","phoneNumberId":"p1",
                "customer":{"number":"+15550200001"}},
        "phoneNumber":{"id":"p1","number":"+15550100001","provider":"twilio"},
        "customer":{"number":"+15550200001"}}}"#;
    assert_eq!(
        Vapi::parse(real).unwrap(),
        VapiMessage::CallStart(CallStart {
            caller: "+15550200001".into(),
            callee: "+15550100001".into(),
            call_id: Some("b1f4-call".into()),
            agent_id: None,
        })
    );
    // The caller only on the call object.
    let nested = br#"{"message":{"type":"assistant-request","call":{"id":"c2","customer":{"number":"+15550200002"}},"phoneNumber":{"number":"+15550100001"}}}"#;
    match Vapi::parse(nested).unwrap() {
        VapiMessage::CallStart(c) => assert_eq!(c.caller, "+15550200002"),
        other => panic!("{other:?}"),
    }
    let status =
        br#"{"message":{"type":"status-update","status":"in-progress","call":{"id":"c2"}}}"#;
    assert_eq!(
        Vapi::parse(status).unwrap(),
        VapiMessage::Other("status-update".into())
    );
    assert!(matches!(Vapi::parse(b"{}"), Err(Refusal::Invalid(_))));
    assert!(matches!(
        Vapi::parse(br#"{"message":{}}"#),
        Err(Refusal::Invalid(_))
    ));
    assert!(matches!(Vapi::parse(b"nope"), Err(Refusal::Malformed(_))));
}

#[test]
fn vapi_accepts_each_configured_credential() {
    let body = br#"{"message":{"type":"assistant-request"}}"#;
    let now = 1_733_000_000_000;
    let mac = hex::encode(sign::hmac_sha256(b"hk", &[b"1733000000000", b".", body]));
    let auth = |header: Option<&'static [u8]>,
                bearer: Option<&'static [u8]>,
                sig: Option<String>,
                ts: &'static str| {
        let sig: Option<&'static str> = sig.map(|s| &*Box::leak(s.into_boxed_str()));
        VapiAuth {
            secret_header: header,
            bearer,
            signature: sig,
            timestamp: Some(ts),
            secret: "sekret",
            hmac_secret: "hk",
        }
    };
    assert!(Vapi::verify(
        &auth(Some(b"sekret"), None, None, ""),
        body,
        now
    ));
    assert!(Vapi::verify(
        &auth(None, Some(b"sekret"), None, ""),
        body,
        now
    ));
    assert!(!Vapi::verify(
        &auth(Some(b"sekreT"), None, None, ""),
        body,
        now
    ));
    assert!(Vapi::verify(
        &auth(None, None, Some(mac.clone()), "1733000000000"),
        body,
        now
    ));
    // Seconds work too; a stale or altered message does not.
    let mac_s = hex::encode(sign::hmac_sha256(b"hk", &[b"1733000000", b".", body]));
    assert!(Vapi::verify(
        &auth(None, None, Some(mac_s), "1733000000"),
        body,
        now
    ));
    assert!(!Vapi::verify(
        &auth(None, None, Some(mac.clone()), "1733000000000"),
        body,
        now + 600_000
    ));
    assert!(!Vapi::verify(
        &auth(None, None, Some(mac), "1733000000000"),
        b"{}",
        now
    ));
    assert!(!Vapi::verify(&auth(None, None, None, ""), body, now));
}

#[test]
fn vapi_answers_the_assistant_or_its_error_form() {
    let settings = json!({"voice": {"vapi": {"assistant_id": "asst-acme"}}});
    let got = body(&Vapi::render(
        &known(settings),
        "asst-default",
        "Not in service.",
    ));
    assert_eq!(got["assistantId"], "asst-acme");
    assert_eq!(
        got["assistantOverrides"]["firstMessage"],
        "Good morning, Ada!"
    );
    assert_eq!(
        got["assistantOverrides"]["variableValues"]["plan"],
        "premium"
    );
    let got = body(&Vapi::render(
        &known(json!({})),
        "asst-default",
        "Not in service.",
    ));
    assert_eq!(got["assistantId"], "asst-default");
    let got = body(&Vapi::render(
        &Known::fallback("+1"),
        "asst-default",
        "Not in service.",
    ));
    assert_eq!(got["assistantId"], "asst-default");
    assert_eq!(got["assistantOverrides"]["firstMessage"], GENERIC_GREETING);
    for k in [Known::unknown_number("+1"), Known::fallback("+1")] {
        let got = body(&Vapi::render(&k, "", "Not in service."));
        assert_eq!(got, json!({"error": "Not in service."}));
    }
}

#[test]
fn retell_parses_call_inbound() {
    let real = br#"{"event":"call_inbound","call_inbound":{"agent_id":"agent_12345","agent_version":1,"from_number":"+15550200001","to_number":"+15550100001"}}"#;
    assert_eq!(
        Retell::parse(real).unwrap().unwrap(),
        CallStart {
            caller: "+15550200001".into(),
            callee: "+15550100001".into(),
            call_id: None,
            agent_id: Some("agent_12345".into()),
        }
    );
    let other = br#"{"event":"call_started","call":{"call_id":"x"}}"#;
    assert_eq!(Retell::parse(other).unwrap().unwrap_err(), "call_started");
    assert!(matches!(
        Retell::parse(br#"{"event":"call_inbound"}"#),
        Err(Refusal::Invalid(_))
    ));
    assert!(matches!(
        Retell::parse(br#"{"event":"call_inbound","call_inbound":{"to_number":"+1"}}"#),
        Err(Refusal::Invalid(m)) if m.contains("from_number")
    ));
}

#[test]
fn retell_signature_is_checked_with_its_time() {
    let body = br#"{"event":"call_inbound"}"#;
    let now = 1_733_000_000_000i64;
    let sign_at = |t: i64| {
        let ts = t.to_string();
        format!(
            "v={ts},d={}",
            hex::encode(sign::hmac_sha256(b"key_1", &[body, ts.as_bytes()]))
        )
    };
    assert_eq!(
        Retell::verify(Some(&sign_at(now)), body, "key_1", now),
        Ok(())
    );
    assert_eq!(
        Retell::verify(Some(&sign_at(now - 60_000)), body, "key_1", now),
        Ok(())
    );
    assert_eq!(
        Retell::verify(Some(&sign_at(now - 301_000)), body, "key_1", now),
        Err(RetellRefusal::Stale)
    );
    assert_eq!(
        Retell::verify(Some(&sign_at(now)), body, "key_2", now),
        Err(RetellRefusal::Wrong)
    );
    assert_eq!(
        Retell::verify(Some(&sign_at(now)), b"{}", "key_1", now),
        Err(RetellRefusal::Wrong)
    );
    for junk in ["", "v=1", "d=ab", "v=x,d=ab", "garbage"] {
        assert_eq!(
            Retell::verify(Some(junk), body, "key_1", now),
            Err(RetellRefusal::Wrong),
            "{junk}"
        );
    }
    assert_eq!(
        Retell::verify(None, body, "key_1", now),
        Err(RetellRefusal::Missing)
    );
}

#[test]
fn retell_answers_strings_only() {
    let mut k = known(json!({"voice": {"retell": {"override_agent_id": "agent_acme"}}}));
    k.variables.insert("count".into(), json!(3));
    k.variables.insert("gone".into(), Value::Null);
    let got = body(&Retell::render(&k, Some("call:abc")));
    let inbound = &got["call_inbound"];
    assert_eq!(inbound["override_agent_id"], "agent_acme");
    assert!(inbound["dynamic_variables"]
        .as_object()
        .unwrap()
        .values()
        .all(Value::is_string));
    assert_eq!(inbound["dynamic_variables"]["count"], "3");
    assert_eq!(inbound["dynamic_variables"]["gone"], "");
    assert_eq!(
        inbound["metadata"]["organization_id"],
        "6f1c1c1e-8a43-4c43-9a8e-1b2b3c4d5e6f"
    );
    assert_eq!(
        inbound["metadata"]["lead_id"],
        "0b8e8a0e-6a5e-4a43-9a8e-1b2b3c4d5e6f"
    );
    assert_eq!(inbound["metadata"]["session_id"], "call:abc");
    let got = body(&Retell::render(&known(json!({})), None));
    assert!(got["call_inbound"].get("override_agent_id").is_none());
    let got = body(&Retell::render(&Known::unknown_number("+1"), None));
    assert_eq!(got, json!({"call_inbound": {"dynamic_variables": {}}}));
}

#[test]
fn twilio_signature_matches_twilios_documented_example() {
    // Twilio's documentation example (Security > validating requests).
    let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
    let params: Vec<(String, String)> = [
        ("CallSid", "CA1234567890ABCDE"),
        ("Caller", "+12349013030"),
        ("Digits", "1234"),
        ("From", "+12349013030"),
        ("To", "+18005551212"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let token = "12345";
    assert_eq!(
        Twilio::sign(url, &params, token),
        "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    );
    assert!(Twilio::verify(
        Some("0/KCTR6DLpKmkAf8muzZqo1nDgQ="),
        url,
        &params,
        token
    ));
    assert!(!Twilio::verify(
        Some("0/KCTR6DLpKmkAf8muzZqo1nDgR="),
        url,
        &params,
        token
    ));
    assert!(!Twilio::verify(
        Some("0/KCTR6DLpKmkAf8muzZqo1nDgQ="),
        url,
        &params[1..],
        token
    ));
    assert!(!Twilio::verify(Some("not base64!"), url, &params, token));
    assert!(!Twilio::verify(None, url, &params, token));
}

#[test]
fn twilio_parses_its_form() {
    let form = b"AccountSid=AC1&ApiVersion=2010-04-01&CallSid=CA9&CallStatus=ringing&Direction=inbound&From=%2B15550200001&To=%2B15550100001";
    let params = Twilio::params(form);
    assert_eq!(
        Twilio::parse(&params).unwrap(),
        CallStart {
            caller: "+15550200001".into(),
            callee: "+15550100001".into(),
            call_id: Some("CA9".into()),
            agent_id: None,
        }
    );
    let anonymous = Twilio::parse(&Twilio::params(
        b"CallSid=CA1&From=anonymous&To=%2B15550100001",
    ))
    .unwrap();
    assert_eq!(anonymous.caller, "anonymous");
    assert!(matches!(
        Twilio::parse(&Twilio::params(b"From=%2B1&To=%2B2")),
        Err(Refusal::Invalid(m)) if m.contains("CallSid")
    ));
}

#[test]
fn twilio_fills_its_template_escaped() {
    let mut k = known(json!({"voice": {"twilio": {"twiml":
        "<Response><Say voice=\"alice\">{greeting}</Say><Dial>{org_phone}</Dial>{unknown} {plan}</Response>"}}}));
    k.greeting = "Hi <Ada> & \"friends\"".into();
    k.variables
        .insert("greeting".into(), k.greeting.clone().into());
    let got = String::from_utf8(Twilio::render(&k, "bye").body.to_vec()).unwrap();
    assert_eq!(
        got,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Say voice=\"alice\">Hi &lt;Ada&gt; &amp; &quot;friends&quot;</Say><Dial>{org_phone}</Dial>{unknown} premium</Response>"
    );
    let got = String::from_utf8(Twilio::render(&known(json!({})), "bye").body.to_vec()).unwrap();
    assert_eq!(
        got,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Say>Good morning, Ada!</Say></Response>"
    );
    let got = String::from_utf8(
        Twilio::render(&Known::unknown_number("+1"), "Not & in service")
            .body
            .to_vec(),
    )
    .unwrap();
    assert_eq!(
        got,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Say>Not &amp; in service</Say><Hangup/></Response>"
    );
}
