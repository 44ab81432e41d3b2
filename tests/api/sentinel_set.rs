//! A Sentinel deployment of the test's own: a master, a replica and three sentinels, each a
//! `redis-server` process on a free loopback port, stopped by its own id on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::redis_server::{free_port, RedisServer};

pub const MASTER_NAME: &str = "mymaster";

pub struct SentinelSet {
    pub master: RedisServer,
    pub replica: RedisServer,
    sentinels: Vec<(u16, Child)>,
    dir: PathBuf,
}

impl SentinelSet {
    /// Starts the five processes and waits until the sentinels know the master and its replica.
    pub async fn start() -> SentinelSet {
        let master = RedisServer::start().await;
        let mport = master.port.to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &mport]).await;
        let dir = std::env::temp_dir().join(format!(
            "sidecache-sentinels-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("sentinel folder");
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {mport} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 5000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    dir.display()
                ),
            )
            .expect("sentinel config");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel");
            sentinels.push((port, child));
        }
        let set = SentinelSet {
            master,
            replica,
            sentinels,
            dir,
        };
        set.wait_until_known().await;
        set
    }

    /// `redis://127.0.0.1:<port>` of each sentinel.
    pub fn urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|(p, _)| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    pub async fn sentinel(&self, i: usize) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.urls()[i].as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("sentinel connection")
    }

    async fn wait_until_known(&self) {
        for _ in 0..400 {
            let mut ready = true;
            for i in 0..self.sentinels.len() {
                let Ok(c) = redis::Client::open(self.urls()[i].as_str()) else {
                    ready = false;
                    break;
                };
                let Ok(mut c) = c.get_multiplexed_async_connection().await else {
                    ready = false;
                    break;
                };
                let replicas: Result<Vec<redis::Value>, _> = redis::cmd("SENTINEL")
                    .arg("REPLICAS")
                    .arg(MASTER_NAME)
                    .query_async(&mut c)
                    .await;
                if !replicas.is_ok_and(|r| !r.is_empty()) {
                    ready = false;
                    break;
                }
            }
            if ready && self.replica_in_sync().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the sentinels did not learn the master and its replica");
    }

    async fn replica_in_sync(&self) -> bool {
        let mut c = self.replica.conn().await;
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut c)
            .await
            .unwrap_or_default();
        info.contains("master_link_status:up")
    }

    /// `SENTINEL FAILOVER` (no agreement needed), then waits until the replica is the master.
    pub async fn fail_over(&self) {
        let mut s = self.sentinel(0).await;
        let _: () = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(MASTER_NAME)
            .query_async(&mut s)
            .await
            .expect("failover started");
        for _ in 0..400 {
            let mut c = self.replica.conn().await;
            let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut c).await.unwrap();
            let named = matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master");
            let told: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(MASTER_NAME)
                .query_async(&mut s)
                .await
                .unwrap();
            if named && told.is_some_and(|(_, p)| p == self.replica.port) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the replica was not promoted");
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for (_, c) in &mut self.sentinels {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
