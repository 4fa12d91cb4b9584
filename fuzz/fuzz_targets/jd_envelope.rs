//! JD Pay. The first byte chooses what the rest is:
//! * even: the raw request body (the `<jdpay>` envelope parser, then the
//!   verifier);
//! * odd: the decrypted payload. It is encrypted here with the fixture
//!   3DES key, length-prefixed as JD does, and wrapped in a valid envelope,
//!   so the code after decryption (UTF-8 check, `<sign>` extraction, the
//!   SDK's string formatting, the signature check) sees arbitrary text.
#![no_main]

use base64::Engine as _;
use callgate_fuzz::*;
use des::TdesEde3;
use des::cipher::{Array, BlockCipherEncrypt, KeyInit};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn des_key() -> &'static [u8; 24] {
    static KEY: OnceLock<[u8; 24]> = OnceLock::new();
    KEY.get_or_init(|| {
        let text = std::fs::read_to_string(fixtures().join("jdpay/des.key")).expect("des.key");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .expect("base64 key");
        raw.try_into().expect("24 bytes")
    })
}

fn envelope_around(plain: &[u8]) -> Vec<u8> {
    let mut packed = (plain.len() as u32).to_be_bytes().to_vec();
    packed.extend_from_slice(plain);
    while packed.len() % 8 != 0 {
        packed.push(0);
    }
    let cipher = TdesEde3::new(&Array::from(*des_key()));
    for chunk in packed.chunks_exact_mut(8) {
        let mut block = Array::<u8, _>::default();
        block.copy_from_slice(chunk);
        cipher.encrypt_block(&mut block);
        chunk.copy_from_slice(&block);
    }
    let encrypt = base64::engine::general_purpose::STANDARD.encode(hex::encode(&packed));
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><jdpay><version>V2.0</version>\
         <merchant>110000000001</merchant><result><code>000000</code><desc>success</desc></result>\
         <encrypt>{encrypt}</encrypt></jdpay>"
    )
    .into_bytes()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let body = if mode % 2 == 0 {
        let _ = callgate::body::Envelope::parse(rest);
        rest.to_vec()
    } else {
        envelope_around(rest)
    };
    parse_and_verify(route("/jdpay"), &content_type("text/xml"), &body);
});
