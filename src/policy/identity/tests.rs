//! End-to-end tests of [`Identifier`] with real keys generated per test run (RSA 2048, P-256,
//! Ed25519) and published as a JWKS, plus the dev HS256 key. One rule per test.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::{HeaderMap, HeaderValue};
use jiff::Timestamp;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;
use crate::clock::{ManualClock, SharedClock};

const ISS: &str = "https://idp.test";
const AUD: &str = "cvgate";
const DEV_SECRET: &str = "dev-secret-0123456789abcdef0123456789abcdef";
const LOA3: &str = "urn:etoegang:core:assurance-class:loa3";

fn t0() -> Timestamp {
    "2024-05-04T10:00:00Z".parse().unwrap()
}

/// Generated key material: private keys as DER for signing, public parts for the JWKS.
struct Keys {
    rsa_pkcs1_der: Vec<u8>,
    rsa_pub_pem: String,
    rsa_n: String,
    rsa_e: String,
    ec_pkcs8_der: Vec<u8>,
    ec_x: String,
    ec_y: String,
    ed_pkcs8_der: Vec<u8>,
    ed_x: String,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _; // pkcs8 0.10: also p256's
        use rand::rngs::OsRng;
        use rand::RngCore;
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::pkcs8::{EncodePublicKey, LineEnding};
        use rsa::traits::PublicKeyParts;

        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let rsa = rsa::RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
        let ec = p256::ecdsa::SigningKey::random(&mut OsRng);
        let point = ec.verifying_key().to_encoded_point(false);
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        let ed = ed25519_dalek::SigningKey::from_bytes(&seed);
        Keys {
            rsa_pkcs1_der: rsa.to_pkcs1_der().unwrap().as_bytes().to_vec(),
            rsa_pub_pem: rsa.to_public_key().to_public_key_pem(LineEnding::LF).unwrap(),
            rsa_n: b64(&rsa.n().to_bytes_be()),
            rsa_e: b64(&rsa.e().to_bytes_be()),
            ec_pkcs8_der: ec.to_pkcs8_der().unwrap().as_bytes().to_vec(),
            ec_x: b64(point.x().unwrap()),
            ec_y: b64(point.y().unwrap()),
            ed_pkcs8_der: ed.to_pkcs8_der().unwrap().as_bytes().to_vec(),
            ed_x: b64(ed.verifying_key().as_bytes()),
        }
    })
}

/// The JWKS: one RSA key published twice (RS256 as `rsa-1`, PS256 as `rsa-ps`), a P-256 key
/// without `alg` (ES256 inferred), an Ed25519 key, and an encryption key that must be skipped.
fn jwks() -> String {
    let k = keys();
    json!({ "keys": [
        { "kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig", "n": k.rsa_n, "e": k.rsa_e },
        { "kty": "RSA", "kid": "rsa-ps", "alg": "PS256", "n": k.rsa_n, "e": k.rsa_e },
        { "kty": "EC", "kid": "ec-1", "crv": "P-256", "x": k.ec_x, "y": k.ec_y },
        { "kty": "OKP", "kid": "ed-1", "crv": "Ed25519", "alg": "EdDSA", "x": k.ed_x },
        { "kty": "RSA", "kid": "rsa-enc", "use": "enc", "alg": "RSA-OAEP", "n": k.rsa_n, "e": k.rsa_e },
    ]})
    .to_string()
}

fn raw() -> RawIdentity {
    RawIdentity {
        issuers: vec![ISS.into()],
        audiences: vec![AUD.into(), "other".into()],
        dev_hs256: Some(RawDevKey { kid: "dev".into(), secret: DEV_SECRET.into() }),
        trusted_proxies: vec!["10.0.0.0/8".into()],
        ..Default::default()
    }
}

fn identifier_with(raw: &RawIdentity) -> (Identifier, Arc<ManualClock>) {
    let policy = IdentityPolicy::from_raw(raw, Some(&jwks())).unwrap();
    let clock = ManualClock::new(t0());
    (Identifier::new(policy, clock.clone() as SharedClock), clock)
}

