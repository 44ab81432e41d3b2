//! The open-loop load generator: a fixed request rate, whatever the server does, with each
//! request's latency taken from the time it was *scheduled* to be sent, so that queueing is not
//! hidden (wrk's closed loop waits for an answer before sending again: a slow server slows its own
//! offered load, and the requests it delayed are never counted as late).
//!
//! N keep-alive connections share the rate R evenly: connection i sends its k-th request at
//! `start + i/R + k·N/R`, or as soon as its previous answer is in if that is later, and records
//! `answer time − scheduled time` in an HDR histogram. The first second settles and is not
//! recorded. Requests still unanswered at the end (window + 5 s grace) are recorded with the
//! latency they had reached by then (a lower bound) and counted as `unfinished`.
//!
//! It runs on its own thread with a single-threaded tokio runtime (on the client core, like the
//! whole bench process), and sleeps until a socket or a send needs it: tokio's timer ticks in
//! milliseconds, so sends are timed by a timerfd in the runtime's own epoll (see `Clock`), and
//! leave within microseconds of their schedule without a busy wait. The HTTP/1.1 side is
//! minimal: pre-formatted request bytes, and an answer read as status line, headers up to the
//! blank line, then `Content-Length` bytes (or chunks). `send_lag` (time from schedule to send,
//! for requests whose connection was free in time) measures the generator itself: if it grows,
//! the client, not the server, is late.

use std::collections::BinaryHeap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Makes the bytes of the next request (a whole HTTP/1.1 request, keep-alive).
pub(crate) trait Requests: Send + Sync + 'static {
    fn next(&self, rng: &mut SmallRng, out: &mut Vec<u8>);
}

/// One pre-formatted request, sent again and again.
pub(crate) struct Fixed(pub(crate) Vec<u8>);

impl Requests for Fixed {
    fn next(&self, _: &mut SmallRng, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
    }
}

/// A GET request for `path`, as wrk formats it.
pub(crate) fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes()
}

/// The figures of one open-loop window.
#[derive(Debug, Clone, Default)]
pub(crate) struct OpenRun {
    pub(crate) offered_rps: f64,
    pub(crate) achieved_rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
    /// I/O errors and answers other than 2xx/304.
    pub(crate) errors: u64,
    /// Requests scheduled in the window that had no answer by its end plus the grace.
    pub(crate) unfinished: u64,
    /// p99 of (send time − scheduled time) for requests whose connection was free in time.
    pub(crate) send_lag_p99_ms: f64,
    /// The worst latency recorded in each second of the window (requests by scheduled time).
    pub(crate) max_by_second_ms: Vec<f64>,
}

impl OpenRun {
    pub(crate) fn json(&self) -> Value {
        let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
        json!({
            "offered_rps": self.offered_rps.round(), "achieved_rps": self.achieved_rps.round(),
            "p50_ms": r3(self.p50_ms), "p99_ms": r3(self.p99_ms), "p999_ms": r3(self.p999_ms),
            "max_ms": r3(self.max_ms), "errors": self.errors, "unfinished": self.unfinished,
            "send_lag_p99_ms": r3(self.send_lag_p99_ms),
            "max_by_second_ms": self.max_by_second_ms.iter().map(|&x| r3(x)).collect::<Vec<_>>(),
        })
    }
}

const SETTLE: Duration = Duration::from_secs(1);
const GRACE: Duration = Duration::from_secs(5);

fn histogram() -> Histogram<u64> {
    // Nanoseconds, 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1_000, 600_000_000_000, 3).unwrap()
}

struct Conn {
    latency: Histogram<u64>,
    send_lag: Histogram<u64>,
    max_by_second: Vec<u64>,
    done: u64,
    /// When the last answer to a request of the window came in.
    last: Instant,
    errors: u64,
    unfinished: u64,
}

/// Offers `rate` requests a second over `connections` connections to `addr` for `secs` seconds
/// (after one settling second), requests made by `requests`. Blocks until done.
pub(crate) fn run(
    addr: SocketAddr,
    connections: u32,
    rate: f64,
    secs: u64,
    requests: Arc<dyn Requests>,
) -> OpenRun {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(drive(addr, connections, rate, secs, requests))
    })
    .join()
    .expect("the open-loop generator ran")
}

