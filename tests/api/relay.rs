//! A TCP relay to put between sidecache and a dependency, to cut, hang or slow it without
//! touching the machine's own services.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

use crate::fixtures::database_base_url;

/// A TCP relay in front of a dependency, to simulate its faults without touching the machine's
/// own services: `cut()` drops every open connection and refuses new ones (the dependency looks
/// dead); `blackhole()` accepts connections and forwards nothing (it hangs); `delay(d)` holds
/// every answer for `d` (it is slow); `restore()` forwards again.
pub struct Relay {
    pub addr: SocketAddr,
    mode: Arc<AtomicU64>,
    kill: broadcast::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

const FORWARD: u64 = 0;
const REFUSE: u64 = 1;
const BLACKHOLE: u64 = 2;
/// Modes from here on are a delay of `mode - DELAY` milliseconds.
const DELAY: u64 = 3;

/// Copies one direction; `answers` is the upstream-to-client direction, which delays apply to.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<AtomicU64>,
    answers: bool,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            match mode.load(Ordering::SeqCst) {
                BLACKHOLE => tokio::time::sleep(Duration::from_millis(5)).await,
                m if m >= DELAY && answers => {
                    tokio::time::sleep(Duration::from_millis(m - DELAY)).await;
                    break;
                }
                _ => break,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Relay {
    pub async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU64::new(FORWARD));
        let (kill, _) = broadcast::channel(1);
        let task = {
            let mode = mode.clone();
            let kill = kill.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((mut down, _)) = listener.accept().await else {
                        break;
                    };
                    if mode.load(Ordering::SeqCst) == REFUSE {
                        let _ = down.shutdown().await;
                        continue;
                    }
                    let mut killed = kill.subscribe();
                    let mode = mode.clone();
                    tokio::spawn(async move {
                        let Ok(up) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let _ = up.set_nodelay(true);
                        let _ = down.set_nodelay(true);
                        let (down_r, down_w) = down.into_split();
                        let (up_r, up_w) = up.into_split();
                        tokio::select! {
                            _ = pump(down_r, up_w, mode.clone(), false) => {}
                            _ = pump(up_r, down_w, mode, true) => {}
                            _ = killed.recv() => {}
                        }
                    });
                }
            })
        };
        Relay {
            addr,
            mode,
            kill,
            task,
        }
    }

    /// Starts refusing from the outset (the dependency is down before the app starts).
    pub async fn start_cut(upstream: SocketAddr) -> Relay {
        let r = Relay::start(upstream).await;
        r.cut();
        r
    }

    /// The dependency dies: open connections drop, new ones are refused.
    pub fn cut(&self) {
        self.mode.store(REFUSE, Ordering::SeqCst);
        let _ = self.kill.send(());
    }

    /// The dependency hangs: connections are accepted, nothing comes back.
    pub fn blackhole(&self) {
        self.mode.store(BLACKHOLE, Ordering::SeqCst);
    }

    /// The dependency is slow: every answer is held for `by`.
    pub fn delay(&self, by: Duration) {
        self.mode
            .store(DELAY + by.as_millis() as u64, Ordering::SeqCst);
    }

    /// Back to normal. Connections that lived through a black hole are dropped (what they had
    /// sent is lost), so their clients reconnect cleanly.
    pub fn restore(&self) {
        if self.mode.swap(FORWARD, Ordering::SeqCst) == BLACKHOLE {
            let _ = self.kill.send(());
        }
    }

    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// A Postgres URL for `database` through this relay.
    pub fn postgres_url(&self, database: &str) -> String {
        let base = database_base_url();
        let user = base
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split_once('@'))
            .map(|(user, _)| format!("{user}@"))
            .unwrap_or_default();
        format!("postgres://{user}{}/{database}", self.addr)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.kill.send(());
    }
}
