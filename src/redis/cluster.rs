//! Redis Cluster plumbing: the cluster client built from the seed URLs, and a SCAN that walks
//! every master (a cluster has no one keyspace to SCAN). Commands are routed by redis-rs's
//! cluster connection; what makes each Lua script's keys share a slot is in `keys`.

use std::time::Duration;

use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

use super::error::RedisError;

/// The node cursor's bits of a cluster SCAN cursor (see [`scan_step`]).
pub(super) const NODE_CURSOR: u64 = (1 << 48) - 1;

/// The cluster's masters that serve slots, in address order (`CLUSTER NODES`).
async fn masters(conn: &mut ClusterConnection) -> Result<Vec<(String, u16)>, RedisError> {
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(conn)
        .await
        .map_err(|e| RedisError::Redis(e.to_string()))?;
    let mut out: Vec<(String, u16)> = nodes
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let flags = f.get(2)?;
            let serves = f.len() > 8;
            if !flags.contains("master") || flags.contains("fail") || !serves {
                return None;
            }
            let addr = f.get(1)?.split('@').next()?;
            let (host, port) = addr.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The cluster client for the seed `urls` (credentials and TLS from the first), and a plain
/// client per seed.
pub(super) fn client(
    urls: &[String],
    tls_ca: Option<&Vec<u8>>,
    (connect_timeout, timeout): (Duration, Duration),
) -> Result<(redis::cluster::ClusterClient, Vec<redis::Client>), RedisError> {
    let bad = |e: redis::RedisError| RedisError::Config(format!("redis.cluster_urls: {e}"));
    let certs = || redis::TlsCertificates {
        client_tls: None,
        root_cert: tls_ca.cloned(),
    };
    let mut b = redis::cluster::ClusterClientBuilder::new(urls.iter().map(String::as_str))
        .connection_timeout(connect_timeout)
        .response_timeout(timeout.max(Duration::from_millis(1)))
        .retries(2)
        .min_retry_wait(10)
        .max_retry_wait(100);
    if tls_ca.is_some() {
        b = b.certs(certs());
    }
    let client = b.build().map_err(bad)?;
    let nodes = urls
        .iter()
        .map(|u| match tls_ca {
            None => redis::Client::open(u.as_str()),
            Some(_) => redis::Client::build_with_tls(u.as_str(), certs()),
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    Ok((client, nodes))
}

/// One step of a walk over every master: the top 16 bits of `cursor` say which master (in
/// address order), the rest is that master's SCAN cursor; `cmd` is the SCAN with the node's
/// cursor already in it. Returns the next cursor (0 when the last master is done) and the keys.
pub(super) async fn scan_step(
    conn: &mut ClusterConnection,
    cmd: redis::Cmd,
    cursor: u64,
) -> Result<(u64, Vec<String>), RedisError> {
    let masters = masters(conn).await?;
    let node = (cursor >> 48) as usize;
    let Some((host, port)) = masters.get(node).cloned() else {
        return Ok((0, Vec::new()));
    };
    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
    let raw = conn
        .route_command(cmd, routing)
        .await
        .map_err(|e| RedisError::Redis(e.to_string()))?;
    let (next, keys): (u64, Vec<String>) =
        redis::from_redis_value(raw).map_err(|e| RedisError::Redis(e.to_string()))?;
    let next = match (next, node + 1 < masters.len()) {
        (0, true) => ((node as u64) + 1) << 48,
        (0, false) => 0,
        (n, _) => ((node as u64) << 48) | (n & NODE_CURSOR),
    };
    Ok((next, keys))
}
