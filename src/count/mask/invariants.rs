// Invariants of the masker that hold for any body at all, with the board's spec. The fuzz target
// (fuzz/fuzz_targets/mask.rs) checks them on libFuzzer's inputs; `count::mask::props` replays a
// fixed corpus of tricky bodies through them on stable Rust. Included with `include!` into a
// module that has `KeepIf, MaskError, MaskFormat, MaskPlan, MaskSpec, MaskStats, Masker` in
// scope, so it uses only the public API.

use std::sync::Arc;

use bytes::BytesMut;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// The fields the board's spec removes from every record.
pub const CONTACT: [&str; 7] = ["naam", "geslacht", "geboortedatum", "adres", "postcode", "woonplaats", "email"];

/// The board's spec: the contact fields removed, `telefoon` kept only where `toon_telefoon` is
/// `true`, keys matched whatever their case.
pub fn board(max_record_bytes: usize) -> Arc<MaskPlan> {
    let spec = MaskSpec {
        remove: CONTACT.map(String::from).to_vec(),
        keep_if: vec![KeepIf { field: "telefoon".into(), when: "toon_telefoon".into(), equals: Value::Bool(true) }],
        case_insensitive: true,
        max_record_bytes,
        ..MaskSpec::default()
    };
    Arc::new(MaskPlan::new(&spec).expect("the board's spec is valid"))
}

/// The three formats, the array field named `results`.
pub fn formats() -> [MaskFormat; 3] {
    [MaskFormat::JsonArrayField("results".into()), MaskFormat::Ndjson, MaskFormat::Single]
}

/// Masks `body` cut at `cuts` (offsets in any order, taken modulo its length + 1); the output,
/// the stats and the first error. Every chunk is fed, also after an error (a shadow masker
/// passes them all), then `finish`.
pub fn run(
    plan: &Arc<MaskPlan>,
    format: &MaskFormat,
    body: &[u8],
    cuts: &[usize],
    allowance: u64,
    shadow: bool,
) -> (Vec<u8>, MaskStats, Option<MaskError>) {
    let m = Masker::new(plan.clone(), format.clone()).with_allowance(allowance);
    let mut m = if shadow { m.shadow() } else { m };
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    bounds.sort_unstable();
    bounds.push(body.len());
    let (mut out, mut at, mut err) = (BytesMut::new(), 0, None);
    for end in bounds {
        let fed = m.feed(&body[at..end], &mut out);
        err = err.or(fed.err());
        at = end;
    }
    let finished = m.finish(&mut out);
    (out.to_vec(), *m.stats(), err.or(finished.err()))
}

/// Fuzzer bytes as (body, cuts, allowance, max_record_bytes). Byte 0: bits 0–2 the number of
/// cuts, bits 3–4 the bound (16, 64, 256 or 4096 bytes), bits 5–7 the allowance; then two
/// bytes per cut; the rest is the body.
pub fn split_input(data: &[u8]) -> (&[u8], Vec<usize>, u64, usize) {
    let Some((&head, rest)) = data.split_first() else { return (data, Vec::new(), 0, 4096) };
    let max = [16, 64, 256, 4096][usize::from(head >> 3 & 3)];
    let (cuts, body) = rest.split_at((usize::from(head & 7) * 2).min(rest.len()));
    let cuts = cuts.chunks(2).map(|c| usize::from(c[0]) | usize::from(c.get(1).copied().unwrap_or(0)) << 8).collect();
    (body, cuts, u64::from(head >> 5), max)
}

/// Every invariant, for `body` in all three formats; panics on a violation:
/// - any chunking gives the same output, stats and error as one chunk;
/// - when there is no error, the output is valid (one JSON object, or NDJSON lines that are
///   blank or a JSON object), and no record has a contact key at its root, nor any object in
///   the page's other members, and `telefoon` is left only beside `toon_telefoon: true`
///   (keys decoded, compared in lowercase);
/// - shadow mode passes the body byte for byte with the same stats and error;
/// - an allowance changes what is masked only: same records seen and dropped, same error,
///   valid output.
pub fn check(body: &[u8], cuts: &[usize], allowance: u64, max_record_bytes: usize) {
    let plan = board(max_record_bytes);
    for format in formats() {
        let whole = run(&plan, &format, body, &[], 0, false);
        assert_eq!(run(&plan, &format, body, cuts, 0, false), whole, "{format:?}: the chunks changed the result");
        if whole.2.is_none() {
            valid(&format, &whole.0, true);
        }
        let shadow = run(&plan, &format, body, cuts, 0, true);
        assert!(shadow.0 == body, "{format:?}: shadow mode changed the body");
        assert_eq!((shadow.1, &shadow.2), (whole.1, &whole.2), "{format:?}: shadow mode counted otherwise");
        let allowed = run(&plan, &format, body, cuts, allowance, false);
        assert_eq!(allowed, run(&plan, &format, body, &[], allowance, false), "{format:?}: allowance, chunks");
        assert_eq!(allowed.2, whole.2, "{format:?}: allowance changed the error");
        let (a, w) = (allowed.1, whole.1);
        assert_eq!(a.records_seen, w.records_seen, "{format:?}: allowance changed the records");
        assert_eq!(a.records_dropped(), w.records_dropped(), "{format:?}: allowance changed the drops");
        assert!(a.records_allowed <= allowance, "{format:?}: {a:?}");
        if allowed.2.is_none() {
            valid(&format, &allowed.0, false);
        }
    }
}

