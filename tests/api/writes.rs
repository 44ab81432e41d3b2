//! Writes drop exactly what DESIGN §3 says, in both tiers, before they answer.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::lookups::{world, World};
use crate::spawn::{spawn_app, TestApp};

const CHANNELS: [&str; 5] = ["voice", "sms", "email", "chat", "whatsapp"];

/// Reads every kind of entry once so both tiers hold it; returns the cache keys.
async fn warm(app: &TestApp, w: &World) -> Vec<(String, String)> {
    let (o, l) = (w.org_id(), w.lead_id());
    let mut pairs = vec![
        (format!("/v1/organizations/{o}"), format!("org:id:{o}")),
        (
            "/v1/organizations/by-phone/%2B15550001000".into(),
            "org:phone:+15550001000".into(),
        ),
        (format!("/v1/leads/{l}"), format!("lead:id:{l}")),
        (
            format!("/v1/leads/by-phone/%2B15550002000?organization_id={o}"),
            format!("lead:phone:+15550002000:{o}"),
        ),
        (format!("/v1/leads/{l}/context"), format!("context:{l}")),
        (format!("/v1/leads/{l}/summary"), format!("summary:{l}")),
        (
            format!("/v1/leads/{l}/history?limit=1&offset=0"),
            format!("history:{l}:1:0"),
        ),
        (
            format!("/v1/leads/{l}/history?limit=5&offset=1"),
            format!("history:{l}:5:1"),
        ),
    ];
    for c in CHANNELS {
        pairs.push((
            format!("/v1/leads/{l}/greeting?channel={c}"),
            format!("greeting:{l}:{c}"),
        ));
    }
    for (path, key) in &pairs {
        let a = app.get(path).await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.text);
        assert!(app.in_redis(key).await, "{key} filled in Redis");
    }
    pairs
}

/// Asserts which warmed entries are gone from Redis and from L1 (a read is a MISS), and which
/// are still served from L1.
async fn assert_dropped(app: &TestApp, pairs: &[(String, String)], dropped: impl Fn(&str) -> bool) {
    let mut report = Vec::new();
    for (_, key) in pairs {
        report.push((key.clone(), dropped(key), app.in_redis(key).await));
    }
    for (path, key) in pairs {
        let a = app.get(path).await;
        report.push((
            format!("{key} read"),
            dropped(key),
            !a.cache().starts_with("HIT") || a.status == StatusCode::NOT_FOUND,
        ));
    }
    for (what, should_drop, observed) in &report {
        if what.ends_with(" read") {
            assert_eq!(
                *observed,
                *should_drop,
                "{what}: expected {}",
                if *should_drop { "MISS" } else { "a hit" }
            );
        } else {
            assert_eq!(
                *observed,
                !*should_drop,
                "{what}: expected {} in Redis",
                if *should_drop { "absent" } else { "present" }
            );
        }
    }
}

fn lead_derived(key: &str, lead: &str) -> bool {
    key == format!("context:{lead}")
        || key == format!("summary:{lead}")
        || key.starts_with(&format!("greeting:{lead}:"))
        || key.starts_with(&format!("history:{lead}:"))
}

