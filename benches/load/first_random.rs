//! What the first use of aws-lc's random generator costs in a fresh
//! process, and what later uses cost:
//!
//! ```text
//! cargo run --release --example first_random
//! ```
//!
//! AWS-LC seeds its generator from CPU jitter once per process (a few
//! thousand timed memory accesses); callgate makes that first call before
//! it serves (`callgate run`), not inside the first request that needs a
//! random number. Prints microseconds: the process's first call, a second
//! call, and the first call of a new thread.

use std::time::Instant;

fn fill_us() -> f64 {
    let mut b = [0u8; 8];
    let t = Instant::now();
    let ok = aws_lc_rs::rand::fill(&mut b).is_ok();
    let us = t.elapsed().as_secs_f64() * 1e6;
    assert!(ok, "aws-lc's generator failed");
    us
}

fn main() {
    let first = fill_us();
    let second = fill_us();
    let thread = std::thread::spawn(fill_us).join().unwrap_or(f64::NAN);
    println!("first call in the process: {first:.1} µs");
    println!("second call:               {second:.1} µs");
    println!("first call of a new thread: {thread:.1} µs");
}