async fn drive(
    addr: SocketAddr,
    connections: u32,
    rate: f64,
    secs: u64,
    requests: Arc<dyn Requests>,
) -> OpenRun {
    let mut streams = Vec::new();
    for _ in 0..connections {
        let s = TcpStream::connect(addr).await.expect("server accepts");
        s.set_nodelay(true).unwrap();
        streams.push(s);
    }
    let clock = Clock::new();
    let clock_task = tokio::spawn(clock.clone().run());
    let start = Instant::now() + Duration::from_millis(20);
    let window = Duration::from_secs(secs);
    let (from, to) = (start + SETTLE, start + SETTLE + window);
    let interval = Duration::from_secs_f64(f64::from(connections) / rate);
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, stream)| {
            let phase = Duration::from_secs_f64(i as f64 / rate);
            let requests = requests.clone();
            tokio::spawn(connection(
                clock.clone(),
                addr,
                stream,
                requests,
                i as u64,
                start + phase,
                interval,
                (from, to),
                secs as usize,
            ))
        })
        .collect();
    let mut latency = histogram();
    let mut send_lag = histogram();
    let mut max_by_second = vec![0u64; secs as usize];
    let (mut done, mut errors, mut unfinished) = (0, 0, 0);
    let mut last = to;
    for t in tasks {
        let c = t.await.unwrap();
        latency.add(&c.latency).unwrap();
        send_lag.add(&c.send_lag).unwrap();
        for (m, x) in max_by_second.iter_mut().zip(c.max_by_second) {
            *m = (*m).max(x);
        }
        done += c.done;
        last = last.max(c.last);
        errors += c.errors;
        unfinished += c.unfinished;
    }
    clock.stop();
    clock_task.await.unwrap();
    let ms = |ns: u64| ns as f64 / 1e6;
    OpenRun {
        offered_rps: rate,
        // Answers over the time they took to come in: the window, or longer if the server fell
        // behind and answered the window's requests during the grace.
        achieved_rps: done as f64 / (last - from).as_secs_f64(),
        p50_ms: ms(latency.value_at_quantile(0.5)),
        p99_ms: ms(latency.value_at_quantile(0.99)),
        p999_ms: ms(latency.value_at_quantile(0.999)),
        max_ms: ms(latency.max()),
        errors,
        unfinished,
        send_lag_p99_ms: if send_lag.is_empty() {
            f64::NAN
        } else {
            ms(send_lag.value_at_quantile(0.99))
        },
        max_by_second_ms: max_by_second.into_iter().map(ms).collect(),
    }
}

/// The timer of the generator. Tokio's ticks in whole milliseconds, too coarse to schedule
/// sends a few tens of microseconds apart; a second thread to sleep and wake the connections
/// costs two context switches a request. So the runtime's own epoll waits on a timerfd armed
/// (absolute, nanoseconds, no timer slack) for the earliest send due: one thread, asleep until
/// a socket or the timer needs it.
struct Clock {
    timers: Mutex<BinaryHeap<Due>>,
    changed: Notify,
    stop: AtomicBool,
    /// The same moment as an `Instant` and as CLOCK_MONOTONIC (what `Instant` reads on Linux).
    origin: (Instant, Duration),
}

struct Due {
    at: Instant,
    waker: Waker,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    /// Reversed: the earliest is the greatest, on top of the (max-)heap.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.at.cmp(&self.at)
    }
}

/// The last few microseconds before a send are waited by yielding to the runtime.
const EARLY: Duration = Duration::from_micros(3);

fn monotonic() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

impl Clock {
    fn new() -> Arc<Clock> {
        Arc::new(Clock {
            timers: Mutex::new(BinaryHeap::new()),
            changed: Notify::new(),
            stop: AtomicBool::new(false),
            origin: (Instant::now(), monotonic()),
        })
    }

    /// The task that wakes connections when their send is due; ends when `stop` is called.
    async fn run(self: Arc<Self>) {
        use rustix::time::{
            timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags,
            TimerfdTimerFlags, Timespec,
        };
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )
        .expect("timerfd");
        // `AsyncFd::register` (the replacement) is `unsafe` for its I/O-safety contract, which
        // an `OwnedFd` upholds by itself; this crate forbids `unsafe`.
        #[allow(deprecated)]
        let fd = tokio::io::unix::AsyncFd::new(fd).expect("timerfd in epoll");
        let mut armed: Option<Instant> = None;
        while !self.stop.load(Ordering::Relaxed) {
            let next = {
                let mut timers = self.timers.lock().unwrap();
                let now = Instant::now();
                while timers.peek().is_some_and(|d| d.at <= now + EARLY) {
                    timers.pop().unwrap().waker.wake();
                }
                timers.peek().map(|d| d.at)
            };
            let Some(at) = next else {
                self.changed.notified().await;
                continue;
            };
            if armed != Some(at) {
                let t = self.origin.1 + at.saturating_duration_since(self.origin.0);
                let spec = Itimerspec {
                    it_interval: Timespec {
                        tv_sec: 0,
                        tv_nsec: 0,
                    },
                    it_value: Timespec {
                        tv_sec: t.as_secs() as _,
                        tv_nsec: t.subsec_nanos().into(),
                    },
                };
                timerfd_settime(fd.get_ref(), TimerfdTimerFlags::ABSTIME, &spec).expect("arm");
                armed = Some(at);
            }
            tokio::select! {
                ready = fd.readable() => {
                    let mut guard = ready.expect("timerfd readable");
                    let mut expirations = [0u8; 8];
                    let _ = rustix::io::read(fd.get_ref(), &mut expirations);
                    guard.clear_ready();
                    armed = None;
                }
                () = self.changed.notified() => {}
            }
        }
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// Resolves at `at`.
    fn at(self: &Arc<Self>, at: Instant) -> At {
        At {
            at,
            clock: self.clone(),
        }
    }
}

