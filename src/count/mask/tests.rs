//! The masker's unit tests, one contract point each, the allowance and shadow modes included,
//! and the helpers [`props`](super::props) shares.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::BytesMut;
use serde_json::{json, Value};

use super::*;
use crate::count::RecordFormat;

/// The board's decision: contact data off every CV, the phone only where its owner shows it.
pub(super) fn spec() -> MaskSpec {
    MaskSpec {
        remove: ["geslacht", "geboortedatum", "adres", "postcode", "woonplaats", "email"].map(String::from).to_vec(),
        replace: BTreeMap::from([("naam".to_owned(), json!("***"))]),
        keep_if: vec![KeepIf { field: "telefoon".into(), when: "toon_telefoon".into(), equals: json!(true) }],
        case_insensitive: false,
        max_record_bytes: 4096,
    }
}

pub(super) fn plan(spec: &MaskSpec) -> Arc<MaskPlan> {
    Arc::new(MaskPlan::new(spec).expect("valid spec"))
}

/// Masks `body` fed in pieces (split at these offsets, taken modulo its length + 1); the output,
/// stats and error.
pub(super) fn run_split(
    plan: &Arc<MaskPlan>,
    format: MaskFormat,
    body: &[u8],
    splits: &[usize],
) -> (String, MaskStats, Option<MaskError>) {
    run_masker(Masker::new(plan.clone(), format), body, splits)
}

/// [`run_split`] with a masker set up by the caller (allowance, shadow).
pub(super) fn run_masker(mut m: Masker, body: &[u8], splits: &[usize]) -> (String, MaskStats, Option<MaskError>) {
    let mut out = BytesMut::new();
    let mut bounds: Vec<usize> = splits.iter().map(|s| s % (body.len() + 1)).collect();
    bounds.sort_unstable();
    bounds.push(body.len());
    let mut at = 0;
    let mut err = None;
    for end in bounds {
        if let Err(e) = m.feed(&body[at..end], &mut out) {
            err = Some(e);
            break;
        }
        at = end;
    }
    if err.is_none() {
        err = m.finish(&mut out).err();
    }
    (String::from_utf8(out.to_vec()).expect("utf-8 out"), *m.stats(), err)
}

pub(super) fn run(plan: &Arc<MaskPlan>, format: MaskFormat, body: &str) -> (String, MaskStats, Option<MaskError>) {
    run_split(plan, format, body.as_bytes(), &[])
}

pub(super) fn results() -> MaskFormat {
    MaskFormat::JsonArrayField("results".into())
}

/// Masks one record in single mode; the output.
pub(super) fn one(plan: &Arc<MaskPlan>, record: &str) -> String {
    let (out, _, err) = run(plan, MaskFormat::Single, record);
    assert_eq!(err, None, "{record}");
    out
}

pub(super) const JAN: &str = r#"{"id":101,"naam":"Jan de Vries","geslacht":"man","geboortedatum":"1985-03-14","adres":{"straat":"Kerkstraat","huisnummer":"12a"},"postcode":"1012 AB","woonplaats":"Amsterdam","email":"jan.devries@example.nl","telefoon":"06-12345678","toon_telefoon":true,"toon_contactgegevens":false,"profiel":"Lasser TIG/MIG {5 jaar} [VCA] \"vol\" ok","werkervaring":[{"werkgever":"Bouwbedrijf Noord","functie":"Lasser","van":"2015-01","tot":null}]}"#;
pub(super) const JAN_MASKED: &str = r#"{"id":101,"naam":"***","telefoon":"06-12345678","toon_telefoon":true,"toon_contactgegevens":false,"profiel":"Lasser TIG/MIG {5 jaar} [VCA] \"vol\" ok","werkervaring":[{"werkgever":"Bouwbedrijf Noord","functie":"Lasser","van":"2015-01","tot":null}]}"#;
pub(super) const FATIMA: &str = r#"{"id":102,"email":"f.elamrani@example.nl","naam":"Fatima el Amrani","geslacht":"vrouw","telefoon":"+31 6 87654321","toon_telefoon":false,"toon_contactgegevens":true,"profiel":"Verpleegkundige","werkervaring":[]}"#;
pub(super) const FATIMA_MASKED: &str = r#"{"id":102,"naam":"***","toon_telefoon":false,"toon_contactgegevens":true,"profiel":"Verpleegkundige","werkervaring":[]}"#;

