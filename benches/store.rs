//! Replay store cost per notification: claim + confirm of a new event, and
//! the claim of a duplicate, on the memory store and on a real local
//! `redis-server` (started here on a free loopback port; skipped when the
//! binary is missing).
//!
//!     cargo bench --bench store

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

use callgate::replay::{Claim, Key, RedisStore, ReplayStore};

/// The allocator `callgate` itself runs on (`src/main.rs`), so that the
/// figures are the ones a request costs in the server.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn run(c: &mut Criterion, name: &str, store: &ReplayStore, rt: &tokio::runtime::Runtime) {
    let route: Arc<str> = Arc::from("shop-alipay");
    let mut i = 0u64;
    c.bench_function(&format!("{name}/claim_confirm_new_event"), |b| {
        b.iter(|| {
            i += 1;
            let key = Key::recorded(&route, "m", &format!("{name}-{i}"));
            rt.block_on(async {
                if let Claim::New(t) = store.claim(&key, Duration::from_secs(40)).await.unwrap() {
                    store
                        .confirm(&key, t, Duration::from_secs(3600))
                        .await
                        .unwrap();
                }
            })
        })
    });
    let dup = Key::recorded(&route, "m", "dup");
    rt.block_on(async {
        if let Claim::New(t) = store.claim(&dup, Duration::from_secs(40)).await.unwrap() {
            store
                .confirm(&dup, t, Duration::from_secs(3600))
                .await
                .unwrap();
        }
    });
    c.bench_function(&format!("{name}/claim_duplicate"), |b| {
        b.iter(|| {
            rt.block_on(store.claim(&dup, Duration::from_secs(40)))
                .unwrap()
        })
    });
}

fn stores(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    run(c, "memory", &ReplayStore::memory(10_000_000), &rt);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Ok(mut child) = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
    else {
        eprintln!("redis-server not found: Redis benches skipped");
        return;
    };
    // The Redis client spawns its connection task on the current runtime.
    let _runtime = rt.enter();
    let store = ReplayStore::Redis(
        RedisStore::new(
            &format!("redis://127.0.0.1:{port}/0"),
            Duration::from_secs(1),
            None,
        )
        .unwrap(),
    );
    // Wait until it answers (bounded).
    let ready = rt.block_on(async {
        for _ in 0..200 {
            if store.ping().await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    });
    if ready {
        run(c, "redis", &store, &rt);
    }
    let _ = child.kill();
    let _ = child.wait();
}

criterion_group!(benches, stores);
criterion_main!(benches);