struct At {
    at: Instant,
    clock: Arc<Clock>,
}

impl Future for At {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let now = Instant::now();
        if now >= self.at {
            return Poll::Ready(());
        }
        if self.at - now <= EARLY {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let mut timers = self.clock.timers.lock().unwrap();
        let earliest = timers.peek().is_none_or(|d| self.at < d.at);
        timers.push(Due {
            at: self.at,
            waker: cx.waker().clone(),
        });
        drop(timers);
        if earliest {
            self.clock.changed.notify_one();
        }
        Poll::Pending
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    clock: Arc<Clock>,
    addr: SocketAddr,
    mut stream: TcpStream,
    requests: Arc<dyn Requests>,
    seed: u64,
    first: Instant,
    interval: Duration,
    (from, to): (Instant, Instant),
    secs: usize,
) -> Conn {
    let mut c = Conn {
        latency: histogram(),
        send_lag: histogram(),
        max_by_second: vec![0; secs],
        done: 0,
        last: from,
        errors: 0,
        unfinished: 0,
    };
    let mut rng = SmallRng::seed_from_u64(0x5eed_0000 + seed);
    let mut req = Vec::with_capacity(512);
    let mut buf = Vec::with_capacity(64 * 1024);
    let hard_stop = to + GRACE;
    let mut free_at = first;
    let mut k: u32 = 0;
    loop {
        let due = first + interval * k;
        k += 1;
        if due >= to {
            break;
        }
        let counted = due >= from;
        req.clear();
        requests.next(&mut rng, &mut req);
        let on_time = free_at <= due;
        clock.at(due).await;
        if counted && on_time {
            let lag = Instant::now().saturating_duration_since(due).as_nanos() as u64;
            c.send_lag.saturating_record(lag.max(1_000));
        }
        let exchange = tokio::time::timeout_at(hard_stop.into(), async {
            stream.write_all(&req).await?;
            read_answer(&mut stream, &mut buf).await
        })
        .await;
        let now = Instant::now();
        free_at = now;
        let status = match exchange {
            Ok(Ok(status)) => Some(status),
            Ok(Err(_)) => None,
            Err(_) => {
                // Out of time: this request and every later one scheduled in the window are
                // recorded with the latency they have at least.
                let mut d = due;
                while d < to {
                    if d >= from {
                        c.unfinished += 1;
                        record(&mut c, d, now, from);
                    }
                    d += interval;
                }
                break;
            }
        };
        if !counted {
            if status.is_none() {
                stream = reconnect(addr).await;
            }
            continue;
        }
        record(&mut c, due, now, from);
        c.done += 1;
        c.last = now;
        match status {
            Some(s) if (200..300).contains(&s) || s == 304 => {}
            Some(_) => c.errors += 1,
            None => {
                c.errors += 1;
                stream = reconnect(addr).await;
            }
        }
    }
    c
}

fn record(c: &mut Conn, due: Instant, now: Instant, from: Instant) {
    let ns = now.saturating_duration_since(due).as_nanos() as u64;
    c.latency.saturating_record(ns.max(1_000));
    let second = due.saturating_duration_since(from).as_secs() as usize;
    if let Some(m) = c.max_by_second.get_mut(second) {
        *m = (*m).max(ns);
    }
}

async fn reconnect(addr: SocketAddr) -> TcpStream {
    loop {
        if let Ok(s) = TcpStream::connect(addr).await {
            let _ = s.set_nodelay(true);
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn io_err(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

/// Reads one HTTP/1.1 answer; returns its status. `buf` is scratch space.
async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    buf.clear();
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        fill(stream, buf).await?;
    };
    let head = &buf[..head_end];
    let status = head
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| io_err("no status line"))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = value.eq_ignore_ascii_case(b"chunked");
        }
    }
    if status == 304 || status == 204 || (100..200).contains(&status) {
        return Ok(status);
    }
    if chunked {
        let mut at = head_end;
        loop {
            let line_end = loop {
                if let Some(i) = find(&buf[at..], b"\r\n") {
                    break at + i;
                }
                fill(stream, buf).await?;
            };
            let size_text = std::str::from_utf8(&buf[at..line_end]).map_err(|_| io_err("chunk"))?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .map_err(|_| io_err("chunk size"))?;
            // A chunk is its size line, its bytes and CRLF; the last (size 0) ends with CRLF
            // (no trailers are expected).
            let end = line_end + 2 + size + 2;
            while buf.len() < end {
                fill(stream, buf).await?;
            }
            at = end;
            if size == 0 {
                return Ok(status);
            }
        }
    }
    let end = head_end + length.ok_or_else(|| io_err("no content-length"))?;
    while buf.len() < end {
        fill(stream, buf).await?;
    }
    Ok(status)
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    if stream.read_buf(buf).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
