//! Micro-benchmarks of the hot pieces: key building, phone normalization (fresh and remembered),
//! entry building and encoding, response assembly for a hit, L1 get.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use sidecache::cache::{CacheKey, CacheStatus, Entry, Ids, Loaded, Local, Lookup};
use sidecache::domain::{LeadId, OrgId, PhoneNumber, PhoneParser, Region};
use sidecache::http::{respond, Conditions};

fn bench(c: &mut Criterion) {
    let org = OrgId::new_random();
    let lead = LeadId::new_random();
    let phone = PhoneNumber::parse("+15551234567", Region::default()).unwrap();

    c.bench_function("key/lead_by_phone", |b| {
        b.iter(|| CacheKey::lead_by_phone(std::hint::black_box(&phone), org))
    });
    c.bench_function("phone/parse_e164", |b| {
        b.iter(|| PhoneNumber::parse(std::hint::black_box("+15551234567"), Region::default()))
    });
    c.bench_function("phone/parse_national", |b| {
        b.iter(|| PhoneNumber::parse(std::hint::black_box("(555) 123-4567"), Region::default()))
    });

    let body = Bytes::from(vec![b'x'; 600]);
    // A lead's entry carries its organization and its own id.
    let ids = Ids {
        org: Some(OrgId::new_random()),
        lead: Some(LeadId::new_random()),
    };
    let entry = Entry::from_loaded(
        Loaded::Found {
            body,
            etag: "\"3\"".into(),
            ids,
        },
        Duration::from_secs(60),
    );
    let encoded = entry.encode();
    let parser = PhoneParser::new(Region::default());
    c.bench_function("phone/parser_remembered", |b| {
        b.iter(|| parser.parse(std::hint::black_box("+15551234567")))
    });
    c.bench_function("entry/from_loaded_600b", |b| {
        b.iter(|| {
            Entry::from_loaded(
                Loaded::Found {
                    body: Bytes::from_static(&[b'x'; 600]),
                    etag: "\"3\"".into(),
                    ids,
                },
                Duration::from_secs(60),
            )
        })
    });
    let shared = Arc::new(entry.clone());
    let no_conditions = Conditions::default();
    c.bench_function("response/assemble_l1_hit", |b| {
        b.iter(|| {
            respond(
                Lookup {
                    entry: shared.clone(),
                    status: CacheStatus::HitL1,
                },
                &no_conditions,
                || unreachable!("found"),
            )
        })
    });
    c.bench_function("entry/encode_600b", |b| {
        b.iter(|| std::hint::black_box(&entry).encode())
    });
    c.bench_function("entry/decode_600b", |b| {
        b.iter(|| Entry::decode(std::hint::black_box(encoded.clone())))
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let l1 = Local::new(true, 64 << 20);
    let key = CacheKey::lead_by_id(lead);
    rt.block_on(async {
        let fence = l1.fence(&key, &[]);
        l1.insert(
            &key,
            Arc::new(entry.clone()),
            fence,
            Duration::from_secs(60),
            Duration::from_secs(3600),
        )
        .await;
    });
    c.bench_function("l1/get_hit", |b| {
        b.to_async(&rt).iter(|| l1.get(std::hint::black_box(&key)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
