//! Trusted-gateway mode: identity asserted in request headers by a gateway that has already
//! authenticated the user (e.g. an eHerkenning broker in front of cvgate).
//!
//! Those headers are believed only from a trusted TCP peer. From any other peer they are removed
//! before anything reads or forwards them ([`strip_gateway_headers`]) — also when gateway mode is
//! off, with the default names, so a forged `X-Employer-Account` never reaches the upstream.

use http::{HeaderMap, HeaderName};

use super::{valid_account, valid_assurance, valid_kvk, AuthError, Identity, IdentitySource};

/// The three identity headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayHeaders {
    pub account: HeaderName,
    pub org: HeaderName,
    pub assurance: HeaderName,
}

impl Default for GatewayHeaders {
    fn default() -> Self {
        Self {
            account: HeaderName::from_static("x-employer-account"),
            org: HeaderName::from_static("x-employer-kvk"),
            assurance: HeaderName::from_static("x-assurance-level"),
        }
    }
}

/// Remove every value of the three identity headers.
pub fn strip_gateway_headers(headers: &mut HeaderMap, names: &GatewayHeaders) {
    for n in [&names.account, &names.org, &names.assurance] {
        headers.remove(n);
    }
}

/// The identity a trusted gateway asserts, `None` when it asserts none (no header at all).
///
/// # Errors
/// `MissingClaim("account")` when org or assurance come without an account; `Malformed` for a
/// repeated or non-UTF-8 header; `InvalidClaim` for a value of the wrong form. The gateway is
/// trusted, so garbage from it means a broken gateway: fail closed rather than go anonymous.
pub(crate) fn read(headers: &HeaderMap, names: &GatewayHeaders) -> Result<Option<Identity>, AuthError> {
    let account = one(headers, &names.account)?;
    let org = one(headers, &names.org)?;
    let assurance = one(headers, &names.assurance)?;
    let Some(account) = account else {
        return match (org, assurance) {
            (None, None) => Ok(None),
            _ => Err(AuthError::MissingClaim("account")),
        };
    };
    if !valid_account(account) {
        return Err(AuthError::InvalidClaim("account"));
    }
    if org.is_some_and(|o| !valid_kvk(o)) {
        return Err(AuthError::InvalidClaim("org"));
    }
    if assurance.is_some_and(|a| !valid_assurance(a)) {
        return Err(AuthError::InvalidClaim("assurance"));
    }
    Ok(Some(Identity {
        account: account.to_string(),
        org: org.map(str::to_string),
        assurance: assurance.map(str::to_string),
        source: IdentitySource::Gateway,
    }))
}

/// The single value of header `name`, if present.
fn one<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h str>, AuthError> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => v.to_str().map(Some).map_err(|_| AuthError::Malformed("gateway header is not text")),
        (Some(_), Some(_)) => Err(AuthError::Malformed("repeated gateway header")),
    }
}
