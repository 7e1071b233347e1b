//! The `identity:` config section: raw serde structs with defaults, and [`IdentityPolicy`], the
//! validated form that cannot be wrong once built ([`IdentityPolicy::from_raw`] collects every
//! error with its key path, relative to `identity`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderName;
use ipnet::IpNet;
use jiff::SignedDuration;
use serde::{Deserialize, Serialize};

use super::client_ip::{self, ForwardedHeader};
use super::gateway::GatewayHeaders;
use super::jwt::{self, KeySet};
use crate::invalid::Invalid;

/// eTOEGANG assurance classes accepted by default: eHerkenning level 3 ("substantieel") and 4.
pub const DEFAULT_ACCEPTED_ASSURANCE: [&str; 2] =
    ["urn:etoegang:core:assurance-class:loa3", "urn:etoegang:core:assurance-class:loa4"];
/// Default clock-skew leeway for `exp`/`nbf`.
pub const DEFAULT_LEEWAY: SignedDuration = SignedDuration::from_secs(30);
/// Largest leeway accepted: beyond this `exp` stops meaning much.
pub const MAX_LEEWAY: SignedDuration = SignedDuration::from_secs(300);
/// Default size of the verified-token cache.
pub const DEFAULT_CACHE_ENTRIES: u64 = 10_000;
/// HS256 secrets shorter than this (256 bits) are refused.
pub const MIN_DEV_SECRET_BYTES: usize = 32;

/// `identity:` as written in the config file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawIdentity {
    /// JWKS file with the identity provider's public keys (read by the config loader).
    pub jwks_file: Option<String>,
    /// Accepted `iss` values; required when any key (JWKS or dev) is configured. Empty by
    /// default.
    pub issuers: Vec<String>,
    /// Accepted `aud` values (a token matches if any of its audiences is listed); required when
    /// any key is configured.
    pub audiences: Vec<String>,
    /// Clock-skew leeway for `exp`/`nbf`, e.g. `30s` (the default); at most 5 minutes. Parsed
    /// as a jiff `SignedDuration`, not by [`crate::duration`]: units up to hours (`2m`, `PT30S`),
    /// no days or weeks.
    pub leeway: Option<String>,
    pub claims: RawClaims,
    /// Accepted `acr` values for employer routes. Default: eHerkenning loa3 and loa4.
    pub accepted_assurance: Vec<String>,
    /// Per-`kid` algorithm allow-list for JWKS keys, e.g. `{ key-1: [PS256] }`. Needed for an RSA
    /// key without `alg` in the JWKS; otherwise it narrows (or replaces) the JWK's `alg`.
    pub key_algorithms: BTreeMap<String, Vec<String>>,
    /// DEV ONLY: an HS256 shared secret, for the demo and tests (`cvgate token` mints with it).
    /// The config loader refuses it unless the top-level `dev_mode` is on.
    pub dev_hs256: Option<RawDevKey>,
    /// CIDRs (or bare IPs) of proxies/gateways whose forwarding and identity headers are believed.
    pub trusted_proxies: Vec<String>,
    /// Which header trusted proxies append the client address to: `x-forwarded-for` (default)
    /// or `forwarded` (RFC 7239). Only that one is read.
    pub client_ip_header: Option<String>,
    /// Present = trusted-gateway mode: identity from these headers when the peer is trusted.
    pub gateway_headers: Option<RawGatewayHeaders>,
    /// Verified-token cache size (entries); 0 turns the cache off. Default 10 000.
    pub cache_entries: Option<u64>,
}

impl Default for RawIdentity {
    fn default() -> Self {
        Self {
            jwks_file: None,
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: None,
            claims: RawClaims::default(),
            accepted_assurance: DEFAULT_ACCEPTED_ASSURANCE.iter().map(|s| s.to_string()).collect(),
            key_algorithms: BTreeMap::new(),
            dev_hs256: None,
            trusted_proxies: Vec::new(),
            client_ip_header: None,
            gateway_headers: None,
            cache_entries: None,
        }
    }
}

/// Which claim carries which part of the identity.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawClaims {
    pub account: String,
    pub org: String,
    pub assurance: String,
}

impl Default for RawClaims {
    fn default() -> Self {
        Self { account: "sub".into(), org: "kvk".into(), assurance: "acr".into() }
    }
}

/// The dev HS256 key. `Debug` hides the secret.
#[derive(Clone, Deserialize, Serialize)]
pub struct RawDevKey {
    pub kid: String,
    pub secret: String,
}

impl fmt::Debug for RawDevKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawDevKey").field("kid", &self.kid).field("secret", &"<redacted>").finish()
    }
}

