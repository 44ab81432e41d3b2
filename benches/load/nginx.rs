//! nginx at its best: several configurations measured in the same harness for a short window
//! each (same pinning, same connections, same body bytes), the fastest kept for the measured
//! window and named by the directives in which it differs from the others. Every variant is
//! checked to answer the body byte for byte before it is measured.
//!
//! Common to all: one worker process (one core), `access_log off`, `keepalive_requests`
//! 100,000,000, `tcp_nodelay on`, `default_type application/json`. The variants: `sendfile`
//! on or off, `tcp_nopush`, `open_file_cache`, `master_process` on or off, and the body served
//! from memory with `return 200 '…'` (no file at all) instead of from a file.
//!
//! For the keys spread over 100,000 leads nginx serves 100,000 files, each one lead's body as
//! sidecache answers it, with the fastest *file* configuration and an `open_file_cache` sized for
//! them all.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

use crate::tools::{bench_dir, free_port, pinned, Proc};
use crate::wrk::{wrk, Run};
use crate::{env_u64, SERVER_CORE};

/// One nginx configuration, as the directives that vary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Config {
    pub(crate) master_process: bool,
    pub(crate) sendfile: bool,
    pub(crate) tcp_nopush: bool,
    pub(crate) open_file_cache: bool,
    /// `return 200 '<body>'` from the configuration instead of a file.
    pub(crate) from_memory: bool,
}

impl Config {
    /// The directives that vary between the variants, as written in the configuration.
    pub(crate) fn describe(&self) -> String {
        let on = |b: bool| if b { "on" } else { "off" };
        let mut s = format!("master_process {}", on(self.master_process));
        if self.from_memory {
            s.push_str(", body from memory (return 200 '<body>')");
        } else {
            let _ = write!(
                s,
                ", file, sendfile {}, tcp_nopush {}",
                on(self.sendfile),
                on(self.tcp_nopush)
            );
            if self.open_file_cache {
                s.push_str(", open_file_cache");
            }
        }
        s
    }
}

/// What is common to every variant, for the report.
pub(crate) fn common() -> String {
    format!(
        "nginx {}, worker_processes 1, access_log off, keepalive_requests 100000000, tcp_nodelay on",
        version()
    )
}

fn version() -> String {
    std::process::Command::new("nginx")
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .and_then(|v| v.rsplit('/').next().map(str::to_owned))
        .unwrap_or_default()
}

const VARIANTS: [Config; 8] = {
    const fn file(master_process: bool, sendfile: bool, tcp_nopush: bool, ofc: bool) -> Config {
        Config {
            master_process,
            sendfile,
            tcp_nopush,
            open_file_cache: ofc,
            from_memory: false,
        }
    }
    const fn memory(master_process: bool) -> Config {
        Config {
            master_process,
            sendfile: false,
            tcp_nopush: false,
            open_file_cache: false,
            from_memory: true,
        }
    }
    [
        file(true, false, false, false),
        file(true, true, true, false),
        file(true, true, false, false),
        file(true, false, false, true),
        file(true, true, false, true),
        file(false, false, false, true),
        memory(true),
        memory(false),
    ]
};

/// A running nginx, killed when dropped.
pub(crate) struct Nginx {
    proc: Proc,
    pub(crate) port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.proc.terminate();
    }
}

/// Escapes `body` for a single-quoted nginx string, or None if it cannot be (a `$` would start
/// a variable and nginx has no escape for it).
fn quoted(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    if text.contains('$') {
        return None;
    }
    Some(text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// What an nginx serves.
pub(crate) enum Serve<'a> {
    /// The files under this root (the `from_memory` part of the configuration is ignored).
    Files(&'a Path),
    /// These bodies from memory, each at its path: `return 200 '<body>'` for one, a `map` from
    /// `$uri` to the body and `return 200 $body` for many.
    Memory(&'a [(String, &'a [u8])]),
    /// A reverse proxy to the server on this port, with a pool of idle upstream connections,
    /// the forwarding headers sidecache sets, and response buffering on or off.
    Proxy { port: u16, buffering: bool },
}

/// The hard limit of open files this process (and so nginx) may have: `open_file_cache` must
/// stay under it (raising it needs a privilege the sandbox may not grant).
pub(crate) fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(4)?.parse().ok())
        })
        .unwrap_or(1024)
}

/// The `open_file_cache` size for `files` files: room for all of them, twice over, within the
/// limit of open files (less room for the connections).
pub(crate) fn cache_size(files: usize) -> usize {
    (files.max(1000) * 2).min(open_files_limit().saturating_sub(4096).max(1000))
}

