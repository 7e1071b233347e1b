//! Property tests of the masker, over any chunking: generated bodies against a model of the spec
//! (`tests::spec()`, `replace` included); CVs from the mock API bent every way a backend could
//! (escaped, duplicate and upper-case contact keys, extra fields, the phone choice) against the
//! board's spec; and the fuzz target's invariants over a fixed corpus of tricky bodies, which is
//! how they run on stable Rust (fuzz/README.md).

use std::fmt;

use proptest::prelude::*;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{json, Value};

use super::tests::{plan, results, run_split, spec, FATIMA, JAN};
use super::*;
use std::sync::Arc;

/// The fuzz target's invariants (shared source: fuzz/fuzz_targets/mask.rs includes it too).
mod invariants {
    #![allow(dead_code)]
    use super::super::{KeepIf, MaskError, MaskFormat, MaskPlan, MaskSpec, MaskStats, Masker};
    include!("invariants.rs");
}

// ---- any split, and the masked output matches a model of the spec ----

/// The spec applied to a parsed record (no duplicate keys), as the expected result.
fn model(record: &Value) -> Value {
    let mut r = record.as_object().unwrap().clone();
    for k in ["geslacht", "geboortedatum", "adres", "postcode", "woonplaats", "email"] {
        r.remove(k);
    }
    if let Some(naam) = r.get_mut("naam") {
        *naam = json!("***");
    }
    if r.get("toon_telefoon") != Some(&json!(true)) {
        r.remove("telefoon");
    }
    Value::Object(r)
}

fn text() -> impl Strategy<Value = String> {
    "[a-zé \\[\\]{},:\"\\\\\n]{0,40}"
}

/// A CV with any of its fields, or a record that must be dropped: `(json, valid)`.
fn cv() -> impl Strategy<Value = (String, bool)> {
    let fields = (
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of((text(), text())),
        prop::option::of(text()),
        prop::option::of(prop::option::of(any::<bool>())),
        text(),
        prop::collection::vec(text(), 0..3),
        0..300usize,
    );
    let valid = (any::<u16>(), fields, any::<bool>()).prop_map(|(id, f, pretty)| {
        let (naam, email, adres, telefoon, toon, profiel, jobs, pad) = f;
        let mut r = serde_json::Map::new();
        r.insert("id".into(), json!(id));
        if let Some(n) = naam {
            r.insert("naam".into(), json!(n));
        }
        r.insert("profiel".into(), json!(format!("{profiel}{}", "p".repeat(pad))));
        if let Some(e) = email {
            r.insert("email".into(), json!(e));
        }
        if let Some((straat, nr)) = adres {
            r.insert("adres".into(), json!({"straat": straat, "huisnummer": nr}));
        }
        if let Some(t) = telefoon {
            r.insert("telefoon".into(), json!(t));
        }
        if let Some(t) = toon {
            r.insert("toon_telefoon".into(), json!(t));
        }
        r.insert("werkervaring".into(), json!(jobs.iter().map(|j| json!({"functie": j})).collect::<Vec<_>>()));
        let r = Value::Object(r);
        let s = if pretty { serde_json::to_string_pretty(&r) } else { serde_json::to_string(&r) };
        (s.unwrap(), true)
    });
    let invalid =
        prop::sample::select(vec!["[1,{\"naam\":\"x\"}]", "\"naam\"", "{\"naam\":tru}", "{\"naam\" 1}", "42"])
            .prop_map(|s| (s.to_owned(), false));
    prop_oneof![6 => valid, 1 => invalid]
}

const MAX: usize = 400;

/// What the kept records must come out as.
fn expected(recs: &[(String, bool)]) -> Vec<Value> {
    recs.iter()
        .filter(|(s, valid)| *valid && s.len() <= MAX)
        .map(|(s, _)| model(&serde_json::from_str(s).unwrap()))
        .collect()
}