/// Header names a trusted gateway puts the identity in.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawGatewayHeaders {
    pub account: String,
    pub org: String,
    pub assurance: String,
}

impl Default for RawGatewayHeaders {
    fn default() -> Self {
        Self {
            account: "X-Employer-Account".into(),
            org: "X-Employer-KvK".into(),
            assurance: "X-Assurance-Level".into(),
        }
    }
}

/// Claim names after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClaimNames {
    pub account: String,
    pub org: String,
    pub assurance: String,
}

/// The validated identity policy. Built only by [`IdentityPolicy::from_raw`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct IdentityPolicy {
    pub(crate) keys: Arc<KeySet>,
    pub(crate) issuers: Vec<String>,
    pub(crate) audiences: Vec<String>,
    /// Whole seconds (NumericDate resolution).
    pub(crate) leeway_secs: i64,
    pub(crate) claims: ClaimNames,
    pub(crate) accepted_assurance: Vec<String>,
    /// Normalized (IPv4-mapped IPv6 nets are stored as IPv4).
    pub(crate) trusted_proxies: Vec<IpNet>,
    pub(crate) forwarded_header: ForwardedHeader,
    /// `None` = gateway mode off.
    pub(crate) gateway: Option<GatewayHeaders>,
    /// Names stripped from untrusted peers: the configured ones, or the defaults when gateway
    /// mode is off (so a forged `X-Employer-Account` never reaches the upstream either way).
    pub(crate) strip: GatewayHeaders,
    pub(crate) cache_entries: u64,
}