/// Starts nginx with `config`, serving `serve`; the directory `name` under target/bench/ holds
/// its files. `cache_files`: how many files `open_file_cache` is sized for. None if the
/// configuration cannot be written (a body with a `$`).
pub(crate) fn start(
    name: &str,
    config: &Config,
    serve: Serve<'_>,
    cache_files: usize,
) -> Option<Nginx> {
    let dir = bench_dir().join(name);
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let port = free_port();
    let d = dir.display();
    let on = |b: bool| if b { "on" } else { "off" };
    let cache = if config.open_file_cache {
        format!(
            "open_file_cache max={} inactive=600s; open_file_cache_valid 600s; open_file_cache_min_uses 1; open_file_cache_errors on;",
            cache_size(cache_files)
        )
    } else {
        String::new()
    };
    let (map, serving) = match serve {
        Serve::Files(root) => (String::new(), format!("root {};", root.display())),
        Serve::Memory([(path, body)]) => (
            String::new(),
            format!("location = {path} {{ return 200 '{}'; }}", quoted(body)?),
        ),
        Serve::Memory(bodies) => {
            let mut map = format!(
                "map_hash_max_size {}; map_hash_bucket_size 128;\n  map $uri $body {{\n",
                (bodies.len() * 2).next_power_of_two()
            );
            for (path, body) in bodies {
                let _ = writeln!(map, "    {path} '{}';", quoted(body)?);
            }
            map.push_str("  }");
            (map, "location / { return 200 $body; }".to_owned())
        }
        Serve::Proxy { port, buffering } => (
            format!("upstream app {{ server 127.0.0.1:{port}; keepalive 64; keepalive_requests 100000000; }}"),
            format!(
                "location / {{ proxy_pass http://app; proxy_http_version 1.1; \
                 proxy_set_header Connection \"\"; proxy_set_header Host $http_host; \
                 proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; \
                 proxy_set_header X-Forwarded-Proto $scheme; \
                 proxy_set_header X-Forwarded-Host $http_host; proxy_buffering {}; }}",
                on(buffering)
            ),
        ),
    };
    let conf = format!(
        "user root; worker_processes 1; master_process {master}; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off; keepalive_requests 100000000; keepalive_timeout 600s;
  sendfile {sendfile}; tcp_nopush {nopush}; tcp_nodelay on;
  {cache}
  default_type application/json;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  {map}
  server {{ listen 127.0.0.1:{port}; {serving} }}
}}
",
        master = on(config.master_process),
        sendfile = on(config.sendfile),
        nopush = on(config.tcp_nopush),
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let proc = Proc(
        pinned(SERVER_CORE, "nginx")
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts"),
    );
    // A configuration with 100,000 bodies takes nginx a second or so to read.
    for _ in 0..1000 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(Nginx { proc, port });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nginx did not start; see {d}/error.log");
}

/// One GET over a fresh connection: the body, if the answer was a 200.
pub(crate) fn fetch(port: u16, path: &str) -> Option<Vec<u8>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut all = Vec::new();
    s.read_to_end(&mut all).ok()?;
    let at = all.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    all.starts_with(b"HTTP/1.1 200").then(|| all[at..].to_vec())
}

/// The winner of the one-key comparison.
pub(crate) struct Best {
    pub(crate) config: Config,
    /// Every variant tried, with its short-window figures, for the report.
    pub(crate) variants: Vec<(Config, Option<Run>)>,
}

impl Best {
    /// The fastest configuration that serves a file, for the spread scenario.
    pub(crate) fn best_file(&self) -> Config {
        self.variants
            .iter()
            .filter(|(c, r)| !c.from_memory && r.is_some())
            .max_by(|a, b| rps(a).total_cmp(&rps(b)))
            .map_or(VARIANTS[0], |(c, _)| *c)
    }

    /// The fastest configuration that serves from memory.
    pub(crate) fn best_memory(&self) -> Config {
        self.variants
            .iter()
            .filter(|(c, r)| c.from_memory && r.is_some())
            .max_by(|a, b| rps(a).total_cmp(&rps(b)))
            .map_or(VARIANTS[7], |(c, _)| *c)
    }

    pub(crate) fn json(&self) -> Value {
        json!(self
            .variants
            .iter()
            .map(|(c, r)| json!({
                "config": c.describe(),
                "chosen": *c == self.config,
                "short_window": r.as_ref().map(Run::json),
            }))
            .collect::<Vec<_>>())
    }
}

fn rps(v: &(Config, Option<Run>)) -> f64 {
    v.1.as_ref().map_or(0.0, |r| r.rps)
}