fn identifier() -> (Identifier, Arc<ManualClock>) {
    identifier_with(&raw())
}

fn claims() -> Value {
    let now = t0().as_second();
    json!({ "iss": ISS, "aud": AUD, "sub": "acct-1", "kvk": "12345678", "acr": LOA3,
            "iat": now, "nbf": now - 5, "exp": now + 3600 })
}

fn with(mut claims: Value, key: &str, v: Value) -> Value {
    match v {
        Value::Null => claims.as_object_mut().unwrap().remove(key),
        v => claims.as_object_mut().unwrap().insert(key.into(), v),
    };
    claims
}

/// The encoding key for `alg` (RSA for RS/PS, P-256, Ed25519, the dev secret for HS256).
fn enc_key(alg: Algorithm) -> EncodingKey {
    let k = keys();
    match alg {
        Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_der(&k.rsa_pkcs1_der),
        Algorithm::ES256 => EncodingKey::from_ec_der(&k.ec_pkcs8_der),
        Algorithm::EdDSA => EncodingKey::from_ed_der(&k.ed_pkcs8_der),
        Algorithm::HS256 => EncodingKey::from_secret(DEV_SECRET.as_bytes()),
        other => panic!("no test key for {other:?}"),
    }
}

fn sign_with(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    sign_with(alg, kid, claims, &enc_key(alg))
}

/// The five accepted (alg, kid) pairs.
const GOOD: [(Algorithm, &str); 5] = [
    (Algorithm::RS256, "rsa-1"),
    (Algorithm::PS256, "rsa-ps"),
    (Algorithm::ES256, "ec-1"),
    (Algorithm::EdDSA, "ed-1"),
    (Algorithm::HS256, "dev"),
];

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(http::header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    h
}

const CLIENT: &str = "203.0.113.9";

fn ident(id: &Identifier, token: &str) -> Result<Option<Identity>, AuthError> {
    id.identify(&mut bearer(token), CLIENT.parse().unwrap())
}

fn expected() -> Identity {
    Identity {
        account: "acct-1".into(),
        org: Some("12345678".into()),
        assurance: Some(LOA3.into()),
        source: IdentitySource::Jwt,
    }
}

#[test]
fn every_algorithm_accepts_a_good_token() {
    let (id, _) = identifier();
    for (alg, kid) in GOOD {
        assert_eq!(ident(&id, &sign(alg, Some(kid), &claims())), Ok(Some(expected())), "{alg:?}");
        // Through the employer gate too.
        id.require_employer(Some(&expected())).unwrap();
    }
}

#[test]
fn dev_token_minting_round_trips() {
    let (id, _) = identifier();
    let t = mint_dev_token(
        DEV_SECRET.as_bytes(),
        "dev",
        ISS,
        AUD,
        "acct-1",
        Some("12345678"),
        LOA3,
        Duration::from_secs(600),
        t0(),
    );
    assert_eq!(ident(&id, &t), Ok(Some(expected())));
    let t =
        mint_dev_token(DEV_SECRET.as_bytes(), "dev", ISS, AUD, "acct-1", None, LOA3, Duration::from_secs(600), t0());
    assert_eq!(ident(&id, &t).unwrap().unwrap().org, None);
    // With custom claim names, via the config.
    let mut r = raw();
    r.claims = RawClaims { account: "eh_account".into(), org: "eh_kvk".into(), assurance: "eh_loa".into() };
    let (id, _) = identifier_with(&r);
    let t = mint_from_config(&r, "acct-1", Some("12345678"), LOA3, Duration::from_secs(60), t0()).unwrap();
    assert_eq!(ident(&id, &t), Ok(Some(expected())));
    assert!(mint_from_config(&RawIdentity::default(), "a", None, LOA3, Duration::from_secs(60), t0()).is_err());
}

#[test]
fn tampered_payload_is_rejected_for_every_algorithm() {
    let (id, _) = identifier();
    for (alg, kid) in GOOD {
        let t = sign(alg, Some(kid), &claims());
        let forged = URL_SAFE_NO_PAD.encode(with(claims(), "kvk", json!("87654321")).to_string());
        let parts: Vec<&str> = t.split('.').collect();
        let t = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert_eq!(ident(&id, &t), Err(AuthError::BadSignature), "{alg:?}");
    }
}

