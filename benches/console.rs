//! What the console adds to every notification: `Recent::record` (one
//! short mutex, a ring push and a counter bump) with a full ring, alone and
//! with two threads recording at once (the gateway's two cores).
//!
//!     cargo bench --bench console

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

use callgate::ack::Outcome;
use callgate::console::{Entry, Order, Recent, ShopAnswer};

fn entry(route: &Arc<str>, i: u64) -> Entry {
    Entry {
        seq: 0,
        unix: 1_800_000_000 + (i / 1000) as i64,
        request_id: "0123456789abcdef".to_owned(),
        route: route.clone(),
        provider: "alipay",
        outcome: Outcome::Forwarded,
        reason_label: None,
        reason: None,
        path: "/notify/alipay".to_owned(),
        peer: "110.75.1.2:40000".parse().unwrap(),
        client: Some("110.75.1.2".parse().unwrap()),
        merchant: Some("2021000000000001".into()),
        event_id: Some(format!("2026112200222000000000000{i:09}")),
        order: Some(Order::new(format!("CG{i:014}"), true)),
        shop: Some(ShopAnswer {
            status: Some(200),
            took: Duration::from_millis(2),
        }),
        took: Duration::from_millis(3),
    }
}

fn record(c: &mut Criterion) {
    let route: Arc<str> = Arc::from("shop-alipay");
    let recent = Arc::new(Recent::new());
    for i in 0..10_000 {
        recent.record(entry(&route, i));
    }
    let mut i = 10_000u64;
    // The entry is built outside the measured part: the request builds its
    // fields anyway (log line, journal).
    c.bench_function("console/record", |b| {
        b.iter_batched(
            || {
                i += 1;
                entry(&route, i)
            },
            |e| recent.record(e),
            criterion::BatchSize::SmallInput,
        )
    });
    let other = recent.clone();
    let r2 = route.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    let contender = std::thread::spawn(move || {
        let mut j = 1u64 << 40;
        while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
            j += 1;
            other.record(entry(&r2, j));
        }
    });
    c.bench_function("console/record_contended", |b| {
        b.iter_batched(
            || {
                i += 1;
                entry(&route, i)
            },
            |e| recent.record(e),
            criterion::BatchSize::SmallInput,
        )
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = contender.join();
}

criterion_group!(benches, record);
criterion_main!(benches);