/// Tries every variant serving `body` at /lead.json for a short window each (1 s warm-up, then
/// at most 3 s) and leaves the fastest running (its URL returned with it).
pub(crate) fn best_for(body: &[u8], script: &Path) -> (Best, Nginx, String) {
    let root = bench_dir().join("nginx-one/www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("lead.json"), body).unwrap();
    let secs = env_u64("WINDOW", 10).min(3);
    let one = [("/lead.json".to_owned(), body)];
    let serve = |c: &Config| {
        if c.from_memory {
            Serve::Memory(&one)
        } else {
            Serve::Files(&root)
        }
    };
    let mut variants = Vec::new();
    for config in VARIANTS {
        let run = start("nginx-one", &config, serve(&config), 1).and_then(|n| {
            if fetch(n.port, "/lead.json").as_deref() != Some(body) {
                println!("  nginx {}: wrong body, left out", config.describe());
                return None;
            }
            let url = format!("http://127.0.0.1:{}/lead.json", n.port);
            wrk(&url, script, 1);
            Some(wrk(&url, script, secs))
        });
        match &run {
            Some(r) => println!("  nginx {}: {:.0} req/s", config.describe(), r.rps),
            None => println!("  nginx {}: could not be configured", config.describe()),
        }
        variants.push((config, run));
    }
    let config = variants
        .iter()
        .filter(|v| v.1.is_some())
        .max_by(|a, b| rps(a).total_cmp(&rps(b)))
        .map(|v| v.0)
        .expect("some nginx variant runs");
    let nginx = start("nginx-one", &config, serve(&config), 1).unwrap();
    let url = format!("http://127.0.0.1:{}/lead.json", nginx.port);
    (Best { config, variants }, nginx, url)
}

/// Writes every body as its own file (1,000 directories of at most 100) under
/// target/bench/nginx-spread/www and a file of their paths, one a line, for the wrk script.
pub(crate) fn write_spread(bodies: &[Vec<u8>]) -> (PathBuf, PathBuf) {
    let dir = bench_dir().join("nginx-spread");
    let root = dir.join("www");
    let _ = std::fs::remove_dir_all(&root);
    let mut paths = String::new();
    for (i, body) in bodies.iter().enumerate() {
        let sub = root.join(format!("l/{}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&sub).unwrap();
        }
        std::fs::write(sub.join(format!("{i}.json")), body).unwrap();
        let _ = writeln!(paths, "/l/{}/{i}.json", i / 100);
    }
    let list = dir.join("paths.txt");
    std::fs::write(&list, paths).unwrap();
    (root, list)
}

/// The analog of the spread scenario: each body at a path of its own, served from files or from
/// memory, whichever was faster in a short window. Returns the running nginx, its description,
/// the wrk script over its paths, and every candidate's short-window figures.
pub(crate) fn best_spread(
    best: &Best,
    bodies: &[Vec<u8>],
) -> (Nginx, String, PathBuf, Vec<(String, Option<Run>)>) {
    let (root, list) = write_spread(bodies);
    let script = crate::dataset::paths_script("nginx-spread", &list);
    let paths: Vec<(String, &[u8])> = std::fs::read_to_string(&list)
        .unwrap()
        .lines()
        .zip(bodies)
        .map(|(p, b)| (p.to_owned(), &b[..]))
        .collect();
    let files = Config {
        open_file_cache: true,
        ..best.best_file()
    };
    let memory = best.best_memory();
    let candidates = [
        (
            files,
            format!(
                "{}, {} files, open_file_cache max={} (the limit of open files is {})",
                files.describe(),
                bodies.len(),
                cache_size(bodies.len()),
                open_files_limit()
            ),
        ),
        (
            memory,
            format!(
                "master_process {}, {} bodies from memory (map $uri $body, return 200 $body)",
                if memory.master_process { "on" } else { "off" },
                bodies.len()
            ),
        ),
    ];
    let serve = |c: &Config| {
        if c.from_memory {
            Serve::Memory(&paths)
        } else {
            Serve::Files(&root)
        }
    };
    let secs = env_u64("WINDOW", 10).min(3);
    let mut tried = Vec::new();
    for (config, name) in &candidates {
        let run = start("nginx-spread", config, serve(config), bodies.len()).and_then(|n| {
            let last = paths.len() - 1;
            for (path, body) in [&paths[0], &paths[last]] {
                if fetch(n.port, path).as_deref() != Some(*body) {
                    println!("  nginx {name}: wrong body at {path}, left out");
                    return None;
                }
            }
            let url = format!("http://127.0.0.1:{}/", n.port);
            wrk(&url, &script, 1);
            Some(wrk(&url, &script, secs))
        });
        match &run {
            Some(r) => println!("  nginx {name}: {:.0} req/s", r.rps),
            None => println!("  nginx {name}: could not be configured"),
        }
        tried.push((name.clone(), run));
    }
    let i = (0..tried.len())
        .filter(|&i| tried[i].1.is_some())
        .max_by(|&a, &b| {
            let rps = |i: usize| tried[i].1.as_ref().map_or(0.0, |r: &Run| r.rps);
            rps(a).total_cmp(&rps(b))
        })
        .expect("some nginx serves the spread bodies");
    let (config, name) = &candidates[i];
    let nginx = start("nginx-spread", config, serve(config), bodies.len()).unwrap();
    (nginx, name.clone(), script, tried)
}