#[test]
fn expiry_with_leeway() {
    let (id, clock) = identifier();
    let now = t0().as_second();
    for (alg, kid) in GOOD {
        // exp 10 s ago: inside the 30 s leeway.
        assert!(ident(&id, &sign(alg, Some(kid), &with(claims(), "exp", json!(now - 10)))).is_ok());
        // exp 31 s ago: outside.
        let e = ident(&id, &sign(alg, Some(kid), &with(claims(), "exp", json!(now - 31))));
        assert_eq!(e, Err(AuthError::Expired), "{alg:?}");
        assert_eq!(e.unwrap_err().status(), 401);
    }
    // Time comes from the injected clock only: a token valid "now" in 2024 expires when the
    // manual clock moves, whatever the machine's clock says.
    let t = sign(Algorithm::ES256, Some("ec-1"), &claims());
    clock.advance(Duration::from_secs(3600 + 29));
    assert!(ident(&id, &t).is_ok());
    clock.advance(Duration::from_secs(1));
    assert_eq!(ident(&id, &t), Err(AuthError::Expired));
}

#[test]
fn not_yet_valid_with_leeway() {
    let (id, _) = identifier();
    let now = t0().as_second();
    for (alg, kid) in GOOD {
        assert!(ident(&id, &sign(alg, Some(kid), &with(claims(), "nbf", json!(now + 30)))).is_ok());
        let e = ident(&id, &sign(alg, Some(kid), &with(claims(), "nbf", json!(now + 31))));
        assert_eq!(e, Err(AuthError::NotYetValid), "{alg:?}");
    }
}

#[test]
fn exp_is_required_and_numeric() {
    let (id, _) = identifier();
    let t = sign(Algorithm::RS256, Some("rsa-1"), &with(claims(), "exp", Value::Null));
    assert_eq!(ident(&id, &t), Err(AuthError::MissingClaim("exp")));
    let t = sign(Algorithm::RS256, Some("rsa-1"), &with(claims(), "exp", json!("tomorrow")));
    assert_eq!(ident(&id, &t), Err(AuthError::InvalidClaim("exp")));
    let fractional = json!(t0().as_second() as f64 + 60.5);
    assert!(ident(&id, &sign(Algorithm::RS256, Some("rsa-1"), &with(claims(), "exp", fractional))).is_ok());
}

#[test]
fn issuer_and_audience() {
    let (id, _) = identifier();
    for (alg, kid) in GOOD {
        let s = |c: Value| ident(&id, &sign(alg, Some(kid), &c));
        assert_eq!(s(with(claims(), "iss", json!("https://evil.test"))), Err(AuthError::WrongIssuer));
        assert_eq!(s(with(claims(), "iss", Value::Null)), Err(AuthError::MissingClaim("iss")));
        assert_eq!(s(with(claims(), "aud", json!("someone-else"))), Err(AuthError::WrongAudience));
        assert_eq!(s(with(claims(), "aud", json!(["x", "y"]))), Err(AuthError::WrongAudience));
        assert_eq!(s(with(claims(), "aud", Value::Null)), Err(AuthError::MissingClaim("aud")));
        assert!(s(with(claims(), "aud", json!(["x", AUD]))).is_ok());
    }
}

#[test]
fn unknown_kid() {
    let (id, _) = identifier();
    assert_eq!(ident(&id, &sign(Algorithm::RS256, Some("rsa-9"), &claims())), Err(AuthError::UnknownKid));
    // The encryption key was skipped, so its kid is unknown too.
    assert_eq!(ident(&id, &sign(Algorithm::RS256, Some("rsa-enc"), &claims())), Err(AuthError::UnknownKid));
}