/// An object's members in order, keys decoded, values as they are (so that any valid JSON
/// passes, lone surrogates and numbers out of `f64` range included, as the masker passes them).
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// The members of the JSON object `json`.
fn members(json: &str) -> Result<Vec<(String, &RawValue)>, serde_json::Error> {
    serde_json::from_str::<Members>(json).map(|m| m.0)
}

/// The output of a masker that returned no error is valid: one JSON object, or NDJSON lines
/// that are blank or a JSON object (RFC 8259's grammar, as serde_json checks it when it skips a
/// value: lone surrogates and numbers out of `f64` range pass, as the masker passes them). When
/// `masked`, it holds no contact data; then every key the check decodes was decoded by the
/// masker too (it drops a record whose root key it cannot decode), so decoding cannot fail.
pub fn valid(format: &MaskFormat, out: &[u8], masked: bool) {
    let text = std::str::from_utf8(out).unwrap_or_else(|e| panic!("{format:?}: output not UTF-8: {e}"));
    let object = |json: &str| {
        let parsed = serde_json::from_str::<serde::de::IgnoredAny>(json).map(|_| ());
        let is_object = json.trim_start().starts_with('{');
        assert!(parsed.is_ok() && is_object, "{format:?}: invalid output ({parsed:?}): {text:?}");
    };
    let clean_object = |json| clean(&members(json).unwrap_or_else(|e| panic!("{format:?}: {e}: {text:?}")));
    match format {
        MaskFormat::Ndjson => {
            for line in text.split('\n').filter(|l| l.bytes().any(|b| !b" \t\r".contains(&b))) {
                object(line);
                if masked {
                    clean_object(line);
                }
            }
        }
        MaskFormat::Single => {
            object(text);
            if masked {
                clean_object(text);
            }
        }
        MaskFormat::JsonArrayField(field) => {
            object(text);
            if !masked {
                return;
            }
            for (key, value) in members(text).unwrap_or_else(|e| panic!("{format:?}: {e}: {text:?}")) {
                let raw = value.get();
                if key == *field && raw.starts_with('[') {
                    // The records (or, with a duplicate field name, another member: masked deeper).
                    for record in serde_json::from_str::<Vec<&RawValue>>(raw).expect("an array") {
                        if record.get().starts_with('{') {
                            clean_object(record.get());
                        }
                    }
                } else {
                    clean_everywhere(value);
                }
            }
        }
    }
}

/// No contact key among an object's `members`; `telefoon` only beside `toon_telefoon: true`,
/// every occurrence of it.
pub fn clean(members: &[(String, &RawValue)]) {
    let shown: Vec<&str> =
        members.iter().filter(|(k, _)| k.to_lowercase() == "toon_telefoon").map(|(_, v)| v.get()).collect();
    for (key, _) in members {
        let key = key.to_lowercase();
        assert!(!CONTACT.contains(&key.as_str()), "contact field {key:?} left in {members:?}");
        if key == "telefoon" {
            assert!(
                !shown.is_empty() && shown.iter().all(|v| *v == "true"),
                "telefoon left without toon_telefoon: true in {members:?}"
            );
        }
    }
}

/// [`clean`] for every object in `value`, at any depth.
pub fn clean_everywhere(value: &RawValue) {
    let raw = value.get();
    if raw.starts_with('{') {
        let members = members(raw).expect("an object");
        clean(&members);
        members.iter().for_each(|(_, v)| clean_everywhere(v));
    } else if raw.starts_with('[') {
        serde_json::from_str::<Vec<&RawValue>>(raw).expect("an array").into_iter().for_each(clean_everywhere);
    }
}
