//! JWT bearer tokens: the key set (from a JWKS and the dev key), verification, claim mapping,
//! and dev-token minting.
//!
//! The token is parsed here, not by `jsonwebtoken::decode`, so that every rule is ours and in
//! order: size and shape → header (`alg`, `kid`, no `crit`) → key selection → signature (the one
//! call into `jsonwebtoken::crypto::verify`) → `exp`/`nbf` against the injected clock → `iss` →
//! `aud` → claim mapping. Nothing in the payload is looked at before the signature verifies.
//!
//! Algorithm rules: only RS256, PS256, ES256 and EdDSA from the JWKS, HS256 only for the dev key.
//! Each key has an explicit allow-list (its JWK `alg`, or `identity.key_algorithms`, or the only
//! algorithm its curve allows); the header's `alg` must be in the selected key's list. An RSA key
//! never allows HS256, so a token "signed" with the RSA public key as HMAC secret is refused
//! before any HMAC is computed. Symmetric (`oct`) keys are refused in the JWKS. Keys come only
//! from the configured JWKS and dev key: header `jwk`, `jku`, `x5u`, `x5c` are ignored, never
//! fetched or trusted.
//!
//! `kid` rule: with a `kid`, that key or nothing. Without one, the token is accepted only if
//! exactly one configured key allows its `alg`; otherwise `AmbiguousKey`. There is no trial
//! verification against several keys, so a bad token costs at most one signature check.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jiff::Timestamp;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::config::{ClaimNames, IdentityPolicy};
use super::{valid_account, valid_assurance, valid_kvk, AuthError, Identity, IdentitySource};
use crate::invalid::Invalid;

/// Longest token considered (the proxy caps header bytes lower anyway).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Smallest RSA modulus accepted from the JWKS.
pub const MIN_RSA_BITS: usize = 2048;

/// One verification key and the algorithms it may verify.
#[derive(Clone)]
pub(crate) struct VerifyKey {
    kid: Option<String>,
    algs: Vec<Algorithm>,
    key: DecodingKey,
}

/// `DecodingKey`'s own `Debug` prints key bytes (the HMAC secret, for the dev key): not ours.
impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey").field("kid", &self.kid).field("algs", &self.algs).finish_non_exhaustive()
    }
}

/// Every key that can verify a token.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeySet {
    keys: Vec<VerifyKey>,
}

impl KeySet {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Add the dev HS256 key (validated by the caller).
    pub fn push_dev(&mut self, kid: &str, secret: &[u8]) {
        let key = DecodingKey::from_secret(secret);
        self.keys.push(VerifyKey { kid: Some(kid.to_string()), algs: vec![Algorithm::HS256], key });
    }

    /// The key for a token with header `kid` and `alg` (see the module doc for the rule).
    fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<&VerifyKey, AuthError> {
        match kid {
            Some(kid) => {
                let k = self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)).ok_or(AuthError::UnknownKid)?;
                if k.algs.contains(&alg) {
                    Ok(k)
                } else {
                    Err(AuthError::AlgorithmNotAllowed)
                }
            }
            None => {
                let mut it = self.keys.iter().filter(|k| k.algs.contains(&alg));
                match (it.next(), it.next()) {
                    (Some(k), None) => Ok(k),
                    (Some(_), Some(_)) => Err(AuthError::AmbiguousKey),
                    (None, _) if self.keys.is_empty() => Err(AuthError::UnknownKid),
                    (None, _) => Err(AuthError::AlgorithmNotAllowed),
                }
            }
        }
    }
}

/// The algorithms a token may use; anything else (`none`, HS384, RS512, ...) is refused.
fn parse_alg(s: &str) -> Option<Algorithm> {
    Some(match s {
        "RS256" => Algorithm::RS256,
        "PS256" => Algorithm::PS256,
        "ES256" => Algorithm::ES256,
        "EdDSA" => Algorithm::EdDSA,
        "HS256" => Algorithm::HS256,
        _ => return None,
    })
}

/// The fields of a JWK we read. Unknown fields are ignored.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
    /// Private parts: their presence is an error (a JWKS published with private keys).
    d: Option<Value>,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Value>,
}