fn prop_plan() -> Arc<MaskPlan> {
    let mut s = spec();
    s.max_record_bytes = MAX;
    plan(&s)
}

proptest! {
    #[test]
    fn json_any_split_same_output(
        recs in prop::collection::vec(cv(), 0..8),
        ws in prop::sample::select(vec!["", " ", "\n  ", "\r\n\t"]),
        splits in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let p = prop_plan();
        let items: Vec<&str> = recs.iter().map(|(s, _)| s.as_str()).collect();
        let body = format!(
            "{{{ws}\"page\":1,{ws}\"meta\":{{\"naam\":\"x\"}},\"results\"{ws}:{ws}[{ws}{}{ws}]{ws},\"total\":{}}}{ws}",
            items.join(&format!("{ws},{ws}")),
            recs.len(),
        );
        let whole = run_split(&p, results(), body.as_bytes(), &[]);
        prop_assert_eq!(&whole, &run_split(&p, results(), body.as_bytes(), &splits));
        prop_assert_eq!(whole.2, None);
        let page: Value = serde_json::from_str(&whole.0).unwrap();
        prop_assert_eq!(&page["results"], &Value::Array(expected(&recs)));
        prop_assert_eq!(&page["meta"], &json!({"naam": "***"}));
        prop_assert_eq!(whole.1.records_seen, recs.len() as u64);
    }

    #[test]
    fn ndjson_any_split_same_output(
        recs in prop::collection::vec((cv(), 0..3usize, any::<bool>()), 0..8),
        splits in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let p = prop_plan();
        let mut body = String::new();
        let mut kept = Vec::new();
        for ((s, valid), blank, crlf) in &recs {
            // One record per line: a pretty-printed record is flattened onto its line.
            let s = if *valid { serde_json::to_string(&serde_json::from_str::<Value>(s).unwrap()).unwrap() } else { s.clone() };
            body += &["\n", " \r\n", "\t\n"][..*blank].concat();
            body += &s;
            body += if *crlf { "\r\n" } else { "\n" };
            kept.push((s, *valid));
        }
        let whole = run_split(&p, MaskFormat::Ndjson, body.as_bytes(), &[]);
        prop_assert_eq!(&whole, &run_split(&p, MaskFormat::Ndjson, body.as_bytes(), &splits));
        let got: Vec<Value> = whole.0.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect();
        prop_assert_eq!(got, expected(&kept));
    }

    #[test]
    fn single_any_split_same_output(rec in cv(), splits in prop::collection::vec(any::<usize>(), 0..6)) {
        let p = prop_plan();
        let whole = run_split(&p, MaskFormat::Single, rec.0.as_bytes(), &[]);
        prop_assert_eq!(&whole, &run_split(&p, MaskFormat::Single, rec.0.as_bytes(), &splits));
        match expected(std::slice::from_ref(&rec)).pop() {
            Some(want) => prop_assert_eq!(serde_json::from_str::<Value>(&whole.0).unwrap(), want),
            None => prop_assert!(whole.0.is_empty() && whole.2.is_some()),
        }
    }
}

// ---- CVs from the mock API, bent every way, with the board's spec ----

/// An object's members in order, duplicates included (a `Value` keeps one of each key).
#[derive(Debug, Clone, PartialEq)]
struct Pairs(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = Pairs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pairs, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry::<String, Value>()? {
                    pairs.push(pair);
                }
                Ok(Pairs(pairs))
            }
        }
        d.deserialize_map(Members)
    }
}

#[derive(Deserialize)]
struct Page {
    results: Vec<Pairs>,
}

/// One member as generated: its key as written (maybe escaped), decoded, and its value.
#[derive(Debug, Clone)]
struct Field {
    raw: String,
    key: String,
    value: Value,
}

impl Field {
    fn plain(key: &str, value: Value) -> Self {
        Field { raw: key.to_owned(), key: key.to_owned(), value }
    }
}

