//! Coherence across instances and behind sidecache's back: the peer bus, the Postgres change
//! listener (outbox + NOTIFY), their outages, and fleet-wide fenced fills and single flight.
//! Bounds here are generous (seconds); the real figures come from `benches/propagation.rs`.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use sidecache::cache::{CacheKey, FillHook};

use crate::fixtures::{eventually, postgres_addr, redis_addr};
use crate::lookups::world;
use crate::relay::Relay;
use crate::spawn::{spawn_app, TestApp};

const BOUND: Duration = Duration::from_secs(5);

/// Reads `path` twice on `app` so the second answer comes from its L1.
async fn warm(app: &TestApp, path: &str) -> i64 {
    app.get(path).await;
    let a = app.get(path).await;
    assert_eq!(a.cache(), "HIT-L1", "{path} is warm: {}", a.text);
    a.version()
}

async fn sql(app: &TestApp, statement: &str) {
    sqlx::query(statement)
        .execute(&app.db)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

#[tokio::test]
async fn a_write_through_one_instance_reaches_the_other_over_the_bus() {
    let a = spawn_app().await;
    // No change listener on B: only the bus can tell it.
    let b = a.spawn_peer(|s| s.coherence.listener = false).await;
    let w = world(&a).await;
    let path = format!("/v1/leads/{}", w.lead_id());
    assert_eq!(warm(&b, &path).await, 1);

    let ack = a.patch(&path, json!({"first_name": "Augusta"})).await;
    assert_eq!(ack.status, StatusCode::OK);
    let (seen, took) = b.get_until(&path, BOUND, |r| r.version() == 2).await;
    assert_eq!(
        seen.version(),
        2,
        "B still serves the old lead after {took:?}"
    );
    assert_eq!(seen.body["first_name"], "Augusta");
    assert!(
        b.metric("sidecache_invalidations_total", &[("source", "peer")])
            .await
            >= 1.0
    );
    assert!(
        b.metric(
            "sidecache_invalidation_lag_seconds_count",
            &[("source", "peer")]
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_plain_sql_write_reaches_every_instance() {
    let a = spawn_app().await;
    let b = a.spawn_peer(|_| {}).await;
    let w = world(&a).await;
    let (l, o) = (w.lead_id().to_owned(), w.org_id().to_owned());
    let path = format!("/v1/leads/{l}");
    let by_phone = format!("/v1/leads/by-phone/%2B15550002000?organization_id={o}");
    for app in [&a, &b] {
        warm(app, &path).await;
        warm(app, &by_phone).await;
    }
    assert!(a.in_redis(&format!("lead:id:{l}")).await);

    sql(
        &a,
        &format!("UPDATE leads SET first_name = 'Behind' WHERE id = '{l}'"),
    )
    .await;
    for app in [&a, &b] {
        for p in [&path, &by_phone] {
            let (seen, took) = app.get_until(p, BOUND, |r| r.version() == 2).await;
            assert_eq!(seen.version(), 2, "{p} still stale after {took:?}");
            assert_eq!(seen.body["first_name"], "Behind");
        }
        assert!(
            app.metric("sidecache_invalidations_total", &[("source", "notify")])
                .await
                >= 1.0
        );
    }
}

#[tokio::test]
async fn a_phone_change_behind_sidecaches_back_drops_both_phone_keys_everywhere() {
    let a = spawn_app().await;
    let b = a.spawn_peer(|_| {}).await;
    let w = world(&a).await;
    let (l, o) = (w.lead_id().to_owned(), w.org_id().to_owned());
    let old = format!("/v1/leads/by-phone/%2B15550002000?organization_id={o}");
    let new = format!("/v1/leads/by-phone/%2B15550002999?organization_id={o}");
    for app in [&a, &b] {
        warm(app, &old).await;
        // The new number is unknown so far: a cached negative entry.
        app.get(&new).await;
        assert_eq!(app.get(&new).await.status, StatusCode::NOT_FOUND);
    }

    sql(
        &a,
        &format!("UPDATE leads SET phone_number = '+15550002999' WHERE id = '{l}'"),
    )
    .await;
    for app in [&a, &b] {
        let (gone, took) = app
            .get_until(&old, BOUND, |r| r.status == StatusCode::NOT_FOUND)
            .await;
        assert_eq!(
            gone.status,
            StatusCode::NOT_FOUND,
            "old number still answers after {took:?}"
        );
        let (found, took) = app
            .get_until(&new, BOUND, |r| r.status == StatusCode::OK)
            .await;
        assert_eq!(
            found.status,
            StatusCode::OK,
            "new number still 404 after {took:?}"
        );
        assert_eq!(found.body["id"], l.as_str());
    }
}

#[tokio::test]
async fn an_organization_change_changes_the_greeting_everywhere() {
    let a = spawn_app().await;
    let b = a.spawn_peer(|_| {}).await;
    let w = world(&a).await;
    let (l, o) = (w.lead_id().to_owned(), w.org_id().to_owned());
    let path = format!("/v1/leads/{l}/greeting?channel=voice");
    for app in [&a, &b] {
        warm(app, &path).await;
    }

    // Through sidecache A.
    let r = a
        .patch(
            &format!("/v1/organizations/{o}"),
            json!({"greeting_template": "Hello {first_name}, this is {org_name}."}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let want = format!("Hello Ada, this is {}.", w.org["name"].as_str().unwrap());
    for app in [&a, &b] {
        let (g, took) = app
            .get_until(&path, BOUND, |r| r.body["greeting"] == want.as_str())
            .await;
        assert_eq!(g.body["greeting"], want.as_str(), "after {took:?}");
    }

    // Behind its back.
    for app in [&a, &b] {
        warm(app, &path).await;
    }
    sql(
        &a,
        &format!("UPDATE organizations SET name = 'Renamed Dental' WHERE id = '{o}'"),
    )
    .await;
    for app in [&a, &b] {
        let (g, took) = app
            .get_until(&path, BOUND, |r| {
                r.body["greeting"] == "Hello Ada, this is Renamed Dental."
            })
            .await;
        assert_eq!(
            g.body["greeting"], "Hello Ada, this is Renamed Dental.",
            "after {took:?}"
        );
    }
}

#[tokio::test]
async fn own_writes_are_not_invalidated_twice() {
    let a = spawn_app().await;
    let w = world(&a).await;
    let path = format!("/v1/leads/{}", w.lead_id());
    let own = || a.metric("sidecache_outbox_rows_total", &[("action", "own_write")]);
    // The world's own four writes (organization, lead, two conversations) come through first.
    assert!(eventually(BOUND, || async { own().await == 4.0 }).await);
    let before = own().await;
    for i in 0..5 {
        let r = a.patch(&path, json!({"first_name": format!("N{i}")})).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // The listener sees each write's row, written under this instance's application_name, and
    // leaves it alone: the write route has dropped everything already.
    assert!(
        eventually(BOUND, || async { own().await - before == 5.0 }).await,
        "the listener skipped the instance's own writes"
    );
    assert_eq!(
        a.metric("sidecache_outbox_rows_total", &[("action", "applied")])
            .await,
        0.0,
        "and applied none of them a second time"
    );
}

#[tokio::test]
async fn a_change_committed_late_with_a_lower_outbox_id_is_not_missed() {
    let a = spawn_app().await;
    let org = a.create_org("+15550001000").await;
    let o = org["id"].as_str().unwrap();
    let l1 = a.create_lead(o, "+15550002001", "One").await;
    let l2 = a.create_lead(o, "+15550002002", "Two").await;
    let (p1, p2) = (
        format!("/v1/leads/{}", l1["id"].as_str().unwrap()),
        format!("/v1/leads/{}", l2["id"].as_str().unwrap()),
    );
    warm(&a, &p1).await;
    warm(&a, &p2).await;

    // A transaction takes outbox id N and stays open...
    let mut slow = a.db.begin().await.unwrap();
    sqlx::query("UPDATE leads SET first_name = 'Late' WHERE id = $1::uuid")
        .bind(l1["id"].as_str().unwrap())
        .execute(&mut *slow)
        .await
        .unwrap();
    // ...while another commits id N+1, which the listener applies (moving past N).
    sql(
        &a,
        &format!(
            "UPDATE leads SET first_name = 'Quick' WHERE id = '{}'",
            l2["id"].as_str().unwrap()
        ),
    )
    .await;
    let (quick, _) = a.get_until(&p2, BOUND, |r| r.version() == 2).await;
    assert_eq!(quick.body["first_name"], "Quick");
    // Then N commits: its row is below the listener's last id, and must still be applied.
    slow.commit().await.unwrap();
    let (late, took) = a.get_until(&p1, BOUND, |r| r.version() == 2).await;
    assert_eq!(
        late.body["first_name"], "Late",
        "a late commit was missed ({took:?})"
    );
}

#[tokio::test]
async fn the_listener_replays_the_outbox_after_an_outage() {
    let a = spawn_app().await;
    let relay = Relay::start(postgres_addr()).await;
    let url = relay.postgres_url(&a.database_name());
    // B hears changes only through its listener, whose connection goes through the relay.
    let b = a
        .spawn_peer(|s| {
            s.coherence.bus = false;
            s.coherence.listener_url = sidecache::config::SecretUrl::new(url);
        })
        .await;
    let w = world(&a).await;
    let path = format!("/v1/leads/{}", w.lead_id());
    assert!(
        eventually(BOUND, || async {
            b.metric("sidecache_listener_up", &[]).await == 1.0
        })
        .await
    );
    warm(&b, &path).await;

    relay.cut();
    assert!(
        eventually(BOUND, || async {
            b.metric("sidecache_listener_up", &[]).await == 0.0
        })
        .await,
        "B noticed its listener connection is gone"
    );
    sql(
        &a,
        &format!(
            "UPDATE leads SET first_name = 'WhileAway' WHERE id = '{}'",
            w.lead_id()
        ),
    )
    .await;
    // The change is in the outbox; nobody told B. Its (long-lived) L1 entry is still there.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stale = b.get(&path).await;
    assert_eq!(
        (stale.cache(), stale.version()),
        ("HIT-L1", 1),
        "B cannot know yet"
    );

    relay.restore();
    let (seen, took) = b.get_until(&path, BOUND, |r| r.version() == 2).await;
    assert_eq!(
        seen.body["first_name"], "WhileAway",
        "the outbox replay applied the change ({took:?})"
    );
    assert_eq!(b.metric("sidecache_listener_up", &[]).await, 1.0);
}

#[tokio::test]
async fn after_a_bus_outage_an_instance_flushes_l1_and_serves_nothing_stale() {
    let a = spawn_app().await;
    let relay = Relay::start(redis_addr()).await;
    let bus_url = relay.redis_url();
    // B hears peers only over the bus (no listener), and subscribes through the relay.
    let b = a
        .spawn_peer(|s| {
            s.coherence.listener = false;
            s.coherence.bus_url = sidecache::config::SecretUrl::new(bus_url);
        })
        .await;
    let w = world(&a).await;
    let path = format!("/v1/leads/{}", w.lead_id());
    assert!(
        eventually(BOUND, || async {
            b.metric("sidecache_bus_up", &[]).await == 1.0
        })
        .await
    );
    warm(&b, &path).await;

    relay.cut();
    assert!(
        eventually(BOUND, || async {
            b.metric("sidecache_bus_up", &[]).await == 0.0
        })
        .await,
        "B noticed it lost its subscription"
    );
    let ack = a.patch(&path, json!({"first_name": "DuringOutage"})).await;
    assert_eq!(ack.status, StatusCode::OK);
    let stale = b.get(&path).await;
    assert_eq!(
        stale.version(),
        1,
        "the message was lost on B's side: it cannot know yet"
    );

    relay.restore();
    assert!(
        eventually(BOUND, || async {
            b.metric("sidecache_bus_up", &[]).await == 1.0
        })
        .await,
        "B resubscribed"
    );
    let after = b.get(&path).await;
    assert_eq!(
        after.version(),
        2,
        "nothing stale after the resubscription: {}",
        after.text
    );
    assert_eq!(
        b.metric(
            "sidecache_l1_flushes_total",
            &[("reason", "bus_resubscribe")]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_lost_peer_message_flushes_l1() {
    let a = spawn_app().await;
    let b = a.spawn_peer(|s| s.coherence.listener = false).await;
    let w = world(&a).await;
    let path = format!("/v1/leads/{}", w.lead_id());
    warm(&b, &path).await;
    assert!(
        eventually(BOUND, || async {
            b.metric("sidecache_bus_messages_total", &[("direction", "received")])
                .await
                >= 2.0
        })
        .await
    );
    // A peer whose sequence jumps from 1 to 3: message 2 was lost on the way.
    let mut conn = a.redis.clone();
    let channel = format!("{}:v1:bus", a.namespace);
    for (seq, keys) in [(1, vec![]), (3, vec![format!("lead:id:{}", w.lead_id())])] {
        let msg = json!({"o": "ghost", "s": seq, "t": 0, "k": keys});
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(msg.to_string())
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    assert!(
        eventually(BOUND, || async {
            b.metric("sidecache_bus_gaps_total", &[]).await == 1.0
        })
        .await
    );
    assert_eq!(
        b.metric("sidecache_l1_flushes_total", &[("reason", "bus_gap")])
            .await,
        1.0
    );
    assert_eq!(b.get(&path).await.cache(), "HIT-L2", "L1 was flushed");
}

#[tokio::test]
async fn a_peer_first_heard_in_mid_sequence_counts_as_a_gap() {
    let a = spawn_app().await;
    let b = a.spawn_peer(|s| s.coherence.listener = false).await;
    let w = world(&a).await;
    let path = format!("/v1/leads/{}", w.lead_id());
    warm(&b, &path).await;
    // Long enough for B to have heard every live peer (three heartbeats).
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let mut conn = a.redis.clone();
    let msg = json!({"o": "long-silent-peer", "s": 7, "t": 0, "k": []});
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("{}:v1:bus", a.namespace))
        .arg(msg.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        eventually(BOUND, || async {
            b.metric("sidecache_l1_flushes_total", &[("reason", "bus_gap")])
                .await
                == 1.0
        })
        .await,
        "messages 1-6 of that peer were never heard"
    );
    assert_ne!(b.get(&path).await.cache(), "HIT-L1");
}

#[tokio::test]
async fn a_fill_on_one_instance_that_raced_a_write_on_another_is_rejected() {
    let a = spawn_app().await;
    let b = a.spawn_peer(|_| {}).await;
    let w = world(&a).await;
    let l = w.lead_id().to_owned();
    let path = format!("/v1/leads/{l}");
    // A's load of the lead stops after reading version 1; B writes version 2 meanwhile.
    let (url, client) = (format!("{}{path}", b.addr), b.client.clone());
    let key = format!("lead:id:{l}");
    let once = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let hook: FillHook = Arc::new(move |k: &CacheKey| {
        let go = k.as_str() == key && once.swap(false, std::sync::atomic::Ordering::SeqCst);
        let (url, client) = (url.clone(), client.clone());
        Box::pin(async move {
            if go {
                let r = client
                    .patch(url)
                    .json(&json!({"first_name": "FromB"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK);
            }
        })
    });
    a.state.cache.set_fill_hook(Some(hook));
    let racing = a.get(&path).await;
    assert_eq!((racing.cache(), racing.version()), ("MISS", 1));
    a.state.cache.set_fill_hook(None);

    assert!(
        !a.in_redis(&format!("lead:id:{l}")).await,
        "Redis refused A's fill: B's invalidation moved the fence"
    );
    assert!(
        a.metric(
            "sidecache_cache_fills_total",
            &[("kind", "lead_id"), ("tier", "l2"), ("outcome", "fenced")]
        )
        .await
            >= 1.0
    );
    // A's own L1 may have taken the old value a moment before B's message arrived; the message
    // drops it.
    let (seen, took) = a.get_until(&path, BOUND, |r| r.version() == 2).await;
    assert_eq!(seen.body["first_name"], "FromB", "after {took:?}");
}

#[tokio::test]
async fn a_key_is_loaded_once_per_fleet_while_its_lease_is_held() {
    let a = spawn_app_with_lease_wait().await;
    let b = a
        .spawn_peer(|s| s.coherence.lease_wait = Duration::from_millis(5_000))
        .await;
    let w = world(&a).await;
    let l = w.lead_id().to_owned();
    let path = format!("/v1/leads/{l}");
    // A's load holds the lease and stalls before filling.
    a.delay_fills_of(format!("lead:id:{l}"), Duration::from_millis(400));
    let first = {
        let (client, url) = (a.client.clone(), format!("{}{path}", a.addr));
        tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b_queries = || {
        b.metric(
            "sidecache_postgres_queries_total",
            &[("query", "lead_by_id")],
        )
    };
    let before = b_queries().await;
    let on_b = b.get(&path).await;
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    assert_eq!(on_b.status, StatusCode::OK);
    assert_eq!(
        on_b.cache(),
        "HIT-L2",
        "B waited for A's fill: {}",
        on_b.text
    );
    assert_eq!(b_queries().await, before, "B did not query Postgres");
    assert_eq!(
        b.metric("sidecache_lease_waits_total", &[("outcome", "filled")])
            .await,
        1.0
    );
}

async fn spawn_app_with_lease_wait() -> TestApp {
    crate::spawn::spawn_app_with(|s| s.coherence.lease_wait = Duration::from_millis(5_000)).await
}
