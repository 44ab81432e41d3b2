//! The platform edge: call-start webhooks and the proxy pass-through.
//!
//! Webhooks: each platform's call start, every part in L1 (one known caller of one organization,
//! warmed), next to `/v1/calls/initiation` for the same caller on the same instance in the same
//! run. Every request is a *different* call start (its own call id; Retell's, which has none, its
//! own agent id), so each one is resolved, rendered, remembered for retries and opens its
//! session — a repeated body would only measure the retry memory. The requests are generated
//! and signed here (HMAC for Retell and Twilio, with the platforms' schemes) before the window,
//! written to a file per wrk thread and read in order by the wrk script; the open-loop window
//! takes its own fresh ones.
//!
//! Proxy: `GET /api/lead` to a bare hyper server (the same bytes from memory, pinned to the
//! server core like the proxies), reached directly, through nginx as a reverse proxy at its best
//! (master process on/off × response buffering on/off tried, upstream keepalive, the same
//! forwarding headers), and through sidecache's pass-through; closed-loop maxima, then one
//! open-loop rate for all three so the added latency is read at the same load.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::rngs::SmallRng;
use serde_json::json;

use crate::baselines::start_bare_hyper;
use crate::dataset::{initiation_path, Dataset, Lead};
use crate::nginx::{self, Config, Serve};
use crate::open_loop::{self, get, Fixed, OpenRun, Requests};
use crate::report::Report;
use crate::scenarios::{addr, show};
use crate::sidecache::{metrics, start_sidecache};
use crate::tools::bench_dir;
use crate::wrk::{measure, write_script, wrk, wrk_with, Run};
use crate::{env_u64, open_load, prom, CONNECTIONS};

const EL_SECRET: &str = "bench-elevenlabs-secret";
const VAPI_SECRET: &str = "bench-vapi-secret";
const RETELL_KEY: &str = "key_bench_retell";
const TWILIO_TOKEN: &str = "bench-twilio-token";
const PUBLIC_URL: &str = "https://voice.example.com";

/// The most requests per second one run is expected to reach; each wrk thread gets
/// `rate × seconds / 2` distinct call starts (a run that outpaces them repeats some, and says so).
const MAX_RATE: u64 = 60_000;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Platform {
    ElevenLabs,
    Vapi,
    Retell,
    Twilio,
}

impl Platform {
    const ALL: [Platform; 4] = [
        Platform::ElevenLabs,
        Platform::Vapi,
        Platform::Retell,
        Platform::Twilio,
    ];

