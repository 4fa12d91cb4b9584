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
//! By default, one blocking thread per connection, sleeping until each
//! send time (`std::thread::sleep`, about 60 µs of timer slack on Linux:
//! that much can show up in every latency, for the proxy and for callgate
//! alike). With `FIXED_RATE_THREADS=N` the connections are shared among N
//! threads instead, each an `epoll` loop over non-blocking sockets that
//! waits for the next send time with `epoll_pwait2` (nanosecond timeout):
//! the same schedule and the same measurement, with N runnable threads
//! beside the servers instead of one per connection.

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
    // The same instant on CLOCK_MONOTONIC, the clock of `perf record -k mono`
    // (benches/load/stalls.py lines the two up).
    let mono = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let start_mono_ns = mono.tv_sec as i128 * 1_000_000_000 + mono.tv_nsec as i128 + 50_000_000;
    let loops: usize = std::env::var("FIXED_RATE_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let step = a.connections;
    let threads: Vec<_> = if loops > 0 {
        let mut shares: Vec<Vec<(usize, TcpStream)>> = (0..loops).map(|_| Vec::new()).collect();
        for (c, stream) in conns.into_iter().enumerate() {
            shares[c % loops].push((c, stream));
        }
        shares
            .into_iter()
            .map(|share| {
                let requests = requests.clone();
                let addr = a.addr.clone();
                std::thread::spawn(move || {
                    event_loop::run(share, &addr, &requests, step, start, interval)
                })
            })
            .collect()
    } else {
        conns
            .into_iter()
            .enumerate()
            .map(|(c, stream)| {
                let requests = requests.clone();
                let addr = a.addr.clone();
                std::thread::spawn(move || {
                    run_connection(stream, &addr, &requests, c, step, start, interval)
                })
            })
            .collect()
    };
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
        // After a `# start` line (request 0's intended send time) and a
        // `# start_monotonic` line (the same on CLOCK_MONOTONIC), one line
        // per answered request: its number (intended send time: start +
        // number / RATE) and its latency in µs, in send order.
        all.answered.sort_unstable();
        let mut out = String::with_capacity(all.answered.len() * 16);
        out.push_str(&format!(
            "# start {start_unix_us} µs since the Unix epoch\n# start_monotonic {start_mono_ns} ns\n# rate {}\n",
            a.rate
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
        "{{\"rate\": {}, \"seconds\": {}, \"connections\": {}, \"threads\": {}, \"sent\": {}, \"completed\": {}, \"non_200\": {}, \"errors\": {}, \"achieved_rps\": {:.1}, \"p50_us\": {}, \"p90_us\": {}, \"p99_us\": {}, \"p999_us\": {}, \"max_us\": {}}}",
        a.rate,
        a.seconds,
        a.connections,
        if loops > 0 { loops } else { a.connections },
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

fn bad(m: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned())
}

/// Writes one request and reads one response (Content-Length bodies only;
/// both nginx and callgate send them). Returns the status code.
fn exchange(stream: &mut TcpStream, request: &[u8], buf: &mut [u8]) -> std::io::Result<u16> {
    stream.write_all(request)?;
    let mut have = 0;
    loop {
        let n = stream.read(&mut buf[have..])?;
        if n == 0 {
            return Err(bad("connection closed"));
        }
        have += n;
        if let Some((status, end)) = response_end(&buf[..have])? {
            while have < end {
                let n = stream.read(&mut buf[..])?;
                if n == 0 {
                    return Err(bad("connection closed"));
                }
                have += n;
            }
            return Ok(status);
        }
        if have == buf.len() {
            return Err(bad("head too large"));
        }
    }
}

/// Once `buf` holds a response's whole head: its status and the offset
/// its body ends at (head + Content-Length). `None` while the head is
/// incomplete.
fn response_end(buf: &[u8]) -> std::io::Result<Option<(u16, usize)>> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
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
    Ok(Some((status, end + 4 + len)))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `FIXED_RATE_THREADS` mode: one thread drives a share of the
/// connections through `epoll`. Connection `c` still sends requests
/// `c, c + step, c + 2 step, …`, each at its intended time or as soon as
/// the connection's previous exchange ends, and each latency is measured
/// from the intended time.
mod event_loop {
    use super::{ConnResult, bad, connect, response_end};
    use rustix::event::epoll;
    use rustix::time::Timespec;
    use std::io::{ErrorKind, Read, Write};
    use std::net::TcpStream;
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    struct Conn {
        stream: TcpStream,
        /// The request this connection sends next, or is exchanging.
        k: usize,
        /// Bytes of request `k` written so far; `None` while idle (not yet due).
        written: Option<usize>,
        /// Bytes of the response read so far.
        have: usize,
        buf: Vec<u8>,
    }

    pub(super) fn run(
        share: Vec<(usize, TcpStream)>,
        addr: &str,
        requests: &[Vec<u8>],
        step: usize,
        start: Instant,
        interval: Duration,
    ) -> ConnResult {
        let mut r = ConnResult::default();
        let ep = match epoll::create(epoll::CreateFlags::CLOEXEC) {
            Ok(ep) => ep,
            Err(e) => {
                eprintln!("epoll_create: {e}");
                std::process::exit(1);
            }
        };
        let mut conns: Vec<Conn> = Vec::with_capacity(share.len());
        for (i, (c, stream)) in share.into_iter().enumerate() {
            let conn = Conn {
                stream,
                k: c,
                written: None,
                have: 0,
                buf: vec![0u8; 16 * 1024],
            };
            if let Err(e) = register(&ep, &conn.stream, i) {
                eprintln!("epoll_ctl: {e}");
                std::process::exit(1);
            }
            conns.push(conn);
        }
        let intended = |k: usize| start + interval * u32::try_from(k).unwrap_or(u32::MAX);
        let mut events = Vec::with_capacity(conns.len().max(1));
        loop {
            // Start every exchange that is due; find the next one that is not.
            let now = Instant::now();
            let mut next_due: Option<Instant> = None;
            let mut busy = false;
            for i in 0..conns.len() {
                let conn = &mut conns[i];
                if conn.k >= requests.len() {
                    continue;
                }
                busy = true;
                if conn.written.is_some() {
                    continue;
                }
                let due = intended(conn.k);
                if due > now {
                    next_due = Some(next_due.map_or(due, |d| d.min(due)));
                    continue;
                }
                conn.written = Some(0);
                conn.have = 0;
                r.sent += 1;
                if let Err(()) = progress_write(conn, requests) {
                    fail(&ep, conns.as_mut_slice(), i, addr, step, &mut r);
                }
            }
            if !busy {
                return r;
            }
            let timeout = next_due.map(|due| {
                let d = due.saturating_duration_since(Instant::now());
                Timespec {
                    tv_sec: d.as_secs() as _,
                    tv_nsec: d.subsec_nanos() as _,
                }
            });
            events.clear();
            match epoll::wait(
                &ep,
                rustix::buffer::spare_capacity(&mut events),
                timeout.as_ref(),
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    eprintln!("epoll_wait: {e}");
                    std::process::exit(1);
                }
            }
            for ev in events.iter() {
                let i = ev.data.u64() as usize;
                let Some(conn) = conns.get_mut(i) else {
                    continue;
                };
                let Some(written) = conn.written else {
                    continue;
                };
                let outcome = if written < requests[conn.k].len() {
                    progress_write(conn, requests).map(|()| None)
                } else {
                    progress_read(conn)
                };
                match outcome {
                    Ok(None) => {}
                    Ok(Some(status)) => {
                        let us = u32::try_from(intended(conn.k).elapsed().as_micros())
                            .unwrap_or(u32::MAX);
                        r.answered
                            .push((u32::try_from(conn.k).unwrap_or(u32::MAX), us));
                        if status != 200 {
                            r.non_200 += 1;
                        }
                        conn.written = None;
                        conn.k += step;
                    }
                    Err(()) => fail(&ep, conns.as_mut_slice(), i, addr, step, &mut r),
                }
            }
        }
    }

    fn register(ep: &impl AsFd, stream: &TcpStream, i: usize) -> std::io::Result<()> {
        stream.set_nonblocking(true)?;
        epoll::add(
            ep,
            stream,
            epoll::EventData::new_u64(i as u64),
            epoll::EventFlags::IN | epoll::EventFlags::OUT | epoll::EventFlags::ET,
        )?;
        Ok(())
    }

    /// Writes what the socket takes of the current request. Edge-triggered:
    /// stops at `WouldBlock` and goes on at the next `EPOLLOUT`.
    fn progress_write(conn: &mut Conn, requests: &[Vec<u8>]) -> Result<(), ()> {
        let req = &requests[conn.k];
        let mut w = conn.written.unwrap_or(0);
        while w < req.len() {
            match conn.stream.write(&req[w..]) {
                Ok(0) => return Err(()),
                Ok(n) => w += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(()),
            }
        }
        conn.written = Some(w);
        Ok(())
    }

    /// Reads what has arrived; `Some(status)` once the whole response is in.
    fn progress_read(conn: &mut Conn) -> Result<Option<u16>, ()> {
        loop {
            if conn.have == conn.buf.len() {
                // A response bigger than the buffer (16 KiB): neither
                // nginx's nor callgate's answer here is.
                return Err(());
            }
            match conn.stream.read(&mut conn.buf[conn.have..]) {
                Ok(0) => return Err(()),
                Ok(n) => conn.have += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Err(()),
            }
            match response_end(&conn.buf[..conn.have]) {
                Ok(Some((status, end))) if conn.have >= end => return Ok(Some(status)),
                Ok(_) => {}
                Err(_) => return Err(()),
            }
        }
    }

    /// The exchange failed: count it, reconnect, move on to the next request.
    fn fail(
        ep: &impl AsFd,
        conns: &mut [Conn],
        i: usize,
        addr: &str,
        step: usize,
        r: &mut ConnResult,
    ) {
        r.errors += 1;
        let conn = &mut conns[i];
        let _ = epoll::delete(ep, &conn.stream);
        let fresh = connect(addr).and_then(|s| register(ep, &s, i).map(|()| s));
        match fresh {
            Ok(s) => {
                conn.stream = s;
                conn.written = None;
                conn.k += step;
            }
            Err(e) => {
                eprintln!("reconnect: {e}: {}", bad("giving up on a connection"));
                conn.k = usize::MAX;
            }
        }
    }
}