/// How a key is written: as is, upper case, capitalised, one character `\u`-escaped (hex digits
/// upper or lower case), or upper case with one character escaped.
#[derive(Debug, Clone, Copy)]
enum Style {
    Plain,
    Upper,
    Capital,
    Escaped(usize, bool),
    UpperEscaped(usize),
}

fn style() -> impl Strategy<Value = Style> {
    prop_oneof![
        Just(Style::Plain),
        Just(Style::Upper),
        Just(Style::Capital),
        (0..16usize, any::<bool>()).prop_map(|(at, upper)| Style::Escaped(at, upper)),
        (0..16usize).prop_map(Style::UpperEscaped),
    ]
}

/// `name` (ASCII) written in `style`: (as written, decoded).
fn styled(name: &str, style: Style) -> (String, String) {
    let escape = |s: &str, at: usize, upper: bool| -> String {
        let at = at % s.len();
        let hex = if upper { format!("\\u{:04X}", s.as_bytes()[at]) } else { format!("\\u{:04x}", s.as_bytes()[at]) };
        format!("{}{hex}{}", &s[..at], &s[at + 1..])
    };
    let upper = name.to_uppercase();
    match style {
        Style::Plain => (name.to_owned(), name.to_owned()),
        Style::Upper => (upper.clone(), upper),
        Style::Capital => {
            let capital = format!("{}{}", name[..1].to_uppercase(), &name[1..]);
            (capital.clone(), capital)
        }
        Style::Escaped(at, hex_upper) => (escape(name, at, hex_upper), name.to_owned()),
        Style::UpperEscaped(at) => (escape(&upper, at, false), upper),
    }
}

/// A CV as the test wrote it: its members in order and the whitespace before each.
#[derive(Debug, Clone)]
struct Cv {
    fields: Vec<Field>,
    gaps: Vec<&'static str>,
}

impl Cv {
    /// The record's text; one line when `!newlines` (NDJSON).
    fn text(&self, newlines: bool) -> String {
        let mut s = String::from("{");
        for (n, f) in self.fields.iter().enumerate() {
            if n > 0 {
                s.push(',');
            }
            let gap = self.gaps[n % self.gaps.len()];
            s.push_str(if newlines { gap } else { " " });
            s.push_str(&format!("\"{}\":{}", f.raw, f.value));
        }
        s.push('}');
        s
    }

    /// Every occurrence of `toon_telefoon` (any case) is `true`, and there is one.
    fn shows_phone(&self) -> bool {
        let shown: Vec<&Value> =
            self.fields.iter().filter(|f| f.key.to_lowercase() == "toon_telefoon").map(|f| &f.value).collect();
        !shown.is_empty() && shown.iter().all(|v| **v == json!(true))
    }

    /// What the board's spec leaves of it: every other member, in order, the same value.
    fn masked(&self) -> Vec<(String, Value)> {
        let phone = self.shows_phone();
        self.fields
            .iter()
            .filter(|f| {
                let key = f.key.to_lowercase();
                !invariants::CONTACT.contains(&key.as_str()) && (key != "telefoon" || phone)
            })
            .map(|f| (f.key.clone(), f.value.clone()))
            .collect()
    }
}

/// A value for an extra field: tricky strings, numbers, and objects that hold contact keys
/// themselves (not at a record's root, so they stay).
fn extra_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        "[a-zé \"\\\\/{}\\[\\],:\n\u{1F600}]{0,12}".prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
        Just(json!(-1.5e-7)),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            prop::collection::vec((prop::sample::select(vec!["naam", "Email", "x", "telefoon"]), inner), 0..3)
                .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

type Index = prop::sample::Index;

