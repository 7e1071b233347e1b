//! Reading audit logs for `cvgate simulate`: plain, gzipped (`.gz`, rotated files) or stdin, one
//! JSON line at a time, into [`Recorded`] — what a CV request asked and what cvgate decided then.
//!
//! Both audit schemas are read: 2 (this version: `schema`, `method`, `path`, `asked`, `ts` at
//! admission) and 1 (no `schema` field: the route's name stands for the path, the CVs asked are
//! taken as the larger of reserved and delivered, `ts` is the request's end). Lines that are not
//! CV requests (events such as guard trips, rejections on uncharged routes) are skipped and
//! counted.

use std::borrow::Cow;
use std::io::{BufRead, BufReader, Read};
use std::net::IpAddr;
use std::path::Path;

use jiff::Timestamp;
use serde::Deserialize;

/// The audit schema this version writes.
pub const SCHEMA: u32 = 2;

/// Open an audit file (`-`: stdin; `.gz`: gzip, members concatenated as logrotate makes them).
///
/// # Errors
/// The file cannot be opened.
pub fn open(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    let raw: Box<dyn Read> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if path.extension().is_some_and(|e| e == "gz") {
            Box::new(flate2::read::MultiGzDecoder::new(file))
        } else {
            Box::new(file)
        }
    };
    Ok(Box::new(BufReader::with_capacity(1 << 20, raw)))
}

/// One recorded CV request.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub schema: u32,
    /// When the policy decided (schema 1: when the request ended).
    pub at: Timestamp,
    pub account: Option<String>,
    pub org: Option<String>,
    pub client_ip: IpAddr,
    pub country: String,
    pub route: String,
    pub method: Option<String>,
    /// Path and query as asked (schema 2).
    pub path: Option<String>,
    /// The CVs asked: the route's charge before any grant (schema 1: an estimate).
    pub asked: u64,
    pub delivered: u64,
    /// `allowed` or the problem slug.
    pub decision: String,
    pub status: u16,
    /// CVs delivered under masking (after a soft budget's remainder passed whole), whether or
    /// not each held contact data; schema 1: those that lost contact data.
    pub masked: u64,
    /// The request's end, for settling its reservation at the same instant as the proxy did.
    pub ended: Timestamp,
}

impl Recorded {
    pub fn allowed(&self) -> bool {
        self.decision == "allowed"
    }
}

/// Why a line was not replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Not JSON, or not an audit line.
    Unreadable,
    /// An event line (guard trip, admin action) or a request without a route.
    NotARequest,
    /// A newer schema than this version reads.
    Schema,
}

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(default)]
    schema: Option<u32>,
    #[serde(default, borrow)]
    event: Option<Cow<'a, str>>,
    #[serde(borrow)]
    ts: Cow<'a, str>,
    #[serde(default, borrow)]
    account: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    org: Option<Cow<'a, str>>,
    #[serde(default)]
    client_ip: Option<IpAddr>,
    #[serde(default, borrow)]
    country: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    route: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    path: Option<Cow<'a, str>>,
    #[serde(default)]
    asked: Option<u64>,
    #[serde(default)]
    reserved: u64,
    #[serde(default)]
    delivered: u64,
    #[serde(default, borrow)]
    decision: Option<Cow<'a, str>>,
    #[serde(default)]
    status: u16,
    #[serde(default)]
    duration_ms: f64,
    #[serde(default)]
    masked: Option<u64>,
    #[serde(default)]
    mask_after: Option<u64>,
}

/// Parse one line.
///
/// # Errors
/// Why it is not replayed.
pub fn parse(line: &str) -> Result<Recorded, Skip> {
    let l: Line = serde_json::from_str(line).map_err(|_| Skip::Unreadable)?;
    if l.event.is_some() {
        return Err(Skip::NotARequest);
    }
    let schema = l.schema.unwrap_or(1);
    if schema > SCHEMA {
        return Err(Skip::Schema);
    }
    let (Some(route), Some(decision)) = (l.route, l.decision) else { return Err(Skip::NotARequest) };
    let ts: Timestamp = l.ts.parse().map_err(|_| Skip::Unreadable)?;
    let took = jiff::SignedDuration::from_micros((l.duration_ms.max(0.0) * 1000.0) as i64);
    // Schema 1 stamped the end; schema 2 the admission, and the end is ts + duration.
    let (at, ended) = if schema >= 2 { (ts, ts.saturating_add(took).unwrap_or(ts)) } else { (ts, ts) };
    let asked = l.asked.unwrap_or(l.reserved.max(l.delivered));
    Ok(Recorded {
        schema,
        at,
        account: l.account.map(Cow::into_owned),
        org: l.org.map(Cow::into_owned),
        client_ip: l.client_ip.unwrap_or(IpAddr::from([0, 0, 0, 0])),
        country: l.country.map_or_else(|| "ZZ".to_string(), Cow::into_owned),
        route: route.into_owned(),
        method: l.method.map(Cow::into_owned),
        path: l.path.map(Cow::into_owned),
        asked,
        delivered: l.delivered,
        decision: decision.into_owned(),
        status: l.status,
        masked: match (l.masked, l.mask_after) {
            (Some(_), Some(after)) => l.delivered.saturating_sub(after),
            (m, _) => m.unwrap_or(0),
        },
        ended,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_schemas_and_what_is_skipped() {
        let v2 = r#"{"schema":2,"ts":"2026-11-24T09:00:00.000Z","local":"x","request_id":"r","account":"a","org":"12345678","client_ip":"10.0.0.1","country":"NL","route":"cv_search","group":"cv","tier":null,"method":"GET","path":"/api/v1/cvs?size=200","asked":200,"reserved":200,"delivered":180,"decision":"allowed","status":200,"duration_ms":1500.0,"masked":30,"mask_after":100,"mask_reason":"soft-budget"}"#;
        let r = parse(v2).unwrap();
        assert_eq!((r.schema, r.asked, r.delivered, r.masked), (2, 200, 180, 80));
        assert_eq!(r.path.as_deref(), Some("/api/v1/cvs?size=200"));
        assert_eq!(r.ended.duration_since(r.at), jiff::SignedDuration::from_millis(1500));
        let v1 = r#"{"ts":"2026-11-24T09:00:00.000Z","account":"a","org":null,"client_ip":"10.0.0.1","country":"NL","route":"cv_search","reserved":0,"delivered":0,"decision":"quota-exceeded","status":429,"duration_ms":0.2}"#;
        let r = parse(v1).unwrap();
        assert_eq!((r.schema, r.asked, r.allowed(), r.ended), (1, 0, false, r.at));
        assert_eq!(parse(r#"{"ts":"2026-11-24T09:00:00.000Z","event":"guard"}"#), Err(Skip::NotARequest));
        assert_eq!(parse("not json"), Err(Skip::Unreadable));
        assert_eq!(
            parse(r#"{"schema":9,"ts":"2026-11-24T09:00:00.000Z","route":"r","decision":"allowed"}"#),
            Err(Skip::Schema)
        );
    }
}
