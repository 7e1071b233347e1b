//! Bearer tokens: arbitrary bytes, and JWT-shaped three-part strings, must be refused or
//! accepted without panicking; a token that verifies always names an account.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

thread_local! {
    static ID: cvgate::policy::identity::Identifier = common::identifier();
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    ID.with(|id| {
        if let Ok(identity) = id.verify_token(&text) {
            assert!(!identity.account.is_empty());
        }
        // The same through the Authorization header (scheme parsing, duplicate headers).
        if let Ok(v) = http::HeaderValue::from_bytes(data) {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::AUTHORIZATION, v);
            let _ = id.identify(&mut h, "198.51.100.7".parse().unwrap());
        }
    });
});