#[tokio::test]
async fn lead_phone_change_drops_both_phones_and_everything_derived() {
    let app = spawn_app().await;
    let w = world(&app).await;
    let (o, l) = (w.org_id().to_owned(), w.lead_id().to_owned());
    // A negative entry for the number the lead is about to take.
    let new_phone = format!("/v1/leads/by-phone/%2B15550002999?organization_id={o}");
    assert_eq!(app.get(&new_phone).await.status, StatusCode::NOT_FOUND);
    assert!(app.in_redis(&format!("lead:phone:+15550002999:{o}")).await);
    let pairs = warm(&app, &w).await;

    let a = app
        .patch(
            &format!("/v1/leads/{l}"),
            json!({"phone_number": "+1 555 000 2999", "first_name": "Augusta"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.version(), 2);
    assert!(
        !app.in_redis(&format!("lead:phone:+15550002999:{o}")).await,
        "the new phone's negative entry is dropped"
    );

    assert_dropped(&app, &pairs, |k| {
        k == format!("lead:id:{l}")
            || k == format!("lead:phone:+15550002000:{o}")
            || lead_derived(k, &l)
    })
    .await;

    let moved = app.get(&new_phone).await;
    assert_eq!(moved.status, StatusCode::OK);
    assert_eq!(moved.body["first_name"], "Augusta");
    let old = app
        .get(&format!(
            "/v1/leads/by-phone/%2B15550002000?organization_id={o}"
        ))
        .await;
    assert_eq!(old.status, StatusCode::NOT_FOUND);
    let g = app.get(&format!("/v1/leads/{l}/greeting")).await;
    assert!(g.body["greeting"].as_str().unwrap().contains("Augusta"));
}

#[tokio::test]
async fn a_conversation_drops_the_lead_derived_entries_only() {
    let app = spawn_app().await;
    let w = world(&app).await;
    let l = w.lead_id().to_owned();
    let pairs = warm(&app, &w).await;
    let conv = app.create_conversation(&l, "third call").await;
    assert_dropped(&app, &pairs, |k| lead_derived(k, &l)).await;
    let summary = app.get(&format!("/v1/leads/{l}/summary")).await;
    assert!(summary.body["summary"]
        .as_str()
        .unwrap()
        .starts_with("third call"));
    assert_eq!(summary.body["conversation_count"], 3);

    let pairs = warm(&app, &w).await;
    let id = conv["id"].as_str().unwrap();
    let a = app
        .patch(
            &format!("/v1/conversations/{id}"),
            json!({"summary": "third call, rescheduled"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.version(), 2);
    assert_dropped(&app, &pairs, |k| lead_derived(k, &l)).await;
    let ctx = app.get(&format!("/v1/leads/{l}/context")).await;
    assert_eq!(
        ctx.body["recent_conversations"][0]["summary"],
        "third call, rescheduled"
    );
}

#[tokio::test]
async fn an_organization_update_drops_its_keys_and_its_leads_context_and_greetings() {
    let app = spawn_app().await;
    let w = world(&app).await;
    let (o, l) = (w.org_id().to_owned(), w.lead_id().to_owned());
    let pairs = warm(&app, &w).await;
    let a = app
        .patch(&format!("/v1/organizations/{o}"), json!({"name": "Renamed Co", "phone_number": "+15550001999", "greeting_template": "Hello {first_name} from {org_name}"}))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_dropped(&app, &pairs, |k| {
        k == format!("org:id:{o}")
            || k == "org:phone:+15550001000"
            || k == format!("context:{l}")
            || k.starts_with(&format!("greeting:{l}:"))
    })
    .await;
    let g = app.get(&format!("/v1/leads/{l}/greeting")).await;
    assert_eq!(g.body["greeting"], "Hello Ada from Renamed Co");
    let ctx = app.get(&format!("/v1/leads/{l}/context")).await;
    assert_eq!(ctx.body["organization"]["name"], "Renamed Co");
    assert_eq!(
        app.get("/v1/organizations/by-phone/%2B15550001000")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/v1/organizations/by-phone/%2B15550001999")
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn deleting_a_lead_drops_everything_about_it() {
    let app = spawn_app().await;
    let w = world(&app).await;
    let (o, l) = (w.org_id().to_owned(), w.lead_id().to_owned());
    let pairs = warm(&app, &w).await;
    let a = app.delete(&format!("/v1/leads/{l}")).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_dropped(&app, &pairs, |k| {
        k == format!("lead:id:{l}")
            || k == format!("lead:phone:+15550002000:{o}")
            || lead_derived(k, &l)
    })
    .await;
    assert_eq!(
        app.get(&format!("/v1/leads/{l}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get(&format!("/v1/leads/{l}/context")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete(&format!("/v1/leads/{l}")).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn creating_a_row_drops_the_negative_entry_for_it() {
    let app = spawn_app().await;
    assert_eq!(
        app.get("/v1/organizations/by-phone/%2B15550003000")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/v1/organizations/by-phone/%2B15550003000")
            .await
            .cache(),
        "HIT-L1"
    );
    let org = app.create_org("+15550003000").await;
    let a = app.get("/v1/organizations/by-phone/%2B15550003000").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.cache(), "MISS");

    let o = org["id"].as_str().unwrap();
    let path = format!("/v1/leads/by-phone/%2B15550004000?organization_id={o}");
    assert_eq!(app.get(&path).await.status, StatusCode::NOT_FOUND);
    app.create_lead(o, "+15550004000", "Grace").await;
    let b = app.get(&path).await;
    assert_eq!(b.status, StatusCode::OK);
    assert_eq!(b.body["first_name"], "Grace");
}

#[tokio::test]
async fn conditional_and_conflicting_writes() {
    let app = spawn_app().await;
    let w = world(&app).await;
    let (o, l) = (w.org_id().to_owned(), w.lead_id().to_owned());
    let path = format!("/v1/leads/{l}");

    let stale = app
        .request(
            Method::PATCH,
            &path,
            Some(json!({"status": "lost"})),
            &[("if-match", "\"9\"")],
        )
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.error_code(), "version_mismatch");
    assert_eq!(
        app.get(&path).await.body["status"],
        "new",
        "a failed precondition changes nothing"
    );

    let ok = app
        .request(
            Method::PATCH,
            &path,
            Some(json!({"status": "qualified"})),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.header("etag"), Some("\"2\""));

    let dup = app
        .post(
            "/v1/leads",
            json!({"organization_id": o, "phone_number": "(555) 000-2000"}),
        )
        .await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    assert_eq!(dup.error_code(), "conflict");
    let dup_org = app
        .post(
            "/v1/organizations",
            json!({"name": "Again", "phone_number": "+15550001000"}),
        )
        .await;
    assert_eq!(dup_org.status, StatusCode::CONFLICT);

    let other = app.create_lead(&o, "+15550002001", "Bob").await;
    let clash = app
        .patch(
            &format!("/v1/leads/{}", other["id"].as_str().unwrap()),
            json!({"phone_number": "+15550002000"}),
        )
        .await;
    assert_eq!(clash.status, StatusCode::CONFLICT);

    let nobody = uuid::Uuid::new_v4();
    assert_eq!(
        app.patch(&format!("/v1/leads/{nobody}"), json!({"status": "lost"}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.patch(&format!("/v1/organizations/{nobody}"), json!({"name": "x"}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.patch(
            &format!("/v1/conversations/{nobody}"),
            json!({"summary": "x"})
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    let orphan = app
        .post(
            &format!("/v1/leads/{nobody}/conversations"),
            json!({"channel": "sms", "direction": "inbound"}),
        )
        .await;
    assert_eq!(orphan.status, StatusCode::NOT_FOUND);
    let unknown_org = app
        .post(
            "/v1/leads",
            json!({"organization_id": nobody.to_string(), "phone_number": "+15550002002"}),
        )
        .await;
    assert_eq!(unknown_org.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn patch_null_clears_nullable_fields_only() {
    let app = spawn_app().await;
    let w = world(&app).await;
    let path = format!("/v1/leads/{}", w.lead_id());
    let a = app
        .patch(
            &path,
            json!({"first_name": null, "email": "ada@example.com"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(a.body["first_name"].is_null());
    assert_eq!(a.body["email"], "ada@example.com");
    assert_eq!(
        a.body["phone_number"], "+15550002000",
        "absent fields are untouched"
    );
    let g = app
        .get(&format!("/v1/leads/{}/greeting", w.lead_id()))
        .await;
    assert!(g.body["greeting"].as_str().unwrap().contains("there"));
    let b = app.patch(&path, json!({"status": null})).await;
    assert_eq!(b.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        app.patch(&path, json!({"phone_number": null})).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
}
