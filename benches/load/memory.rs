//! Peak memory of the memory replay store with N remembered events: claims
//! and confirms N distinct event ids through `ReplayStore` exactly as the
//! pipeline does (claim → in flight, confirm → delivered for `ttl`), then
//! prints the process's VmRSS and VmHWM (peak) from /proc/self/status,
//! before and after, as JSON. Exits 1 if the peak is above LIMIT_MB.
//!
//!     cargo run --release --example store_memory -- [N] [MAX_ENTRIES] [LIMIT_MB]
//!
//! Defaults: N = 1,000,000, MAX_ENTRIES = N (the demo configuration's
//! `replay.max_entries`), LIMIT_MB = 256 (the target).

/// The `callgate` binary's allocator, so the footprint is the gateway's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use callgate::replay::{Claim, Key, ReplayStore};

fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let n: u64 = a.get(1).map_or(1_000_000, |v| v.parse().expect("N"));
    let max_entries: u64 = a.get(2).map_or(n, |v| v.parse().expect("MAX_ENTRIES"));
    let limit_mb: u64 = a.get(3).map_or(256, |v| v.parse().expect("LIMIT_MB"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let before_rss = status_kb("VmRSS");
    let store = ReplayStore::memory(max_entries);
    let route: Arc<str> = Arc::from("shop-alipay");
    let in_flight = Duration::from_secs(40);
    let ttl = Duration::from_secs(48 * 3600);
    let started = Instant::now();
    rt.block_on(async {
        for i in 0..n {
            // An Alipay notify_id: 32 characters.
            let id = format!("2026111122001{i:019}");
            let key = Key::recorded(&route, "m", &id);
            match store.claim(&key, in_flight).await.expect("memory store") {
                Claim::New(token) => {
                    store.confirm(&key, token, ttl).await.expect("memory store");
                }
                other => panic!("event {i} was {other:?}"),
            }
        }
    });
    let took = started.elapsed();
    let entries = rt.block_on(store.entries()).expect("memory store");
    let rss = status_kb("VmRSS");
    let hwm = status_kb("VmHWM");
    println!(
        "{{\"events\": {n}, \"max_entries\": {max_entries}, \"entries\": {entries}, \"rss_before_kb\": {before_rss}, \"rss_kb\": {rss}, \"peak_kb\": {hwm}, \"peak_mb\": {:.1}, \"bytes_per_event\": {:.0}, \"fill_seconds\": {:.2}}}",
        hwm as f64 / 1024.0,
        (rss.saturating_sub(before_rss) * 1024) as f64 / n.max(1) as f64,
        took.as_secs_f64()
    );
    drop(store);
    if hwm > limit_mb * 1024 {
        eprintln!("peak RSS {} MB is above {limit_mb} MB", hwm / 1024);
        std::process::exit(1);
    }
}
