//! A `redis-server` process of the test's own, on a free loopback port, for tests that make Redis
//! lose its state (kill and restart it, `FLUSHALL` it, restart it from a snapshot). Only this
//! process is ever stopped, by its own id; the machine's Redis is never touched.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
    args: Vec<String>,
}

impl RedisServer {
    /// Starts a server without persistence (a `SAVE` still writes a snapshot to its own folder,
    /// which a restart loads).
    pub async fn start() -> RedisServer {
        Self::start_with(&[]).await
    }

    /// The same, with more `redis-server` arguments (e.g. `--maxmemory`).
    pub async fn start_with(args: &[&str]) -> RedisServer {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "sidecache-redis-{port}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("redis folder");
        let server = RedisServer {
            port,
            dir,
            child: Mutex::new(None),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        server.spawn().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connection for assertions and for making faults.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connection to the test's redis-server")
    }

    async fn spawn(&self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH");
        *self.child.lock().unwrap() = Some(child);
        for _ in 0..200 {
            if let Ok(c) = redis::Client::open(self.url()) {
                if let Ok(mut conn) = c.get_multiplexed_async_connection().await {
                    let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
                    if pong.is_ok() {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server on port {} did not come up", self.port);
    }

    /// Kills the server (SIGKILL to its own pid): everything not in a snapshot is gone.
    pub fn kill(&self) {
        let child = self.child.lock().unwrap().take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port; it loads its last `SAVE`, if any.
    pub async fn restart(&self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
