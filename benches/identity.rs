//! What identifying a request costs: full JWT verification per algorithm (cache off) against
//! `Identifier::identify` on a cache hit. The cache exists because signature checks would
//! otherwise dominate the proxy's CPU per request (DESIGN.md: ~28 µs budget for the whole path).
//!
//! Keys are generated at start (RSA 2048, P-256, Ed25519) and published as a JWKS, as the IdP
//! would. Run: `cargo bench --bench identity`.

use std::net::IpAddr;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use cvgate::clock::{ManualClock, SharedClock};
use cvgate::policy::identity::{Identifier, IdentityPolicy, RawIdentity};
use ed25519_dalek::pkcs8::EncodePrivateKey; // pkcs8 0.10, shared with p256
use jiff::Timestamp;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::rngs::OsRng;
use rand::RngCore;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::json;

struct Setup {
    jwks: String,
    /// (name, token)
    tokens: Vec<(&'static str, String)>,
}

fn setup(now: Timestamp) -> Setup {
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let rsa = rsa::RsaPrivateKey::new(&mut OsRng, 2048).expect("rsa keygen");
    let ec = p256::ecdsa::SigningKey::random(&mut OsRng);
    let point = ec.verifying_key().to_encoded_point(false);
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    let ed = ed25519_dalek::SigningKey::from_bytes(&seed);
    let jwks = json!({ "keys": [
        { "kty": "RSA", "kid": "rsa", "alg": "RS256", "n": b64(&rsa.n().to_bytes_be()), "e": b64(&rsa.e().to_bytes_be()) },
        { "kty": "EC", "kid": "ec", "crv": "P-256", "alg": "ES256", "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()) },
        { "kty": "OKP", "kid": "ed", "crv": "Ed25519", "alg": "EdDSA", "x": b64(ed.verifying_key().as_bytes()) },
    ]})
    .to_string();
    let claims = json!({
        "iss": "https://idp.test", "aud": "cvgate", "sub": "acct-1", "kvk": "12345678",
        "acr": "urn:etoegang:core:assurance-class:loa3", "exp": now.as_second() + 3600,
    });
    let sign = |alg, kid: &str, key: EncodingKey| {
        let mut h = Header::new(alg);
        h.kid = Some(kid.to_string());
        jsonwebtoken::encode(&h, &claims, &key).unwrap()
    };
    let tokens = vec![
        ("RS256", sign(Algorithm::RS256, "rsa", EncodingKey::from_rsa_der(rsa.to_pkcs1_der().unwrap().as_bytes()))),
        ("ES256", sign(Algorithm::ES256, "ec", EncodingKey::from_ec_der(ec.to_pkcs8_der().unwrap().as_bytes()))),
        ("EdDSA", sign(Algorithm::EdDSA, "ed", EncodingKey::from_ed_der(ed.to_pkcs8_der().unwrap().as_bytes()))),
    ];
    Setup { jwks, tokens }
}

fn identifier(jwks: &str, cache_entries: u64, now: Timestamp) -> Identifier {
    let raw = RawIdentity {
        issuers: vec!["https://idp.test".into()],
        audiences: vec!["cvgate".into()],
        cache_entries: Some(cache_entries),
        ..Default::default()
    };
    let policy = IdentityPolicy::from_raw(&raw, Some(jwks)).expect("bench policy");
    Identifier::new(policy, ManualClock::new(now) as SharedClock)
}

fn bench(c: &mut Criterion) {
    let now: Timestamp = "2024-05-04T10:00:00Z".parse().unwrap();
    let s = setup(now);
    let peer: IpAddr = "203.0.113.9".parse().unwrap();
    let uncached = identifier(&s.jwks, 0, now);
    let cached = identifier(&s.jwks, 1024, now);

    let mut g = c.benchmark_group("identity");
    for (name, token) in &s.tokens {
        g.bench_function(format!("verify_{name}_no_cache"), |b| {
            b.iter(|| uncached.verify_token(std::hint::black_box(token)).unwrap())
        });
    }
    for (name, token) in &s.tokens {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        cached.identify(&mut headers, peer).unwrap();
        g.bench_function(format!("identify_{name}_cache_hit"), |b| {
            b.iter(|| cached.identify(std::hint::black_box(&mut headers), peer).unwrap())
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    // Short runs: 2 shared cores, and the differences are orders of magnitude.
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
