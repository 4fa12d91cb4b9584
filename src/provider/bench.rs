//! Entry points for `benches/providers.rs` into the steps that each
//! provider's `verify` runs in one go (the canonical string, decryption), so
//! each step can be timed alone. Not part of the gateway's API: nothing on
//! the request path calls these, and none of them declares anything
//! verified.

use serde_json::Value;

use super::{VerifyError, alipay, alipay_md5, jdpay, unionpay, wechat_v2, wechat_v3};
use crate::body::Form;

/// Alipay: the sorted `k=v&...` string RSA2 covers.
pub fn alipay_canonical(form: &Form) -> Vec<u8> {
    alipay::sign_content(form)
}

/// Legacy Alipay: the sorted string MD5 covers (before the key is appended).
pub fn alipay_md5_canonical(form: &Form) -> Vec<u8> {
    alipay_md5::canonical(form, false).0
}

/// UnionPay: the sorted string whose SHA-256 hex the RSA signature covers.
pub fn unionpay_canonical(form: &Form) -> Vec<u8> {
    unionpay::sign_content(form)
}

/// JD Pay: the decrypted XML without its `<sign>` element, as JD signs it.
pub fn jdpay_signed_string(xml: &str) -> Option<String> {
    jdpay::signed_string(xml)
}

/// WeChat Pay v2 refunds: Base64 → AES-256-ECB `req_info`.
pub fn wechat_v2_decrypt(keys: &wechat_v2::Keys, req_info: &str) -> Result<Vec<u8>, VerifyError> {
    keys.decrypt_req_info(req_info)
}

/// WeChat Pay v3: AES-256-GCM `resource`.
pub fn wechat_v3_decrypt(keys: &wechat_v3::Keys, resource: &Value) -> Result<Vec<u8>, VerifyError> {
    keys.decrypt_resource(resource)
}

/// JD Pay: Base64 → hex → 3DES-ECB `encrypt`, length prefix removed.
pub fn jdpay_decrypt(keys: &jdpay::Keys, encrypt: &str) -> Result<Vec<u8>, VerifyError> {
    keys.decrypt(encrypt)
}
