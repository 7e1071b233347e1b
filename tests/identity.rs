//! Issue 3, identity, through the real proxy: JWTs signed with keys generated here (RSA 2048,
//! P-256, Ed25519, published as a JWKS file named by `identity.jwks_file`) and the dev HS256 key;
//! every rejection rule as a 401/403 problem with its metric; trusted-gateway headers only from
//! trusted peers; a spoofed X-Forwarded-For does not move the client IP.

mod common;

use std::net::IpAddr;
use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use cvgate::clock::Clock;
use cvgate::quota::{Scope, Subject};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const LOA3: &str = "urn:etoegang:core:assurance-class:loa3";
const LOA2: &str = "urn:etoegang:core:assurance-class:loa2";
const KVK: &str = "12345678";

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

/// Generated once per test binary (RSA key generation is the slow part).
fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
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

/// The JWKS: one RSA key as `rsa-1` (RS256) and `rsa-ps` (PS256), P-256 without `alg`
/// (ES256 inferred), Ed25519.
fn jwks() -> String {
    let k = keys();
    json!({ "keys": [
        { "kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig", "n": k.rsa_n, "e": k.rsa_e },
        { "kty": "RSA", "kid": "rsa-ps", "alg": "PS256", "n": k.rsa_n, "e": k.rsa_e },
        { "kty": "EC", "kid": "ec-1", "crv": "P-256", "x": k.ec_x, "y": k.ec_y },
        { "kty": "OKP", "kid": "ed-1", "crv": "Ed25519", "alg": "EdDSA", "x": k.ed_x },
    ]})
    .to_string()
}

/// The five accepted (alg, kid) pairs.
const GOOD: [(Algorithm, &str); 5] = [
    (Algorithm::RS256, "rsa-1"),
    (Algorithm::PS256, "rsa-ps"),
    (Algorithm::ES256, "ec-1"),
    (Algorithm::EdDSA, "ed-1"),
    (Algorithm::HS256, "dev"),
];

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

fn sign(alg: Algorithm, kid: &str, claims: &Value) -> String {
    sign_with(alg, Some(kid), claims, &enc_key(alg))
}

/// Good claims for `account` at the proxy's clock, valid for an hour.
fn claims(p: &Proxy, account: &str) -> Value {
    let now = p.clock.now().as_second();
    json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": account, "kvk": KVK, "acr": LOA3,
            "iat": now, "nbf": now, "exp": now + 3600 })
}

/// `claims` with `key` set to `v`, or removed when `v` is null.
fn with(mut claims: Value, key: &str, v: Value) -> Value {
    let o = claims.as_object_mut().unwrap();
    match v {
        Value::Null => o.remove(key),
        v => o.insert(key.into(), v),
    };
    claims
}

/// The identity section: JWKS file in the test dir, dev key, trusted proxies, and optionally
/// trusted-gateway mode with the default header names.
fn identity_with_jwks(dir: &std::path::Path, trusted: &[&str], gateway: bool) -> String {
    let path = dir.join("jwks.json");
    std::fs::write(&path, jwks()).unwrap();
    let list = trusted.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ");
    let gw = if gateway {
        "  gateway_headers: { account: X-Employer-Account, org: X-Employer-KvK, assurance: X-Assurance-Level }\n"
    } else {
        ""
    };
    format!(
        r#"dev_mode: true
identity:
  jwks_file: "{jwks}"
  issuers: ["{ISSUER}"]
  audiences: ["{AUDIENCE}"]
  dev_hs256: {{ kid: "dev", secret: "{DEV_SECRET}" }}
  trusted_proxies: [{list}]
{gw}"#,
        jwks = path.display(),
    )
}

/// A proxy in front of a fresh mock, with the JWKS identity section and `extra` config.
async fn proxy(trusted: &[&str], gateway: bool, extra: &str) -> Proxy {
    let mock = start_mock().await;
    let (dir, cert) = cert_dir();
    let id = identity_with_jwks(dir.path(), trusted, gateway);
    let yaml = test_yaml(&format!("http://{mock}"), dir.path(), &format!("{id}{extra}"));
    start_proxy_in(dir, cert, &yaml).await
}

