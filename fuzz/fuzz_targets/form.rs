//! Form bodies: the parser, then every form provider's verifier
//! (alipay in key and certificate mode, alipay_md5, unionpay).
#![no_main]

use callgate_fuzz::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = callgate::body::Form::parse(data);
    let headers = content_type("application/x-www-form-urlencoded; charset=utf-8");
    for path in ["/alipay", "/alipay_cert", "/alipay_md5", "/unionpay"] {
        parse_and_verify(route(path), &headers, data);
    }
});