/// Parse a JWKS into keys. `configured` is `identity.key_algorithms` (allow-lists by kid).
///
/// # Errors
/// Every problem, as (key path relative to `identity`, message): JWKS problems under
/// `jwks_file` (with the key's index in the message), allow-list problems under
/// `key_algorithms.<kid>`.
pub(crate) fn parse_jwks(text: &str, configured: &BTreeMap<String, Vec<String>>) -> Result<KeySet, Invalid> {
    let doc: Jwks = serde_json::from_str(text)
        .map_err(|e| Invalid::single("jwks_file", format!("not a JWKS ({{\"keys\": [...]}}): {e}")))?;
    let mut errs = Invalid::new();
    let mut set = KeySet::default();
    for (i, v) in doc.keys.into_iter().enumerate() {
        match parse_jwk(v, configured) {
            Ok(None) => {}
            Ok(Some(k)) => {
                if let Some(kid) = k.kid.as_deref().filter(|kid| set.has_kid(kid)) {
                    errs.push("jwks_file", format!("keys[{i}]: duplicate kid {kid:?}"));
                }
                set.keys.push(k);
            }
            Err((path, m)) if path.is_empty() => errs.push("jwks_file", format!("keys[{i}]: {m}")),
            Err((path, m)) => errs.push(path, m),
        }
    }
    for kid in configured.keys().filter(|kid| !set.has_kid(kid)) {
        errs.push(format!("key_algorithms.{kid}"), "no signing key with this kid in the JWKS");
    }
    errs.into_result(set)
}

/// One JWK → a key, or `None` for an encryption key (`use: enc`, irrelevant here).
/// Errors with an empty path belong to the JWKS entry; others to `key_algorithms.<kid>`.
fn parse_jwk(v: Value, configured: &BTreeMap<String, Vec<String>>) -> Result<Option<VerifyKey>, (String, String)> {
    let here = |m: String| (String::new(), m);
    let jwk: Jwk = serde_json::from_value(v).map_err(|e| here(format!("not a JWK: {e}")))?;
    if jwk.use_.as_deref() == Some("enc") {
        return Ok(None);
    }
    if jwk.d.is_some() {
        return Err(here("contains a private key (\"d\"); publish only public keys".into()));
    }
    let (key, family) = key_material(&jwk).map_err(here)?;
    let algs = allow_list(&jwk, family, configured)?;
    Ok(Some(VerifyKey { kid: jwk.kid, algs, key }))
}

/// The public key, and the algorithms its type can do at all.
fn key_material(jwk: &Jwk) -> Result<(DecodingKey, &'static [Algorithm]), String> {
    let need = |f: &Option<String>, name: &str| f.clone().ok_or_else(|| format!("{} key without {name:?}", jwk.kty));
    let bytes = |s: &str, name: &str| URL_SAFE_NO_PAD.decode(s).map_err(|_| format!("{name:?} is not base64url"));
    match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => {
            let (n, e) = (need(&jwk.n, "n")?, need(&jwk.e, "e")?);
            let n_bytes = bytes(&n, "n")?;
            let bits = n_bytes.iter().position(|b| *b != 0).map_or(0, |i| (n_bytes.len() - i) * 8);
            if bits < MIN_RSA_BITS {
                return Err(format!("RSA modulus of about {bits} bits; at least {MIN_RSA_BITS} required"));
            }
            let key = DecodingKey::from_rsa_components(&n, &e).map_err(|_| "bad RSA n/e".to_string())?;
            Ok((key, &[Algorithm::RS256, Algorithm::PS256]))
        }
        ("EC", Some("P-256")) => {
            let (x, y) = (need(&jwk.x, "x")?, need(&jwk.y, "y")?);
            if bytes(&x, "x")?.len() != 32 || bytes(&y, "y")?.len() != 32 {
                return Err("P-256 x and y must be 32 bytes each".into());
            }
            let key = DecodingKey::from_ec_components(&x, &y).map_err(|_| "bad EC x/y".to_string())?;
            Ok((key, &[Algorithm::ES256]))
        }
        ("OKP", Some("Ed25519")) => {
            let x = need(&jwk.x, "x")?;
            if bytes(&x, "x")?.len() != 32 {
                return Err("Ed25519 x must be 32 bytes".into());
            }
            let key = DecodingKey::from_ed_components(&x).map_err(|_| "bad Ed25519 x".to_string())?;
            Ok((key, &[Algorithm::EdDSA]))
        }
        ("oct", _) => Err("symmetric (oct) keys are not accepted from the JWKS; see dev_hs256".into()),
        (kty, crv) => Err(format!("unsupported key type {kty:?} (curve {crv:?}); use RSA, EC P-256 or OKP Ed25519")),
    }
}

