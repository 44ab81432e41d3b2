//! TLS and ACLs for real: a `redis-server` of the test's own that speaks only TLS (a certificate
//! from a CA the test generates) and knows only one ACL user, and a throwaway Postgres cluster
//! with `ssl = on` that refuses plain connections. sidecache verifies each server's certificate
//! against the configured CA, and refuses a wrong CA, a wrong password, or no CA at all.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use sidecache::config::SecretUrl;

use sidecache::startup::{prepare_database, Application};
use sqlx::{Connection, PgConnection};

use crate::fixtures::eventually;
use crate::lookups::world;
use crate::pg_server::PgServer;
use crate::pki::Pki;
use crate::redis_server::RedisServer;
use crate::spawn::{spawn_app_with, test_settings, TestApp};

const USER: &str = "sidecache";
const PASSWORD: &str = "acl-password-0123";

async fn keys_in(server: &RedisServer, namespace: &str) -> Vec<String> {
    server.keys(&format!("{namespace}:*")).await
}

/// A lookup answered by Postgres, then by L2 once L1 is dropped.
async fn fills_and_hits_l2(app: &TestApp) {
    let w = world(app).await;
    let path = format!("/v1/leads/{}", w.lead_id());
    assert_eq!(app.get(&path).await.cache(), "MISS");
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.flush_l1();
            app.get(&path).await.cache() == "HIT-L2"
        })
        .await,
        "a lookup comes back from Redis over TLS"
    );
}

#[tokio::test]
async fn redis_over_tls_as_an_acl_user() {
    let pki = Pki::new("redis");
    let server = RedisServer::start_secure(&pki, USER, PASSWORD).await;
    let app = spawn_app_with(|s| {
        s.redis.url = SecretUrl::new(server.url());
        s.redis.tls_ca_file = Some(pki.ca_file.clone());
    })
    .await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.get("/readyz").await.body["status"] == "ready"
        })
        .await,
        "ready: {}",
        app.get("/readyz").await.text
    );
    let ready = app.get("/readyz").await;
    assert_eq!(ready.body["redis"]["connected"], true);
    assert_eq!(
        ready.body["redis"]["connect_error"],
        serde_json::Value::Null
    );

    fills_and_hits_l2(&app).await;
    // Sessions and rate limits go the same way.
    let put = app
        .request(
            reqwest::Method::PUT,
            "/v1/sessions/tls:1",
            Some(json!({"data": {"caller": "+15550200001"}})),
            &[],
        )
        .await;
    assert!(put.status.is_success(), "{}", put.text);
    assert_eq!(put.header("x-session-store"), Some("redis"));
    let keys = keys_in(&server, &app.namespace).await;
    assert!(
        keys.iter().any(|k| k.contains("tls:1")),
        "the session is in the TLS server: {keys:?}"
    );
    // The password is never shown.
    for page in ["/readyz", "/metrics"] {
        let shown = app.get(page).await.text;
        assert!(!shown.contains(PASSWORD), "{page}: {shown}");
    }
}

/// sidecache with `tweak` applied, against a server it must refuse: it serves from L1 and
/// Postgres, says why Redis is down, and writes nothing there.
async fn refused(
    server: &RedisServer,
    because: &str,
    tweak: impl FnOnce(&mut sidecache::config::Settings),
) {
    let app = spawn_app_with(|s| {
        s.redis.url = SecretUrl::new(server.url());
        s.redis.connect_timeout = Duration::from_millis(300);
        // A loaded CI machine opens the first Postgres connection slowly; this test is about
        // Redis refusing, not about the pool's budget.
        s.postgres.acquire_timeout = Duration::from_secs(2);
        tweak(s);
    })
    .await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.body["status"], "degraded", "{}", ready.text);
    assert_eq!(ready.body["redis"]["connected"], false);
    let why = ready.body["redis"]["connect_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        why.to_lowercase().contains(because),
        "readyz says why ({because}): {}",
        ready.text
    );
    assert!(!why.contains(PASSWORD), "{why}");
    let w = world(&app).await;
    let path = format!("/v1/leads/{}", w.lead_id());
    let a = app.get(&path).await;
    assert_eq!(a.status, StatusCode::OK, "answers still flow");
    assert_eq!(a.cache(), "MISS");
    assert!(keys_in(server, &app.namespace).await.is_empty());
}