#[test]
fn masks_a_dutch_cv_and_keeps_every_other_byte() {
    let p = plan(&spec());
    assert_eq!(one(&p, JAN), JAN_MASKED);
    assert_eq!(one(&p, FATIMA), FATIMA_MASKED);
    let body = format!(r#"{{"page":1,"results":[{JAN},{FATIMA}],"total":2}}"#);
    let (out, stats, err) = run(&p, results(), &body);
    assert_eq!(err, None);
    assert_eq!(out, format!(r#"{{"page":1,"results":[{JAN_MASKED},{FATIMA_MASKED}],"total":2}}"#));
    assert_eq!(
        stats,
        MaskStats { records_seen: 2, records_masked: 2, fields_removed: 9, fields_replaced: 2, ..MaskStats::default() }
    );
    // Nothing to mask: the same bytes, however they are laid out.
    let clean = "{\"id\":7 ,\n \"profiel\" : \"x\",\"werkervaring\":[ {\"naam_werkgever\":\"y\"} ] }";
    assert_eq!(one(&p, clean), clean);
    let (out, stats, _) = run(&p, results(), &format!("{{ \"results\" : [ {clean} ,{clean}\n] }}\n"));
    assert_eq!(out, format!("{{ \"results\" : [ {clean} ,{clean}\n] }}\n"));
    assert_eq!((stats.records_seen, stats.records_masked), (2, 0));
}

#[test]
fn keep_if_keeps_the_phone_only_where_shown() {
    let p = plan(&spec());
    let cases = [
        (r#"{"telefoon":"06","toon_telefoon":true}"#, r#"{"telefoon":"06","toon_telefoon":true}"#),
        (r#"{"toon_telefoon":true,"telefoon":"06"}"#, r#"{"toon_telefoon":true,"telefoon":"06"}"#),
        (r#"{"telefoon":"06","toon_telefoon":false}"#, r#"{"toon_telefoon":false}"#),
        (r#"{"telefoon":"06"}"#, r#"{}"#),
        (r#"{"telefoon":"06","toon_telefoon":"true"}"#, r#"{"toon_telefoon":"true"}"#),
        (r#"{"telefoon":"06","toon_telefoon":null}"#, r#"{"toon_telefoon":null}"#),
        // A duplicate that disagrees: not every occurrence says yes.
        (
            r#"{"toon_telefoon":true,"telefoon":"06","toon_telefoon":false}"#,
            r#"{"toon_telefoon":true,"toon_telefoon":false}"#,
        ),
        // The deciding key escaped still decides.
        (r#"{"telefoon":"06","toon_tele\u0066oon":true}"#, r#"{"telefoon":"06","toon_tele\u0066oon":true}"#),
        // Nested: the condition is read from the record's root.
        (r#"{"contact":{"toon_telefoon":true},"telefoon":"06"}"#, r#"{"contact":{"toon_telefoon":true}}"#),
    ];
    for (record, want) in cases {
        assert_eq!(one(&p, record), want, "{record}");
    }
    // A nested condition path, through an array.
    let mut s = spec();
    s.keep_if = vec![KeepIf { field: "telefoon".into(), when: "privacy.toon".into(), equals: json!("ja") }];
    let p = plan(&s);
    assert_eq!(
        one(&p, r#"{"privacy":[{"toon":"ja"},{"toon":"ja"}],"telefoon":"06"}"#),
        r#"{"privacy":[{"toon":"ja"},{"toon":"ja"}],"telefoon":"06"}"#
    );
    assert_eq!(
        one(&p, r#"{"privacy":[{"toon":"ja"},{"toon":"nee"}],"telefoon":"06"}"#),
        r#"{"privacy":[{"toon":"ja"},{"toon":"nee"}]}"#
    );
}

#[test]
fn escaped_duplicate_and_cased_keys_are_masked() {
    let p = plan(&spec());
    assert_eq!(one(&p, r#"{"n\u0061am":"Jan","e\u006dail":"j@x.nl","id":1}"#), r#"{"n\u0061am":"***","id":1}"#);
    assert_eq!(
        one(&p, r#"{"naam":"a","id":1,"naam":"b","email":"x","email":"y"}"#),
        r#"{"naam":"***","id":1,"naam":"***"}"#
    );
    // Case: only matched when the spec says so.
    let cased = r#"{"NAAM":"Jan","Email":"j@x.nl","AdReS":{"straat":"x"},"id":1}"#;
    assert_eq!(one(&p, cased), cased);
    let mut s = spec();
    s.case_insensitive = true;
    s.remove.push("Werkervaring.REFERENTIE".into());
    let p = plan(&s);
    assert_eq!(one(&p, cased), r#"{"NAAM":"***","id":1}"#);
    assert_eq!(
        one(&p, r#"{"N\u0041AM":"Jan","werkervaring":[{"Referentie":"Piet, 06-1"}]}"#),
        r#"{"N\u0041AM":"***","werkervaring":[{}]}"#
    );
    // Unicode lowercase on both sides (KELVIN SIGN lowercases to `k`).
    s.remove = vec!["kvk".into()];
    assert_eq!(one(&plan(&s), "{\"\u{212A}VK\":1,\"a\":2}"), r#"{"a":2}"#);
}

#[test]
fn nested_paths_reach_into_objects_and_arrays() {
    let s = MaskSpec {
        remove: vec!["adres.huisnummer".into(), "werkervaring.referentie.telefoon".into()],
        replace: BTreeMap::from([
            ("adres.straat".to_owned(), json!("***")),
            ("adres.land.code".to_owned(), json!(null)),
        ]),
        max_record_bytes: 4096,
        ..MaskSpec::default()
    };
    let p = plan(&s);
    assert_eq!(
        one(&p, r#"{"adres":{"straat":"Kerkstraat","huisnummer":"12a","plaats":"Utrecht"},"id":1}"#),
        r#"{"adres":{"straat":"***","plaats":"Utrecht"},"id":1}"#
    );
    // A replaced path that is absent stays absent; a path through a scalar leaves it alone.
    assert_eq!(one(&p, r#"{"adres":{"plaats":"Utrecht"}}"#), r#"{"adres":{"plaats":"Utrecht"}}"#);
    assert_eq!(one(&p, r#"{"adres":"Kerkstraat 1","x":[1,{"a":2}]}"#), r#"{"adres":"Kerkstraat 1","x":[1,{"a":2}]}"#);
    // Through arrays, and arrays of arrays.
    let record = r#"{"werkervaring":[{"werkgever":"A","referentie":{"naam":"P","telefoon":"06-1"}},[{"referentie":[{"telefoon":"06-2","naam":"Q"}]}],3]}"#;
    let want = r#"{"werkervaring":[{"werkgever":"A","referentie":{"naam":"P"}},[{"referentie":[{"naam":"Q"}]}],3]}"#;
    assert_eq!(one(&p, record), want);
    // An object in place of an array, where the backend changed its mind.
    assert_eq!(one(&p, r#"{"adres":[{"huisnummer":1,"straat":"x"}]}"#), r#"{"adres":[{"straat":"***"}]}"#);
    let (_, stats, _) = run(&p, MaskFormat::Single, record);
    assert_eq!((stats.fields_removed, stats.fields_replaced, stats.records_masked), (2, 0, 1));
}

#[test]
fn tricky_strings_and_layout_are_kept() {
    let p = plan(&spec());
    let record = "{ \"profiel\" : \"}]{[\\\"naam\\\":\\\"x\\\",\" ,\n  \"naam\"\t:\t\"Jan \\\"J\\\" }\" ,\n  \"tags\":[\"]\",\"\\\\\",\"email\"] ,\"email\" : \"a\\\"b\" }";
    let want = "{ \"profiel\" : \"}]{[\\\"naam\\\":\\\"x\\\",\" ,\n  \"naam\"\t:\t\"***\" ,\n  \"tags\":[\"]\",\"\\\\\",\"email\"] }";
    assert_eq!(one(&p, record), want);
    // The first member removed: no comma is left before the next one.
    assert_eq!(one(&p, "{ \"email\":\"x\" , \"id\" : 1 }"), "{ \"id\" : 1 }");
    assert_eq!(one(&p, "{\"email\":\"x\",\"postcode\":\"1234 AB\"}"), "{}");
    assert_eq!(one(&p, "{\n  \"email\": \"x\"\n}"), "{\n}");
}

#[test]
fn pretty_printed_body_stays_pretty() {
    let p = plan(&spec());
    let page = json!({"page": 1, "results": [
        serde_json::from_str::<Value>(JAN).unwrap(),
        serde_json::from_str::<Value>(FATIMA).unwrap(),
    ], "total": 2});
    let body = serde_json::to_string_pretty(&page).unwrap();
    let (out, stats, err) = run(&p, results(), &body);
    assert_eq!(err, None);
    assert_eq!(stats.records_masked, 2);
    let got: Value = serde_json::from_str(&out).unwrap();
    let want = json!({"page": 1, "results": [
        serde_json::from_str::<Value>(JAN_MASKED).unwrap(),
        serde_json::from_str::<Value>(FATIMA_MASKED).unwrap(),
    ], "total": 2});
    assert_eq!(got, want);
    // serde_json writes keys sorted: `adres` and `email` went, so `id` opens the record.
    assert!(out.contains("[\n    {\n      \"id\": 101,\n      \"naam\": \"***\",\n      \"profiel\""), "{out}");
    assert!(out.ends_with("\n  ],\n  \"total\": 2\n}"), "{out}");
}

#[test]
fn invalid_records_are_dropped_with_valid_commas() {
    let p = plan(&spec());
    let body = format!(r#"{{"results":[[1],{JAN},"tekst",{{"naam":tru}},{FATIMA},42,null,{{"a":1}} {{"b":2}}]}}"#);
    let (out, stats, err) = run(&p, results(), &body);
    // `{"a":1} {"b":2}` is not one element: the body is malformed there, after two records.
    assert!(matches!(err, Some(MaskError::Malformed { .. })), "{err:?}");
    assert_eq!(out, format!(r#"{{"results":[{JAN_MASKED},{FATIMA_MASKED},{{"a":1}} "#));
    assert_eq!((stats.records_seen, stats.records_dropped_invalid), (8, 5));

    for (body, want) in [
        (r#"{"results":[1,2]}"#, r#"{"results":[]}"#),
        (r#"{"results":[ 1 , {"a":1} ]}"#, r#"{"results":[   {"a":1} ]}"#),
        (r#"{"results":[{"a":1}, 1 ]}"#, r#"{"results":[{"a":1} ]}"#),
        (r#"{"results":[{"a":1}, 1 , {"b":2}]}"#, r#"{"results":[{"a":1} , {"b":2}]}"#),
        (r#"{"results":[{"a":"\x"},{"b":2}]}"#, r#"{"results":[{"b":2}]}"#),
    ] {
        let (out, _, err) = run(&p, results(), body);
        assert_eq!((out.as_str(), err), (want, None), "{body}");
        serde_json::from_str::<Value>(&out).unwrap();
    }
    // Invalid UTF-8 inside a record.
    let mut body = br#"{"results":[{"a":"x"},{"a":""#.to_vec();
    body.extend([0xff, b'"', b'}', b']', b'}']);
    let (out, stats, err) = run_split(&p, results(), &body, &[]);
    assert_eq!((out.as_str(), err, stats.records_dropped_invalid), (r#"{"results":[{"a":"x"}]}"#, None, 1));
}

#[test]
fn oversize_records_are_dropped_whole() {
    let mut s = spec();
    s.max_record_bytes = 64;
    let p = plan(&s);
    let small = r#"{"id":1,"naam":"A"}"#;
    let exact = format!(r#"{{"id":2,"profiel":"{}"}}"#, "x".repeat(64 - 21));
    assert_eq!(exact.len(), 64);
    let big = format!(r#"{{"id":3,"naam":"Jan de Vries","profiel":"{}"}}"#, "y".repeat(60));
    let body = format!(r#"{{"results":[{big},{small},{big},{exact},{big}]}}"#);
    for splits in [vec![], vec![20, 50, 90, 130, 170]] {
        let (out, stats, err) = run_split(&p, results(), body.as_bytes(), &splits);
        assert_eq!(err, None);
        assert_eq!(out, format!(r#"{{"results":[{{"id":1,"naam":"***"}},{exact}]}}"#));
        serde_json::from_str::<Value>(&out).unwrap();
        assert_eq!((stats.records_seen, stats.records_dropped_oversize, stats.records_masked), (5, 3, 1));
    }
    // NDJSON: the line goes with it, blank lines stay, a final line without `\n` counts too.
    let body = format!("{big}\n{small}\r\n\n{big}\n{exact}\n  \n{big}");
    for splits in [vec![], vec![3, 70, 100, 150, 200]] {
        let (out, stats, err) = run_split(&p, MaskFormat::Ndjson, body.as_bytes(), &splits);
        assert_eq!(err, None);
        assert_eq!(out, format!("{{\"id\":1,\"naam\":\"***\"}}\r\n\n{exact}\n  \n"));
        assert_eq!((stats.records_seen, stats.records_dropped_oversize), (5, 3));
        for line in out.lines().filter(|l| !l.trim().is_empty()) {
            serde_json::from_str::<Value>(line).unwrap();
        }
    }
    // The line's end is not the record's: `{exact}\r\n` fits, wherever the chunks split it,
    // and one byte more does not; nor does it at the very end, `\r` or not.
    let more = format!(r#"{{"id":2,"profiel":"{}"}}"#, "x".repeat(64 - 20));
    let body = format!("{exact}\r\n{more}\r\n{exact}\r\n{more}\r");
    for at in 60..70 {
        let (out, stats, _) = run_split(&p, MaskFormat::Ndjson, body.as_bytes(), &[at, at + 1, at + 67, at + 133]);
        assert_eq!(out, format!("{exact}\r\n{exact}\r\n"), "split at {at}");
        assert_eq!((stats.records_seen, stats.records_dropped_oversize), (4, 2));
    }
    let (out, _, _) = run(&p, MaskFormat::Ndjson, &format!("{small}\n{exact}\r"));
    assert_eq!(out, format!("{{\"id\":1,\"naam\":\"***\"}}\n{exact}\r"));
    // Single: refused at once.
    let (out, stats, err) = run(&p, MaskFormat::Single, &big);
    assert_eq!((out.as_str(), err), ("", Some(MaskError::RecordTooLarge { limit: 64 })));
    assert_eq!(stats.records_dropped_oversize, 1);
}

#[test]
fn ndjson_masks_and_drops_lines() {
    let p = plan(&spec());
    let body = format!("{JAN}\n  {FATIMA} \r\n\n[1]\n{{\"naam\":\"x\"\n{{\"a\":1}} {{\"b\":2}}\nnull\n{{\"id\":9}}");
    let (out, stats, err) = run(&p, MaskFormat::Ndjson, &body);
    assert_eq!(err, None);
    assert_eq!(out, format!("{JAN_MASKED}\n  {FATIMA_MASKED} \r\n\n{{\"id\":9}}"));
    assert_eq!(
        stats,
        MaskStats {
            records_seen: 7,
            records_masked: 2,
            records_dropped_invalid: 4,
            fields_removed: 9,
            fields_replaced: 2,
            ..MaskStats::default()
        }
    );
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<Value>(line).unwrap();
    }
}

#[test]
fn other_members_of_the_page_are_masked_too() {
    let p = plan(&spec());
    let body = format!(
        r#"{{"meta":{{"naam":"Jan","bron":"cv"}},"uitgelicht":[{{"cv":{JAN}}}],"results":[{FATIMA}],"results":[{JAN}],"n":[1,{{"email":"x"}}],"s":"naam"}}"#
    );
    let (out, stats, err) = run(&p, results(), &body);
    assert_eq!(err, None);
    let want = format!(
        r#"{{"meta":{{"naam":"***","bron":"cv"}},"uitgelicht":[{{"cv":{JAN_MASKED}}}],"results":[{FATIMA_MASKED}],"results":[{JAN_MASKED}],"n":[1,{{}}],"s":"naam"}}"#
    );
    assert_eq!(out, want);
    assert_eq!((stats.records_seen, stats.records_masked), (1, 1));
    // The records field's name is matched after decoding.
    let (out, _, err) = run(&p, results(), &format!(r#"{{"result\u0073":[{JAN}]}}"#));
    assert_eq!((out, err), (format!(r#"{{"result\u0073":[{JAN_MASKED}]}}"#), None));
    // A member over the bound is dropped after the records (before them it is too much prefix).
    let mut s = spec();
    s.max_record_bytes = 40;
    let p = plan(&s);
    let body = format!(r#"{{"results":[],"facetten":{{"woonplaats":"{}"}},"total":0}}"#, "A".repeat(40));
    let (out, stats, err) = run(&p, results(), &body);
    assert_eq!((out.as_str(), err, stats.members_dropped), (r#"{"results":[],"total":0}"#, None, 1));
}

#[test]
fn wrong_shape_sends_nothing() {
    let p = plan(&spec());
    let field = || "results".to_owned();
    for (body, want) in [
        (format!("[{JAN}]"), MaskError::NotAnObject),
        (format!(" \"{JAN}\""), MaskError::NotAnObject),
        (String::new(), MaskError::NotAnObject),
        ("{}".to_owned(), MaskError::FieldMissing { field: field() }),
        (format!(r#"{{"hits":[{JAN}]}}"#), MaskError::FieldMissing { field: field() }),
        (format!(r#"{{"Results":[{JAN}]}}"#), MaskError::FieldMissing { field: field() }),
        (format!(r#"{{"page":1,"results":{JAN}}}"#), MaskError::FieldNotArray { field: field() }),
        (r#"{"results":null}"#.to_owned(), MaskError::FieldNotArray { field: field() }),
        (r#"{"page":1,"results""#.to_owned(), MaskError::Malformed { offset: 19, reason: "the body ends early" }),
        (
            format!(r#"{{"page":1 "results":[{JAN}]}}"#),
            MaskError::Malformed { offset: 10, reason: "expected ',' or '}'" },
        ),
        (format!(r#"{{"page":1,"results"=[{JAN}]}}"#), MaskError::Malformed { offset: 19, reason: "expected ':'" }),
    ] {
        for splits in [vec![], vec![1, 5, 12, 30]] {
            let (out, stats, err) = run_split(&p, results(), body.as_bytes(), &splits);
            assert_eq!((out.as_str(), err.as_ref()), ("", Some(&want)), "{body}");
            assert_eq!(stats.records_seen, 0);
        }
    }
    // A prefix over the bound, and the error repeats.
    let mut s = spec();
    s.max_record_bytes = 30;
    let mut m = Masker::new(plan(&s), results());
    let mut out = BytesMut::new();
    let body = format!(r#"{{"facetten":"{}","results":[]}}"#, "x".repeat(30));
    assert_eq!(m.feed(body.as_bytes(), &mut out), Err(MaskError::PrefixTooLarge { limit: 30 }));
    assert_eq!(m.feed(b"", &mut out), Err(MaskError::PrefixTooLarge { limit: 30 }));
    assert_eq!(m.finish(&mut out), Err(MaskError::PrefixTooLarge { limit: 30 }));
    assert!(out.is_empty());
    // Data after the end, or cut short: what was sent is masked, then the error.
    for body in [format!(r#"{{"results":[{JAN}]}}{{"results":[{JAN}]}}"#), format!(r#"{{"results":[{JAN},{JAN}"#)] {
        let (out, _, err) = run(&p, results(), &body);
        assert!(matches!(err, Some(MaskError::Malformed { .. })), "{err:?}");
        assert!(out.starts_with(&format!(r#"{{"results":[{JAN_MASKED}"#)) && !out.contains("Jan de Vries"), "{out}");
    }
    assert_eq!(MaskError::FieldMissing { field: field() }.label(), "shape");
}

#[test]
fn single_mode_is_one_record() {
    let p = plan(&spec());
    let (out, stats, err) = run(&p, MaskFormat::Single, &format!("\n {JAN}\n"));
    assert_eq!((out, err), (format!("\n {JAN_MASKED}\n"), None));
    assert_eq!((stats.records_seen, stats.records_masked), (1, 1));
    for body in ["", "  ", "[1]", "{\"naam\":\"x\"", "{\"a\":1}{\"b\":2}", "\"naam\""] {
        let (out, _, err) = run(&p, MaskFormat::Single, body);
        assert_eq!((out.as_str(), err), ("", Some(MaskError::InvalidRecord)), "{body:?}");
    }
}

#[test]
fn nesting_too_deep_is_dropped_not_a_crash() {
    let mut s = spec();
    s.remove.push("werkervaring.x".into());
    s.max_record_bytes = 1 << 20;
    let p = plan(&s);
    let deep = format!(r#"{{"werkervaring":{}1{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
    let (out, stats, err) = run(&p, MaskFormat::Ndjson, &format!("{deep}\n{{\"id\":1}}\n"));
    assert_eq!((out.as_str(), err, stats.records_dropped_invalid), ("{\"id\":1}\n", None, 1));
    // In another member of the page it is an error.
    let body = format!(r#"{{"results":[],"x":{}{}}}"#, "[".repeat(1000), "]".repeat(1000));
    assert!(matches!(run(&p, results(), &body).2, Some(MaskError::Malformed { .. })));
}

#[test]
fn spec_errors_are_all_reported() {
    let s = MaskSpec {
        remove: vec!["naam".into(), "adres..straat".into(), "".into()],
        replace: BTreeMap::from([("naam".to_owned(), json!("***"))]),
        keep_if: vec![KeepIf { field: "telefoon".into(), when: ".x".into(), equals: json!(true) }],
        max_record_bytes: 0,
        ..MaskSpec::default()
    };
    let keys: Vec<String> = MaskPlan::new(&s).unwrap_err().into_iter().map(|e| e.key).collect();
    assert_eq!(keys, ["max_record_bytes", "remove[1]", "remove[2]", "replace.naam", "keep_if[0].when"]);
    // Case-insensitive specs fold their paths: `NAAM` and `naam` are one path.
    let s = MaskSpec { remove: vec!["NAAM".into(), "naam".into()], case_insensitive: true, ..MaskSpec::default() };
    assert_eq!(MaskPlan::new(&s).unwrap_err()[0].to_string(), "remove[1]: \"naam\" already has a rule, at remove[0]");
}

#[test]
fn spec_reads_from_yaml() {
    let yaml = r#"
remove: [geslacht, geboortedatum, adres, postcode, woonplaats, email]
replace:
  naam: "***"
keep_if:
  - field: telefoon
    when: toon_telefoon
    equals: true
max_record_bytes: 4096
"#;
    let s: MaskSpec = serde_yaml_ng::from_str(yaml).unwrap();
    assert_eq!(s, spec());
    assert!(serde_yaml_ng::from_str::<MaskSpec>("remove: [naam]\nreplce: {}\n").is_err());
    assert_eq!(serde_yaml_ng::from_str::<MaskSpec>("{}").unwrap(), MaskSpec::default());
}

#[test]
fn records_format_converts() {
    assert_eq!(MaskFormat::from(RecordFormat::Ndjson), MaskFormat::Ndjson);
    assert_eq!(MaskFormat::from(RecordFormat::JsonArrayField("r".into())), MaskFormat::JsonArrayField("r".into()));
}

// ---- allowance and shadow ----

/// Every way to cut `body` in at most two places (and none).
fn all_splits(body: &[u8]) -> impl Iterator<Item = Vec<usize>> + '_ {
    let n = body.len();
    std::iter::once(vec![]).chain((0..=n).flat_map(move |a| (a..=n).step_by(11).map(move |b| vec![a, b])))
}

#[test]
fn allowance_passes_the_first_records_untouched() {
    let p = plan(&spec());
    let body = format!(r#"{{"page":1,"results":[{JAN}, {FATIMA},{JAN}],"total":3}}"#);
    let want = [
        format!(r#"{{"page":1,"results":[{JAN_MASKED}, {FATIMA_MASKED},{JAN_MASKED}],"total":3}}"#),
        format!(r#"{{"page":1,"results":[{JAN}, {FATIMA_MASKED},{JAN_MASKED}],"total":3}}"#),
        format!(r#"{{"page":1,"results":[{JAN}, {FATIMA},{JAN_MASKED}],"total":3}}"#),
        body.clone(),
        body.clone(),
    ];
    for (n, want) in want.iter().enumerate() {
        let n = n as u64;
        let (out, stats, err) = run_masker(Masker::new(p.clone(), results()).with_allowance(n), body.as_bytes(), &[]);
        assert_eq!((&out, err), (want, None), "allowance {n}");
        assert_eq!((stats.records_seen, stats.records_allowed, stats.records_masked), (3, n.min(3), 3 - n.min(3)));
    }
    // Any split gives the same output and stats.
    let m = || Masker::new(p.clone(), results()).with_allowance(2);
    let whole = run_masker(m(), body.as_bytes(), &[]);
    for splits in all_splits(body.as_bytes()) {
        assert_eq!(run_masker(m(), body.as_bytes(), &splits), whole, "{splits:?}");
    }
    // NDJSON and single mode.
    let lines = format!("{JAN}\n\n{FATIMA}\r\n{JAN}");
    let m = || Masker::new(p.clone(), MaskFormat::Ndjson).with_allowance(1);
    let whole = run_masker(m(), lines.as_bytes(), &[]);
    assert_eq!(whole.0, format!("{JAN}\n\n{FATIMA_MASKED}\r\n{JAN_MASKED}"));
    for splits in all_splits(lines.as_bytes()) {
        assert_eq!(run_masker(m(), lines.as_bytes(), &splits), whole, "{splits:?}");
    }
    let single = Masker::new(p.clone(), MaskFormat::Single).with_allowance(1);
    assert_eq!(run_masker(single, format!(" {JAN}\n").as_bytes(), &[2, 50]).0, format!(" {JAN}\n"));
}

#[test]
fn allowance_still_drops_what_is_not_a_record_and_counts_it() {
    let mut s = spec();
    s.max_record_bytes = 600;
    let p = plan(&s);
    let big = format!(r#"{{"naam":"{}"}}"#, "x".repeat(600));
    // An invalid record and an oversize one take their places in the allowance of 3.
    let body = format!(r#"{{"results":[{{"naam":tru}},{big},{FATIMA},{JAN}],"meta":{{"naam":"x"}}}}"#);
    let m = || Masker::new(p.clone(), results()).with_allowance(3);
    let (out, stats, err) = run_masker(m(), body.as_bytes(), &[]);
    assert_eq!(err, None);
    // The other members are masked all the same.
    assert_eq!(out, format!(r#"{{"results":[{FATIMA},{JAN_MASKED}],"meta":{{"naam":"***"}}}}"#));
    assert_eq!(
        stats,
        MaskStats {
            records_seen: 4,
            records_allowed: 1,
            records_masked: 1,
            records_dropped_invalid: 1,
            records_dropped_oversize: 1,
            fields_removed: 6,
            fields_replaced: 2,
            ..MaskStats::default()
        }
    );
    for splits in [vec![5], vec![20, 21], vec![100, 700], vec![630, 631, 900]] {
        assert_eq!(run_masker(m(), body.as_bytes(), &splits), (out.clone(), stats, None), "{splits:?}");
    }
}

#[test]
fn shadow_passes_every_byte_and_counts_what_masking_would_do() {
    let p = plan(&spec());
    let body = format!(r#"{{"page":1,"results":[{JAN},[1],{FATIMA}],"meta":{{"naam":"x"}}}}"#);
    let masked = run(&p, results(), &body);
    for splits in [vec![], vec![1], vec![30, 31, 500]] {
        let (out, stats, err) = run_masker(Masker::new(p.clone(), results()).shadow(), body.as_bytes(), &splits);
        assert_eq!((out.as_str(), stats, err), (body.as_str(), masked.1, None));
    }
    assert_eq!((masked.1.records_masked, masked.1.records_dropped_invalid), (2, 1));
    // With an allowance, the allowed record is counted as such.
    let m = Masker::new(p.clone(), results()).with_allowance(1).shadow();
    let (out, stats, _) = run_masker(m, body.as_bytes(), &[]);
    assert_eq!((out, stats.records_allowed, stats.records_masked), (body.clone(), 1, 1));
    // NDJSON and single mode.
    let lines = format!("{JAN}\n[1]\n{FATIMA}");
    let (out, stats, _) = run_masker(Masker::new(p.clone(), MaskFormat::Ndjson).shadow(), lines.as_bytes(), &[9]);
    assert_eq!((out, stats), (lines.clone(), run(&p, MaskFormat::Ndjson, &lines).1));
    let (out, stats, _) = run_masker(Masker::new(p.clone(), MaskFormat::Single).shadow(), JAN.as_bytes(), &[9]);
    assert_eq!((out.as_str(), stats.records_masked), (JAN, 1));
}

#[test]
fn shadow_reports_a_wrong_shape_and_still_passes_the_bytes() {
    let p = plan(&spec());
    // Every chunk goes out, the failing one and those after it; the error repeats.
    let mut m = Masker::new(p.clone(), results()).shadow();
    let mut out = BytesMut::new();
    assert_eq!(m.feed(b"[{\"naam\":", &mut out), Err(MaskError::NotAnObject));
    assert_eq!(m.feed(b"\"x\"}]", &mut out), Err(MaskError::NotAnObject));
    assert_eq!(m.finish(&mut out), Err(MaskError::NotAnObject));
    assert_eq!(&out[..], b"[{\"naam\":\"x\"}]");
    // Too large in single mode: reported, passed.
    let mut s = spec();
    s.max_record_bytes = 10;
    let mut m = Masker::new(plan(&s), MaskFormat::Single).shadow();
    let mut out = BytesMut::new();
    assert_eq!(m.feed(JAN.as_bytes(), &mut out), Err(MaskError::RecordTooLarge { limit: 10 }));
    assert_eq!((&out[..], m.stats().records_dropped_oversize), (JAN.as_bytes(), 1));
}