/// Public key material of keys whose private half is printed in a standard (a token signed with
/// one is a forgery anyone can make). Matched on the JWK's `x` (OKP, EC) or `n` (RSA) member.
const PUBLISHED_KEYS: [(&str, &str); 3] = [
    ("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "RFC 8037 (Ed25519, appendix A)"),
    ("f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "RFC 7515 (ES256, appendix A.3)"),
    ("ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp", "RFC 7515 (RS256, appendix A.2)"),
];

/// The standard that published a key in this JWKS, if any.
fn published_example_key(jwks: &str) -> Option<&'static str> {
    let v: serde_json::Value = serde_json::from_str(jwks).ok()?;
    v["keys"].as_array()?.iter().find_map(|k| {
        let material = k["x"].as_str().or_else(|| k["n"].as_str())?;
        PUBLISHED_KEYS.iter().find(|(m, _)| material.starts_with(m)).map(|(_, rfc)| *rfc)
    })
}

impl IdentityPolicy {
    /// Validate `raw`. `jwks_text` is the content of the JWKS file (the loader reads it and
    /// reports a read failure itself; `None` then means "no JWKS keys").
    ///
    /// # Errors
    /// Every problem found, as (key path relative to `identity`, message).
    pub fn from_raw(raw: &RawIdentity, jwks_text: Option<&str>) -> Result<IdentityPolicy, Invalid> {
        let mut errs = Invalid::new();

        // keys: the JWKS, then the dev key
        if let Some(rfc) = jwks_text.and_then(published_example_key) {
            errs.push(
                "jwks_file",
                format!("holds the example key published in {rfc}, whose private half anyone can read: put your identity provider's public keys here"),
            );
        }
        let mut keys = match jwks_text {
            Some(text) => errs.nest("", jwt::parse_jwks(text, &raw.key_algorithms)).unwrap_or_default(),
            None => {
                for kid in raw.key_algorithms.keys() {
                    errs.push(format!("key_algorithms.{kid}"), "no jwks_file to apply it to");
                }
                KeySet::default()
            }
        };
        if let Some(dev) = &raw.dev_hs256 {
            if dev.kid.trim().is_empty() {
                errs.push("dev_hs256.kid", "must not be empty");
            } else if keys.has_kid(&dev.kid) {
                errs.push("dev_hs256.kid", format!("{:?} is also a kid in the JWKS", dev.kid));
            }
            if dev.secret.len() < MIN_DEV_SECRET_BYTES {
                errs.push("dev_hs256.secret", format!("must be at least {MIN_DEV_SECRET_BYTES} bytes"));
            }
            keys.push_dev(&dev.kid, dev.secret.as_bytes());
        }

        // token rules
        for (name, list) in [("issuers", &raw.issuers), ("audiences", &raw.audiences)] {
            if list.is_empty() && !keys.is_empty() {
                errs.push(name, "list at least one when a JWKS or dev key is configured");
            }
            for (i, v) in list.iter().enumerate() {
                if v.is_empty() {
                    errs.push(format!("{name}[{i}]"), "must not be empty");
                }
            }
        }
        let leeway = match &raw.leeway {
            None => DEFAULT_LEEWAY,
            // The one duration grammar (`30s`, `1m`), like every other duration key.
            Some(s) => match errs.duration("leeway", s).map(SignedDuration::try_from) {
                Some(Ok(d)) if d > MAX_LEEWAY => {
                    errs.push("leeway", format!("at most 5m, got {s:?}"));
                    DEFAULT_LEEWAY
                }
                Some(Ok(d)) => d,
                _ => DEFAULT_LEEWAY,
            },
        };
        let c = &raw.claims;
        for (name, v) in [("account", &c.account), ("org", &c.org), ("assurance", &c.assurance)] {
            if v.is_empty() {
                errs.push(format!("claims.{name}"), "must not be empty");
            }
        }
        if raw.accepted_assurance.is_empty() {
            errs.push("accepted_assurance", "list at least one (or leave it out for loa3, loa4)");
        }
        for (i, v) in raw.accepted_assurance.iter().enumerate() {
            if v.is_empty() {
                errs.push(format!("accepted_assurance[{i}]"), "must not be empty");
            }
        }

        // network trust
        let mut trusted_proxies = Vec::new();
        for (i, s) in raw.trusted_proxies.iter().enumerate() {
            match parse_cidr(s) {
                Ok(n) => trusted_proxies.push(n),
                Err(m) => errs.push(format!("trusted_proxies[{i}]"), m),
            }
        }
        let forwarded_header = match raw.client_ip_header.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("x-forwarded-for") => ForwardedHeader::XForwardedFor,
            Some("forwarded") => ForwardedHeader::Forwarded,
            Some(other) => {
                errs.push("client_ip_header", format!("expected x-forwarded-for or forwarded, got {other:?}"));
                ForwardedHeader::XForwardedFor
            }
        };
        let gateway = raw.gateway_headers.as_ref().and_then(|g| {
            if raw.trusted_proxies.is_empty() {
                errs.push("gateway_headers", "gateway mode needs trusted_proxies");
            }
            let mut name = |field: &str, v: &str| match HeaderName::try_from(v) {
                Ok(n) => Some(n),
                Err(_) => {
                    errs.push(format!("gateway_headers.{field}"), format!("not a header name: {v:?}"));
                    None
                }
            };
            let h = GatewayHeaders {
                account: name("account", &g.account)?,
                org: name("org", &g.org)?,
                assurance: name("assurance", &g.assurance)?,
            };
            if h.account == h.org || h.account == h.assurance || h.org == h.assurance {
                errs.push("gateway_headers", "the three header names must differ");
            }
            Some(h)
        });

        errs.into_result(IdentityPolicy {
            keys: Arc::new(keys),
            issuers: raw.issuers.clone(),
            audiences: raw.audiences.clone(),
            leeway_secs: leeway.as_secs(),
            claims: ClaimNames { account: c.account.clone(), org: c.org.clone(), assurance: c.assurance.clone() },
            accepted_assurance: raw.accepted_assurance.clone(),
            trusted_proxies,
            forwarded_header,
            strip: gateway.clone().unwrap_or_default(),
            gateway,
            cache_entries: raw.cache_entries.unwrap_or(DEFAULT_CACHE_ENTRIES),
        })
    }

    /// Whether `peer` (the TCP peer) is a trusted proxy. IPv4-mapped IPv6 counts as IPv4.
    pub fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        let peer = client_ip::normalize(peer);
        self.trusted_proxies.iter().any(|n| n.contains(&peer))
    }

    /// Whether trusted-gateway mode is on.
    pub fn gateway_mode(&self) -> bool {
        self.gateway.is_some()
    }
}

/// A CIDR or a bare IP (→ /32, /128). An IPv4-mapped IPv6 net (`::ffff:10.0.0.0/104`) becomes
/// its IPv4 form, because peers are normalized to IPv4 before the check.
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let net = match (s.parse::<IpNet>(), s.parse::<IpAddr>()) {
        (Ok(n), _) => n.trunc(),
        (_, Ok(ip)) => IpNet::from(ip),
        _ => return Err(format!("not a CIDR like 10.0.0.0/8 or an IP: {s:?}")),
    };
    if let IpNet::V6(v6) = net {
        if let (Some(v4), true) = (v6.addr().to_ipv4_mapped(), v6.prefix_len() >= 96) {
            return Ok(IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).expect("96..=128 - 96 fits").trunc());
        }
    }
    Ok(net)
}

