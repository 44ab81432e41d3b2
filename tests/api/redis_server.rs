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
    secure: Option<Secure>,
}

/// A server that speaks only TLS and knows only one ACL user (the `default` user is off).
pub struct Secure {
    /// The CA its certificate chains to.
    pub ca_file: PathBuf,
    pub user: String,
    pub password: String,
}

impl RedisServer {
    /// Starts a server without persistence (a `SAVE` still writes a snapshot to its own folder,
    /// which a restart loads).
    pub async fn start() -> RedisServer {
        Self::start_with(&[]).await
    }

    /// The same, with more `redis-server` arguments (e.g. `--maxmemory`).
    pub async fn start_with(args: &[&str]) -> RedisServer {
        Self::start_inner(args, None).await
    }

    /// A TLS-only server with `pki`'s certificate, whose only user is `user` with `password`.
    pub async fn start_secure(pki: &crate::pki::Pki, user: &str, password: &str) -> RedisServer {
        let cert = pki.cert_file.to_string_lossy().into_owned();
        let key = pki.key_file.to_string_lossy().into_owned();
        let ca = pki.ca_file.to_string_lossy().into_owned();
        let secret = format!(">{password}");
        let args = [
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
            "--user",
            "default",
            "off",
            "--user",
            user,
            "on",
            &secret,
            "~*",
            "&*",
            "+@all",
        ];
        let secure = Secure {
            ca_file: pki.ca_file.clone(),
            user: user.to_owned(),
            password: password.to_owned(),
        };
        Self::start_inner(&args, Some(secure)).await
    }

    async fn start_inner(args: &[&str], secure: Option<Secure>) -> RedisServer {
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
            secure,
        };
        server.spawn().await;
        server
    }

    /// The server's URL; for a secure one `rediss://user:password@localhost:port`.
    pub fn url(&self) -> String {
        match &self.secure {
            None => format!("redis://127.0.0.1:{}", self.port),
            Some(s) => format!("rediss://{}:{}@localhost:{}", s.user, s.password, self.port),
        }
    }

    /// A client for the test's own use (trusting the test's CA).
    pub fn client(&self) -> redis::Client {
        match &self.secure {
            None => redis::Client::open(self.url()).unwrap(),
            Some(s) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(&s.ca_file).expect("CA file")),
                },
            )
            .unwrap(),
        }
    }

    /// A connection for assertions and for making faults.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .expect("connection to the test's redis-server")
    }

    /// The keys matching `pattern` (KEYS: a test server holds few).
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut c = self.conn().await;
        redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut c)
            .await
            .unwrap()
    }

    async fn spawn(&self) {
        let port = self.port.to_string();
        let (plain, tls) = match self.secure {
            None => (port.as_str(), "0"),
            Some(_) => ("0", port.as_str()),
        };
        let child = Command::new("redis-server")
            .args(["--port", plain, "--tls-port", tls])
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
            if let Ok(mut conn) = self.client().get_multiplexed_async_connection().await {
                let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    return;
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
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
