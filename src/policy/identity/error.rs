//! [`AuthError`]: why a request's identity was refused — the one error type of this boundary.
//!
//! Each variant names the rule that fired. [`AuthError::reason`] is the stable snake_case label
//! for metrics and the problem body; [`AuthError::status`] the HTTP status; `Display` is a short
//! sentence that is safe to show the client. No variant carries the token, a claim value or a key:
//! only `&'static str`s, so neither `Display` nor `Debug` can leak a credential.

/// A refused identity. 401 when the caller is not (validly) authenticated; 403 when the caller is
/// authenticated but may not use the route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The route needs an employer and the request carries no credentials.
    #[error("this route needs an employer token")]
    Missing,
    /// The Authorization header or the token is not well-formed (the detail says which part).
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
    /// The token names a `kid` no configured key has (or there are no keys at all).
    #[error("the token's signing key is not known")]
    UnknownKid,
    /// The token has no `kid` and more than one configured key accepts its `alg`.
    #[error("the token has no kid and several keys could verify it")]
    AmbiguousKey,
    /// `alg` is `none`, unsupported, or not in the selected key's allow-list (this also catches
    /// HS256/RS256 confusion: an RSA key never allows an HMAC algorithm).
    #[error("the token's algorithm is not allowed for its key")]
    AlgorithmNotAllowed,
    /// The signature does not verify with the selected key.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// `exp` (plus leeway) has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` (minus leeway) is still in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` is not one of the configured issuers.
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    /// No `aud` entry is one of the configured audiences.
    #[error("the token's audience is not accepted")]
    WrongAudience,
    /// A required claim (or gateway header) is absent: the label names its role
    /// (`exp`, `iss`, `aud`, `account`).
    #[error("the credentials lack the {0} claim")]
    MissingClaim(&'static str),
    /// A claim (or gateway header) is present but has the wrong form, e.g. `org` is not an
    /// 8-digit KvK number, or `exp` is not a number.
    #[error("the credentials' {0} claim is invalid")]
    InvalidClaim(&'static str),
    /// Authenticated, but without an organisation (KvK number): the account cannot use employer
    /// routes. 403: the token is valid, asking again with it will not help.
    #[error("the account is not linked to an organisation (KvK number)")]
    NoOrganisation,
    /// Authenticated, but the assurance level (`acr`) is absent or not accepted.
    #[error("the login's assurance level is not sufficient for this route")]
    InsufficientAssurance,
}

impl AuthError {
    /// Stable snake_case label for metrics (`cvgate_auth_failures_total{reason}`) and the problem
    /// body. Never changes once released: dashboards depend on it.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed(_) => "malformed",
            Self::UnknownKid => "unknown_kid",
            Self::AmbiguousKey => "ambiguous_key",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::MissingClaim(_) => "missing_claim",
            Self::InvalidClaim(_) => "invalid_claim",
            Self::NoOrganisation => "no_organisation",
            Self::InsufficientAssurance => "insufficient_assurance",
        }
    }

    /// HTTP status: 401 for absent or invalid credentials, 403 for valid credentials that do not
    /// qualify (no KvK number, assurance too low).
    pub fn status(&self) -> u16 {
        match self {
            Self::NoOrganisation | Self::InsufficientAssurance => 403,
            _ => 401,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_reasons() {
        assert_eq!(AuthError::Expired.status(), 401);
        assert_eq!(AuthError::NoOrganisation.status(), 403);
        assert_eq!(AuthError::InsufficientAssurance.status(), 403);
        assert_eq!(AuthError::MissingClaim("exp").reason(), "missing_claim");
        assert_eq!(AuthError::Malformed("x").to_string(), "malformed credentials: x");
    }
}
