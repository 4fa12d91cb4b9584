//! WeChat Pay v3 JSON bodies: the strict parser (no repeated keys), then
//! the v3 verifier with a fixture's real signed headers.
#![no_main]

use callgate_fuzz::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = callgate::body::JsonBody::parse(data);
    let mut headers = content_type("application/json");
    for (k, v) in [
        ("wechatpay-timestamp", "1795312800"),
        ("wechatpay-nonce", "nonceCertPay0001"),
        ("wechatpay-serial", "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"),
        ("wechatpay-signature", "UF8GyfiXNzsn7wIrOZ0jEbQygCg4IZUSqGG+Cjnfc7H4PCfjGlDiQFQia2j5U2CY9kmy1cWPh0SyzasCe6LcPpPgHRYz8Y8VKdO7BKIGelTk7LCxJJ4c7JIsoS0UmBMWeW7xJ2j6CUxTIH4dmqbFDhtrT+1qvqayjiT7dMUJ2k+S7mSManknQcpX97EJWyRHWbGGVqtCLqBPhVt/j7jAspghcjRkrIuo/fuTnhX/9It6cRAQwR9fgoq1SRVnLcaACNS0bLbWbskxa+wh3+7"),
    ] {
        headers.insert(k, http::HeaderValue::from_static(v));
    }
    parse_and_verify(route("/wechat_v3"), &headers, data);
});
