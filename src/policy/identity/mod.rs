//! Who is asking: the employer account, organisation (KvK number) and assurance level, from a
//! verified JWT or a trusted gateway's headers; and the client IP. Quotas are keyed on this, so
//! it must be unforgeable.
//!
//! # Layout
//! - this file: [`Identity`] and [`Identifier`], the per-request entry point
//!   ([`Identifier::identify`], [`Identifier::require_employer`], [`Identifier::client_ip`]).
//! - [`config`]: `identity:` raw config and the validated [`IdentityPolicy`].
//! - [`jwt`]: key set (JWKS + dev key), token verification and claim mapping, dev minting.
//! - [`gateway`]: trusted-gateway headers, and stripping them from everyone else.
//! - [`client_ip`]: client address through trusted proxies; the quota IP prefix.
//! - `cache`: verified tokens by SHA-256, re-checked against the clock on every hit.
//! - [`error`]: [`AuthError`], the one error of this boundary.
//!
//! # Order of [`Identifier::identify`]
//! 1. From an untrusted peer, strip the gateway headers (before anything reads or forwards them).
//! 2. From a trusted peer in gateway mode, gateway headers (when present) are the identity; the
//!    `Authorization` header is then not looked at: the gateway did the authentication.
//! 3. Otherwise `Authorization: Bearer <jwt>` is verified (cache first); no header = anonymous.

mod cache;
pub mod client_ip;
pub mod config;
pub mod error;
pub mod gateway;
pub mod jwt;

#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::HeaderMap;

use crate::clock::SharedClock;
use cache::{Entry, TokenCache};

pub use client_ip::{ip_prefix, ForwardedHeader};
pub use config::{mint_from_config, IdentityPolicy, RawClaims, RawDevKey, RawGatewayHeaders, RawIdentity};
pub use error::AuthError;
pub use gateway::{strip_gateway_headers, GatewayHeaders};
pub use jwt::mint_dev_token;

/// An identified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The person's account (`sub`, or the gateway's account header).
    pub account: String,
    /// The organisation's KvK number: exactly 8 ASCII digits when present.
    pub org: Option<String>,
    /// Assurance class URI (`acr`), e.g. `urn:etoegang:core:assurance-class:loa3`.
    pub assurance: Option<String>,
    pub source: IdentitySource,
}

/// Where an [`Identity`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    Jwt,
    Gateway,
}

impl IdentitySource {
    /// Label for audit lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jwt => "jwt",
            Self::Gateway => "gateway",
        }
    }
}

/// Identifies requests under one [`IdentityPolicy`]; holds the verified-token cache and the
/// clock. Lives as long as the policy: the server builds a new one on reload (which also drops
/// the cache, so a removed key stops working at once).
pub struct Identifier {
    policy: IdentityPolicy,
    clock: SharedClock,
    /// `None` when `cache_entries` is 0.
    cache: Option<TokenCache>,
}

impl Identifier {
    pub fn new(policy: IdentityPolicy, clock: SharedClock) -> Self {
        let cache = (policy.cache_entries > 0).then(|| TokenCache::new(policy.cache_entries));
        Self { policy, clock, cache }
    }

    pub fn policy(&self) -> &IdentityPolicy {
        &self.policy
    }

    /// Strip gateway headers from an untrusted `peer` (mutating `headers`), then identify.
    ///
    /// `Ok(None)` is an anonymous request: no `Authorization` header and no gateway identity.
    ///
    /// # Errors
    /// A present but unacceptable credential (bad token, non-Bearer scheme, broken gateway
    /// headers). Employer-only checks (org, assurance) are [`Identifier::require_employer`]'s.
    pub fn identify(&self, headers: &mut HeaderMap, peer: IpAddr) -> Result<Option<Identity>, AuthError> {
        let trusted = self.policy.is_trusted_proxy(peer);
        if !trusted {
            strip_gateway_headers(headers, &self.policy.strip);
        }
        if let (true, Some(names)) = (trusted, &self.policy.gateway) {
            if let Some(id) = gateway::read(headers, names)? {
                return Ok(Some(id));
            }
        }
        let mut auth = headers.get_all(AUTHORIZATION).iter();
        let value = match (auth.next(), auth.next()) {
            (None, _) => return Ok(None),
            (Some(v), None) => v,
            (Some(_), Some(_)) => return Err(AuthError::Malformed("more than one Authorization header")),
        };
        let token = bearer_token(value.as_bytes())?;
        self.verify_token(token).map(Some)
    }