    fn name(self) -> &'static str {
        match self {
            Platform::ElevenLabs => "elevenlabs",
            Platform::Vapi => "vapi",
            Platform::Retell => "retell",
            Platform::Twilio => "twilio",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Platform::ElevenLabs => "/v1/webhooks/elevenlabs",
            Platform::Vapi => "/v1/webhooks/vapi",
            Platform::Retell => "/v1/webhooks/retell",
            Platform::Twilio => "/v1/webhooks/twilio/voice",
        }
    }

    /// Call start number `i` of the set `set`, from `caller` to `callee`, signed, as raw HTTP.
    fn request(self, set: &str, i: usize, caller: &str, callee: &str, now_ms: i64) -> Vec<u8> {
        let id = format!("{set}-{i}");
        let (content_type, auth, body) = match self {
            Platform::ElevenLabs => (
                "application/json",
                format!("x-sidecache-secret: {EL_SECRET}"),
                json!({"caller_id": caller, "agent_id": "agent_bench", "called_number": callee, "call_sid": format!("CA{id}")})
                    .to_string(),
            ),
            Platform::Vapi => (
                "application/json",
                format!("x-vapi-secret: {VAPI_SECRET}"),
                json!({"message": {"type": "assistant-request", "call": {"id": id},
                    "customer": {"number": caller}, "phoneNumber": {"number": callee}}})
                .to_string(),
            ),
            Platform::Retell => {
                let body = json!({"event": "call_inbound", "call_inbound": {
                    "from_number": caller, "to_number": callee, "agent_id": format!("agent_{id}")}})
                .to_string();
                let mut mac = Hmac::<sha2::Sha256>::new_from_slice(RETELL_KEY.as_bytes()).unwrap();
                mac.update(body.as_bytes());
                mac.update(now_ms.to_string().as_bytes());
                let d = hex::encode(mac.finalize().into_bytes());
                (
                    "application/json",
                    format!("x-retell-signature: v={now_ms},d={d}"),
                    body,
                )
            }
            Platform::Twilio => {
                let params = [
                    ("AccountSid", "ACbench".to_owned()),
                    ("CallSid", format!("CA{id}")),
                    ("CallStatus", "ringing".to_owned()),
                    ("Direction", "inbound".to_owned()),
                    ("From", caller.to_owned()),
                    ("To", callee.to_owned()),
                ];
                let mut body = form_urlencoded::Serializer::new(String::new());
                // Twilio signs the URL and every parameter's name and value, sorted by name.
                let mut signed = format!("{PUBLIC_URL}{}", self.path());
                for (k, v) in &params {
                    body.append_pair(k, v);
                    signed.push_str(k);
                    signed.push_str(v);
                }
                let mut mac = Hmac::<sha1::Sha1>::new_from_slice(TWILIO_TOKEN.as_bytes()).unwrap();
                mac.update(signed.as_bytes());
                let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
                (
                    "application/x-www-form-urlencoded",
                    format!("x-twilio-signature: {sig}"),
                    body.finish(),
                )
            }
        };
        format!(
            "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n{auth}\r\nContent-Length: {}\r\n\r\n{body}",
            self.path(),
            body.len()
        )
        .into_bytes()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Distinct call starts, one after the other (for the open-loop generator).
struct Sequence {
    requests: Vec<Vec<u8>>,
    next: AtomicUsize,
}

impl Requests for Sequence {
    fn next(&self, _: &mut SmallRng, out: &mut Vec<u8>) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.requests.len();
        out.extend_from_slice(&self.requests[i]);
    }
}

/// The wrk script that sends, per thread, the raw requests of `<prefix>-<thread>` in order
/// (each as `<length>\n<bytes>`), from the start again if they run out.
fn sequence_script() -> PathBuf {
    write_script(
        "sequence",
        r#"
local threads = 0
function setup(thread)
  thread:set("index", threads)
  threads = threads + 1
end
function init(args)
  f = assert(io.open(args[1] .. "-" .. index, "rb"))
end
function request()
  local n = f:read("*n")
  if n == nil then
    f:seek("set", 0)
    n = f:read("*n")
  end
  f:read(1)
  return f:read(n)
end
"#,
    )
}

/// Writes `per_thread` call starts of set `set` for each of wrk's two threads; returns the
/// files' common prefix.
fn write_sequence(platform: Platform, set: &str, per_thread: usize, lead: &Lead) -> PathBuf {
    let prefix = bench_dir().join(format!("calls-{}-{set}", platform.name()));
    let now = now_ms();
    for t in 0..2 {
        let file = std::fs::File::create(format!("{}-{t}", prefix.display())).unwrap();
        let mut w = std::io::BufWriter::new(file);
        for i in 0..per_thread {
            let r = platform.request(&format!("{set}{t}"), i, &lead.phone, &lead.org_phone, now);
            writeln!(w, "{}", r.len()).unwrap();
            w.write_all(&r).unwrap();
        }
        w.flush().unwrap();
    }
    prefix
}

fn remove_sequence(prefix: &Path) {
    for t in 0..2 {
        let _ = std::fs::remove_file(format!("{}-{t}", prefix.display()));
    }
}

/// A warm-up and a measured wrk window over fresh call starts of `platform`.
fn measure_calls(url: &str, platform: Platform, lead: &Lead, run: &str) -> (Run, usize) {
    let script = sequence_script();
    let warm = env_u64("WARMUP", 3);
    if warm > 0 {
        let prefix = write_sequence(
            platform,
            &format!("{run}w"),
            (MAX_RATE * warm / 2) as usize,
            lead,
        );
        wrk_with(url, &script, warm, &[prefix.display().to_string()]);
        remove_sequence(&prefix);
    }
    let window = env_u64("WINDOW", 10);
    let per_thread = (MAX_RATE * window / 2) as usize;
    let prefix = write_sequence(platform, &format!("{run}m"), per_thread, lead);
    let r = wrk_with(url, &script, window, &[prefix.display().to_string()]);
    remove_sequence(&prefix);
    (r, per_thread * 2)
}

