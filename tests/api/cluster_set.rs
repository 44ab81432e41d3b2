//! Redis Cluster for tests: the cluster the suite's key tests run against (named by
//! `SIDECACHE_TEST_REDIS_CLUSTER`, started by `scripts/test-cluster` as a nextest setup script),
//! a test's own cluster of processes it can kill ([`RedisCluster`]), and [`TestRedis`], the
//! connection tests look into Redis with, whichever the mode.

#![allow(dead_code)]

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::redis_server::RedisServer;

/// The seed nodes of the suite's cluster, when the tests run against one.
pub fn suite_cluster() -> Option<Vec<String>> {
    let raw = std::env::var("SIDECACHE_TEST_REDIS_CLUSTER").ok()?;
    let urls: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    (!urls.is_empty()).then_some(urls)
}

/// A connection for assertions: to the one server, or to the cluster (commands routed by key).
#[derive(Clone)]
pub enum TestRedis {
    One(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl TestRedis {
    /// To the suite's cluster if there is one, else to `url`.
    pub async fn open(url: &str) -> TestRedis {
        match suite_cluster() {
            Some(nodes) => TestRedis::Cluster(
                redis::cluster::ClusterClient::new(nodes)
                    .unwrap()
                    .get_async_connection()
                    .await
                    .expect("cluster connection for assertions"),
            ),
            None => TestRedis::One(
                redis::Client::open(url)
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .expect("redis for assertions"),
            ),
        }
    }

    /// Every key matching `pattern` (on every master of a cluster).
    pub async fn scan(&mut self, pattern: &str) -> Vec<String> {
        let masters = match self {
            TestRedis::One(_) => vec![None],
            TestRedis::Cluster(c) => masters(c).await.into_iter().map(Some).collect(),
        };
        let mut keys = Vec::new();
        for master in masters {
            let mut cursor: u64 = 0;
            loop {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000);
                let (next, batch): (u64, Vec<String>) = match (&mut *self, &master) {
                    (TestRedis::Cluster(c), Some((host, port))) => {
                        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        });
                        match c.route_command(cmd, routing).await {
                            Ok(v) => redis::from_redis_value(v).unwrap(),
                            Err(_) => break,
                        }
                    }
                    (c, _) => match cmd.query_async(c).await {
                        Ok(v) => v,
                        Err(_) => break,
                    },
                };
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        keys
    }

    /// Deletes every key matching `pattern`, one by one (keys of many slots).
    pub async fn delete_matching(&mut self, pattern: &str) {
        for key in self.scan(pattern).await {
            let _: Result<i64, _> = redis::cmd("DEL").arg(&key).query_async(self).await;
        }
    }
}

impl ConnectionLike for TestRedis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            TestRedis::One(c) => c.req_packed_command(cmd),
            TestRedis::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            TestRedis::One(c) => c.req_packed_commands(cmd, offset, count),
            TestRedis::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            TestRedis::One(c) => c.get_db(),
            TestRedis::Cluster(c) => c.get_db(),
        }
    }
}

/// The masters serving slots, from `CLUSTER NODES`.
async fn masters(c: &mut ClusterConnection) -> Vec<(String, u16)> {
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(c)
        .await
        .unwrap_or_default();
    nodes
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let flags = f.get(2)?;
            if !flags.contains("master") || flags.contains("fail") || f.len() <= 8 {
                return None;
            }
            let (host, port) = f.get(1)?.split('@').next()?.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

/// A cluster of the test's own: `masters` masters with one replica each, a short
/// `cluster-node-timeout`, every process stopped (by its own pid) on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start(masters: usize) -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..masters * 2 {
            // The cluster bus on a free port of its own (by default port + 10000).
            let bus = crate::redis_server::free_port().to_string();
            nodes.push(
                RedisServer::start_with(&[
                    "--cluster-port",
                    &bus,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-replica-validity-factor",
                    "0",
                    // Replicas in sync at once, not after the default 5 s wait for more.
                    "--repl-diskless-sync-delay",
                    "0",
                ])
                .await,
            );
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli on the PATH");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_ok().await;
        cluster
    }

    /// Seed URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Waits until every live node says `cluster_state:ok` and knows every slot.
    pub async fn wait_ok(&self) {
        for _ in 0..400 {
            let mut ok = true;
            for n in &self.nodes {
                let Ok(mut c) = n.client().get_multiplexed_async_connection().await else {
                    continue; // a killed node
                };
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                ok &= info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384");
                // A replica counts once its link to its master is up (synced).
                let repl: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                ok &= repl.contains("role:master") || repl.contains("master_link_status:up");
            }
            if ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the cluster never became ok");
    }

    /// The node serving `key`'s slot as master.
    pub async fn master_of(&self, key: &str) -> &RedisServer {
        let slot = sidecache::redis::slot(key);
        for n in &self.nodes {
            let Ok(mut c) = n.client().get_multiplexed_async_connection().await else {
                continue;
            };
            let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut c).await.unwrap();
            if !matches!(role.first(), Some(Value::BulkString(r)) if r == b"master") {
                continue;
            }
            let slots: Vec<Vec<Value>> = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async(&mut c)
                .await
                .unwrap();
            for range in slots {
                let (Some(Value::Int(lo)), Some(Value::Int(hi))) = (range.first(), range.get(1))
                else {
                    continue;
                };
                let port = match range.get(2) {
                    Some(Value::Array(node)) => match node.get(1) {
                        Some(Value::Int(p)) => *p as u16,
                        _ => 0,
                    },
                    _ => 0,
                };
                if (*lo..=*hi).contains(&i64::from(slot)) && port == n.port {
                    return n;
                }
            }
        }
        panic!("no master serves slot {slot}");
    }
}