/// A CV of the mock API, then: some contact keys restyled, some contact fields doubled, extra
/// fields, `toon_telefoon` changed one of seven ways, maybe one more phone number.
fn bent_cv() -> impl Strategy<Value = Cv> {
    let contact = prop::sample::select(invariants::CONTACT.to_vec());
    (
        1u64..1_000_000,
        prop::collection::vec((any::<Index>(), style()), 0..4),
        prop::collection::vec((contact, style(), any::<Index>()), 0..3),
        prop::collection::vec(("[a-z]{1,8}", extra_value(), any::<Index>()), 0..3),
        0..7usize,
        prop::option::of(("[0-9 +-]{0,12}", any::<Index>())),
        prop::collection::vec(prop::sample::select(vec!["", " ", "\n  ", "\t", "\r\n"]), 1..8),
    )
        .prop_map(|(id, restyle, doubles, extras, toon, phone, gaps)| {
            let mut s = String::new();
            write_cv(&mut s, id);
            let base: Pairs = serde_json::from_str(&s).expect("a mock CV");
            let mut fields: Vec<Field> = base.0.into_iter().map(|(k, v)| Field::plain(&k, v)).collect();
            for (at, style) in restyle {
                let contact: Vec<usize> = (0..fields.len())
                    .filter(|&n| invariants::CONTACT.contains(&fields[n].key.to_lowercase().as_str()))
                    .collect();
                if !contact.is_empty() {
                    let n = contact[at.index(contact.len())];
                    let (raw, key) = styled(&fields[n].key.to_lowercase(), style);
                    (fields[n].raw, fields[n].key) = (raw, key);
                }
            }
            for (name, style, at) in doubles {
                let (raw, key) = styled(name, style);
                fields.insert(at.index(fields.len() + 1), Field { raw, key, value: json!("dubbel") });
            }
            for (key, value, at) in extras {
                fields.insert(at.index(fields.len() + 1), Field::plain(&format!("x_{key}"), value));
            }
            let flag = fields.iter().position(|f| f.key == "toon_telefoon").expect("the mock's choice");
            match toon {
                0 => {}
                1 => fields[flag].value = json!(false),
                2 => fields[flag].value = json!("true"),
                3 => {
                    fields.remove(flag);
                }
                4 => fields.push(Field::plain("toon_telefoon", json!(false))),
                5 => (fields[flag].raw, fields[flag].key) = styled("toon_telefoon", Style::Upper),
                _ => fields.insert(0, Field::plain("Toon_Telefoon", json!(true))),
            }
            if let Some((number, at)) = phone {
                fields.insert(at.index(fields.len() + 1), Field::plain("telefoon", json!(number)));
            }
            Cv { fields, gaps }
        })
}

proptest! {
    #[test]
    fn bent_cvs_lose_their_contact_data_and_nothing_else(
        cvs in prop::collection::vec(bent_cv(), 0..6),
        ndjson in any::<bool>(),
        max in prop::sample::select(vec![500usize, 800, 4096]),
        splits in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let texts: Vec<String> = cvs.iter().map(|cv| cv.text(!ndjson)).collect();
        let (body, format) = if ndjson {
            (texts.iter().map(|t| format!("{t}\n")).collect::<String>(), MaskFormat::Ndjson)
        } else {
            (format!("{{\"page\":1,\"results\":[{}],\"total\":{}}}", texts.join(","), cvs.len()), results())
        };
        let plan = invariants::board(max);
        let (out, stats, err) = invariants::run(&plan, &format, body.as_bytes(), &splits, 0, false);
        prop_assert_eq!(err, None);
        // Valid, and no contact key left at any record's root (decoded, any case).
        invariants::valid(&format, &out, true);
        let got: Vec<Pairs> = if ndjson {
            out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect()
        } else {
            serde_json::from_slice::<Page>(&out).unwrap().results
        };
        let kept: Vec<&Cv> = cvs.iter().zip(&texts).filter(|(_, t)| t.len() <= max).map(|(cv, _)| cv).collect();
        prop_assert_eq!(got.len(), kept.len());
        prop_assert_eq!(stats.records_dropped_oversize as usize, cvs.len() - kept.len());
        for (record, cv) in got.iter().zip(&kept) {
            // Every other field in place with the same value, duplicates included.
            prop_assert_eq!(&record.0, &cv.masked());
            // The phone exactly where the job seeker shows it.
            let phone = |pairs: &[(String, Value)]| pairs.iter().any(|(k, _)| k.to_lowercase() == "telefoon");
            let had: Vec<(String, Value)> = cv.fields.iter().map(|f| (f.key.clone(), f.value.clone())).collect();
            prop_assert_eq!(phone(&record.0), phone(&had) && cv.shows_phone());
        }
    }
}

