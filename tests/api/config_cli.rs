//! The binary: configuration precedence, one-line errors, the REDIS_ENABLED=false warning.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sidecache"));
    // Only what a test sets reaches the binary.
    for (k, _) in std::env::vars() {
        if k.starts_with("SIDECACHE")
            || ["DATABASE_URL", "REDIS_URL", "REDIS_ENABLED", "RUST_LOG"].contains(&k.as_str())
        {
            c.env_remove(k);
        }
    }
    c
}

fn temp_config(body: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sidecache-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("config.toml");
    std::fs::write(&p, body).unwrap();
    p
}

/// The child's stdout, line by line, as it comes.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

fn listen_of(out: &[u8]) -> String {
    let text = String::from_utf8_lossy(out);
    text.lines()
        .skip_while(|l| *l != "[server]")
        .find_map(|l| l.strip_prefix("listen = "))
        .unwrap_or_default()
        .trim_matches('"')
        .to_owned()
}

#[test]
fn file_then_env_then_flags() {
    let cfg = temp_config("[server]\nlisten = \"127.0.0.1:1111\"\n");
    let out = bin()
        .args(["--config", cfg.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(listen_of(&out.stdout), "127.0.0.1:1111");

    let out = bin()
        .args(["--config", cfg.to_str().unwrap(), "check-config"])
        .env("SIDECACHE_LISTEN", "127.0.0.1:2222")
        .output()
        .unwrap();
    assert_eq!(
        listen_of(&out.stdout),
        "127.0.0.1:2222",
        "env beats the file"
    );

    let out = bin()
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            "127.0.0.1:3333",
            "check-config",
        ])
        .env("SIDECACHE_LISTEN", "127.0.0.1:2222")
        .output()
        .unwrap();
    assert_eq!(listen_of(&out.stdout), "127.0.0.1:3333", "flags beat env");

    let out = bin()
        .args(["--config", cfg.to_str().unwrap(), "check-config"])
        .env("SIDECACHE__SERVER__LISTEN", "127.0.0.1:4444")
        .env("REDIS_ENABLED", "0")
        .env("REDIS_URL", "redis://:hunter2@127.0.0.1:6379")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listen_of(&out.stdout), "127.0.0.1:4444");
    assert!(text.contains("enabled = false"), "{text}");
    assert!(!text.contains("hunter2"), "secrets are redacted: {text}");
}

#[test]
fn bad_configuration_exits_non_zero_with_one_line_naming_key_and_source() {
    let cfg = temp_config("[cache]\njitter = 2.0\n");
    let out = bin()
        .args(["--config", cfg.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("cache.jitter") && err.contains("config.toml"),
        "{err}"
    );

    let cfg = temp_config("");
    let out = bin()
        .args(["--config", cfg.to_str().unwrap(), "serve"])
        .env("REDIS_ENABLED", "perhaps")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("redis.enabled") && err.contains("REDIS_ENABLED"),
        "{err}"
    );

    let out = bin()
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "--redis-url",
            "http://nope",
            "check-config",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("redis.url") && err.contains("--redis-url"),
        "{err}"
    );

    let out = bin()
        .args(["--config", "/nonexistent/sidecache.toml", "check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn redis_disabled_warns_at_start() {
    let cfg = temp_config("");
    let db = format!(
        "{}/sidecache_cli_{}",
        crate::fixtures::database_base_url(),
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let mut child = bin()
        .args(["--config", cfg.to_str().unwrap(), "serve", "--no-migrate"])
        .env("REDIS_ENABLED", "false")
        .env("SIDECACHE_LISTEN", "127.0.0.1:0")
        .env("DATABASE_URL", db)
        .env("SIDECACHE__LOG__FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let mut warned = false;
    let mut listening = false;
    while Instant::now() < deadline && !(warned && listening) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            warned |= line.contains("WARN") && line.contains("REDIS_ENABLED=false");
            listening |= line.contains("sidecache listening");
            seen.push(line);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned, "a warning names REDIS_ENABLED=false: {seen:#?}");
    assert!(listening, "and it still starts: {seen:#?}");
    assert!(
        seen.iter()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "log.format=json gives JSON lines"
    );
}

#[test]
fn log_lines_carry_the_request_id_and_never_a_password() {
    let cfg = temp_config("");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = bin()
        .args(["--config", cfg.to_str().unwrap(), "serve", "--no-migrate"])
        .env("REDIS_ENABLED", "false")
        .env("SIDECACHE_LISTEN", format!("127.0.0.1:{port}"))
        // Nothing listens on port 1: every lookup fails (and logs) inside its request.
        .env(
            "DATABASE_URL",
            "postgres://postgres:hunter2secret@127.0.0.1:1/nowhere",
        )
        .env("SIDECACHE__LOG__FORMAT", "json")
        .env("SIDECACHE__LOG__LEVEL", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && !seen.iter().any(|l: &String| l.contains("listening")) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(line);
        }
    }
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        conn,
        "GET /v1/leads/6f1c1c1e-8a43-4c43-9a8e-1b2b3c4d5e6f HTTP/1.1\r\nhost: x\r\nx-request-id: trace-me-42\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("x-request-id: trace-me-42"), "{answer}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.push(line);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let traced: Vec<&String> = seen
        .iter()
        .filter(|l| l.contains("trace-me-42") && l.contains("WARN"))
        .collect();
    assert!(
        !traced.is_empty(),
        "the request's warning carries its id: {seen:#?}"
    );
    let line: serde_json::Value = serde_json::from_str(traced[0]).unwrap();
    assert_eq!(line["request_id"], "trace-me-42", "{line}");
    assert!(
        seen.iter().all(|l| !l.contains("hunter2secret")),
        "no password in the logs: {seen:#?}"
    );
}