    /// Verify a bearer token (without the `Bearer ` prefix), through the cache.
    ///
    /// # Errors
    /// The first rule the token breaks.
    pub fn verify_token(&self, token: &str) -> Result<Identity, AuthError> {
        let now = self.clock.now();
        let Some(cache) = &self.cache else {
            return jwt::verify(&self.policy, token, now).map(|v| v.identity);
        };
        let key = cache.key(token);
        if let Some(e) = cache.get(&key) {
            return match jwt::check_times(e.exp, e.nbf, self.policy.leeway_secs, now) {
                Ok(()) => Ok((*e.identity).clone()),
                Err(err) => {
                    cache.remove(&key);
                    Err(err)
                }
            };
        }
        let v = jwt::verify(&self.policy, token, now)?;
        cache.insert(key, Entry { identity: Arc::new(v.identity.clone()), exp: v.exp, nbf: v.nbf });
        Ok(v.identity)
    }

    /// For routes that need an employer: an identity with an organisation (KvK number) and an
    /// accepted assurance level.
    ///
    /// # Errors
    /// `Missing` (401) without identity; `NoOrganisation` (403) without KvK number — the
    /// credentials are valid but this account cannot use CV routes; `InsufficientAssurance`
    /// (403) when `acr` is absent or not in `accepted_assurance`.
    pub fn require_employer(&self, id: Option<&Identity>) -> Result<(), AuthError> {
        let id = id.ok_or(AuthError::Missing)?;
        if id.org.is_none() {
            return Err(AuthError::NoOrganisation);
        }
        match &id.assurance {
            Some(a) if self.policy.accepted_assurance.contains(a) => Ok(()),
            _ => Err(AuthError::InsufficientAssurance),
        }
    }

    /// The client address: the peer, or through trusted proxies the forwarding header's first
    /// untrusted address from the right (see [`client_ip`]).
    pub fn client_ip(&self, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
        client_ip::client_ip(headers, peer, self.policy.forwarded_header, |ip| self.policy.is_trusted_proxy(ip))
    }

    /// Tokens in the cache (for tests and metrics).
    pub fn cache_len(&self) -> usize {
        self.cache.as_ref().map_or(0, TokenCache::len)
    }

    /// (hits, misses) of the token cache since start.
    pub fn cache_stats(&self) -> (u64, u64) {
        self.cache.as_ref().map_or((0, 0), |c| (c.hits(), c.misses()))
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 9110 §11.1).
fn bearer_token(value: &[u8]) -> Result<&str, AuthError> {
    let value = std::str::from_utf8(value).map_err(|_| AuthError::Malformed("Authorization is not text"))?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed("Authorization is not Bearer <token>"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed("Authorization scheme is not Bearer"));
    }
    let token = token.trim_matches(' ');
    if token.is_empty() {
        return Err(AuthError::Malformed("empty bearer token"));
    }
    Ok(token)
}

/// Longest account or assurance value accepted (they end up in logs and quota keys).
const MAX_VALUE_LEN: usize = 256;

/// An account id: non-empty, bounded, printable (it appears in logs and quota keys).
pub(crate) fn valid_account(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_VALUE_LEN && !s.chars().any(char::is_control)
}

/// A KvK number: exactly 8 ASCII digits.
pub(crate) fn valid_kvk(s: &str) -> bool {
    s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit())
}

/// An assurance value: same shape rules as an account.
pub(crate) fn valid_assurance(s: &str) -> bool {
    valid_account(s)
}