// ---- the fuzz target's invariants over a fixed corpus ----

/// Bodies that break a careless masker: escapes, case, duplicates, the records field escaped or
/// doubled, invalid UTF-8, control characters, lone surrogates in keys, depth, layout, wrong
/// shapes, and real pages.
fn corpus() -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = [
        r#"{"results":[{"naam":"a","NAAM":"b","n\u0061am":"c","N\u0041AM":"d","toon_telefoon":true,"telefoon":"06"}]}"#,
        r#"{"results":[{"telefoon":"06","toon_telefoon":true,"TOON_TELEFOON":false},{"TeLeFoOn":1}]}"#,
        r#"{"results":[{"telefoon":"06","toon_telefoon":"true"},{"telefoon":"06","toon_tele\u0066oon":true}]}"#,
        r#"{"meta":{"email":"x","sub":[{"naam":"y","toon_telefoon":true,"telefoon":1}]},"results":[]}"#,
        r#"{"results":[1,"naam",null,[{"naam":1}],{"email":"x"},true,{}]}"#,
        r#"{"result\u0073":[{"email":"x"}],"results":[{"naam":"y"}]}"#,
        r#"{"results":[{"a":"\ud800"},{"\ud800":1},{"naam\udfff":1},{"x":{"\ud800":1}}]}"#,
        r#"{"results":[{"naam":"é","\u00e9":1,"ADRES":{"straat":"x"},"\u212Aey":1,"EMAİL":2}]}"#,
        r#"{"results":[{"na\"am":1,"naam\\":2,"naam ":3," naam":4}]}"#,
        r#"{"results":[{"a":1} {"b":2}]}"#,
        r#"{"results":[{"a":1},]}"#,
        r#"{"results":[{"a":-0.0e+5,"b":01}]}"#,
        r#"{"results":[{"a":1e5,"b":-0,"c":1.5E-3,"d":[true,false,null]}],"n":-1.0}"#,
        "{\"naam\":1}\n{\"email\":2}\r\n\n[1]\n{\"telefoon\":3,\"toon_telefoon\":true}\n  \n{\"naam\":",
        " \t\r\n{ \"results\" : [ { \"naam\" : 1 } , { } ] } \n",
        "{\"results\":[{\"a\":\"\u{1}\"},{\"naam\":\"tab\there\"}]}",
        "",
        "{}",
        "[]",
        "null",
        "\"naam\"",
        "{\"results\":null}",
        "{\"results\":[",
        "{\"results\":[{\"n\\u0061am\":\"\\\\\\\"\",\"x\":\"\\u00e9\"}]}",
    ]
    .map(|s| s.as_bytes().to_vec())
    .to_vec();
    bodies.push(b"{\"results\":[{\"naam\":\"\xff\"},{\"ok\":\"\xc3\xa9\"},{\"cut\":\"\xc3\"}]}".to_vec());
    // Found by the fuzzer (as libFuzzer hands them over, header first): a lone surrogate in a
    // root key was passed within an allowance but dropped when masked, so an allowance changed
    // a single record's error. Keys must now decode to be valid at all.
    bodies.push(b"\xfc\x0a\xff\xfe\xff\"ges{\"\\ud800ht\"  :446 \r}\n{A\n \"222{2\xff".to_vec());
    bodies.push(
        b"\xbb\x0a\x0a\xff\x0a\x0a\x0a\x0a\x0a\x0a\x0a\x0a  \t\x0a\x0a {\"\\ud800geslacht\"  :-0.5e+3\t\t\t\t}\r\n"
            .to_vec(),
    );
    bodies.push(format!("{{\"results\":[{}{}]}}", "[".repeat(200), "]".repeat(200)).into_bytes());
    bodies.push(format!("{{\"results\":[{{\"a\":{}1{}}}]}}", "[".repeat(99), "]".repeat(99)).into_bytes());
    bodies.push(format!("{{\"results\":[{{\"a\":{}1{}}}]}}", "[".repeat(100), "]".repeat(100)).into_bytes());
    bodies.push(format!("{{\"x\":{}{},\"results\":[]}}", "{\"a\":".repeat(120), "}".repeat(120)).into_bytes());
    let (mut page, mut lines) = (String::from("{\"page\":1,\"results\":["), String::new());
    for id in 1..=12 {
        if id > 1 {
            page.push(',');
        }
        write_cv(&mut page, id);
        write_cv(&mut lines, id + 100);
        lines.push('\n');
    }
    page.push_str("],\"total\":12}");
    bodies.push(page.into_bytes());
    bodies.push(lines.into_bytes());
    bodies.push(format!("{{\"results\":[{JAN},{FATIMA}]}}").into_bytes());
    bodies
}