#[test]
fn alg_none_is_refused() {
    let (id, _) = identifier();
    let payload = URL_SAFE_NO_PAD.encode(claims().to_string());
    for header in [json!({"alg": "none", "kid": "rsa-1"}), json!({"alg": "none"}), json!({"alg": "None"})] {
        let h = URL_SAFE_NO_PAD.encode(header.to_string());
        assert_eq!(ident(&id, &format!("{h}.{payload}.")), Err(AuthError::AlgorithmNotAllowed));
    }
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let k = keys();
    let n = URL_SAFE_NO_PAD.decode(&k.rsa_n).unwrap();
    let secrets: [&[u8]; 2] = [k.rsa_pub_pem.as_bytes(), &n];
    let (id, _) = identifier();
    let (no_dev, _) = identifier_with(&RawIdentity { dev_hs256: None, ..raw() });
    for secret in secrets {
        let key = EncodingKey::from_secret(secret);
        // Naming the RSA key: HS256 is not in its allow-list.
        let t = sign_with(Algorithm::HS256, Some("rsa-1"), &claims(), &key);
        assert_eq!(ident(&id, &t), Err(AuthError::AlgorithmNotAllowed));
        // Without kid, the only HS256 key is the dev key, and the MAC does not match it.
        let t = sign_with(Algorithm::HS256, None, &claims(), &key);
        assert_eq!(ident(&id, &t), Err(AuthError::BadSignature));
        // Without a dev key no key allows HS256 at all.
        assert_eq!(ident(&no_dev, &t), Err(AuthError::AlgorithmNotAllowed));
    }
}

#[test]
fn alg_outside_the_keys_allow_list() {
    let (id, _) = identifier();
    // A valid PS256 signature by the right RSA key, but rsa-1 only allows RS256.
    assert_eq!(ident(&id, &sign(Algorithm::PS256, Some("rsa-1"), &claims())), Err(AuthError::AlgorithmNotAllowed));
    assert_eq!(ident(&id, &sign(Algorithm::RS256, Some("rsa-ps"), &claims())), Err(AuthError::AlgorithmNotAllowed));
    // Algorithms cvgate never accepts.
    let t = sign_with(Algorithm::RS512, Some("rsa-1"), &claims(), &enc_key(Algorithm::RS256));
    assert_eq!(ident(&id, &t), Err(AuthError::AlgorithmNotAllowed));
    // The dev key signs HS256 only; the EC key ES256 only.
    let t = sign_with(Algorithm::HS384, Some("dev"), &claims(), &enc_key(Algorithm::HS256));
    assert_eq!(ident(&id, &t), Err(AuthError::AlgorithmNotAllowed));
    assert_eq!(ident(&id, &sign(Algorithm::EdDSA, Some("ec-1"), &claims())), Err(AuthError::AlgorithmNotAllowed));
}

#[test]
fn configured_allow_list_replaces_the_jwk_alg() {
    let mut r = raw();
    r.key_algorithms.insert("rsa-1".into(), vec!["PS256".into(), "RS256".into()]);
    let (id, _) = identifier_with(&r);
    assert!(ident(&id, &sign(Algorithm::PS256, Some("rsa-1"), &claims())).is_ok());
    r.key_algorithms.insert("rsa-1".into(), vec!["ES256".into()]);
    let errs = IdentityPolicy::from_raw(&r, Some(&jwks())).unwrap_err().into_vec();
    assert_eq!(errs[0].0, "key_algorithms.rsa-1", "{errs:?}");
}

#[test]
fn token_without_kid_needs_exactly_one_candidate_key() {
    let (id, _) = identifier();
    for (alg, _) in GOOD {
        assert_eq!(ident(&id, &sign(alg, None, &claims())), Ok(Some(expected())), "{alg:?}");
    }
    // Two P-256 keys without kid: a kid-less ES256 token is ambiguous.
    let k = keys();
    let two = json!({ "keys": [
        { "kty": "EC", "crv": "P-256", "x": k.ec_x, "y": k.ec_y },
        { "kty": "EC", "kid": "ec-2", "crv": "P-256", "x": k.ec_x, "y": k.ec_y },
    ]})
    .to_string();
    let p = IdentityPolicy::from_raw(&raw(), Some(&two)).unwrap();
    let id = Identifier::new(p, ManualClock::new(t0()));
    assert_eq!(ident(&id, &sign(Algorithm::ES256, None, &claims())), Err(AuthError::AmbiguousKey));
    assert!(ident(&id, &sign(Algorithm::ES256, Some("ec-2"), &claims())).is_ok());
}