const SEARCH: &str = "/api/v1/cvs?size=5";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_is_accepted_with_a_good_token() {
    let p = proxy(&[], false, "").await;
    let (_, mut h2) = tls_connect(p.tls, &p.cert_pem, &[b"h2"]).await;
    for (alg, kid) in GOOD {
        let t = sign(alg, kid, &claims(&p, &format!("acct-{kid}")));
        let r = h2.send(get(SEARCH, true, &[("authorization", &bearer(&t))])).await;
        assert_eq!(r.status(), 200, "{alg:?}");
        let (_, v) = body_json(r).await;
        assert_eq!(v["results"].as_array().unwrap().len(), 5, "{alg:?}");
    }
    // The harness's dev token (HS256 minted by cvgate itself) too, over HTTP/1.1.
    let mut h1 = plain_connect(p.plain).await;
    let r = h1.send(get(SEARCH, false, &[("authorization", &bearer(&token(&p, "acct-dev", KVK)))])).await;
    assert_eq!(r.status(), 200);
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_401_invalid_token_and_count_by_reason() {
    // The audit log goes to a file in the test's dir, to check that no token reaches it.
    let p = proxy(&[], false, "audit: { sink: file, path: audit.log }\n").await;
    let now = p.clock.now().as_second();
    let good = claims(&p, "acct-1");
    let k = keys();

    let tampered = {
        let t = sign(Algorithm::ES256, "ec-1", &good);
        let forged = URL_SAFE_NO_PAD.encode(with(good.clone(), "kvk", json!("87654321")).to_string());
        let parts: Vec<&str> = t.split('.').collect();
        format!("{}.{forged}.{}", parts[0], parts[2])
    };
    let alg_none = {
        let h = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": "rsa-1"}).to_string());
        format!("{h}.{}.", URL_SAFE_NO_PAD.encode(good.to_string()))
    };
    // Alg confusion: HS256 with the RSA public key (PEM) as the HMAC secret.
    let confusion_key = EncodingKey::from_secret(k.rsa_pub_pem.as_bytes());
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("tampered payload", Some(tampered), "bad_signature"),
        ("expired", Some(sign(Algorithm::RS256, "rsa-1", &with(good.clone(), "exp", json!(now - 3600)))), "expired"),
        (
            "not yet valid",
            Some(sign(Algorithm::EdDSA, "ed-1", &with(good.clone(), "nbf", json!(now + 3600)))),
            "not_yet_valid",
        ),
        (
            "wrong iss",
            Some(sign(Algorithm::PS256, "rsa-ps", &with(good.clone(), "iss", json!("https://evil.test")))),
            "wrong_issuer",
        ),
        (
            "wrong aud",
            Some(sign(Algorithm::ES256, "ec-1", &with(good.clone(), "aud", json!("someone-else")))),
            "wrong_audience",
        ),
        ("unknown kid", Some(sign(Algorithm::RS256, "rsa-9", &good)), "unknown_kid"),
        ("alg none", Some(alg_none), "algorithm_not_allowed"),
        (
            "HS256 with the RSA public key, naming the RSA kid",
            Some(sign_with(Algorithm::HS256, Some("rsa-1"), &good, &confusion_key)),
            "algorithm_not_allowed",
        ),
        (
            "HS256 with the RSA public key, no kid",
            Some(sign_with(Algorithm::HS256, None, &good, &confusion_key)),
            "bad_signature",
        ),
        ("no token on a CV route", None, "missing"),
    ];

    let before = metrics_text(p.ops).await;
    let (_, mut s) = tls_connect(p.tls, &p.cert_pem, &[b"h2"]).await;
    for (what, token, reason) in &cases {
        let auth = token.as_deref().map(bearer);
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let r = s.send(get(SEARCH, true, &headers)).await;
        assert_eq!(r.status(), 401, "{what}");
        let www = r.headers()["www-authenticate"].to_str().unwrap().to_string();
        assert!(www.starts_with("Bearer error=\"invalid_token\""), "{what}: {www}");
        let (_, v) = expect_problem(r, 401, "unauthorized").await;
        assert_eq!(v["reason"], *reason, "{what}: {v}");
        // The token (or any part of it) never comes back in the answer.
        if let Some(t) = token {
            let text = v.to_string();
            for part in t.split('.').filter(|s| s.len() > 8) {
                assert!(!text.contains(part), "{what}: token part echoed in {text}");
            }
            assert!(!www.contains(t.as_str()));
        }
    }
    let after = metrics_text(p.ops).await;
    let mut reasons: Vec<&str> = cases.iter().map(|c| c.2).collect();
    reasons.sort_unstable();
    reasons.dedup();
    for reason in reasons {
        let want = cases.iter().filter(|c| c.2 == reason).count() as f64;
        let series = |t: &str| metric_value(t, "cvgate_auth_failures_total", &[("reason", reason)]);
        assert_eq!(series(&after) - series(&before), want, "cvgate_auth_failures_total{{reason={reason:?}}}");
    }
    // Shutdown flushes the audit log: one line per refused request, and no token in any of it.
    p.running.shutdown().await;
    let audit = std::fs::read_to_string(p.dir.path().join("audit.log")).unwrap();
    assert_eq!(audit.lines().filter(|l| l.contains(r#""decision":"unauthorized""#)).count(), cases.len(), "{audit}");
    for (what, token, _) in &cases {
        for part in token.iter().flat_map(|t| t.split('.')).filter(|s| s.len() > 8) {
            assert!(!audit.contains(part), "{what}: token part in the audit log");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_token_expires_with_the_clock() {
    let p = proxy(&[], false, "").await;
    let t = sign(Algorithm::ES256, "ec-1", &claims(&p, "acct-1"));
    let mut s = plain_connect(p.plain).await;
    assert_eq!(s.send(get(SEARCH, false, &[("authorization", &bearer(&t))])).await.status(), 200);
    // exp is an hour ahead; with the 30 s leeway the token is refused from exp + 30 s on.
    p.clock.advance(std::time::Duration::from_secs(3600 + 30));
    let r = s.send(get(SEARCH, false, &[("authorization", &bearer(&t))])).await;
    let (_, v) = expect_problem(r, 401, "unauthorized").await;
    assert_eq!(v["reason"], "expired");
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_kvk_or_low_assurance_is_403_and_vacancies_are_anonymous() {
    let p = proxy(&[], false, "").await;
    let mut s = plain_connect(p.plain).await;
    let before = metrics_text(p.ops).await;

    let no_kvk = sign(Algorithm::RS256, "rsa-1", &with(claims(&p, "acct-1"), "kvk", Value::Null));
    let r = s.send(get(SEARCH, false, &[("authorization", &bearer(&no_kvk))])).await;
    assert!(!r.headers().contains_key("www-authenticate"), "403 is not a credentials problem");
    let (_, v) = expect_problem(r, 403, "forbidden").await;
    assert_eq!(v["reason"], "no_organisation");

    let loa2 = sign(Algorithm::EdDSA, "ed-1", &with(claims(&p, "acct-1"), "acr", json!(LOA2)));
    let r = s.send(get(SEARCH, false, &[("authorization", &bearer(&loa2))])).await;
    let (_, v) = expect_problem(r, 403, "forbidden").await;
    assert_eq!(v["reason"], "insufficient_assurance");

    let after = metrics_text(p.ops).await;
    for reason in ["no_organisation", "insufficient_assurance"] {
        let series = |t: &str| metric_value(t, "cvgate_auth_failures_total", &[("reason", reason)]);
        assert_eq!(series(&after) - series(&before), 1.0, "{reason}");
    }

    // Vacancies: anonymous is fine, and so is a valid token that could not use CV routes.
    let r = s.send(get("/api/v1/vacancies", false, &[])).await;
    assert_eq!(r.status(), 200);
    let (_, v) = body_json(r).await;
    assert_eq!(v["results"].as_array().unwrap().len(), 2);
    let r = s.send(get("/api/v1/vacancies", false, &[("authorization", &bearer(&loa2))])).await;
    assert_eq!(r.status(), 200);
    p.running.shutdown().await;
}

/// Gateway identity headers with `account`, org [`KVK`] and level 3.
fn gateway_headers(account: &str) -> [(&'static str, String); 3] {
    [
        ("x-employer-account", account.to_string()),
        ("x-employer-kvk", KVK.to_string()),
        ("x-assurance-level", LOA3.to_string()),
    ]
}

fn as_refs<'a>(h: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    h.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// CVs left in the shortest IP-prefix bucket of `ip` (peeked, nothing charged).
async fn ip_bucket_remaining(p: &Proxy, ip: &str) -> u64 {
    let rt = p.running.shared.runtime();
    let ip: IpAddr = ip.parse().unwrap();
    let subject = Subject { account: None, org: None, ip, country: "ZZ" };
    let states = p.running.shared.quota.peek(&rt.config.quota, &subject).await.unwrap();
    states.iter().find(|(b, _)| b.scope == Scope::Ip).map(|(_, s)| s.remaining).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_headers_and_xff_from_an_untrusted_peer_are_ignored() {
    // Gateway mode is on, but only 10.0.0.0/8 is trusted: 127.0.0.1 is just a client.
    let p = proxy(&["10.0.0.0/8"], true, "unmatched: forward\n").await;
    let gw = gateway_headers("gw-acct");
    let (_, mut s) = tls_connect(p.tls, &p.cert_pem, &[b"http/1.1"]).await;

    // Stripped before forwarding: the upstream never sees them; a spoofed XFF is replaced.
    let mut h = as_refs(&gw);
    h.push(("x-forwarded-for", "198.51.100.7"));
    let r = s.send(get("/debug/echo", false, &h)).await;
    assert_eq!(r.status(), 200);
    let (_, v) = body_json(r).await;
    for name in ["x-employer-account", "x-employer-kvk", "x-assurance-level"] {
        assert!(v["headers"].get(name).is_none(), "{name} reached the upstream: {v}");
    }
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1");

    // They do not identify: a CV request with only gateway headers is anonymous → 401.
    let r = s.send(get(SEARCH, false, &as_refs(&gw))).await;
    let (_, v) = expect_problem(r, 401, "unauthorized").await;
    assert_eq!(v["reason"], "missing");

    // With a token, the token's identity counts; the spoofed XFF does not move the client IP:
    // the IP bucket charged is 127.0.0.0/24's, not 198.51.100.0/24's.
    let full = ip_bucket_remaining(&p, "198.51.100.7").await;
    assert_eq!(ip_bucket_remaining(&p, "127.0.0.1").await, full);
    let t = sign(Algorithm::ES256, "ec-1", &claims(&p, "acct-1"));
    let mut h = as_refs(&gw);
    let auth = bearer(&t);
    h.push(("authorization", &auth));
    h.push(("x-forwarded-for", "198.51.100.7"));
    let r = s.send(get(SEARCH, false, &h)).await;
    assert_eq!(r.status(), 200);
    let _ = body_bytes(r).await;
    assert_eq!(ip_bucket_remaining(&p, "127.0.0.1").await, full - 5);
    assert_eq!(ip_bucket_remaining(&p, "198.51.100.7").await, full);
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_mode_off_still_strips_forged_identity_headers() {
    let p = proxy(&[], false, "unmatched: forward\n").await;
    let gw = gateway_headers("gw-acct");
    let mut s = plain_connect(p.plain).await;
    let r = s.send(get("/debug/echo", false, &as_refs(&gw))).await;
    let (_, v) = body_json(r).await;
    for name in ["x-employer-account", "x-employer-kvk", "x-assurance-level"] {
        assert!(v["headers"].get(name).is_none(), "{name} reached the upstream: {v}");
    }
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_headers_from_a_trusted_peer_identify() {
    let p = proxy(&["127.0.0.1/32"], true, "unmatched: forward\n").await;
    let gw = gateway_headers("gw-acct");
    let (_, mut s) = tls_connect(p.tls, &p.cert_pem, &[b"h2"]).await;

    // A CV request with only gateway headers (no token) is served.
    let mut h = as_refs(&gw);
    h.push(("x-forwarded-for", "198.51.100.7"));
    let r = s.send(get(SEARCH, true, &h)).await;
    assert_eq!(r.status(), 200);
    let (_, v) = body_json(r).await;
    assert_eq!(v["results"].as_array().unwrap().len(), 5);

    // The identity is the gateway's: its account's bucket was charged.
    let rt = p.running.shared.runtime();
    let subject =
        Subject { account: Some("gw-acct"), org: Some(KVK), ip: "198.51.100.7".parse().unwrap(), country: "ZZ" };
    let states = p.running.shared.quota.peek(&rt.config.quota, &subject).await.unwrap();
    let cap = |scope| states.iter().find(|(b, _)| b.scope == scope).map(|(b, s)| (b.capacity, s.remaining)).unwrap();
    let (c, r) = cap(Scope::Account);
    assert_eq!(r, c - 5, "gateway account not charged");
    // Through a trusted peer the client IP comes from X-Forwarded-For.
    let (c, r) = cap(Scope::Ip);
    assert_eq!(r, c - 5, "XFF client's /24 not charged");
    assert_eq!(ip_bucket_remaining(&p, "127.0.0.1").await, c);

    // From a trusted peer the headers are forwarded as they came.
    let r = s.send(get("/debug/echo", true, &as_refs(&gw))).await;
    let (_, v) = body_json(r).await;
    assert_eq!(v["headers"]["x-employer-account"], "gw-acct");
    assert_eq!(v["headers"]["x-employer-kvk"], KVK);

    // A broken gateway (KvK of the wrong form) fails closed.
    let r = s
        .send(get(
            SEARCH,
            true,
            &[("x-employer-account", "gw-acct"), ("x-employer-kvk", "123"), ("x-assurance-level", LOA3)],
        ))
        .await;
    let (_, v) = expect_problem(r, 401, "unauthorized").await;
    assert_eq!(v["reason"], "invalid_claim");
    p.running.shutdown().await;
}