#[tokio::test]
async fn redis_with_a_wrong_ca_no_ca_or_a_wrong_password_is_refused() {
    let pki = Pki::new("redis");
    let stranger = Pki::new("stranger");
    let server = RedisServer::start_secure(&pki, USER, PASSWORD).await;
    // A certificate from another CA.
    refused(&server, "certificate", |s| {
        s.redis.tls_ca_file = Some(stranger.ca_file.clone())
    })
    .await;
    // No CA configured: the system's roots do not know the test's CA.
    refused(&server, "certificate", |_| {}).await;
    // The right CA, a wrong password.
    let wrong = server.url().replace(PASSWORD, "not-the-password");
    refused(&server, "authentication failed", |s| {
        s.redis.url = SecretUrl::new(wrong);
        s.redis.tls_ca_file = Some(pki.ca_file.clone());
    })
    .await;
}

#[tokio::test]
async fn postgres_over_tls_verified_against_the_ca() {
    let pki = Pki::new("postgres");
    let stranger = Pki::new("pg-stranger");
    let pg = PgServer::start_tls(&pki);
    let ca = Some(pki.ca_file.as_path());

    // The cluster takes only TLS, and only from whoever trusts its CA.
    let plain = PgConnection::connect(&pg.url("postgres", "disable", None)).await;
    let e = refusal(plain, "a plain connection");
    assert!(e.contains("no encryption") || e.contains("pg_hba"), "{e}");
    let wrong = PgConnection::connect(&pg.url("postgres", "verify-full", Some(&stranger.ca_file)));
    let e = refusal(wrong.await, "a wrong CA");
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    let mut good = PgConnection::connect(&pg.url("postgres", "verify-full", ca))
        .await
        .expect("verify-full with the CA");
    let (ssl,): (bool,) =
        sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut good)
            .await
            .unwrap();
    assert!(ssl, "the connection is TLS");

    // sidecache with a wrong CA does not get in.
    let mut s = test_settings();
    s.redis.enabled = false;
    s.postgres.url =
        SecretUrl::new(pg.url("sidecache_tls", "verify-full", Some(&stranger.ca_file)));
    let e = match prepare_database(&s).await {
        Ok(()) => panic!("sidecache got in with a wrong CA"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    // With the CA: the schema, the pool and the change listener all go over TLS.
    s.postgres.url = SecretUrl::new(pg.url("sidecache_tls", "verify-full", ca));
    prepare_database(&s)
        .await
        .expect("database prepared over TLS");
    let app = Application::build(s).await.expect("app builds");
    let addr = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let ready = || async {
        let r = http.get(format!("{addr}/readyz")).send().await;
        match r {
            Ok(r) => r.json::<serde_json::Value>().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        }
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            let r = ready().await;
            r["status"] == "ready" && r["listener"]["state"] == "up"
        })
        .await,
        "ready, with the change listener up over TLS: {}",
        ready().await
    );
    let org: serde_json::Value = http
        .post(format!("{addr}/v1/organizations"))
        .json(&json!({"name": "Acme", "phone_number": "+15550107777", "timezone": "UTC"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = org["id"].as_str().expect("organization created").to_owned();
    let get = http
        .get(format!("{addr}/v1/organizations/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    let (tls_sessions,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.datname = 'sidecache_tls' AND s.ssl",
    )
    .fetch_one(&mut good)
    .await
    .unwrap();
    assert!(
        tls_sessions >= 2,
        "the pool and the listener: {tls_sessions}"
    );
    let _ = stop.send(());
    let _ = server.await;
}

/// Why a connection was refused; panics if it was not.
fn refusal<T>(r: Result<T, sqlx::Error>, what: &str) -> String {
    match r {
        Ok(_) => panic!("{what} was let in"),
        Err(e) => e.to_string(),
    }
}
