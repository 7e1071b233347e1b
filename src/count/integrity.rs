//! Count integrity: what the proxy asks of the upstream on a charged route, and whether an
//! answer's records can be counted with certainty.
//!
//! The rule (docs/config.md, "Count integrity"): **a response is charged its full reservation
//! unless its records were counted with certainty.** A refund happens only on a positive,
//! verified count. This module owns the two ends of that rule that are decided on headers:
//! - [`prepare_request`]: on a charged route, the request headers that would make the upstream
//!   answer with part of a resource, a cached nothing or another representation are removed or
//!   replaced (`Range`, `If-*`, `Accept-Encoding`, `Accept`), and the client's own wish for
//!   compression is remembered for the way back.
//! - [`judge`]: the response head decides whether the body can be counted at all and how (decode
//!   first?), or names why its count cannot be certain (`status`, `partial`, `content-type`,
//!   `encoding`). The body's own verdict (shape, truncation, decoding) comes later, from
//!   [`crate::count`] and [`crate::count::codec`].

use http::header::{
    HeaderValue, ACCEPT, ACCEPT_ENCODING, CONTENT_RANGE, CONTENT_TYPE, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    IF_RANGE, IF_UNMODIFIED_SINCE, RANGE,
};
use http::{HeaderMap, StatusCode};

use crate::count::codec::{self, Coding};
use crate::count::RecordFormat;

/// Every reason a count can be uncertain (the `reason` label of `cvgate_count_uncertain_total`).
pub const UNCERTAIN_REASONS: [&str; 11] = [
    "status",
    "partial",
    "content-type",
    "encoding",
    "decode-error",
    "bomb",
    "shape",
    "malformed",
    "truncated",
    "client-gone",
    "count-header",
];

/// What a route does about content codings (`routes[].encoding`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEncoding {
    /// `Accept-Encoding` sent to the upstream on this route: `identity` by default, so the
    /// records arrive countable; a compressed answer is decoded anyway.
    pub upstream: HeaderValue,
    /// Compress the answer again (gzip, br, zstd) for a client that accepts it.
    pub compress: bool,
    /// A body in a coding cvgate cannot decode: charge the full reservation, or refuse (502).
    /// An export that is cut at its grant is always refused: uncounted, it could not be cut.
    pub undecodable: Undecodable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undecodable {
    Charge,
    Refuse,
}

impl Default for RouteEncoding {
    fn default() -> Self {
        Self { upstream: HeaderValue::from_static("identity"), compress: false, undecodable: Undecodable::Charge }
    }
}

/// Media types accepted as the declared format; anything else is counted as uncertain.
fn expected_type(format: &RecordFormat, media: &str) -> bool {
    match format {
        RecordFormat::JsonArrayField(_) => media == "application/json" || media.ends_with("+json"),
        RecordFormat::Ndjson => matches!(
            media,
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" | "application/x-jsonlines"
        ),
    }
}

fn accept_for(format: &RecordFormat) -> HeaderValue {
    match format {
        RecordFormat::JsonArrayField(_) => HeaderValue::from_static("application/json"),
        RecordFormat::Ndjson => HeaderValue::from_static("application/x-ndjson"),
    }
}

/// Request headers never forwarded on a charged route: they ask for part of a resource or for
/// nothing if unchanged, both answers whose records cannot be counted.
const PARTIAL_OR_CONDITIONAL: [http::HeaderName; 6] =
    [RANGE, IF_RANGE, IF_MATCH, IF_NONE_MATCH, IF_MODIFIED_SINCE, IF_UNMODIFIED_SINCE];

/// Rewrites a charged route's request headers for a countable answer; returns the coding the
/// client accepts for the answer when the route compresses.
pub fn prepare_request(h: &mut HeaderMap, enc: &RouteEncoding, format: Option<&RecordFormat>) -> Option<Coding> {
    let client =
        if enc.compress { codec::negotiate(h.get(ACCEPT_ENCODING).and_then(|v| v.to_str().ok())) } else { None };
    // Most requests carry none of them: one pass over the names instead of six removals.
    if h.keys().any(|k| PARTIAL_OR_CONDITIONAL.contains(k)) {
        for name in PARTIAL_OR_CONDITIONAL {
            h.remove(name);
        }
    }
    h.insert(ACCEPT_ENCODING, enc.upstream.clone());
    if let Some(f) = format {
        h.insert(ACCEPT, accept_for(f));
    }
    client
}

