//! Writes the load corpus: distinct, genuinely signed notifications, one
//! request body per line, for `benches/load/run.py` (wrk walks them with
//! `benches/load/corpus.lua`, the fixed-rate client reads them directly).
//!
//!     cargo run --release --example load_corpus -- OUT_DIR ALIPAY_N WECHAT_N [THREADS]
//!
//! Writes `OUT_DIR/alipay.txt` (Alipay RSA2 forms) and `OUT_DIR/wechat_v2.txt`
//! (WeChat Pay v2 HMAC-SHA256 XML), each body about 1 KB, signed now with the
//! demo keys in `certs/dev/` (see `benches/load/signer.rs`). The bodies are
//! fresh for the routes' `max_age` (25h); `run.py` regenerates older ones.

use std::io::Write;
use std::path::{Path, PathBuf};

#[path = "signer.rs"]
mod signer;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: load_corpus OUT_DIR ALIPAY_N WECHAT_N [THREADS]");
        std::process::exit(2);
    }
    let out = PathBuf::from(&args[1]);
    let alipay_n: u64 = args[2].parse().expect("ALIPAY_N");
    let wechat_n: u64 = args[3].parse().expect("WECHAT_N");
    let threads: u64 = args.get(4).map_or(1, |t| t.parse().expect("THREADS"));
    std::fs::create_dir_all(&out).expect("OUT_DIR");
    let signer = signer::Signer::new(&Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/dev"));
    let now = callgate::clock::unix_now();
    // A run number from the clock keeps ids distinct from earlier corpora
    // (a gateway that outlives one corpus never sees a stale duplicate).
    let run = u32::try_from(now % 10_000).unwrap_or(0);
    type Sign = fn(&signer::Signer, u32, u64, i64) -> String;
    let jobs: [(&str, u64, Sign); 2] = [
        ("alipay.txt", alipay_n, signer::Signer::alipay),
        ("wechat_v2.txt", wechat_n, signer::Signer::wechat_v2),
    ];
    for (name, n, sign) in jobs {
        let started = std::time::Instant::now();
        let chunks: Vec<Vec<String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let signer = &signer;
                    s.spawn(move || {
                        (0..n)
                            .filter(|i| i % threads == t)
                            .map(|i| sign(signer, run, i, now))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let tmp = out.join(format!("{name}.tmp"));
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).expect("corpus file"));
        let mut bytes = 0usize;
        for i in 0..n {
            let line = &chunks[(i % threads) as usize][(i / threads) as usize];
            bytes += line.len();
            writeln!(w, "{line}").expect("write");
        }
        w.flush().expect("write");
        drop(w);
        std::fs::rename(&tmp, out.join(name)).expect("rename");
        eprintln!(
            "{name}: {n} bodies, {} bytes on average, in {:.1}s",
            bytes / usize::try_from(n.max(1)).unwrap_or(1),
            started.elapsed().as_secs_f64()
        );
    }
}
