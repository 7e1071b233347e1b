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

use super::scan;

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
    match quick(line) {
        Some(l) => recorded(l),
        None => recorded(serde_json::from_str(line).map_err(|_| Skip::Unreadable)?),
    }
}

/// The members of [`Line`], in the order [`quick`] numbers them.
const FIELDS: [&str; 18] = [
    "schema",
    "event",
    "ts",
    "account",
    "org",
    "client_ip",
    "country",
    "route",
    "method",
    "path",
    "asked",
    "reserved",
    "delivered",
    "decision",
    "status",
    "duration_ms",
    "masked",
    "mask_after",
];

/// The line's members through [`scan`], as serde_json would read them into [`Line`]; `None`
/// whenever serde_json must decide (the line is outside what `scan` reads, a member has a type or
/// a value the field does not take, a field comes twice, `ts` is missing).
fn quick(line: &str) -> Option<Line<'_>> {
    use scan::Value;
    /// A string field that may be null.
    fn text(v: Value<'_>) -> Option<Option<Cow<'_, str>>> {
        match v {
            Value::Str(s) => Some(Some(Cow::Borrowed(s))),
            Value::Null => Some(None),
            _ => None,
        }
    }
    /// An unsigned integer as serde_json reads it into `T`: digits only (`scan` has checked
    /// there is no leading zero).
    fn int<T: TryFrom<u64>>(v: Value<'_>) -> Option<T> {
        let Value::Num(n) = v else { return None };
        if !n.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        T::try_from(n.parse::<u64>().ok()?).ok()
    }
    fn opt_int<T: TryFrom<u64>>(v: Value<'_>) -> Option<Option<T>> {
        if v == Value::Null {
            return Some(None);
        }
        int(v).map(Some)
    }
    let mut l = Line {
        schema: None,
        event: None,
        ts: Cow::Borrowed(""),
        account: None,
        org: None,
        client_ip: None,
        country: None,
        route: None,
        method: None,
        path: None,
        asked: None,
        reserved: 0,
        delivered: 0,
        decision: None,
        status: 0,
        duration_ms: 0.0,
        masked: None,
        mask_after: None,
    };
    let mut seen = 0u32;
    scan::members(line, |key, v| {
        // A `match` on the name: compiled to a switch on its length, then one comparison.
        let field = match key {
            "schema" => 0,
            "event" => 1,
            "ts" => 2,
            "account" => 3,
            "org" => 4,
            "client_ip" => 5,
            "country" => 6,
            "route" => 7,
            "method" => 8,
            "path" => 9,
            "asked" => 10,
            "reserved" => 11,
            "delivered" => 12,
            "decision" => 13,
            "status" => 14,
            "duration_ms" => 15,
            "masked" => 16,
            "mask_after" => 17,
            _ => return Some(()),
        };
        debug_assert_eq!(FIELDS[field], key);
        // A field twice is serde's error to report.
        if seen & (1 << field) != 0 {
            return None;
        }
        seen |= 1 << field;
        match field {
            0 => l.schema = opt_int(v)?,
            1 => l.event = text(v)?,
            2 => l.ts = text(v)??,
            3 => l.account = text(v)?,
            4 => l.org = text(v)?,
            5 => {
                l.client_ip = match text(v)? {
                    Some(ip) => Some(ip.parse().ok()?),
                    None => None,
                }
            }
            6 => l.country = text(v)?,
            7 => l.route = text(v)?,
            8 => l.method = text(v)?,
            9 => l.path = text(v)?,
            10 => l.asked = opt_int(v)?,
            11 => l.reserved = int(v)?,
            12 => l.delivered = int(v)?,
            13 => l.decision = text(v)?,
            14 => l.status = int(v)?,
            // serde_json's own number reading, so the instant is the same to the nanosecond.
            15 => match v {
                Value::Num(n) => l.duration_ms = serde_json::from_str(n).ok()?,
                _ => return None,
            },
            16 => l.masked = opt_int(v)?,
            _ => l.mask_after = opt_int(v)?,
        }
        Some(())
    })?;
    (seen & (1 << 2) != 0).then_some(l)
}