fn show_open(run: &OpenRun) {
    println!(
        "    open loop at {:.0} req/s: p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms, {} errors, {} unanswered",
        run.offered_rps, run.p50_ms, run.p99_ms, run.p999_ms, run.max_ms, run.errors, run.unfinished
    );
}

fn open_at(base: &str, rate: f64, requests: Arc<dyn Requests>) -> OpenRun {
    let run = open_loop::run(
        addr(base),
        CONNECTIONS,
        rate.max(100.0),
        env_u64("WINDOW", 10),
        requests,
    );
    show_open(&run);
    run
}

/// Call starts per platform against call initiation, every part in L1.
pub(crate) async fn webhooks(db_url: &str, data: &Dataset, report: &mut Report) {
    let one = data.one();
    // The organization's voice settings, as a customer would have them.
    let voice = json!({"voice": {
        "elevenlabs": {"overrides": ["first_message", "language"], "language": "en",
                        "dynamic_variable_defaults": {"plan": "none", "vip": false}},
        "vapi": {"assistant_id": "asst-bench"},
        "retell": {"override_agent_id": "agent_bench_override"},
        "twilio": {"twiml": "<Response><Say>{greeting}</Say><Connect><Stream url=\"wss://voice.example.com/stream\"/></Connect></Response>"}}});
    sqlx::query("UPDATE organizations SET settings = settings || $1 WHERE id = $2::uuid")
        .bind(&voice)
        .bind(&one.org)
        .execute(&data.db)
        .await
        .unwrap();
    let secrets = [
        ("SIDECACHE__WEBHOOKS__ELEVENLABS__SECRET", EL_SECRET),
        ("SIDECACHE__WEBHOOKS__VAPI__SECRET", VAPI_SECRET),
        ("SIDECACHE__WEBHOOKS__RETELL__API_KEY", RETELL_KEY),
        ("SIDECACHE__WEBHOOKS__TWILIO__AUTH_TOKEN", TWILIO_TOKEN),
        ("SIDECACHE__WEBHOOKS__TWILIO__PUBLIC_URL", PUBLIC_URL),
    ];
    let sc = start_sidecache(db_url, "bench-webhooks", &secrets).await;
    let init_path = initiation_path(one);
    // Warm every part, and check each platform answers the known caller in full.
    warm(&sc.base, &init_path).await;
    for p in Platform::ALL {
        let raw = p.request("check", 0, &one.phone, &one.org_phone, now_ms());
        let res = raw_exchange(&sc.base, &raw).await;
        assert!(res.starts_with("HTTP/1.1 200"), "{}: {res}", p.name());
    }
    let before = metrics(&sc.base).await;
    for p in Platform::ALL {
        let full = prom::sum_metric(
            &before,
            "sidecache_webhook_answers_total",
            &[("platform", p.name()), ("outcome", "full")],
        );
        assert_eq!(
            full,
            1.0,
            "{}: the check call start is answered in full",
            p.name()
        );
    }

    let init = measure(&format!("{}{init_path}", sc.base), &data.plain);
    show("call initiation (the baseline)", &init);
    let init_open = open_at(
        &sc.base,
        init.rps * open_load(),
        Arc::new(Fixed(get(&init_path))),
    );
    report.line(
        "sidecache: call initiation, 4 parts from L1",
        "the same caller, the same instance",
        Some(&init),
        Some(&init_open),
    );
    let mut platforms = serde_json::Map::new();
    for p in Platform::ALL {
        let (run, distinct) = measure_calls(&sc.base, p, one, "bench");
        show(&format!("{} call start", p.name()), &run);
        let total = (run.rps * env_u64("WINDOW", 10) as f64) as usize;
        if total > distinct {
            println!(
                "    ({total} requests outran {distinct} distinct call starts: some were retries)"
            );
        }
        let rate = run.rps * open_load();
        let n = (rate * env_u64("WINDOW", 10) as f64 * 1.2) as usize + 1000;
        let now = now_ms();
        let requests = (0..n)
            .map(|i| p.request("open", i, &one.phone, &one.org_phone, now))
            .collect();
        let open = open_at(
            &sc.base,
            rate,
            Arc::new(Sequence {
                requests,
                next: AtomicUsize::new(0),
            }),
        );
        let name = format!("sidecache: {} call start, every part in L1", p.name());
        report.line(&name, "", Some(&run), Some(&open));
        report.ratio_goal(
            &format!("{} webhook, every part in L1", p.name()),
            run.rps,
            "req/s",
            "call initiation on the same instance (above)",
            init.rps,
            true,
            0.8,
        );
        platforms.insert(
            p.name().into(),
            json!({"closed": run.json(), "open_loop": open.json()}),
        );
    }
    let after = metrics(&sc.base).await;
    let mut outcomes = serde_json::Map::new();
    for p in Platform::ALL {
        let mut by = serde_json::Map::new();
        for o in [
            "full",
            "partial",
            "fallback",
            "unknown_number",
            "auth_failed",
        ] {
            let n = prom::sum_metric(
                &after,
                "sidecache_webhook_answers_total",
                &[("platform", p.name()), ("outcome", o)],
            );
            if n > 0.0 {
                by.insert(o.into(), json!(n));
            }
        }
        println!(
            "  {} outcomes: {}",
            p.name(),
            serde_json::Value::Object(by.clone())
        );
        outcomes.insert(p.name().into(), by.into());
    }
    drop(sc);

    // What opening the session in Redis costs: the same call starts with Redis off (sessions in
    // process memory, room for every call start of the window), on an instance of their own.
    let mut off = secrets.to_vec();
    off.push(("REDIS_ENABLED", "false"));
    off.push(("SIDECACHE__SESSIONS__MEMORY_MAX_ENTRIES", "2000000"));
    let sc = start_sidecache(db_url, "bench-webhooks-off", &off).await;
    warm(&sc.base, &init_path).await;
    let (no_redis, _) = measure_calls(&sc.base, Platform::ElevenLabs, one, "off");
    show("elevenlabs call start, Redis off", &no_redis);
    report.line(
        "sidecache: elevenlabs call start, Redis off",
        "redis.enabled = false, sessions.memory_max_entries = 2000000: the session in process memory, not a Redis write",
        Some(&no_redis),
        None,
    );
    report.json["webhooks"] = json!({
        "call_initiation": init.json(), "call_initiation_open_loop": init_open.json(),
        "platforms": platforms, "outcomes": outcomes, "elevenlabs_redis_off": no_redis.json(),
    });
}