#[test]
fn employer_requirements() {
    let (id, _) = identifier();
    let get = |c: Value| ident(&id, &sign(Algorithm::ES256, Some("ec-1"), &c));
    // No kvk: a valid identity, but not an employer (403).
    let no_org = get(with(claims(), "kvk", Value::Null)).unwrap().unwrap();
    assert_eq!(no_org.org, None);
    let e = id.require_employer(Some(&no_org)).unwrap_err();
    assert_eq!((e, e.status(), e.reason()), (AuthError::NoOrganisation, 403, "no_organisation"));
    // Assurance too low, or absent: 403.
    for acr in [json!("urn:etoegang:core:assurance-class:loa2"), Value::Null] {
        let low = get(with(claims(), "acr", acr)).unwrap().unwrap();
        let e = id.require_employer(Some(&low)).unwrap_err();
        assert_eq!((e, e.status()), (AuthError::InsufficientAssurance, 403));
    }
    let loa4 = get(with(claims(), "acr", json!("urn:etoegang:core:assurance-class:loa4"))).unwrap();
    id.require_employer(loa4.as_ref()).unwrap();
    // A malformed KvK number is refused outright (401): the token carries garbage.
    for kvk in [json!("1234567"), json!("1234567a"), json!(12345678)] {
        assert_eq!(get(with(claims(), "kvk", kvk)), Err(AuthError::InvalidClaim("org")));
    }
    assert_eq!(get(with(claims(), "sub", Value::Null)), Err(AuthError::MissingClaim("account")));
}