/// DEV ONLY: mint an HS256 token with the config's dev key, first issuer, first audience and
/// claim names (what `cvgate token` prints).
///
/// # Errors
/// When the config has no `dev_hs256` key, issuer or audience.
pub fn mint_from_config(
    raw: &RawIdentity,
    account: &str,
    org: Option<&str>,
    acr: &str,
    ttl: std::time::Duration,
    now: jiff::Timestamp,
) -> Result<String, String> {
    let dev = raw.dev_hs256.as_ref().ok_or("identity.dev_hs256 is not configured")?;
    let iss = raw.issuers.first().ok_or("identity.issuers is empty")?;
    let aud = raw.audiences.first().ok_or("identity.audiences is empty")?;
    let c = &raw.claims;
    let names = ClaimNames { account: c.account.clone(), org: c.org.clone(), assurance: c.assurance.clone() };
    Ok(jwt::mint_hs256(dev.secret.as_bytes(), &dev.kid, iss, aud, &names, account, org, acr, ttl, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(r: Result<IdentityPolicy, Invalid>) -> Vec<String> {
        r.expect_err("should fail").into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn defaults_build_an_anonymous_only_policy() {
        let p = IdentityPolicy::from_raw(&RawIdentity::default(), None).unwrap();
        assert!(p.keys.is_empty());
        assert_eq!(p.leeway_secs, 30);
        assert_eq!(p.accepted_assurance.len(), 2);
        assert!(!p.gateway_mode());
        assert_eq!(p.strip.account.as_str(), "x-employer-account");
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let raw = RawIdentity {
            leeway: Some("1h".into()),
            dev_hs256: Some(RawDevKey { kid: "dev".into(), secret: "short".into() }),
            trusted_proxies: vec!["10.0.0.0/8".into(), "nope".into(), "10.0.0.300".into()],
            client_ip_header: Some("x-real-ip".into()),
            gateway_headers: Some(RawGatewayHeaders { org: "bad header".into(), ..Default::default() }),
            accepted_assurance: vec![],
            key_algorithms: [("k1".to_string(), vec!["RS256".to_string()])].into(),
            ..Default::default()
        };
        let got = paths(IdentityPolicy::from_raw(&raw, None));
        assert_eq!(
            got,
            [
                "key_algorithms.k1",
                "dev_hs256.secret",
                "issuers",
                "audiences",
                "leeway",
                "accepted_assurance",
                "trusted_proxies[1]",
                "trusted_proxies[2]",
                "client_ip_header",
                "gateway_headers.org",
            ]
        );
    }

    #[test]
    fn missing_keys_take_defaults() {
        let raw: RawIdentity = serde_json::from_str(r#"{"gateway_headers": {"org": "X-KvK"}}"#).unwrap();
        assert_eq!(raw.accepted_assurance, DEFAULT_ACCEPTED_ASSURANCE);
        assert_eq!(raw.claims.org, "kvk");
        let g = raw.gateway_headers.unwrap();
        assert_eq!((g.account.as_str(), g.org.as_str()), ("X-Employer-Account", "X-KvK"));
    }

    #[test]
    fn gateway_mode_needs_trusted_proxies() {
        let raw = RawIdentity { gateway_headers: Some(RawGatewayHeaders::default()), ..Default::default() };
        assert_eq!(paths(IdentityPolicy::from_raw(&raw, None)), ["gateway_headers"]);
    }

    #[test]
    fn trusted_proxies_accept_bare_ips_and_mapped_nets() {
        let raw = RawIdentity {
            trusted_proxies: vec!["192.0.2.7".into(), "::ffff:10.0.0.0/104".into(), "2001:db8::/32".into()],
            ..Default::default()
        };
        let p = IdentityPolicy::from_raw(&raw, None).unwrap();
        for (ip, want) in [
            ("192.0.2.7", true),
            ("192.0.2.8", false),
            ("10.9.8.7", true),
            ("::ffff:10.9.8.7", true),
            ("::ffff:192.0.2.7", true),
            ("2001:db8::1", true),
            ("2001:db9::1", false),
        ] {
            assert_eq!(p.is_trusted_proxy(ip.parse().unwrap()), want, "{ip}");
        }
    }

    #[test]
    fn dev_key_debug_hides_the_secret() {
        let k = RawDevKey { kid: "dev".into(), secret: "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t".into() };
        assert!(!format!("{k:?}").contains("s3cr3t"));
        let p = IdentityPolicy::from_raw(
            &RawIdentity {
                issuers: vec!["i".into()],
                audiences: vec!["a".into()],
                dev_hs256: Some(k),
                ..Default::default()
            },
            None,
        )
        .unwrap();
        assert!(!format!("{p:?}").contains("s3cr3t"));
    }
}
