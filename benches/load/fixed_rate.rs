//! A fixed-rate (open-loop) HTTP/1.1 load client, for the p99-at-half-load
//! measurement (Debian has no wrk2 package). Like wrk2 it schedules request
//! k at `start + k / RATE` on connection `k % CONNECTIONS`, and measures
//! each latency from that intended send time, so a server that stalls is
//! charged for the requests it held up (no coordinated omission).
//!
//!     cargo run --release --example load_fixed_rate -- \
//!         ADDR PATH CONTENT_TYPE CORPUS OFFSET RATE SECONDS CONNECTIONS
//!
//! Request k carries line `OFFSET + k` of CORPUS (one body per line), so
//! every request of a run is a distinct notification. Prints one JSON object:
//! requests sent and completed, non-200 answers, errors, the achieved rate
//! and latency percentiles in microseconds.
//!
//! With `FIXED_RATE_TIMELINE=FILE` it also writes each answered request's
//! number and latency to FILE (where in the run a tail came from).
//!
//! One blocking thread per connection, sleeping until each send time
//! (`std::thread::sleep`, about 60 µs of timer slack on Linux: that much
//! can show up in every latency, for the proxy and for callgate alike).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    addr: String,
    path: String,
    content_type: String,
    corpus: String,
    offset: usize,
    rate: f64,
    seconds: f64,
    connections: usize,
}

fn args() -> Args {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 9 {
        eprintln!(
            "usage: load_fixed_rate ADDR PATH CONTENT_TYPE CORPUS OFFSET RATE SECONDS CONNECTIONS"
        );
        std::process::exit(2);
    }
    Args {
        addr: a[1].clone(),
        path: a[2].clone(),
        content_type: a[3].clone(),
        corpus: a[4].clone(),
        offset: a[5].parse().expect("OFFSET"),
        rate: a[6].parse().expect("RATE"),
        seconds: a[7].parse().expect("SECONDS"),
        connections: a[8].parse().expect("CONNECTIONS"),
    }
}

#[derive(Default)]
struct ConnResult {
    /// (request number, latency in µs) of each answered request.
    answered: Vec<(u32, u32)>,
    non_200: u64,
    errors: u64,
    sent: u64,
}

fn main() {
    let a = args();
    let total = (a.rate * a.seconds) as usize;
    let text = std::fs::read_to_string(&a.corpus).expect("CORPUS");
    let bodies: Vec<&str> = text.lines().skip(a.offset).take(total).collect();
    if bodies.len() < total {
        eprintln!(
            "corpus {} has {} lines after offset {}, {} needed",
            a.corpus,
            bodies.len(),
            a.offset,
            total
        );
        std::process::exit(1);
    }
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(
        bodies
            .iter()
            .map(|b| {
                format!(
                    "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n{}",
                    a.path,
                    a.addr,
                    a.content_type,
                    b.len(),
                    b
                )
                .into_bytes()
            })
            .collect(),
    );
    drop(text);
    let interval = Duration::from_secs_f64(1.0 / a.rate);
    // Connect everything first, then start the clock a little later.
    let conns: Vec<TcpStream> = (0..a.connections)
        .map(|_| connect(&a.addr).expect("connect"))
        .collect();
    let start = Instant::now() + Duration::from_millis(50);
    let start_unix_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() + 50_000);
    let threads: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(c, stream)| {
            let requests = requests.clone();
            let addr = a.addr.clone();
            let step = a.connections;
            std::thread::spawn(move || {
                run_connection(stream, &addr, &requests, c, step, start, interval)
            })
        })
        .collect();
    let mut all = ConnResult::default();
    for t in threads {
        let r = t.join().expect("connection thread");
        all.answered.extend(r.answered);
        all.non_200 += r.non_200;
        all.errors += r.errors;
        all.sent += r.sent;
    }
    let elapsed = start.elapsed().as_secs_f64();
    if let Ok(path) = std::env::var("FIXED_RATE_TIMELINE") {
        // After a `# start` line (request 0's intended send time), one
        // line per answered request: its number (intended send time:
        // start + number / RATE) and its latency in µs, in send order.
        all.answered.sort_unstable();
        let mut out = String::with_capacity(all.answered.len() * 16);
        out.push_str(&format!(
            "# start {start_unix_us} µs since the Unix epoch\n"
        ));
        for (k, us) in &all.answered {
            out.push_str(&format!("{k} {us}\n"));
        }
        std::fs::write(&path, out).expect("FIXED_RATE_TIMELINE");
    }
    let mut l: Vec<u32> = all.answered.iter().map(|&(_, us)| us).collect();
    l.sort_unstable();
    let pct = |p: f64| -> u32 {
        if l.is_empty() {
            return 0;
        }
        let i = ((p / 100.0) * l.len() as f64).ceil() as usize;
        l[i.clamp(1, l.len()) - 1]
    };
    println!(
        "{{\"rate\": {}, \"seconds\": {}, \"connections\": {}, \"sent\": {}, \"completed\": {}, \"non_200\": {}, \"errors\": {}, \"achieved_rps\": {:.1}, \"p50_us\": {}, \"p90_us\": {}, \"p99_us\": {}, \"p999_us\": {}, \"max_us\": {}}}",
        a.rate,
        a.seconds,
        a.connections,
        all.sent,
        l.len(),
        all.non_200,
        all.errors,
        l.len() as f64 / elapsed,
        pct(50.0),
        pct(90.0),
        pct(99.0),
        pct(99.9),
        l.last().copied().unwrap_or(0)
    );
}

fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

fn run_connection(
    mut stream: TcpStream,
    addr: &str,
    requests: &[Vec<u8>],
    first: usize,
    step: usize,
    start: Instant,
    interval: Duration,
) -> ConnResult {
    let mut r = ConnResult::default();
    let mut buf = vec![0u8; 16 * 1024];
    let mut k = first;
    while k < requests.len() {
        let intended = start + interval * u32::try_from(k).unwrap_or(u32::MAX);
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        r.sent += 1;
        match exchange(&mut stream, &requests[k], &mut buf) {
            Ok(status) => {
                let us = u32::try_from(intended.elapsed().as_micros()).unwrap_or(u32::MAX);
                r.answered.push((u32::try_from(k).unwrap_or(u32::MAX), us));
                if status != 200 {
                    r.non_200 += 1;
                }
            }
            Err(_) => {
                r.errors += 1;
                match connect(addr) {
                    Ok(s) => stream = s,
                    Err(_) => return r,
                }
            }
        }
        k += step;
    }
    r
}

/// Writes one request and reads one response (Content-Length bodies only;
/// both nginx and callgate send them). Returns the status code.
fn exchange(stream: &mut TcpStream, request: &[u8], buf: &mut [u8]) -> std::io::Result<u16> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    stream.write_all(request)?;
    let mut have = 0;
    loop {
        let n = stream.read(&mut buf[have..])?;
        if n == 0 {
            return Err(bad("connection closed"));
        }
        have += n;
        if let Some(end) = find(&buf[..have], b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("head"))?;
            let status: u16 = head
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("status"))?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .ok_or_else(|| bad("no Content-Length"))?;
            let mut body = have - (end + 4);
            while body < len {
                let n = stream.read(&mut buf[..])?;
                if n == 0 {
                    return Err(bad("connection closed"));
                }
                body += n;
            }
            return Ok(status);
        }
        if have == buf.len() {
            return Err(bad("head too large"));
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