/// The key's allow-list: `identity.key_algorithms.<kid>` if configured, else the JWK's `alg`,
/// else the key type's only algorithm (EC P-256 → ES256, Ed25519 → EdDSA). An RSA key with
/// neither is an error: RS256 or PS256 is the operator's decision, not ours.
fn allow_list(
    jwk: &Jwk,
    family: &[Algorithm],
    configured: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<Algorithm>, (String, String)> {
    let not_for = |a: &str| format!("{a:?} is not allowed for a {} key (allowed: {family:?})", jwk.kty);
    if let Some((kid, list)) = jwk.kid.as_deref().and_then(|kid| configured.get(kid).map(|l| (kid, l))) {
        let path = format!("key_algorithms.{kid}");
        if list.is_empty() {
            return Err((path, "list at least one algorithm".into()));
        }
        return list
            .iter()
            .map(|a| parse_alg(a).filter(|a| family.contains(a)).ok_or_else(|| (path.clone(), not_for(a))))
            .collect();
    }
    match (jwk.alg.as_deref(), family) {
        (Some(a), _) => match parse_alg(a).filter(|a| family.contains(a)) {
            Some(a) => Ok(vec![a]),
            None => Err((String::new(), not_for(a))),
        },
        (None, [only]) => Ok(vec![*only]),
        (None, _) => Err((
            String::new(),
            "RSA key without \"alg\": set alg in the JWK or list it in identity.key_algorithms".into(),
        )),
    }
}

/// The JOSE header fields we read.
#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    kid: Option<String>,
    /// Extensions we do not implement; RFC 7515 §4.1.11 says refuse.
    crit: Option<Value>,
}

/// A token that passed every check, with what the cache needs to re-check time.
#[derive(Debug, Clone)]
pub(crate) struct Verified {
    pub identity: Identity,
    /// `exp`, seconds since the epoch.
    pub exp: i64,
    /// `nbf`, seconds since the epoch.
    pub nbf: Option<i64>,
}

/// Verify `token` under `policy` at `now`.
///
/// # Errors
/// The first rule that fails, in the order of the module doc.
pub(crate) fn verify(policy: &IdentityPolicy, token: &str, now: Timestamp) -> Result<Verified, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed("token too long"));
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(s64), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(AuthError::Malformed("a JWT has three dot-separated parts"));
    };
    let header: JoseHeader = decode_json(h64).ok_or(AuthError::Malformed("unreadable header"))?;
    let alg = parse_alg(&header.alg).ok_or(AuthError::AlgorithmNotAllowed)?;
    if header.crit.is_some() {
        return Err(AuthError::Malformed("critical header extensions are not supported"));
    }
    let key = policy.keys.select(header.kid.as_deref(), alg)?;

    let message = &token[..h64.len() + 1 + p64.len()];
    match jsonwebtoken::crypto::verify(s64, message.as_bytes(), &key.key, alg) {
        Ok(true) => {}
        Ok(false) | Err(_) => return Err(AuthError::BadSignature),
    }

    // The signature holds: now the payload may be read.
    let claims: Map<String, Value> = decode_json(p64).ok_or(AuthError::Malformed("unreadable payload"))?;
    let exp = numeric_date(&claims, "exp")?.ok_or(AuthError::MissingClaim("exp"))?;
    let nbf = numeric_date(&claims, "nbf")?;
    check_times(exp, nbf, policy.leeway_secs, now)?;
    match claims.get("iss") {
        None => return Err(AuthError::MissingClaim("iss")),
        Some(Value::String(iss)) if policy.issuers.contains(iss) => {}
        Some(Value::String(_)) => return Err(AuthError::WrongIssuer),
        Some(_) => return Err(AuthError::InvalidClaim("iss")),
    }
    let aud_ok = match claims.get("aud") {
        None => return Err(AuthError::MissingClaim("aud")),
        Some(Value::String(a)) => policy.audiences.contains(a),
        Some(Value::Array(list)) => {
            list.iter().any(|a| a.as_str().is_some_and(|a| policy.audiences.iter().any(|x| x == a)))
        }
        Some(_) => return Err(AuthError::InvalidClaim("aud")),
    };
    if !aud_ok {
        return Err(AuthError::WrongAudience);
    }
    let identity = map_claims(&claims, &policy.claims)?;
    Ok(Verified { identity, exp, nbf })
}

