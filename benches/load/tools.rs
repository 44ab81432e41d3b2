//! The machine side of the load benchmark: installing the tools it drives (wrk, nginx,
//! redis-server, redis-benchmark, pgbench, taskset), child processes pinned to a core and killed
//! when dropped, its own Redis, free ports, the output directory, and a process's RSS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{REDIS_PORT, SERVER_CORE};

fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs what the benchmark drives, from Debian's packages, if it is missing.
pub(crate) fn ensure_tools() {
    let missing: Vec<&str> = [
        ("wrk", "wrk"),
        ("nginx", "nginx-light"),
        ("redis-server", "redis-server"),
        ("redis-benchmark", "redis-tools"),
        ("pgbench", "postgresql-client"),
        ("taskset", "util-linux"),
    ]
    .into_iter()
    .filter(|(bin, _)| !have(bin))
    .map(|(_, pkg)| pkg)
    .collect();
    if missing.is_empty() {
        return;
    }
    println!("installing {missing:?} from Debian's packages");
    // A policy-rc.d that says no keeps the packages from starting their own services (nginx on
    // port 80, a second Redis): the benchmark starts what it needs itself.
    let ok = Command::new("sh")
        .args([
            "-c",
            &format!(
                "own=0; if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own=1; fi; \
                 apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {}; \
                 status=$?; if [ $own = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; exit $status",
                missing.join(" ")
            ),
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "could not install {missing:?}");
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn bench_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A child process killed when dropped.
pub(crate) struct Proc(pub(crate) Child);

impl Proc {
    /// SIGTERM, then up to 3 s for the process to exit (nginx's master stops its workers on
    /// SIGTERM; on SIGKILL they would live on).
    pub(crate) fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        for _ in 0..300 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn pinned(core: &str, program: &str) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", core, program]);
    c
}

pub(crate) fn start_redis() -> Proc {
    let p = Proc(
        pinned(SERVER_CORE, "redis-server")
            .args([
                "--port",
                &REDIS_PORT.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts"),
    );
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", REDIS_PORT)).is_ok() {
            return p;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("redis did not start");
}

pub(crate) fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
