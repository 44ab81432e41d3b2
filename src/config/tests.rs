//! Loading: defaults, precedence, one-line errors naming key and source, redaction.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn write_toml(body: &str) -> (tempdir::Dir, PathBuf) {
    let dir = tempdir::Dir::new();
    let p = dir.0.join("config.toml");
    std::fs::write(&p, body).unwrap();
    (dir, p)
}

mod tempdir {
    pub(super) struct Dir(pub(super) std::path::PathBuf);
    impl Dir {
        pub(super) fn new() -> Self {
            let p = std::env::temp_dir().join(format!("sidecache-cfg-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn defaults_are_valid() {
    let (_d, p) = write_toml("");
    let s = Settings::load(Some(&p), &[], &Overrides::default()).unwrap();
    assert!(s.redis.enabled);
    assert_eq!(s.cache.ttl.lead_phone, Duration::from_secs(900));
    assert_eq!(
        s.postgres.url.expose(),
        "postgres://postgres@127.0.0.1:5432/sidecache"
    );
}

#[test]
fn precedence_file_then_env_then_flags() {
    let (_d, p) = write_toml("[server]\nlisten = \"127.0.0.1:1111\"\n[redis]\nnamespace = \"fromfile\"\ntimeout_ms = 7\n");
    let s = Settings::load(Some(&p), &[], &Overrides::default()).unwrap();
    assert_eq!(s.server.listen, addr("127.0.0.1:1111"));
    let e = env(&[
        ("SIDECACHE_LISTEN", "127.0.0.1:2222"),
        ("SIDECACHE__REDIS__NAMESPACE", "fromenv"),
    ]);
    let s = Settings::load(Some(&p), &e, &Overrides::default()).unwrap();
    assert_eq!(s.server.listen, addr("127.0.0.1:2222"));
    assert_eq!(s.redis.namespace, "fromenv");
    assert_eq!(
        s.redis.timeout,
        Duration::from_millis(7),
        "untouched keys keep the file's value"
    );
    let flags = Overrides {
        listen: Some("127.0.0.1:3333".into()),
        ..Default::default()
    };
    let s = Settings::load(Some(&p), &e, &flags).unwrap();
    assert_eq!(s.server.listen, addr("127.0.0.1:3333"));
}

#[test]
fn redis_enabled_accepts_the_usual_spellings() {
    let (_d, p) = write_toml("");
    for (v, want) in [
        ("true", true),
        ("false", false),
        ("1", true),
        ("0", false),
        ("FALSE", false),
        ("no", false),
    ] {
        let s = Settings::load(
            Some(&p),
            &env(&[("REDIS_ENABLED", v)]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.redis.enabled, want, "{v}");
    }
    let err = Settings::load(
        Some(&p),
        &env(&[("REDIS_ENABLED", "maybe")]),
        &Overrides::default(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("redis.enabled") && msg.contains("REDIS_ENABLED"),
        "{msg}"
    );
}

#[test]
fn errors_name_key_and_source() {
    let (_d, p) = write_toml("[cache]\njitter = 3.0\n");
    let msg = Settings::load(Some(&p), &[], &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("cache.jitter") && msg.contains("config.toml"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));

    let (_d, p) = write_toml("[server]\nlisten = 5\n");
    let msg = Settings::load(Some(&p), &[], &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("server.listen") && msg.contains("config.toml"),
        "{msg}"
    );

    let (_d, p) = write_toml("[server]\nlistn = \"x\"\n");
    let msg = Settings::load(Some(&p), &[], &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("listn"), "{msg}");

    let (_d, p) = write_toml("");
    let msg = Settings::load(
        Some(&p),
        &env(&[("SIDECACHE__REDIS__TIMEOUT_MS", "soon")]),
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("redis.timeout_ms") && msg.contains("SIDECACHE__REDIS__TIMEOUT_MS"),
        "{msg}"
    );

    let flags = Overrides {
        listen: Some("nowhere".into()),
        ..Default::default()
    };
    let msg = Settings::load(Some(&p), &[], &flags)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("server.listen") && msg.contains("--listen"),
        "{msg}"
    );
}

#[test]
fn secrets_never_print() {
    let (_d, p) = write_toml("");
    let e = env(&[
        ("REDIS_URL", "redis://:hunter2@127.0.0.1:6379"),
        ("DATABASE_URL", "postgres://u:pw@127.0.0.1/db"),
    ]);
    let s = Settings::load(Some(&p), &e, &Overrides::default()).unwrap();
    assert_eq!(s.redis.url.expose(), "redis://:hunter2@127.0.0.1:6379");
    let shown = s.to_redacted_toml();
    assert!(
        !shown.contains("hunter2") && !shown.contains(":pw@"),
        "{shown}"
    );
}

#[test]
fn typed_values_are_refused_with_key_and_source() {
    let (_d, p) = write_toml("[redis]\ntimeout_ms = 0\n");
    let msg = Settings::load(Some(&p), &[], &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("`redis.timeout_ms`")
            && msg.contains("config.toml")
            && msg.contains("must be greater than 0"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));

    let (_d, p) = write_toml("");
    for (var, key) in [
        (
            "SIDECACHE__SERVER__MAX_CONCURRENCY",
            "server.max_concurrency",
        ),
        (
            "SIDECACHE__POSTGRES__MAX_CONNECTIONS",
            "postgres.max_connections",
        ),
        ("SIDECACHE__REDIS__POOL_SIZE", "redis.pool_size"),
        (
            "SIDECACHE__REDIS__BREAKER_WINDOW_SECS",
            "redis.breaker_window_secs",
        ),
        (
            "SIDECACHE__CACHE__NEGATIVE_TTL_SECS",
            "cache.negative_ttl_secs",
        ),
        ("SIDECACHE__CACHE__TTL__GREETING", "cache.ttl.greeting"),
        (
            "SIDECACHE__COHERENCE__LEASE_POLL_MS",
            "coherence.lease_poll_ms",
        ),
    ] {
        let msg = Settings::load(Some(&p), &env(&[(var, "0")]), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(&format!("`{key}`")) && msg.contains(var),
            "{var}: {msg}"
        );
    }

    let msg = Settings::load(
        Some(&p),
        &env(&[("SIDECACHE__CACHE__DEFAULT_REGION", "XX")]),
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("cache.default_region")
            && msg.contains("SIDECACHE__CACHE__DEFAULT_REGION")
            && msg.contains("ISO 3166-1"),
        "{msg}"
    );

    let msg = Settings::load(
        Some(&p),
        &env(&[("SIDECACHE__COHERENCE__OUTBOX_RETENTION_SECS", "5")]),
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("coherence.outbox_retention_secs")
            && msg.contains("SIDECACHE__COHERENCE__OUTBOX_RETENTION_SECS"),
        "{msg}"
    );

    // Zero is allowed where it means "off".
    let s = Settings::load(
        Some(&p),
        &env(&[
            ("SIDECACHE__COHERENCE__LEASE_MS", "0"),
            ("SIDECACHE__CACHE__MAX_STALE__CONTEXT", "0"),
        ]),
        &Overrides::default(),
    )
    .unwrap();
    assert!(s.coherence.leases().is_none());
    assert_eq!(s.cache.max_stale.context, Duration::ZERO);
}

#[test]
fn check_config_output_is_a_config_file_with_the_same_keys() {
    let shown = Settings::default().to_redacted_toml();
    for line in [
        "listen = \"127.0.0.1:8080\"",
        "timeout_ms = 25",
        "breaker_window_secs = 10",
        "outbox_retention_secs = 3600",
        "default_region = \"US\"",
        "[cache.ttl]",
    ] {
        assert!(shown.lines().any(|l| l == line), "{line}: {shown}");
    }
    let (_d, p) = write_toml(&shown);
    let again = Settings::load(Some(&p), &[], &Overrides::default()).unwrap();
    assert_eq!(again.to_redacted_toml(), shown);
}

/// `config.toml` at the repository root documents every key with its default.
#[test]
fn the_documented_config_file_matches_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let documented: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let defaults = toml::Table::try_from(Settings::default()).unwrap();
    assert_eq!(documented, defaults);
}

#[test]
fn a_redis_ca_file_needs_rediss_and_a_readable_certificate() {
    let load = |body: &str| {
        let (d, p) = write_toml(body);
        let r = Settings::load(Some(&p), &[], &Overrides::default());
        drop(d);
        r
    };
    let msg = load("[redis]\ntls_ca_file = \"/nonexistent/ca.pem\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("redis.tls_ca_file") && msg.contains("rediss://"),
        "{msg}"
    );
    let msg =
        load("[redis]\nurl = \"rediss://localhost:6380\"\ntls_ca_file = \"/nonexistent/ca.pem\"\n")
            .unwrap_err()
            .to_string();
    assert!(
        msg.contains("redis.tls_ca_file") && msg.contains("cannot be read"),
        "{msg}"
    );
    let (_d, toml) = write_toml("not a certificate");
    let msg = load(&format!(
        "[redis]\nurl = \"rediss://localhost:6380\"\ntls_ca_file = \"{}\"\n",
        toml.display()
    ))
    .unwrap_err()
    .to_string();
    assert!(msg.contains("no PEM certificate"), "{msg}");
}

#[test]
fn sentinel_mode_needs_sentinels_and_a_master_name() {
    let load = |body: &str| {
        let (d, p) = write_toml(body);
        let r = Settings::load(Some(&p), &[], &Overrides::default());
        drop(d);
        r
    };
    let msg = load("[redis]\nmode = \"sentinel\"\n")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("redis.sentinel_urls"), "{msg}");
    let msg = load("[redis]\nmode = \"sentinel\"\nsentinel_urls = [\"http://x:26379\"]\n")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("redis.sentinel_urls"), "{msg}");
    let msg = load(
        "[redis]\nmode = \"sentinel\"\nsentinel_urls = [\"redis://s1:26379\"]\nsentinel_master = \" \"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("redis.sentinel_master"), "{msg}");
    let msg = load("[redis]\nmode = \"cluster\"\n")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("mode"), "{msg}");
    let ok = load(
        "[redis]\nmode = \"sentinel\"\nsentinel_urls = [\"redis://:pw@s1:26379\", \"redis://s2:26379\"]\n",
    )
    .unwrap();
    assert_eq!(ok.redis.sentinel_urls.len(), 2);
    assert!(
        !ok.to_redacted_toml().contains(":pw@"),
        "sentinel passwords are redacted"
    );
    let (_d, p) = write_toml("");
    let from_env = Settings::load(
        Some(&p),
        &env(&[
            ("SIDECACHE__REDIS__MODE", "sentinel"),
            (
                "SIDECACHE__REDIS__SENTINEL_URLS",
                "[\"redis://s1:26379\", \"redis://s2:26379\"]",
            ),
        ]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(from_env.redis.sentinel_urls.len(), 2);
}
