//! The facts of one request, gathered on its way through the proxy and read once at its end
//! (the audit line, the metrics). A leaf: it names no other part of the path.

use std::net::IpAddr;
use std::sync::Arc;

use crate::count::Certainty;

/// What one request did; read once at the end for the audit line and metrics.
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    pub request_id: String,
    pub route: Option<Arc<str>>,
    pub group: Option<Arc<str>>,
    pub account: Option<String>,
    pub org: Option<String>,
    pub client_ip: Option<IpAddr>,
    pub country: String,
    pub tier: Option<String>,
    pub reserved: u64,
    pub delivered: u64,
    /// What answered the request.
    pub decision: Decision,
    /// Scope and horizon that fired (quota), when any.
    pub fired: Option<(String, String)>,
    pub would_reject: Vec<(String, String)>,
    pub status: u16,
    pub bytes: u64,
    /// The request body's declared length (`Content-Length`), 0 without one.
    pub request_bytes: u64,
    pub truncated: bool,
    /// How sure `delivered` is (charged requests).
    pub count: Certainty,
    /// A charged (CV) route: audited whatever the decision (other routes only when rejected).
    pub audited: bool,
    /// CVs delivered without their contact data (counted only, in shadow mode).
    pub masked: u64,
    /// Why the answer was masked (`soft-budget`, `admin`, ...; `shadow:` prefixed in shadow mode).
    pub mask_reason: Option<&'static str>,
    /// A newcomer on probation.
    pub newcomer: bool,
    /// The population guard masks this request's cohort (the rule).
    pub guard_mask: Option<Arc<str>>,
    /// When the policy decided (the audit line's `ts`; `None` before admission).
    pub at: Option<jiff::Timestamp>,
    /// The request as asked (cheap clones of the request's own buffers); the audit writer
    /// redacts secrets from the query.
    pub method: Option<http::Method>,
    pub path: Option<http::uri::PathAndQuery>,
    pub user_agent: Option<http::HeaderValue>,
    /// The CVs asked: the route's charge before any grant.
    pub asked: u64,
    /// Records passed whole before masking began (a soft budget's remainder); masked answers.
    pub mask_after: Option<u64>,
    /// The block scope (`account`, `org`, `ip`) or closure window that refused the request.
    pub block: Option<&'static str>,
    pub window: Option<String>,
}

/// What answered a request: the upstream (allowed), cvgate itself with a problem, or nobody
/// (the client went away first).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Decision {
    #[default]
    Allowed,
    /// The problem slug cvgate answered with (`quota-exceeded`, `blocked`, ...).
    Refused(&'static str),
    /// The client cancelled before an answer.
    Cancelled,
}

impl Decision {
    /// `allowed`, the problem slug, or `cancelled` (the audit line's and metric's value).
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Refused(slug) => slug,
            Decision::Cancelled => "cancelled",
        }
    }
}