/// Loads every part of the initiation into L1.
async fn warm(base: &str, init_path: &str) {
    let r = reqwest::get(format!("{base}{init_path}")).await.unwrap();
    assert!(r.status().is_success(), "{init_path}: {}", r.status());
}

/// One request over a fresh connection; the answer's text.
async fn raw_exchange(base: &str, raw: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr(base)).await.unwrap();
    let mut raw = raw.to_vec();
    // Close after the answer.
    let at = raw.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    raw.splice(at..at, b"Connection: close\r\n".iter().copied());
    s.write_all(&raw).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Pass-through against the same upstream directly and through nginx.
pub(crate) async fn proxy(db_url: &str, data: &Dataset, report: &mut Report) {
    // A lead-sized JSON body, as a handler app would answer.
    let body = serde_json::to_vec(&json!({
        "id": "6f1c1c1e-8a43-4c43-9a8e-1b2b3c4d5e6f", "status": "ok",
        "items": (0..12).map(|i| json!({"n": i, "name": format!("item {i}"), "ok": true})).collect::<Vec<_>>(),
    }))
    .unwrap();
    let Some(upstream) = start_bare_hyper(&body) else {
        println!("  proxy: no bare hyper upstream; left out");
        return;
    };
    let up = format!("http://127.0.0.1:{}", upstream.port);
    let path = "/api/lead";
    let direct = measure(&format!("{up}{path}"), &data.plain);
    show("upstream directly", &direct);

    println!("nginx reverse proxy variants, short windows:");
    let secs = env_u64("WINDOW", 10).min(3);
    let mut tried = Vec::new();
    for master_process in [true, false] {
        for buffering in [true, false] {
            let config = Config {
                master_process,
                sendfile: false,
                tcp_nopush: false,
                open_file_cache: false,
                from_memory: false,
            };
            let serve = Serve::Proxy {
                port: upstream.port,
                buffering,
            };
            let n = nginx::start("nginx-proxy", &config, serve, 1).unwrap();
            let got = nginx::fetch(n.port, path);
            assert_eq!(got.as_deref(), Some(&body[..]), "nginx proxies the body");
            let url = format!("http://127.0.0.1:{}{path}", n.port);
            wrk(&url, &data.plain, 1);
            let r = wrk(&url, &data.plain, secs);
            let name = format!(
                "master_process {}, proxy_buffering {}",
                if master_process { "on" } else { "off" },
                if buffering { "on" } else { "off" }
            );
            println!("  nginx {name}: {:.0} req/s", r.rps);
            tried.push((config, buffering, name, r));
        }
    }
    let best = tried
        .iter()
        .max_by(|a, b| a.3.rps.total_cmp(&b.3.rps))
        .unwrap()
        .clone();
    let nginx_config = format!(
        "{}; {}; upstream keepalive 64, proxy_http_version 1.1, Host and X-Forwarded-For/-Proto/-Host set",
        best.2,
        nginx::common()
    );
    let ngx = nginx::start(
        "nginx-proxy",
        &best.0,
        Serve::Proxy {
            port: upstream.port,
            buffering: best.1,
        },
        1,
    )
    .unwrap();
    let ngx_base = format!("http://127.0.0.1:{}", ngx.port);
    let ngx_run = measure(&format!("{ngx_base}{path}"), &data.plain);
    show("nginx reverse proxy at its best", &ngx_run);

    let sc = start_sidecache(
        db_url,
        "bench-proxy",
        &[("SIDECACHE__PROXY__UPSTREAM", up.as_str())],
    )
    .await;
    let got = reqwest::get(format!("{}{path}", sc.base))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&got[..], &body[..], "sidecache proxies the body");
    let sc_run = measure(&format!("{}{path}", sc.base), &data.plain);
    show("sidecache pass-through", &sc_run);

    // The same offered rate for all three: what each adds at one load.
    let rate = ngx_run.rps.min(sc_run.rps) * open_load();
    println!("open loop, all at {rate:.0} req/s:");
    let request = || Arc::new(Fixed(get(path))) as Arc<dyn Requests>;
    let direct_open = open_at(&up, rate, request());
    let ngx_open = open_at(&ngx_base, rate, request());
    let sc_open = open_at(&sc.base, rate, request());
    drop(ngx);

    report.line(
        "upstream directly (bare hyper)",
        "the same bytes from memory, pinned to the server core beside each proxy",
        Some(&direct),
        Some(&direct_open),
    );
    report.line(
        "nginx reverse proxy at its best",
        &nginx_config,
        Some(&ngx_run),
        Some(&ngx_open),
    );
    report.line("sidecache: pass-through", "", Some(&sc_run), Some(&sc_open));
    report.ratio_goal(
        "proxy pass-through, c64",
        sc_run.rps,
        "req/s",
        &format!("nginx reverse proxy at its best ({nginx_config})"),
        ngx_run.rps,
        true,
        1.0,
    );
    let added = |o: &OpenRun| o.p99_ms - direct_open.p99_ms;
    println!(
        "  added p99 at {rate:.0} req/s: sidecache {:.2} ms, nginx {:.2} ms",
        added(&sc_open),
        added(&ngx_open)
    );
    report.json["proxy"] = json!({
        "direct": direct.json(), "nginx": ngx_run.json(), "sidecache": sc_run.json(),
        "nginx_config": nginx_config,
        "nginx_variants": tried.iter().map(|t| json!({"config": t.2, "short_window": t.3.json()})).collect::<Vec<_>>(),
        "open_loop_rate": rate,
        "direct_open_loop": direct_open.json(), "nginx_open_loop": ngx_open.json(), "sidecache_open_loop": sc_open.json(),
        "added_p99_ms": {"sidecache": added(&sc_open), "nginx": added(&ngx_open)},
    });
}
