//! Instructions per body parse and per verify, counted by callgrind: a
//! fixed number of iterations of one step over a committed fixture, so
//! that the difference of two runs (N and 0 iterations) divided by N is
//! one step's instructions, whatever else the machine is doing.
//!
//! ```text
//! cargo build --release --example parse_instructions
//! for n in 0 1000; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!   target/release/examples/parse_instructions wechat-v2-parse $n 2>&1 | grep refs; done
//! ```
//!
//! Steps: `wechat-v2-parse`, `wechat-v2-verify` (HMAC-SHA256 payment),
//! `alipay-parse` (the RSA2 form, for comparison).

use std::hint::black_box;
use std::path::Path;

use callgate::body::{self, Format, Payload};
use callgate::provider::{Provider, wechat_v2};
use callgate::secret::Secret;
use http::HeaderMap;

/// The allocator `callgate` itself runs on (`src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn fixture(provider: &str, name: &str) -> Result<Vec<u8>, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(provider)
        .join(name);
    std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
}

fn headers(content_type: &'static str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    h
}

fn run(step: &str, n: u64) -> Result<(), String> {
    match step {
        "wechat-v2-parse" | "wechat-v2-verify" => {
            let raw = fixture("wechat", "v2_hmac_pay.xml")?;
            let h = headers("text/xml");
            let key = Secret::new(fixture("wechat", "v2_api.key")?);
            let provider = Provider::WechatV2(wechat_v2::Keys::new(
                "1900000109",
                Some("wx2421b1c4370ec43b"),
                key,
            ));
            let format = provider.kind().format();
            let payload = body::parse(format, &h, &raw).map_err(|e| e.to_string())?;
            let body = bytes::Bytes::copy_from_slice(&raw);
            let now = 1_795_312_800;
            provider
                .verify(&h, &body, &payload, now)
                .map_err(|e| e.to_string())?;
            for _ in 0..n {
                if step == "wechat-v2-parse" {
                    let p = body::parse(format, &h, black_box(&raw));
                    black_box(p.is_ok());
                } else {
                    let v = provider.verify(&h, &body, black_box(&payload), now);
                    black_box(v.is_ok());
                }
            }
        }
        "alipay-parse" => {
            let raw = fixture("alipay", "rsa2_trade_success.form")?;
            let h = headers("application/x-www-form-urlencoded; charset=utf-8");
            let payload = body::parse(Format::Form, &h, &raw).map_err(|e| e.to_string())?;
            if !matches!(payload, Payload::Form(_)) {
                return Err("not a form".into());
            }
            for _ in 0..n {
                let p = body::parse(Format::Form, &h, black_box(&raw));
                black_box(p.is_ok());
            }
        }
        other => return Err(format!("unknown step `{other}`")),
    }
    Ok(())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let step = args.next().unwrap_or_default();
    let n = args.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    if let Err(e) = run(&step, n) {
        eprintln!("parse_instructions: {e}");
        std::process::exit(2);
    }
}
