//! A randomized consistency check: concurrent readers and writers over a few leads, across two
//! instances, with writes both through sidecache and by plain SQL. Every read's version is
//! recorded with its start and end; the check fails if a read that started after a write was
//! acknowledged by the same instance returns an older version, and reports the worst staleness
//! seen across instances and behind sidecache's back (bounded generously here; the benchmark
//! measures it properly).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::json;

use crate::spawn::{spawn_app, TestApp};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    A,
    B,
    Sql,
}

#[derive(Debug, Clone)]
struct Write {
    lead: usize,
    via: Via,
    version: i64,
    acked: Instant,
}

#[derive(Debug, Clone)]
struct Read {
    lead: usize,
    via: Via,
    started: Instant,
    version: i64,
}

const LEADS: usize = 4;
const READERS: usize = 4;
const API_WRITES_EACH: usize = 50;
const API_WRITERS: usize = 2;
const SQL_WRITES: usize = 50;
/// Most API writes go through A, so that B's reads depend on hearing about them: B's own writes
/// would otherwise refresh its L1 often enough to hide a broken channel.
const VIA_B: f64 = 0.1;
/// Generous next to the milliseconds measured by the propagation benchmark, yet far below what
/// a broken channel produces over this run (seconds: until the next local write or TTL).
const STALENESS_BOUND: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_read_is_older_than_a_write_acknowledged_before_it_on_the_same_instance() {
    let a = Arc::new(spawn_app().await);
    let b = Arc::new(a.spawn_peer(|_| {}).await);
    let org = a.create_org("+15550001000").await;
    let o = org["id"].as_str().unwrap().to_owned();
    let mut leads = Vec::new();
    for i in 0..LEADS {
        let phone = format!("+1555000300{i}");
        let l = a.create_lead(&o, &phone, "Start").await;
        leads.push((l["id"].as_str().unwrap().to_owned(), phone));
    }
    let leads = Arc::new(leads);
    let writes: Arc<Mutex<Vec<Write>>> = Arc::default();
    let reads: Arc<Mutex<Vec<Read>>> = Arc::default();
    let app = |via: Via| -> Arc<TestApp> {
        match via {
            Via::A => a.clone(),
            _ => b.clone(),
        }
    };

    let mut tasks = Vec::new();
    for _ in 0..API_WRITERS {
        let (leads, writes, a, b) = (leads.clone(), writes.clone(), app(Via::A), app(Via::B));
        tasks.push(tokio::spawn(async move {
            for n in 0..API_WRITES_EACH {
                let (lead, via, pause) = {
                    let mut rng = rand::rng();
                    let via = if rng.random_bool(VIA_B) {
                        Via::B
                    } else {
                        Via::A
                    };
                    (rng.random_range(0..LEADS), via, rng.random_range(10..60))
                };
                let target = if via == Via::A { &a } else { &b };
                let r = target
                    .patch(
                        &format!("/v1/leads/{}", leads[lead].0),
                        json!({"first_name": format!("W{n}")}),
                    )
                    .await;
                assert!(r.status.is_success(), "{}", r.text);
                writes.lock().unwrap().push(Write {
                    lead,
                    via,
                    version: r.version(),
                    acked: Instant::now(),
                });
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }));
    }
    {
        let (leads, writes, db) = (leads.clone(), writes.clone(), a.db.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..SQL_WRITES {
                let (lead, pause) = {
                    let mut rng = rand::rng();
                    (rng.random_range(0..LEADS), rng.random_range(10..60))
                };
                let version: i64 = sqlx::query_scalar(
                    "UPDATE leads SET first_name = $1 WHERE id = $2::uuid RETURNING version",
                )
                .bind(format!("S{n}"))
                .bind(&leads[lead].0)
                .fetch_one(&db)
                .await
                .unwrap();
                writes.lock().unwrap().push(Write {
                    lead,
                    via: Via::Sql,
                    version,
                    acked: Instant::now(),
                });
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }));
    }
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let (leads, reads, a, b) = (leads.clone(), reads.clone(), app(Via::A), app(Via::B));
        let org = o.clone();
        let writing = writing.clone();
        readers.push(tokio::spawn(async move {
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                let (lead, via, shape) = {
                    let mut rng = rand::rng();
                    let via = if rng.random_bool(0.5) { Via::A } else { Via::B };
                    (rng.random_range(0..LEADS), via, rng.random_range(0..3))
                };
                let (id, phone) = &leads[lead];
                let path = match shape {
                    0 => format!("/v1/leads/{id}"),
                    1 => format!(
                        "/v1/leads/by-phone/{}?organization_id={org}",
                        phone.replace('+', "%2B")
                    ),
                    _ => format!("/v1/leads/{id}/context"),
                };
                let target = if via == Via::A { &a } else { &b };
                let started = Instant::now();
                let r = target.get(&path).await;
                assert!(r.status.is_success(), "{path}: {}", r.text);
                let version = if shape == 2 {
                    r.body["lead"]["version"].as_i64().unwrap_or(-1)
                } else {
                    r.version()
                };
                reads.lock().unwrap().push(Read {
                    lead,
                    via,
                    started,
                    version,
                });
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    for t in readers {
        t.await.unwrap();
    }

    let writes = writes.lock().unwrap().clone();
    let reads = reads.lock().unwrap().clone();
    let mut violations = Vec::new();
    let mut worst_peer = Duration::ZERO;
    let mut worst_sql = Duration::ZERO;
    for r in &reads {
        let before: Vec<&Write> = writes
            .iter()
            .filter(|w| w.lead == r.lead && w.acked < r.started)
            .collect();
        // Read-your-writes on the instance that took the write: strict.
        if let Some(w) = before
            .iter()
            .filter(|w| w.via == r.via)
            .max_by_key(|w| w.version)
        {
            if r.version < w.version {
                violations.push(format!(
                    "read on {:?} of lead {} saw v{} although v{} was acknowledged there {:?} before it began",
                    r.via,
                    r.lead,
                    r.version,
                    w.version,
                    r.started - w.acked
                ));
            }
        }
        // Elsewhere: how long after the first write it missed was acknowledged did it start?
        for w in before.iter().filter(|w| w.version > r.version) {
            let late = r.started - w.acked;
            match w.via {
                Via::Sql => worst_sql = worst_sql.max(late),
                v if v != r.via => worst_peer = worst_peer.max(late),
                _ => {}
            }
        }
    }
    println!(
        "consistency: {} reads, {} writes; read-your-writes violations: {}; worst staleness: \
         other instance's write {:?}, plain-SQL write {:?}",
        reads.len(),
        writes.len(),
        violations.len(),
        worst_peer,
        worst_sql
    );
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    assert!(reads.len() >= 1000, "enough reads to mean something");
    assert!(
        worst_peer < STALENESS_BOUND,
        "another instance's write took {worst_peer:?} to be seen"
    );
    assert!(
        worst_sql < STALENESS_BOUND,
        "a plain-SQL write took {worst_sql:?} to be seen"
    );
}