#[test]
fn anonymous_and_bad_authorization_headers() {
    let (id, _) = identifier();
    let peer = CLIENT.parse().unwrap();
    assert_eq!(id.identify(&mut HeaderMap::new(), peer), Ok(None));
    assert_eq!(id.require_employer(None), Err(AuthError::Missing));
    let mut h = HeaderMap::new();
    h.insert(http::header::AUTHORIZATION, HeaderValue::from_static("Basic dXNlcjpwYXNz"));
    assert!(matches!(id.identify(&mut h, peer), Err(AuthError::Malformed(_))));
    for t in ["", "abc", "a.b", "a.b.c.d", "!!!.???.###"] {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {t}")).unwrap());
        assert!(matches!(id.identify(&mut h, peer), Err(AuthError::Malformed(_))), "{t:?}");
    }
    let good = sign(Algorithm::EdDSA, Some("ed-1"), &claims());
    let mut h = bearer(&good);
    h.append(http::header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {good}")).unwrap());
    assert!(matches!(id.identify(&mut h, peer), Err(AuthError::Malformed(_))));
    let mut h = HeaderMap::new();
    h.insert(http::header::AUTHORIZATION, HeaderValue::from_str(&format!("bearer  {good}")).unwrap());
    assert!(id.identify(&mut h, peer).unwrap().is_some(), "scheme is case-insensitive");
}

#[test]
fn errors_never_show_the_token() {
    let (id, _) = identifier();
    let t = sign(Algorithm::RS256, Some("rsa-1"), &with(claims(), "aud", json!("x")));
    let e = ident(&id, &t).unwrap_err();
    let sig = t.rsplit('.').next().unwrap();
    for shown in [e.to_string(), format!("{e:?}")] {
        assert!(!shown.contains(sig) && !shown.contains("acct-1"), "{shown}");
    }
    assert!(!format!("{:?}", id.policy()).contains(DEV_SECRET));
}

fn gateway_headers(account: &str, org: &str, acr: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-employer-account", HeaderValue::from_str(account).unwrap());
    h.insert("x-employer-kvk", HeaderValue::from_str(org).unwrap());
    h.insert("x-assurance-level", HeaderValue::from_str(acr).unwrap());
    h
}

#[test]
fn gateway_headers_only_from_trusted_peers() {
    let (id, _) = identifier_with(&RawIdentity { gateway_headers: Some(RawGatewayHeaders::default()), ..raw() });
    // Untrusted peer: stripped and not used.
    let mut h = gateway_headers("gw-acct", "87654321", LOA3);
    assert_eq!(id.identify(&mut h, CLIENT.parse().unwrap()), Ok(None));
    assert!(h.is_empty(), "{h:?}");
    // Untrusted peer with a token: the token's identity, not the headers'.
    let mut h = gateway_headers("gw-acct", "87654321", LOA3);
    h.extend(bearer(&sign(Algorithm::ES256, Some("ec-1"), &claims())));
    assert_eq!(id.identify(&mut h, CLIENT.parse().unwrap()), Ok(Some(expected())));
    assert_eq!(h.len(), 1);
    // Trusted peer (also as IPv4-mapped IPv6): the gateway's identity, headers kept.
    for peer in ["10.1.2.3", "::ffff:10.1.2.3"] {
        let mut h = gateway_headers("gw-acct", "87654321", LOA3);
        let got = id.identify(&mut h, peer.parse().unwrap()).unwrap().unwrap();
        assert_eq!(got.source, IdentitySource::Gateway);
        assert_eq!((got.account.as_str(), got.org.as_deref()), ("gw-acct", Some("87654321")));
        id.require_employer(Some(&got)).unwrap();
        assert_eq!(h.len(), 3);
    }
    // A broken gateway fails closed.
    let mut h = gateway_headers("gw-acct", "123", LOA3);
    assert_eq!(id.identify(&mut h, "10.1.2.3".parse().unwrap()), Err(AuthError::InvalidClaim("org")));
    let mut h = gateway_headers("gw-acct", "87654321", LOA3);
    h.remove("x-employer-account");
    assert_eq!(id.identify(&mut h, "10.1.2.3".parse().unwrap()), Err(AuthError::MissingClaim("account")));
}

#[test]
fn gateway_mode_off_still_strips_forged_headers() {
    let (id, _) = identifier();
    let mut h = gateway_headers("gw-acct", "87654321", LOA3);
    assert_eq!(id.identify(&mut h, CLIENT.parse().unwrap()), Ok(None));
    assert!(h.is_empty());
    // From a trusted peer they are forwarded untouched but not believed.
    let mut h = gateway_headers("gw-acct", "87654321", LOA3);
    assert_eq!(id.identify(&mut h, "10.0.0.1".parse().unwrap()), Ok(None));
    assert_eq!(h.len(), 3);
}

#[test]
fn client_ip_through_the_identifier() {
    let (id, _) = identifier();
    let mut h = HeaderMap::new();
    h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6, 198.51.100.7, 10.0.0.2"));
    // Spoofed by an untrusted peer: ignored.
    assert_eq!(id.client_ip(&h, CLIENT.parse().unwrap()), CLIENT.parse::<std::net::IpAddr>().unwrap());
    // Through two trusted hops: the first untrusted from the right.
    assert_eq!(id.client_ip(&h, "10.0.0.1".parse().unwrap()), "198.51.100.7".parse::<std::net::IpAddr>().unwrap());
    // Forwarded, when configured.
    let (id, _) = identifier_with(&RawIdentity { client_ip_header: Some("Forwarded".into()), ..raw() });
    h.insert("forwarded", HeaderValue::from_static(r#"for="[2001:db8::1]:4711", for=10.0.0.2"#));
    assert_eq!(id.client_ip(&h, "10.0.0.1".parse().unwrap()), "2001:db8::1".parse::<std::net::IpAddr>().unwrap());
}

#[test]
fn cache_hits_and_expiry() {
    let (id, clock) = identifier();
    let t = sign(Algorithm::RS256, Some("rsa-1"), &claims());
    assert_eq!(ident(&id, &t), Ok(Some(expected())));
    assert_eq!((id.cache_len(), id.cache_stats()), (1, (0, 1)));
    assert_eq!(ident(&id, &t), Ok(Some(expected())));
    assert_eq!(id.cache_stats(), (1, 1), "second identify is a hit");
    // Bad tokens are not cached.
    let bad = sign(Algorithm::RS256, Some("rsa-1"), &with(claims(), "iss", json!("x")));
    assert!(ident(&id, &bad).is_err());
    assert_eq!(id.cache_len(), 1);
    // Past exp + leeway the cached entry is refused and dropped.
    clock.advance(Duration::from_secs(3600 + 30));
    assert_eq!(ident(&id, &t), Err(AuthError::Expired));
    assert_eq!((id.cache_len(), id.cache_stats()), (0, (2, 2)));
    // A disabled cache still verifies.
    let (id, _) = identifier_with(&RawIdentity { cache_entries: Some(0), ..raw() });
    assert_eq!(ident(&id, &t), Ok(Some(expected())));
    assert_eq!((id.cache_len(), id.cache_stats()), (0, (0, 0)));
}

#[test]
fn cached_entry_rechecks_nbf() {
    // A token cached while valid is refused if the clock goes back before nbf - leeway.
    let (id, clock) = identifier();
    let t = sign(Algorithm::EdDSA, Some("ed-1"), &claims());
    assert!(ident(&id, &t).is_ok());
    clock.set(t0() - jiff::SignedDuration::from_secs(60));
    assert_eq!(ident(&id, &t), Err(AuthError::NotYetValid));
}

#[test]
fn jwks_problems_are_config_errors() {
    let k = keys();
    let bad = json!({ "keys": [
        { "kty": "oct", "kid": "s", "k": "c2VjcmV0" },
        { "kty": "RSA", "kid": "noalg", "n": k.rsa_n, "e": k.rsa_e },
        { "kty": "RSA", "kid": "small", "alg": "RS256", "n": URL_SAFE_NO_PAD.encode([0xffu8; 128]), "e": "AQAB" },
        { "kty": "RSA", "kid": "priv", "alg": "RS256", "n": k.rsa_n, "e": k.rsa_e, "d": "AQAB" },
        { "kty": "RSA", "kid": "rs512", "alg": "RS512", "n": k.rsa_n, "e": k.rsa_e },
        { "kty": "EC", "kid": "p384", "crv": "P-384", "x": k.ec_x, "y": k.ec_y },
        { "kty": "OKP", "kid": "dup", "crv": "Ed25519", "x": k.ed_x },
        { "kty": "OKP", "kid": "dup", "crv": "Ed25519", "x": k.ed_x },
    ]})
    .to_string();
    let errs = IdentityPolicy::from_raw(&raw(), Some(&bad)).unwrap_err();
    let msgs: Vec<String> = errs.iter().map(|(p, m)| format!("{p}: {m}")).collect();
    assert_eq!(msgs.len(), 7, "{msgs:#?}");
    for (i, m) in msgs.iter().enumerate().take(6) {
        assert!(m.starts_with(&format!("jwks_file: keys[{i}]: ")), "{m}");
    }
    assert!(msgs[6].starts_with("jwks_file: keys[7]: duplicate kid"), "{}", msgs[6]);
    let errs = IdentityPolicy::from_raw(&raw(), Some("not json")).unwrap_err().into_vec();
    assert_eq!(errs[0].0, "jwks_file");
    // An RSA key without alg is fine once its algorithms are configured.
    let mut r = raw();
    r.key_algorithms.insert("noalg".into(), vec!["RS256".into()]);
    let one = json!({ "keys": [{ "kty": "RSA", "kid": "noalg", "n": k.rsa_n, "e": k.rsa_e }] }).to_string();
    IdentityPolicy::from_raw(&r, Some(&one)).unwrap();
    // The dev kid must not shadow a JWKS kid.
    let r = RawIdentity { dev_hs256: Some(RawDevKey { kid: "rsa-1".into(), secret: DEV_SECRET.into() }), ..raw() };
    assert_eq!(IdentityPolicy::from_raw(&r, Some(&jwks())).unwrap_err().into_vec()[0].0, "dev_hs256.kid");
}