/// How to treat a response body, decided on its head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Count the body (decoded first when `decode` is set); `uncertain` when the head already
    /// says the count cannot be certain.
    Count { decode: Option<Coding>, uncertain: Option<&'static str> },
    /// Do not count; the charge is the reservation for this reason (or nothing, on an error
    /// status, when `uncertain` is `None`).
    Uncounted { uncertain: Option<&'static str> },
    /// Refuse the answer (502): its records can be neither counted nor cut.
    Refuse,
}

/// Judges a charged route's response head. `format` is the route's counted body format, if it
/// counts the body; `cut` whether the body is cut at a grant (an export).
pub fn judge(status: StatusCode, h: &HeaderMap, format: Option<&RecordFormat>, enc: &RouteEncoding, cut: bool) -> Plan {
    if status.is_client_error() || status.is_server_error() {
        return Plan::Uncounted { uncertain: None }; // nothing delivered: a refund
    }
    if !status.is_success() {
        // 1xx/3xx: a redirect or a "not modified" delivers records we cannot see.
        return Plan::Uncounted { uncertain: Some("status") };
    }
    let Some(format) = format else { return Plan::Uncounted { uncertain: None } };
    let decode = match codec::content_coding(h) {
        Ok(c) => c,
        Err(()) if cut || enc.undecodable == Undecodable::Refuse => return Plan::Refuse,
        Err(()) => return Plan::Uncounted { uncertain: Some("encoding") },
    };
    let uncertain = if status == StatusCode::PARTIAL_CONTENT || h.contains_key(CONTENT_RANGE) {
        Some("partial")
    } else if !h
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .is_some_and(|m| expected_type(format, &m))
    {
        Some("content-type")
    } else {
        None
    };
    Plan::Count { decode, uncertain }
}

/// The warning log line for uncertain counts, at most one per route a minute (a backend that
/// changed its JSON shape would otherwise write one per request); the metric counts every one.
#[derive(Debug, Default)]
pub struct UncertainLog(std::sync::Mutex<std::collections::HashMap<std::sync::Arc<str>, (std::time::Instant, u64)>>);

impl UncertainLog {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(60);

    pub fn warn(&self, route: &std::sync::Arc<str>, reason: &str, request_id: &str) {
        let now = std::time::Instant::now();
        let mut m = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Keys are route names from the config: the map stays small.
        let (last, folded) = m.entry(route.clone()).or_insert((now, 0));
        if now.duration_since(*last) < Self::EVERY && *folded > 0 {
            *folded += 1;
            return;
        }
        let suppressed = folded.saturating_sub(1);
        (*last, *folded) = (now, 1);
        drop(m);
        tracing::warn!(
            route = %route,
            reason,
            request_id,
            suppressed,
            "response charged its full reservation: its records could not be counted with certainty"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn partial_conditional_and_coding_headers_are_replaced() {
        let mut h = head(&[
            ("range", "bytes=0-99"),
            ("if-range", "\"x\""),
            ("if-none-match", "\"x\""),
            ("if-modified-since", "Tue, 01 Dec 2026 00:00:00 GMT"),
            ("accept-encoding", "gzip, br"),
            ("accept", "text/csv"),
            ("x-kept", "1"),
        ]);
        let enc = RouteEncoding { compress: true, ..RouteEncoding::default() };
        let client = prepare_request(&mut h, &enc, Some(&RecordFormat::Ndjson));
        assert_eq!(client, Some(Coding::Br));
        assert_eq!(h.len(), 3, "{h:?}");
        assert_eq!(h["accept-encoding"], "identity");
        assert_eq!(h["accept"], "application/x-ndjson");
        assert_eq!(h["x-kept"], "1");
        let mut h = head(&[("accept-encoding", "gzip")]);
        assert_eq!(prepare_request(&mut h, &RouteEncoding::default(), None), None);
    }

    #[test]
    fn the_head_decides_what_can_be_counted() {
        let json = RecordFormat::JsonArrayField("results".into());
        let enc = RouteEncoding::default();
        let j =
            |s: u16, h: &[(&str, &str)]| judge(StatusCode::from_u16(s).unwrap(), &head(h), Some(&json), &enc, false);
        let ct = ("content-type", "application/json; charset=utf-8");
        assert_eq!(j(200, &[ct]), Plan::Count { decode: None, uncertain: None });
        assert_eq!(
            j(200, &[ct, ("content-encoding", "gzip")]),
            Plan::Count { decode: Some(Coding::Gzip), uncertain: None }
        );
        assert_eq!(
            j(206, &[ct, ("content-range", "bytes 0-9/99")]),
            Plan::Count { decode: None, uncertain: Some("partial") }
        );
        assert_eq!(
            j(200, &[("content-type", "text/csv")]),
            Plan::Count { decode: None, uncertain: Some("content-type") }
        );
        assert_eq!(j(200, &[]), Plan::Count { decode: None, uncertain: Some("content-type") });
        assert_eq!(j(200, &[ct, ("content-encoding", "compress")]), Plan::Uncounted { uncertain: Some("encoding") });
        assert_eq!(j(302, &[ct]), Plan::Uncounted { uncertain: Some("status") });
        assert_eq!(j(304, &[]), Plan::Uncounted { uncertain: Some("status") });
        assert_eq!(j(404, &[ct]), Plan::Uncounted { uncertain: None });
        let refuse = RouteEncoding { undecodable: Undecodable::Refuse, ..RouteEncoding::default() };
        let h = head(&[ct, ("content-encoding", "compress")]);
        assert_eq!(judge(StatusCode::OK, &h, Some(&json), &refuse, false), Plan::Refuse);
        let ndjson = head(&[("content-type", "application/x-ndjson"), ("content-encoding", "x-unknown")]);
        assert_eq!(judge(StatusCode::OK, &ndjson, Some(&RecordFormat::Ndjson), &enc, true), Plan::Refuse);
    }
}
