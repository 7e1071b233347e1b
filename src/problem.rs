//! The one place errors become responses: RFC 9457 `application/problem+json`.
//!
//! Each [`ProxyError`] variant names the rule that fired and carries what the answer needs. Its
//! `type` is a stable URI (`urn:cvgate:problem:<slug>`, listed in docs/problems.md) that clients
//! and dashboards can match on; `detail` is for people. Nothing from the upstream's internals
//! (addresses, error strings) and nothing about another account ever reaches the body.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use serde_json::{json, Map, Value};

/// Error type of every body the proxy sends.
/// The request id header, set on every answer and forwarded upstream.
pub const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response the proxy sends.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A body from bytes already in memory (problem documents, small answers).
pub fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// Why the proxy answered instead of the upstream.
#[derive(Debug, Clone)]
pub enum ProxyError {
    /// No route matches and unmatched requests are rejected.
    NoRoute,
    /// The request line or path is not something we forward (e.g. `..` segments).
    BadRequest(&'static str),
    /// Request headers larger than `limits.max_header_bytes`.
    HeaderTooLarge { limit: usize },
    /// Missing/invalid/expired token (401) or insufficient assurance / no organisation (403).
    Auth { status: u16, reason: &'static str, detail: String },
    /// The account, organisation or IP prefix is blocked.
    Blocked { scope: &'static str, until: Option<String> },
    /// A closure window is active for this route group.
    Closed { window: String, opens_at: String, retry_after: u64 },
    /// The route group is paused by an operator.
    Paused { group: String },
    /// Paused for a cohort of employers by the population guard (rule `rule`).
    GuardPaused { group: String, rule: String },
    /// Page × size beyond the route's deep-paging depth.
    TooDeep { depth: u64, max_depth: u64 },
    /// A quota bucket has no room for this request.
    QuotaExceeded { scope: &'static str, horizon: String, retry_after: u64, headers: Vec<(HeaderName, HeaderValue)> },
    /// The request asks for more CVs than a bucket can ever hold: ask for fewer.
    TooLarge { scope: &'static str, horizon: String, capacity: u64, headers: Vec<(HeaderName, HeaderValue)> },
    /// The shared quota store cannot be reached and the policy is fail-closed.
    QuotaUnavailable,
    /// The upstream refused or could not be connected to.
    UpstreamUnreachable,
    /// The upstream sent no response headers in time.
    UpstreamTimeout,
    /// The upstream connection failed in another way.
    UpstreamFailed,
    /// A charged answer in a content coding cvgate cannot decode, where it may not pass uncounted.
    UpstreamUndecodable,
    /// Too many requests in flight in this process.
    Overloaded,
}

impl ProxyError {
    /// The quota scope and horizon that refused the request, if a quota did.
    pub fn fired(&self) -> Option<(&'static str, &str)> {
        match self {
            Self::QuotaExceeded { scope, horizon, .. } | Self::TooLarge { scope, horizon, .. } => {
                Some((scope, horizon))
            }
            _ => None,
        }
    }

    /// Stable slug used in `type`, in metrics and in the audit log.
    pub fn slug(&self) -> &'static str {
        match self {
            Self::NoRoute => "no-route",
            Self::BadRequest(_) => "bad-request",
            Self::HeaderTooLarge { .. } => "header-too-large",
            Self::Auth { status: 401, .. } => "unauthorized",
            Self::Auth { .. } => "forbidden",
            Self::Blocked { .. } => "blocked",
            Self::Closed { .. } => "closed",
            Self::Paused { .. } | Self::GuardPaused { .. } => "paused",
            Self::TooDeep { .. } => "paging-too-deep",
            Self::QuotaExceeded { .. } => "quota-exceeded",
            Self::TooLarge { .. } => "request-too-large",
            Self::QuotaUnavailable => "quota-unavailable",
            Self::UpstreamUnreachable => "upstream-unreachable",
            Self::UpstreamTimeout => "upstream-timeout",
            Self::UpstreamFailed => "upstream-failed",
            Self::UpstreamUndecodable => "upstream-undecodable",
            Self::Overloaded => "overloaded",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::HeaderTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Auth { status, .. } => StatusCode::from_u16(*status).unwrap_or(StatusCode::UNAUTHORIZED),
            Self::Blocked { .. } | Self::TooDeep { .. } => StatusCode::FORBIDDEN,
            Self::Closed { .. }
            | Self::Paused { .. }
            | Self::GuardPaused { .. }
            | Self::QuotaUnavailable
            | Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::QuotaExceeded { .. } | Self::TooLarge { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamUnreachable | Self::UpstreamFailed | Self::UpstreamUndecodable => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn title_detail(&self) -> (&'static str, String, Map<String, Value>) {
        let mut x = Map::new();
        let (title, detail) = match self {
            Self::NoRoute => ("Not found", "No such resource.".to_string()),
            Self::BadRequest(why) => ("Bad request", (*why).to_string()),
            Self::HeaderTooLarge { limit } => {
                ("Request headers too large", format!("Request headers exceed {limit} bytes."))
            }
            Self::Auth { reason, detail, .. } => {
                x.insert("reason".into(), json!(reason));
                ("Not authorised", detail.clone())
            }
            Self::Blocked { scope, until } => {
                x.insert("scope".into(), json!(scope));
                if let Some(u) = until {
                    x.insert("until".into(), json!(u));
                }
                ("Blocked", format!("Access is blocked for this {scope}. Contact the service desk."))
            }
            Self::Closed { window, opens_at, .. } => {
                x.insert("window".into(), json!(window));
                x.insert("opens_at".into(), json!(opens_at));
                ("Closed", format!("CV search is closed until {opens_at}."))
            }
            Self::Paused { group } => {
                x.insert("group".into(), json!(group));
                ("Paused", format!("The {group} service is paused by the operator."))
            }
            Self::GuardPaused { group, rule } => {
                x.insert("group".into(), json!(group));
                x.insert("guard".into(), json!(rule));
                ("Paused", format!("The {group} service is paused for new or unusual use after an unusual volume of downloads; try again later or contact the service desk."))
            }
            Self::TooDeep { depth, max_depth } => {
                x.insert("max_depth".into(), json!(max_depth));
                ("Paging too deep", format!("page x size = {depth} exceeds {max_depth}; refine the search."))
            }
            Self::QuotaExceeded { scope, horizon, retry_after, .. } => {
                x.insert("scope".into(), json!(scope));
                x.insert("horizon".into(), json!(horizon));
                x.insert("retry_after".into(), json!(retry_after));
                ("CV quota exceeded", format!("The {scope} {horizon} CV quota is used up; retry in {retry_after} s."))
            }
            Self::TooLarge { scope, horizon, capacity, .. } => {
                x.insert("scope".into(), json!(scope));
                x.insert("horizon".into(), json!(horizon));
                x.insert("capacity".into(), json!(capacity));
                ("CV request too large", format!("This request asks for more CVs than the {scope} {horizon} quota ({capacity}) can ever hold; ask for fewer."))
            }
            Self::QuotaUnavailable => ("Quota service unavailable", "Try again shortly.".to_string()),
            Self::UpstreamUnreachable => ("Bad gateway", "The CV service could not be reached.".to_string()),
            Self::UpstreamTimeout => ("Gateway timeout", "The CV service did not answer in time.".to_string()),
            Self::UpstreamFailed => ("Bad gateway", "The CV service failed to answer.".to_string()),
            Self::UpstreamUndecodable => {
                ("Bad gateway", "The CV service answered in a content coding this gateway cannot read.".to_string())
            }
            Self::Overloaded => ("Overloaded", "Too many requests in flight; retry shortly.".to_string()),
        };
        (title, detail, x)
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Closed { retry_after, .. } | Self::QuotaExceeded { retry_after, .. } => Some(*retry_after),
            Self::Overloaded | Self::QuotaUnavailable => Some(1),
            _ => None,
        }
    }

    /// The problem+json response. `request_id` becomes `instance`.
    pub fn into_response(self, request_id: &str) -> Response<ProxyBody> {
        let (title, detail, extra) = self.title_detail();
        let mut resp = answer(self.status(), self.slug(), title, detail, extra, request_id);
        let h = resp.headers_mut();
        if let Some(s) = self.retry_after() {
            h.insert(RETRY_AFTER, HeaderValue::from(s));
        }
        match self {
            Self::Auth { status: 401, reason, .. } => {
                let v = format!("Bearer error=\"invalid_token\", error_description=\"{reason}\"");
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.insert(WWW_AUTHENTICATE, v);
                }
            }
            Self::QuotaExceeded { headers, .. } | Self::TooLarge { headers, .. } => {
                for (k, v) in headers {
                    h.insert(k, v);
                }
            }
            _ => {}
        }
        resp
    }
}

/// A problem+json answer: every answer cvgate makes itself goes through here, the proxy's
/// ([`ProxyError::into_response`]) and the admin API's. `type` is `urn:cvgate:problem:<slug>`,
/// `instance` the request id (also in `X-Request-Id`), `extra` members follow.
pub fn answer(
    status: StatusCode,
    slug: &str,
    title: &str,
    detail: String,
    extra: Map<String, Value>,
    request_id: &str,
) -> Response<ProxyBody> {
    let mut doc = Map::new();
    doc.insert("type".into(), json!(format!("urn:cvgate:problem:{slug}")));
    doc.insert("title".into(), json!(title));
    doc.insert("status".into(), json!(status.as_u16()));
    doc.insert("detail".into(), json!(detail));
    doc.insert("instance".into(), json!(format!("urn:cvgate:request:{request_id}")));
    doc.extend(extra);
    let body = serde_json::to_vec(&Value::Object(doc)).expect("json");
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(X_REQUEST_ID, v);
    }
    resp
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.slug())
    }
}

impl std::error::Error for ProxyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn problem_json_has_type_status_and_retry_after() {
        let e = ProxyError::Closed {
            window: "night".into(),
            opens_at: "2026-11-24T07:00:00+01:00".into(),
            retry_after: 28800,
        };
        let r = e.into_response("abc");
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[RETRY_AFTER], "28800");
        assert_eq!(r.headers()[CONTENT_TYPE], "application/problem+json");
        let b = r.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["type"], "urn:cvgate:problem:closed");
        assert_eq!(v["status"], 503);
        assert_eq!(v["opens_at"], "2026-11-24T07:00:00+01:00");
        assert_eq!(v["instance"], "urn:cvgate:request:abc");
    }
}