/// `exp`/`nbf` against `now`, with `leeway` seconds either way. Valid while
/// `nbf - leeway <= now < exp + leeway`. Also run on every cache hit.
///
/// # Errors
/// `Expired` or `NotYetValid`.
pub(crate) fn check_times(exp: i64, nbf: Option<i64>, leeway: i64, now: Timestamp) -> Result<(), AuthError> {
    let now = now.as_second();
    if now >= exp.saturating_add(leeway) {
        return Err(AuthError::Expired);
    }
    if nbf.is_some_and(|nbf| now < nbf.saturating_sub(leeway)) {
        return Err(AuthError::NotYetValid);
    }
    Ok(())
}

/// Claims → identity. Account required; org (KvK) and assurance optional here — routes that need
/// them check with `Identifier::require_employer`.
fn map_claims(claims: &Map<String, Value>, names: &ClaimNames) -> Result<Identity, AuthError> {
    let account = match claims.get(&names.account) {
        None | Some(Value::Null) => return Err(AuthError::MissingClaim("account")),
        Some(Value::String(s)) if valid_account(s) => s.clone(),
        Some(_) => return Err(AuthError::InvalidClaim("account")),
    };
    // KvK numbers only as strings: a JSON number would have lost leading zeros.
    let org = match claims.get(&names.org) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if valid_kvk(s) => Some(s.clone()),
        Some(_) => return Err(AuthError::InvalidClaim("org")),
    };
    let assurance = match claims.get(&names.assurance) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if valid_assurance(s) => Some(s.clone()),
        Some(_) => return Err(AuthError::InvalidClaim("assurance")),
    };
    Ok(Identity { account, org, assurance, source: IdentitySource::Jwt })
}

/// A NumericDate claim (seconds, integer or fractional → floor); `None` when absent.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Ok(Some(i)),
            (None, Some(f)) if f.is_finite() && f.abs() < 1e15 => Ok(Some(f.floor() as i64)),
            _ => Err(AuthError::InvalidClaim(name)),
        },
        Some(_) => Err(AuthError::InvalidClaim(name)),
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(b64: &str) -> Option<T> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(b64).ok()?).ok()
}

/// DEV ONLY — mint an HS256 token for the demo and tests, with the default claim names
/// (`sub`, `kvk`, `acr`). Production tokens come from the identity provider; the dev key is off
/// unless `identity.dev_hs256` is configured. Valid from `now` for `ttl`.
#[allow(clippy::too_many_arguments)] // the signature the CLI and the test harness share
pub fn mint_dev_token(
    secret: &[u8],
    kid: &str,
    iss: &str,
    aud: &str,
    account: &str,
    org: Option<&str>,
    acr: &str,
    ttl: Duration,
    now: Timestamp,
) -> String {
    let names = ClaimNames { account: "sub".into(), org: "kvk".into(), assurance: "acr".into() };
    mint_hs256(secret, kid, iss, aud, &names, account, org, acr, ttl, now)
}

/// DEV ONLY — [`mint_dev_token`] with configurable claim names.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mint_hs256(
    secret: &[u8],
    kid: &str,
    iss: &str,
    aud: &str,
    names: &ClaimNames,
    account: &str,
    org: Option<&str>,
    acr: &str,
    ttl: Duration,
    now: Timestamp,
) -> String {
    let iat = now.as_second();
    let exp = iat.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
    let mut claims = Map::new();
    claims.insert("iss".into(), iss.into());
    claims.insert("aud".into(), aud.into());
    claims.insert("iat".into(), iat.into());
    claims.insert("nbf".into(), iat.into());
    claims.insert("exp".into(), exp.into());
    claims.insert(names.account.clone(), account.into());
    if let Some(org) = org {
        claims.insert(names.org.clone(), org.into());
    }
    claims.insert(names.assurance.clone(), acr.into());
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret))
        .expect("HS256 over a JSON map cannot fail")
}