/// What a line says, as a [`Recorded`] request or why it is skipped.
fn recorded(l: Line<'_>) -> Result<Recorded, Skip> {
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

    /// The cvgate-written lines go the quick way (else the property below would compare serde
    /// with itself).
    #[test]
    fn written_lines_take_the_quick_way() {
        let v2 = r#"{"schema":2,"ts":"2026-11-24T09:00:00.000Z","local":"x","request_id":"r","account":"a","org":"12345678","client_ip":"10.0.0.1","country":"NL","route":"cv_search","group":"cv","tier":null,"method":"GET","path":"/api/v1/cvs?size=200","asked":200,"reserved":200,"delivered":180,"decision":"allowed","status":200,"duration_ms":1500.0,"masked":30,"mask_after":100,"mask_reason":"soft-budget","would_reject":[["org","day"]],"count":"exact"}"#;
        assert!(quick(v2).is_some());
        assert_eq!(parse(v2), recorded(serde_json::from_str(v2).unwrap()));
    }

    mod same_as_serde {
        use super::*;
        use proptest::prelude::*;

        /// Mostly what the fields take, now and then what serde_json refuses (each alone, so
        /// that a line with one is otherwise good and the readers must agree on it).
        fn value() -> impl Strategy<Value = String> {
            let good = prop::sample::select(vec![
                "0",
                "7",
                "200",
                "-0",
                "-1",
                "1.0",
                "3.2",
                "0.001",
                "1e3",
                "1E+2",
                "2.5e-3",
                "65536",
                "4294967296",
                "18446744073709551615",
                "18446744073709551616",
                "1e400",
                "null",
                "true",
                "false",
                "[]",
                "{}",
                r#"[1,"a",{}]"#,
                r#"{"k":[null,{"q":-2.5}]}"#,
                r#""10.0.0.1""#,
                r#""::ffff:10.0.0.1""#,
                r#""::1""#,
                r#""bad-ip""#,
                r#""2026-11-24T09:00:00.000Z""#,
                r#""2026-11-24T09:00:00Z""#,
                r#""yesterday""#,
                r#""allowed""#,
                r#""quota-exceeded""#,
                r#""é€""#,
                r#""""#,
            ]);
            let bad = prop::sample::select(vec![
                r#""a\"b""#,
                r#""\u00e9""#,
                "\"a\tb\"",
                "01",
                "00",
                "[1,]",
                "{\"a\":1,}",
                "nul",
                "-",
                "1.",
                "1e",
                "[[[[[[[[[[1]]]]]]]]]]",
                "[1 2]",
                "{\"a\" 1}",
                "{1:2}",
                "\"a\u{7f}\u{1}\"",
            ]);
            prop_oneof![
                12 => good.prop_map(str::to_string),
                4 => "[a-zA-Z0-9 :./?=&é-]{0,12}".prop_map(|s| format!("\"{s}\"")),
                2 => any::<u64>().prop_map(|n| n.to_string()),
                2 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:?}")),
                2 => bad.prop_map(str::to_string),
            ]
        }

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                8 => prop::sample::select(FIELDS.to_vec()).prop_map(str::to_string),
                3 => prop::sample::select(vec!["local", "tier", "would_reject", "x\\u0041", "Ts", ""])
                    .prop_map(str::to_string),
            ]
        }

        fn line() -> impl Strategy<Value = String> {
            let base = vec![
                ("ts".to_string(), r#""2026-11-24T09:00:00.000Z""#.to_string()),
                ("route".to_string(), r#""cv_search""#.to_string()),
                ("decision".to_string(), r#""allowed""#.to_string()),
            ];
            (
                prop::sample::subsequence(base, 0..=3),
                prop::collection::vec((key(), value()), 0..6),
                prop::sample::select(vec!["", " ", "  "]),
                prop::sample::select(vec!["", "", "", "", " ", ",", "x", "}"]),
            )
                .prop_flat_map(|(base, extra, space, tail)| {
                    let members: Vec<_> = base.into_iter().chain(extra).collect();
                    (Just(members).prop_shuffle(), Just(space), Just(tail))
                })
                .prop_map(|(members, space, tail)| {
                    let body: Vec<String> = members.iter().map(|(k, v)| format!("\"{k}\"{space}:{space}{v}")).collect();
                    format!("{{{space}{}{space}}}{tail}", body.join(&format!("{space},")))
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(10_000))]
            /// Whatever the line, the quick reader and serde_json read it into the same request
            /// (or skip it for the same reason).
            #[test]
            fn quick_or_not_the_same_request(line in line()) {
                let serde = serde_json::from_str::<Line>(&line).map_err(|_| Skip::Unreadable).and_then(recorded);
                prop_assert_eq!(parse(&line), serde);
            }
        }
    }
}
