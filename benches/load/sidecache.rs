//! sidecache under test: the binary cargo built for this bench, started as a pinned child
//! process with its settings in the environment; its `/metrics`; and warming it with many GETs.

use std::time::Duration;

use crate::tools::{bench_dir, free_port, pinned, Proc};
use crate::{REDIS_PORT, SERVER_CORE};

pub(crate) struct Sidecache {
    proc: Proc,
    pub(crate) base: String,
}

impl Sidecache {
    pub(crate) fn pid(&self) -> u32 {
        self.proc.0.id()
    }
}

pub(crate) async fn start_sidecache(
    db_url: &str,
    namespace: &str,
    extra: &[(&str, &str)],
) -> Sidecache {
    let port = free_port();
    let mut cmd = pinned(SERVER_CORE, env!("CARGO_BIN_EXE_sidecache"));
    cmd.args(["serve", "--no-migrate"])
        .env("DATABASE_URL", db_url)
        .env("REDIS_URL", format!("redis://127.0.0.1:{REDIS_PORT}"))
        .env("SIDECACHE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SIDECACHE__REDIS__NAMESPACE", namespace)
        .env("SIDECACHE__LOG__LEVEL", "warn")
        .env("SIDECACHE__SERVER__MAX_CONCURRENCY", "100000")
        // A warm pool, as a sidecar in steady state has: a burst of misses that had to open
        // connections (TLS handshake, auth) on the one pinned core would spend the 100 ms
        // acquire budget doing so.
        .env("SIDECACHE__POSTGRES__MIN_CONNECTIONS", "16")
        .current_dir(std::env::temp_dir())
        .stdout(
            std::fs::File::create(bench_dir().join(format!("sidecache-{namespace}.log")))
                .expect("log file"),
        );
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let proc = Proc(cmd.spawn().expect("sidecache starts"));
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                // Let the pool open its connections before load arrives.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Sidecache { proc, base };
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("sidecache did not become ready");
}

pub(crate) async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

static FAILURES_SHOWN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// GETs every path with `concurrency` requests in flight (fewer than the pool's connections, so
/// that no miss waits for one past the 100 ms acquire budget), retrying a failed one once;
/// returns the answers that failed twice.
pub(crate) async fn drive(base: &str, paths: Vec<String>, concurrency: usize) -> usize {
    get_all(base, paths, concurrency, false)
        .await
        .iter()
        .filter(|b| b.is_none())
        .count()
}

/// As `drive`, and returns each path's body (in the order of `paths`; None for a failure, an
/// empty body for a 404).
pub(crate) async fn drive_bodies(
    base: &str,
    paths: Vec<String>,
    concurrency: usize,
) -> Vec<Option<Vec<u8>>> {
    get_all(base, paths, concurrency, true).await
}

async fn get_all(
    base: &str,
    paths: Vec<String>,
    concurrency: usize,
    keep: bool,
) -> Vec<Option<Vec<u8>>> {
    use futures_util::StreamExt;
    let client = reqwest::Client::new();
    futures_util::stream::iter(paths)
        .map(|p| {
            let (client, url) = (client.clone(), format!("{base}{p}"));
            async move {
                let mut why = String::new();
                for _ in 0..2 {
                    match client.get(&url).send().await {
                        Ok(r) => {
                            let status = r.status();
                            let body = r.bytes().await.unwrap_or_default();
                            if status.is_success() {
                                return Some(if keep { body.to_vec() } else { Vec::new() });
                            }
                            if status == 404 {
                                return Some(Vec::new());
                            }
                            why = format!("{status} {}", String::from_utf8_lossy(&body));
                        }
                        Err(e) => why = format!("{e:?}"),
                    }
                }
                if FAILURES_SHOWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 3 {
                    println!("  {url}: {why}");
                }
                None
            }
        })
        .buffered(concurrency)
        .collect()
        .await
}
