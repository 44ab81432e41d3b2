//! Micro-benchmarks of the hot pieces: key building, phone normalization, entry encoding, L1 get.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use sidecache::cache::{CacheKey, Entry, Loaded, Local};
use sidecache::domain::{LeadId, OrgId, PhoneNumber, Region};

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
    let entry = Entry::from_loaded(
        Loaded::Found {
            body,
            etag: "\"3\"".into(),
        },
        Duration::from_secs(60),
    );
    let encoded = entry.encode();
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
