//! WeChat Pay v3 headers and body together. The input is split on `\n`:
//! signature, serial, timestamp, nonce, signature type (a line `-` leaves
//! the header out), then the body. Seeds are real signed fixtures.
#![no_main]

use callgate_fuzz::*;
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 5] = [
    "wechatpay-signature",
    "wechatpay-serial",
    "wechatpay-timestamp",
    "wechatpay-nonce",
    "wechatpay-signature-type",
];

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(NAMES.len() + 1, |&b| b == b'\n');
    let mut headers = content_type("application/json");
    for name in NAMES {
        let Some(value) = parts.next() else { return };
        if value == b"-" {
            continue;
        }
        if let Ok(v) = http::HeaderValue::from_bytes(value) {
            headers.insert(name, v);
        }
    }
    let body = parts.next().unwrap_or_default();
    parse_and_verify(route("/wechat_v3"), &headers, body);
});