#[test]
fn fuzz_corpus_replays_on_stable() {
    for body in corpus() {
        let step = (body.len() / 40).max(3);
        let cut_sets = [vec![], vec![1], vec![0, 7, 13], (0..body.len()).step_by(step).collect(), vec![body.len() / 2]];
        for cuts in &cut_sets {
            for (allowance, max) in [(0, 4096), (1, 64), (7, 16), (2, 256), (3, 700)] {
                invariants::check(&body, cuts, allowance, max);
            }
        }
        // And as libFuzzer hands it over, through the same splitter.
        let (b, cuts, allowance, max) = invariants::split_input(&body);
        invariants::check(b, &cuts, allowance, max);
    }
}

/// A CV of the mock API's Dutch shape (count does not import the devtools): contact fields on
/// two in three, the phone where `toon_telefoon`, profile fields always. Deterministic per id.
fn write_cv(out: &mut String, id: u64) {
    use std::fmt::Write as _;
    let r = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 7;
    let _ = write!(out, "{{\"id\":\"cv-{id:07}\",");
    if !r.is_multiple_of(3) {
        let _ = write!(
            out,
            "\"naam\":\"Sanne de Vries {id}\",\"geslacht\":\"vrouw\",\"geboortedatum\":\"19{:02}-0{}-1{}\",\"adres\":{{\"straat\":\"Dorpsstraat\",\"huisnummer\":\"{}\"}},\"postcode\":\"{} AB\",\"woonplaats\":\"Utrecht\",\"email\":\"cv{id}@example.nl\",",
            50 + r % 50,
            1 + r % 9,
            r % 10,
            1 + r % 200,
            1000 + r % 9000,
        );
    }
    let phone = r.is_multiple_of(2);
    if phone {
        let _ = write!(out, "\"telefoon\":\"06-{:08}\",", r % 100_000_000);
    }
    let _ = write!(
        out,
        "\"toon_contactgegevens\":{},\"toon_telefoon\":{phone},\"beroep\":\"Verpleegkundige\",\"vaardigheden\":[\"zorg\",\"planning\"],\"werkervaring\":[{{\"functie\":\"Verzorgende\",\"werkgever\":\"Zorggroep\",\"jaren\":{}}}],\"opleiding\":\"mbo 4\",\"samenvatting\":\"Gemotiveerd, \\\"flexibel\\\" {{en}} [betrokken]\",\"regio\":\"Utrecht\"}}",
        !r.is_multiple_of(3),
        1 + r % 12,
    );
}
