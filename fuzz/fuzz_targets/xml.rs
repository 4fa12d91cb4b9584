//! WeChat Pay v2 XML: the flat-map parser, then the v2 verifier (MD5,
//! HMAC-SHA256, refund `req_info` decryption).
#![no_main]

use callgate_fuzz::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = callgate::body::XmlMap::parse(data);
    parse_and_verify(route("/wechat_v2"), &content_type("text/xml"), data);
});
