//! Masking job seekers' contact data in a streaming response body.
//!
//! Owns the "mask" step of the body's way back (decode → count/cut → mask → re-encode): the
//! board decided that every CV hides its holder's contact data (name, gender, date of birth,
//! address, postcode, residence, e-mail), while the phone number stays where the job seeker
//! chose to show it. [`MaskSpec`] says what to hide, with dotted field paths as config writes
//! them; [`MaskPlan`] is that spec validated and compiled once per config; [`Masker`] is the pure,
//! incremental engine for one body: [`Masker::feed`] chunks, [`Masker::finish`] at the end.
//!
//! # Contract
//! - Nothing that could be a record leaves unmasked. A record that is not a JSON object, is not
//!   valid JSON or is larger than `max_record_bytes` is dropped whole and counted in [`MaskStats`].
//! - Keys match after JSON decoding (`"n\u0061am"` is `naam`), every occurrence of a duplicate
//!   key is masked, and with `case_insensitive` `"NAAM"` is `naam` too (Unicode lowercase of both
//!   sides). A path segment applies to every element of an array it meets, so `werkervaring.x`
//!   reaches `x` in each job. Paths start at the record's root: a field the backend moves
//!   elsewhere needs its own path.
//! - What is not masked keeps its exact bytes, whitespace included: a record is never
//!   re-serialised, only cut and spliced. A replaced value is written compact.
//! - Output is valid JSON or NDJSON: commas are written again around dropped elements, and a
//!   dropped NDJSON record takes its line with it.
//! - JSON array bodies: the top-level object's other members could carry CVs if the backend
//!   changed its JSON, so every object inside them, at any depth, is masked as if it were a record
//!   (the rules rooted at that object). A member larger than `max_record_bytes` is dropped.
//! - A body of the wrong shape (not an object, the records field missing or not an array, data
//!   after the end, cut short) is an error, and the caller refuses or aborts. Everything before
//!   the records array is held back (within `max_record_bytes`), so a body of the wrong shape has
//!   sent nothing when the error comes. After an error every call returns it again.
//! - Any split of a body into chunks gives the same output, stats and errors.
//! - Memory is O(`max_record_bytes`): one record or member at a time, never the whole body
//!   (single mode holds its one record, within the same bound).
//!
//! # Speed
//! A record is parsed once, by serde_json, into borrowed pieces: each member as a (raw key, raw
//! value) pair pointing into the record's bytes, keys decoded only when they hold an escape, no
//! `Value` tree. The output is written piece by piece straight into the caller's buffer, so an
//! untouched record costs one parse and a few copies, and no allocation once the buffers are warm;
//! a record that arrives in one chunk is not even copied into the record buffer. Nested values
//! are walked only along the paths of the rules. A `keep_if` parses the record once more, and only
//! when the field it guards is present. Between records the scanner looks at bytes one at a time,
//! except inside strings, where `memchr` jumps to the next quote or backslash.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use serde::de::{self, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::{is_ws, RecordFormat};

/// Default of [`MaskSpec::max_record_bytes`]: a CV record is a few KiB; 1 MiB leaves room.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;

/// Deepest nesting a walk goes into (serde_json's own recursion limit); deeper is invalid.
const MAX_DEPTH: u32 = 128;

/// Whitespace kept between a `,` and the next element (plenty for any pretty-printer); more is
/// dropped, which only changes the layout.
const MAX_SEP_WS: usize = 1024;

/// What to hide in every record. Plain data, to be read from YAML (`deny_unknown_fields`) and
/// turned into a [`MaskPlan`], which validates it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskSpec {
    /// Field paths deleted from every record: `email`, `adres` (whole) or `adres.huisnummer`.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Field paths whose value becomes the given JSON value, e.g. `naam: "***"`. A path the
    /// record lacks stays absent.
    #[serde(default)]
    pub replace: BTreeMap<String, Value>,
    /// Fields kept only while a condition on the same record holds.
    #[serde(default)]
    pub keep_if: Vec<KeepIf>,
    /// Keys match whatever their case (Unicode lowercase of both sides).
    #[serde(default)]
    pub case_insensitive: bool,
    /// Largest record, in bytes as it appears in the body: an NDJSON line without its end, an
    /// array element, or the whole body in single mode. A larger record is dropped. Also bounds
    /// what precedes the records array, and each other member of the top-level object.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
}

fn default_max_record_bytes() -> usize {
    DEFAULT_MAX_RECORD_BYTES
}

impl Default for MaskSpec {
    fn default() -> Self {
        MaskSpec {
            remove: Vec::new(),
            replace: BTreeMap::new(),
            keep_if: Vec::new(),
            case_insensitive: false,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

/// `field` stays only when `when` equals `equals`, else it is removed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepIf {
    /// The guarded field, e.g. `telefoon`.
    pub field: String,
    /// The deciding field, a path from the record's root, e.g. `toon_telefoon`.
    pub when: String,
    /// Every occurrence of `when` must equal this (JSON equality: `true` is not `"true"`, `1` is
    /// not `1.0`), and there must be one: a record without `when` loses `field`.
    pub equals: Value,
}

/// One problem with a [`MaskSpec`], with the key it sits at (`remove[2]`, `keep_if[0].when`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct SpecError {
    pub key: String,
    pub problem: String,
}

impl SpecError {
    fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        SpecError { key: key.into(), problem: problem.into() }
    }
}

/// A validated [`MaskSpec`], compiled into a tree of path segments. Immutable: build it once per
/// config and share it (`Arc`) between the bodies.
#[derive(Debug)]
pub struct MaskPlan {
    root: Node,
    conds: Vec<Cond>,
    case_insensitive: bool,
    max_record_bytes: usize,
}

/// The rules below one level of a record: one child per key (lowercase when case-insensitive).
#[derive(Debug, Default)]
struct Node {
    children: Vec<Child>,
}

#[derive(Debug)]
struct Child {
    key: String,
    rule: Option<Rule>,
    /// Where `rule` came from in the spec, for conflict messages.
    origin: String,
    node: Node,
}

#[derive(Debug)]
enum Rule {
    Remove,
    Replace(Box<RawValue>),
    /// Kept only when condition `n` holds (then the nested rules still apply).
    KeepIf(usize),
}

#[derive(Debug)]
struct Cond {
    when: Vec<String>,
    equals: Value,
}

/// At most this many `keep_if` rules: a record's condition results live in two `u64` bit sets.
const MAX_KEEP_IF: usize = 64;

impl MaskPlan {
    /// Validates `spec`: paths are dotted field names without empty segments (a key containing a
    /// dot cannot be named), each path has one rule, `max_record_bytes` is at least 1.
    ///
    /// # Errors
    /// Every problem found, each with its key.
    pub fn new(spec: &MaskSpec) -> Result<Self, Vec<SpecError>> {
        let ci = spec.case_insensitive;
        let mut errors = Vec::new();
        if spec.max_record_bytes == 0 {
            errors.push(SpecError::new("max_record_bytes", "must be at least 1"));
        }
        let mut root = Node::default();
        for (i, path) in spec.remove.iter().enumerate() {
            root.insert(format!("remove[{i}]"), path, ci, Rule::Remove, &mut errors);
        }
        for (path, value) in &spec.replace {
            let key = format!("replace.{path}");
            match serde_json::value::to_raw_value(value) {
                Ok(raw) => root.insert(key, path, ci, Rule::Replace(raw), &mut errors),
                Err(e) => errors.push(SpecError::new(key, e.to_string())),
            }
        }
        let mut conds = Vec::new();
        for (i, k) in spec.keep_if.iter().enumerate() {
            if i == MAX_KEEP_IF {
                errors.push(SpecError::new("keep_if", format!("at most {MAX_KEEP_IF} rules")));
                break;
            }
            match segments(&k.when, ci) {
                Ok(when) => conds.push(Cond { when, equals: k.equals.clone() }),
                Err(problem) => errors.push(SpecError::new(format!("keep_if[{i}].when"), problem)),
            }
            let rule = Rule::KeepIf(conds.len().saturating_sub(1));
            root.insert(format!("keep_if[{i}].field"), &k.field, ci, rule, &mut errors);
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(MaskPlan { root, conds, case_insensitive: ci, max_record_bytes: spec.max_record_bytes })
    }

    /// [`MaskSpec::max_record_bytes`], for the caller's own buffers.
    pub fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    /// Masks one record: a JSON object, whitespace around it allowed and kept. Writes the masked
    /// record to `out`; writes nothing when the record is dropped.
    pub fn mask_record(&self, record: &[u8], out: &mut BytesMut) -> RecordMask {
        let mark = out.len();
        match self.mask_into(record, out) {
            Ok(done) => done,
            Err(Invalid) => {
                out.truncate(mark);
                RecordMask::Dropped
            }
        }
    }

    fn mask_into(&self, record: &[u8], out: &mut BytesMut) -> Result<RecordMask, Invalid> {
        let text = std::str::from_utf8(record).map_err(|_| Invalid)?;
        let body = text.trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n'));
        if !body.starts_with('{') {
            return Err(Invalid);
        }
        let (start, end) = span(text, body)?;
        out.extend_from_slice(&record[..start]);
        let mut walk = Walk::new(self, body);
        walk.object(body, &self.root, out, 0)?;
        out.extend_from_slice(&record[end..]);
        Ok(RecordMask::Kept { removed: walk.removed, replaced: walk.replaced })
    }
}

/// What [`MaskPlan::mask_record`] did with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordMask {
    /// Written to the output with this many fields removed and replaced (both 0: unchanged,
    /// byte for byte).
    Kept { removed: u64, replaced: u64 },
    /// Not a JSON object, or not valid JSON: nothing written.
    Dropped,
}

impl Node {
    fn insert(&mut self, origin: String, path: &str, ci: bool, rule: Rule, errors: &mut Vec<SpecError>) {
        let segs = match segments(path, ci) {
            Ok(segs) => segs,
            Err(problem) => return errors.push(SpecError::new(origin, problem)),
        };
        let mut node = self;
        for (n, seg) in segs.iter().enumerate() {
            let at = match node.children.iter().position(|c| c.key == *seg) {
                Some(at) => at,
                None => {
                    let child = Child { key: seg.clone(), rule: None, origin: String::new(), node: Node::default() };
                    node.children.push(child);
                    node.children.len() - 1
                }
            };
            let child = &mut node.children[at];
            if n + 1 == segs.len() {
                if child.rule.is_some() {
                    errors.push(SpecError::new(origin, format!("{path:?} already has a rule, at {}", child.origin)));
                } else {
                    child.rule = Some(rule);
                    child.origin = origin;
                }
                return;
            }
            node = &mut child.node;
        }
    }

    fn child(&self, key: &str, ci: bool) -> Option<&Child> {
        if !ci {
            self.children.iter().find(|c| c.key == key)
        } else if key.is_ascii() {
            // Children are lowercase; an ASCII key lowercases to its ASCII lowercase.
            self.children.iter().find(|c| key.eq_ignore_ascii_case(&c.key))
        } else {
            let key = key.to_lowercase();
            self.children.iter().find(|c| c.key == key)
        }
    }
}

fn segments(path: &str, ci: bool) -> Result<Vec<String>, String> {
    if path.split('.').any(str::is_empty) {
        return Err(format!("{path:?} has an empty segment (a path is dotted field names, e.g. \"adres.straat\")"));
    }
    Ok(path.split('.').map(|s| if ci { s.to_lowercase() } else { s.to_owned() }).collect())
}

fn key_eq(key: &str, seg: &str, ci: bool) -> bool {
    match (ci, key.is_ascii()) {
        (false, _) => key == seg,
        (true, true) => key.eq_ignore_ascii_case(seg),
        (true, false) => key.to_lowercase() == seg,
    }
}

/// A record (or member) that cannot be masked: not valid JSON, not an object, too deep.
#[derive(Debug, Clone, Copy)]
struct Invalid;

/// Where `part` (a slice of `base`) starts and ends in `base`. serde_json's `&RawValue`s borrow
/// from the text they were read from, so their address says where they sit in it: this is what
/// lets a record be cut and spliced instead of re-serialised. Checked, never trusted blindly.
fn span(base: &str, part: &str) -> Result<(usize, usize), Invalid> {
    let start = part.as_ptr().addr().checked_sub(base.as_ptr().addr()).ok_or(Invalid)?;
    let end = start.checked_add(part.len()).filter(|&end| end <= base.len()).ok_or(Invalid)?;
    Ok((start, end))
}

fn slice(raw: &str, from: usize, to: usize) -> Result<&[u8], Invalid> {
    raw.get(from..to).map(str::as_bytes).ok_or(Invalid)
}

/// A raw JSON key (with its quotes), decoded; borrowed unless it holds an escape.
fn decode_key(raw: &str) -> Result<Cow<'_, str>, Invalid> {
    if raw.contains('\\') {
        serde_json::from_str::<String>(raw).map(Cow::Owned).map_err(|_| Invalid)
    } else {
        raw.get(1..raw.len().saturating_sub(1)).map(Cow::Borrowed).ok_or(Invalid)
    }
}

/// Calls `each` with every (raw key, raw value) of the object `raw`, in order, duplicates
/// included; both point into `raw`. Validates `raw` whole: one object, nothing after it.
fn members<'de>(
    raw: &'de str,
    each: impl FnMut(&'de RawValue, &'de RawValue) -> Result<(), Invalid>,
) -> Result<(), Invalid> {
    struct Members<F>(F);
    impl<'de, F: FnMut(&'de RawValue, &'de RawValue) -> Result<(), Invalid>> Visitor<'de> for Members<F> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<&'de RawValue>()? {
                let value = map.next_value::<&'de RawValue>()?;
                (self.0)(key, value).map_err(|Invalid| de::Error::custom("invalid"))?;
            }
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_str(raw);
    (&mut de).deserialize_map(Members(each)).map_err(|_| Invalid)?;
    de.end().map_err(|_| Invalid)
}

/// Calls `each` with every raw element of the array `raw`, in order. Validates `raw` whole.
fn elements<'de>(raw: &'de str, each: impl FnMut(&'de RawValue) -> Result<(), Invalid>) -> Result<(), Invalid> {
    struct Elements<F>(F);
    impl<'de, F: FnMut(&'de RawValue) -> Result<(), Invalid>> Visitor<'de> for Elements<F> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON array")
        }
        fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
            while let Some(element) = seq.next_element::<&'de RawValue>()? {
                (self.0)(element).map_err(|Invalid| de::Error::custom("invalid"))?;
            }
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_str(raw);
    (&mut de).deserialize_seq(Elements(each)).map_err(|_| Invalid)?;
    de.end().map_err(|_| Invalid)
}

fn is_container(raw: &str) -> bool {
    matches!(raw.as_bytes().first(), Some(b'{' | b'['))
}

/// Every value at `path` below `raw` (through arrays), to `hit`.
fn find(raw: &str, path: &[String], ci: bool, depth: u32, hit: &mut dyn FnMut(&str)) -> Result<(), Invalid> {
    let Some((seg, rest)) = path.split_first() else {
        hit(raw);
        return Ok(());
    };
    if depth > MAX_DEPTH {
        return Err(Invalid);
    }
    match raw.as_bytes().first() {
        Some(b'{') => members(raw, |k, v| {
            if key_eq(&decode_key(k.get())?, seg, ci) {
                find(v.get(), rest, ci, depth + 1, &mut *hit)?;
            }
            Ok(())
        }),
        Some(b'[') => elements(raw, |e| find(e.get(), path, ci, depth + 1, &mut *hit)),
        _ => Ok(()),
    }
}

/// What happens to one member.
enum Todo<'a> {
    Keep,
    Drop,
    Replace(&'a RawValue),
    Nested(&'a Node),
}

/// The masking of one record: its root (for `keep_if` conditions) and what was done.
struct Walk<'a> {
    plan: &'a MaskPlan,
    root: &'a str,
    /// Bit n: condition n has been looked at; in `cond_true`: it holds.
    cond_known: u64,
    cond_true: u64,
    removed: u64,
    replaced: u64,
}

impl<'a> Walk<'a> {
    fn new(plan: &'a MaskPlan, root: &'a str) -> Self {
        Walk { plan, root, cond_known: 0, cond_true: 0, removed: 0, replaced: 0 }
    }

    /// Writes `raw` with `node`'s rules applied; `raw` has no whitespace around it.
    fn value(&mut self, raw: &'a str, node: &'a Node, out: &mut BytesMut, depth: u32) -> Result<(), Invalid> {
        match raw.as_bytes().first() {
            Some(b'{') => self.object(raw, node, out, depth),
            Some(b'[') => self.array(raw, node, out, depth),
            _ => {
                out.extend_from_slice(raw.as_bytes());
                Ok(())
            }
        }
    }

    /// Writes the object `raw` member by member: the gap before each kept member (whitespace
    /// and comma as they came, minus the comma before the first one written), the key and colon
    /// as they came, then the value as it came, replaced, or walked further. An untouched object
    /// comes out byte for byte.
    fn object(&mut self, raw: &'a str, node: &'a Node, out: &mut BytesMut, depth: u32) -> Result<(), Invalid> {
        if depth > MAX_DEPTH {
            return Err(Invalid);
        }
        let mut prev_end = 1; // after `{`
        let mut first = true;
        out.put_u8(b'{');
        members(raw, |key, value| {
            let (key_start, _) = span(raw, key.get())?;
            let (value_start, value_end) = span(raw, value.get())?;
            let gap = raw.get(prev_end..key_start).ok_or(Invalid)?;
            prev_end = value_end;
            let todo = self.todo(node, key.get())?;
            if let Todo::Drop = todo {
                self.removed += 1;
                return Ok(());
            }
            let gap = if first { gap.split_once(',').map_or(gap, |(_, after)| after) } else { gap };
            first = false;
            out.extend_from_slice(gap.as_bytes());
            out.extend_from_slice(slice(raw, key_start, value_start)?);
            match todo {
                Todo::Keep | Todo::Drop => out.extend_from_slice(value.get().as_bytes()),
                Todo::Replace(with) => {
                    out.extend_from_slice(with.get().as_bytes());
                    self.replaced += 1;
                }
                Todo::Nested(next) => self.value(value.get(), next, out, depth + 1)?,
            }
            Ok(())
        })?;
        out.extend_from_slice(slice(raw, prev_end, raw.len())?);
        Ok(())
    }

    /// A path segment applies to each element of an array it meets.
    fn array(&mut self, raw: &'a str, node: &'a Node, out: &mut BytesMut, depth: u32) -> Result<(), Invalid> {
        if depth > MAX_DEPTH {
            return Err(Invalid);
        }
        let mut copied = 0;
        elements(raw, |element| {
            let element = element.get();
            if is_container(element) {
                let (start, end) = span(raw, element)?;
                out.extend_from_slice(slice(raw, copied, start)?);
                self.value(element, node, out, depth + 1)?;
                copied = end;
            }
            Ok(())
        })?;
        out.extend_from_slice(slice(raw, copied, raw.len())?);
        Ok(())
    }

    fn todo(&mut self, node: &'a Node, raw_key: &str) -> Result<Todo<'a>, Invalid> {
        if node.children.is_empty() {
            return Ok(Todo::Keep);
        }
        let key = decode_key(raw_key)?;
        let Some(child) = node.child(&key, self.plan.case_insensitive) else { return Ok(Todo::Keep) };
        Ok(match &child.rule {
            Some(Rule::Remove) => Todo::Drop,
            Some(Rule::Replace(with)) => Todo::Replace(with),
            Some(Rule::KeepIf(n)) if !self.cond(*n)? => Todo::Drop,
            _ if child.node.children.is_empty() => Todo::Keep,
            _ => Todo::Nested(&child.node),
        })
    }

    /// Condition `n` on this walk's root: every occurrence of its path equals its value, and
    /// there is at least one. Looked up once per record, when first needed.
    fn cond(&mut self, n: usize) -> Result<bool, Invalid> {
        let bit = 1u64 << n;
        if self.cond_known & bit == 0 {
            let cond = &self.plan.conds[n];
            let (mut any, mut all) = (false, true);
            find(self.root, &cond.when, self.plan.case_insensitive, 0, &mut |raw: &str| {
                any = true;
                all &= serde_json::from_str::<Value>(raw).is_ok_and(|v| v == cond.equals);
            })?;
            self.cond_known |= bit;
            if any && all {
                self.cond_true |= bit;
            }
        }
        Ok(self.cond_true & bit != 0)
    }
}

/// Writes `raw` (one JSON value) with every object in it, at any depth, masked as a record
/// rooted at that object: for the top-level object's members other than the records.
fn everywhere(
    plan: &MaskPlan,
    raw: &str,
    out: &mut BytesMut,
    stats: &mut MaskStats,
    depth: u32,
) -> Result<(), Invalid> {
    if depth > MAX_DEPTH {
        return Err(Invalid);
    }
    match raw.as_bytes().first() {
        Some(b'{') => {
            let mut masked = BytesMut::with_capacity(raw.len());
            let mut walk = Walk::new(plan, raw);
            walk.object(raw, &plan.root, &mut masked, 0)?;
            stats.fields_removed += walk.removed;
            stats.fields_replaced += walk.replaced;
            let masked = std::str::from_utf8(&masked).map_err(|_| Invalid)?;
            everywhere_within(plan, masked, out, stats, depth)
        }
        Some(b'[') => everywhere_within(plan, raw, out, stats, depth),
        _ => {
            serde_json::from_str::<IgnoredAny>(raw).map_err(|_| Invalid)?;
            out.extend_from_slice(raw.as_bytes());
            Ok(())
        }
    }
}

/// Copies the object or array `raw` with each object or array value in it through [`everywhere`].
fn everywhere_within(
    plan: &MaskPlan,
    raw: &str,
    out: &mut BytesMut,
    stats: &mut MaskStats,
    depth: u32,
) -> Result<(), Invalid> {
    let mut copied = 0;
    let mut each = |value: &RawValue| -> Result<(), Invalid> {
        let value = value.get();
        if is_container(value) {
            let (start, end) = span(raw, value)?;
            out.extend_from_slice(slice(raw, copied, start)?);
            everywhere(plan, value, out, stats, depth + 1)?;
            copied = end;
        }
        Ok(())
    };
    if raw.starts_with('{') {
        members(raw, |_, value| each(value))?;
    } else {
        elements(raw, each)?;
    }
    out.extend_from_slice(slice(raw, copied, raw.len())?);
    Ok(())
}

/// How a response body is made of records, for masking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskFormat {
    /// One record per line.
    Ndjson,
    /// Elements of the array held by this top-level object field, e.g. `"results"` (matched
    /// after JSON decoding).
    JsonArrayField(String),
    /// The whole body is one record (the single-CV route).
    Single,
}

impl From<RecordFormat> for MaskFormat {
    fn from(format: RecordFormat) -> Self {
        match format {
            RecordFormat::Ndjson => MaskFormat::Ndjson,
            RecordFormat::JsonArrayField(field) => MaskFormat::JsonArrayField(field),
        }
    }
}

/// What a [`Masker`] did to one body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaskStats {
    /// Records met, dropped ones included.
    pub records_seen: u64,
    /// Records passed with at least one field removed or replaced.
    pub records_masked: u64,
    /// Records dropped for being larger than `max_record_bytes`.
    pub records_dropped_oversize: u64,
    /// Records dropped for not being a valid JSON object.
    pub records_dropped_invalid: u64,
    /// Fields removed (`remove`, and `keep_if` whose condition failed), in records and in the
    /// top-level object's other members.
    pub fields_removed: u64,
    /// Fields whose value was replaced, in records and in other members.
    pub fields_replaced: u64,
    /// Members of the top-level object, other than the records, dropped for their size.
    pub members_dropped: u64,
    /// Records passed unmasked, byte for byte, within the allowance
    /// ([`Masker::with_allowance`]); also in `records_seen`.
    pub records_allowed: u64,
}

impl MaskStats {
    pub fn records_dropped(&self) -> u64 {
        self.records_dropped_oversize + self.records_dropped_invalid
    }
}

/// Why a body cannot be masked. The caller refuses the response, or aborts a body already
/// under way (what was sent of it is masked, but the body is incomplete).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaskError {
    #[error("the body is not a JSON object")]
    NotAnObject,
    #[error("the body has no {field:?} field")]
    FieldMissing { field: String },
    #[error("the {field:?} field is not an array")]
    FieldNotArray { field: String },
    #[error("more than {limit} bytes before the records")]
    PrefixTooLarge { limit: usize },
    #[error("the record is larger than {limit} bytes")]
    RecordTooLarge { limit: usize },
    #[error("the body is not one JSON object")]
    InvalidRecord,
    #[error("malformed JSON at byte {offset}: {reason}")]
    Malformed { offset: u64, reason: &'static str },
}

impl MaskError {
    /// A short label for metrics and audit: `shape`, `malformed` or `too-large`.
    pub fn label(&self) -> &'static str {
        match self {
            MaskError::NotAnObject
            | MaskError::FieldMissing { .. }
            | MaskError::FieldNotArray { .. }
            | MaskError::InvalidRecord => "shape",
            MaskError::PrefixTooLarge { .. } | MaskError::RecordTooLarge { .. } => "too-large",
            MaskError::Malformed { .. } => "malformed",
        }
    }
}

/// Incremental masker of one response body. Pure: bytes in, bytes out, no I/O, no clock.
#[derive(Debug)]
pub struct Masker {
    engine: Engine,
    mode: Mode,
    /// Body bytes fed so far.
    fed: u64,
    failed: Option<MaskError>,
    /// Shadow mode: the body goes out as it came; the masking is done into `scratch`, for the stats.
    shadow: bool,
    scratch: BytesMut,
}

/// What every record goes through, whatever the format: the plan, the allowance, the stats.
#[derive(Debug)]
struct Engine {
    plan: Arc<MaskPlan>,
    stats: MaskStats,
    /// Records still to pass unmasked.
    allowance: u64,
}

impl Engine {
    /// One whole record (whitespace around it allowed and kept): passed within the allowance,
    /// else masked; dropped when it is not one valid JSON object.
    fn record(&mut self, record: &[u8], out: &mut BytesMut) -> RecordMask {
        self.stats.records_seen += 1;
        let done = if self.allowance > 0 {
            self.allowance -= 1;
            if is_object(record) {
                self.stats.records_allowed += 1;
                out.extend_from_slice(record);
                return RecordMask::Kept { removed: 0, replaced: 0 };
            }
            RecordMask::Dropped
        } else {
            self.plan.mask_record(record, out)
        };
        match done {
            RecordMask::Kept { removed, replaced } => {
                self.stats.fields_removed += removed;
                self.stats.fields_replaced += replaced;
                self.stats.records_masked += u64::from(removed + replaced > 0);
            }
            RecordMask::Dropped => self.stats.records_dropped_invalid += 1,
        }
        done
    }

    /// A record over `max_record_bytes`, dropped unseen (it takes its place in the allowance).
    fn oversize(&mut self) {
        self.allowance = self.allowance.saturating_sub(1);
        self.stats.records_seen += 1;
        self.stats.records_dropped_oversize += 1;
    }
}

/// `record` is one valid JSON object, whitespace around it allowed.
fn is_object(record: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(record) else { return false };
    text.trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n')).starts_with('{')
        && serde_json::from_str::<IgnoredAny>(text).is_ok()
}

#[derive(Debug)]
enum Mode {
    Ndjson(Lines),
    Json(Box<Wrapper>),
    Single(BytesMut),
    Finished,
}

impl Masker {
    pub fn new(plan: Arc<MaskPlan>, format: MaskFormat) -> Self {
        let mode = match format {
            MaskFormat::Ndjson => Mode::Ndjson(Lines::default()),
            MaskFormat::JsonArrayField(field) => Mode::Json(Box::new(Wrapper::new(field))),
            MaskFormat::Single => Mode::Single(BytesMut::new()),
        };
        let engine = Engine { plan, stats: MaskStats::default(), allowance: 0 };
        Masker { engine, mode, fed: 0, failed: None, shadow: false, scratch: BytesMut::new() }
    }

    /// The first `n` records of the body pass unmasked, byte for byte (counted in
    /// [`MaskStats::records_allowed`]): a page that straddles a soft budget's threshold. Only
    /// the masking is left out: a record that is not one valid JSON object, or is over
    /// `max_record_bytes`, is still dropped (and takes its place in the allowance), and the
    /// top-level object's other members are still masked.
    #[must_use]
    pub fn with_allowance(mut self, n: u64) -> Self {
        self.engine.allowance = n;
        self
    }

    /// Shadow mode: every byte fed goes to `out` unchanged, at once, errors or not; the body is
    /// masked into a scratch buffer so that [`stats`](Self::stats) say what would have been
    /// masked, allowed and dropped. Errors are still returned (the caller decides), and repeat.
    #[must_use]
    pub fn shadow(mut self) -> Self {
        self.shadow = true;
        self
    }

    /// Feeds the next chunk of the body; appends to `out` what can be sent now.
    ///
    /// # Errors
    /// The body cannot be masked (see [`MaskError`]); it is refused or aborted. `out` may have
    /// been appended masked output before the error. Every later call returns the same error.
    pub fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), MaskError> {
        if !self.shadow {
            return self.feed_into(chunk, out);
        }
        out.extend_from_slice(chunk);
        let mut scratch = std::mem::take(&mut self.scratch);
        let done = self.feed_into(chunk, &mut scratch);
        scratch.clear();
        self.scratch = scratch;
        done
    }

    fn feed_into(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), MaskError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let engine = &mut self.engine;
        let max = engine.plan.max_record_bytes;
        let done = match &mut self.mode {
            Mode::Ndjson(lines) => {
                lines.feed(engine, chunk, out);
                Ok(())
            }
            Mode::Json(wrapper) => wrapper.feed(engine, chunk, out),
            Mode::Single(record) => {
                if record.len() + chunk.len() > max {
                    engine.oversize();
                    *record = BytesMut::new();
                    Err(MaskError::RecordTooLarge { limit: max })
                } else {
                    record.extend_from_slice(chunk);
                    Ok(())
                }
            }
            Mode::Finished if chunk.is_empty() => Ok(()),
            Mode::Finished => Err(MaskError::Malformed { offset: self.fed, reason: "data after finish" }),
        };
        self.fed += chunk.len() as u64;
        self.fail(done)
    }

    /// At the end of the body: masks and writes what was held back for the end.
    ///
    /// # Errors
    /// As [`feed`](Self::feed): a JSON body that is cut short or never showed its records field,
    /// a single record that is not one valid JSON object. Idempotent.
    pub fn finish(&mut self, out: &mut BytesMut) -> Result<(), MaskError> {
        if !self.shadow {
            return self.finish_into(out);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let done = self.finish_into(&mut scratch);
        self.scratch = BytesMut::new();
        done
    }

    fn finish_into(&mut self, out: &mut BytesMut) -> Result<(), MaskError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let engine = &mut self.engine;
        let done = match std::mem::replace(&mut self.mode, Mode::Finished) {
            Mode::Ndjson(mut lines) => {
                lines.finish(engine, out);
                Ok(())
            }
            Mode::Json(wrapper) => wrapper.finish(),
            Mode::Single(record) if record.iter().all(|&b| is_ws(b)) => Err(MaskError::InvalidRecord),
            Mode::Single(record) => {
                let done = engine.record(&record, out);
                match done {
                    RecordMask::Kept { .. } => Ok(()),
                    RecordMask::Dropped => Err(MaskError::InvalidRecord),
                }
            }
            Mode::Finished => Ok(()),
        };
        self.fail(done)
    }

    /// What was done so far.
    pub fn stats(&self) -> &MaskStats {
        &self.engine.stats
    }

    fn fail(&mut self, done: Result<(), MaskError>) -> Result<(), MaskError> {
        if let Err(e) = &done {
            self.failed = Some(e.clone());
            self.mode = Mode::Finished; // frees the buffers
        }
        done
    }
}

/// NDJSON: one line at a time, held until its `\n` (or the end), then masked or dropped whole.
#[derive(Debug, Default)]
struct Lines {
    line: BytesMut,
    /// The line is over the bound: its bytes are skipped up to the `\n`.
    skip: bool,
    /// A skipped line had something other than whitespace (so it was a record).
    content: bool,
}

impl Lines {
    fn feed(&mut self, engine: &mut Engine, chunk: &[u8], out: &mut BytesMut) {
        let max = engine.plan.max_record_bytes;
        let mut rest = chunk;
        while !rest.is_empty() {
            let newline = memchr::memchr(b'\n', rest);
            let (piece, after) = rest.split_at(newline.map_or(rest.len(), |p| p + 1));
            rest = after;
            if !self.skip && self.over(piece, newline.is_some(), max) {
                self.skip = true;
                self.content = !all_ws(&self.line);
                self.line.clear();
            }
            if self.skip {
                self.content |= !all_ws(piece);
                if newline.is_some() {
                    self.skipped(engine);
                }
            } else if newline.is_none() {
                self.line.extend_from_slice(piece);
            } else if self.line.is_empty() {
                line(engine, piece, out); // the whole line is in this chunk: no copy
            } else {
                self.line.extend_from_slice(piece);
                line(engine, &self.line, out);
                self.line.clear();
            }
        }
    }

    /// The line with `piece` is over the bound, its end (`\n` or `\r\n`) not counted. An
    /// unended line may hold one byte more: a `\r` at its end may be the start of its end.
    fn over(&self, piece: &[u8], ended: bool, max: usize) -> bool {
        let len = self.line.len() + piece.len();
        if !ended {
            return len > max + 1;
        }
        let before_newline = match piece.len() {
            1 => self.line.last(),
            n => piece.get(n - 2),
        };
        len - 1 - usize::from(before_newline == Some(&b'\r')) > max
    }

    fn finish(&mut self, engine: &mut Engine, out: &mut BytesMut) {
        let len = self.line.len() - usize::from(self.line.last() == Some(&b'\r'));
        if !self.skip && len > engine.plan.max_record_bytes {
            (self.skip, self.content) = (true, !all_ws(&self.line));
        }
        if self.skip {
            self.skipped(engine);
        } else if !self.line.is_empty() {
            line(engine, &self.line, out);
            self.line.clear();
        }
    }

    fn skipped(&mut self, engine: &mut Engine) {
        if self.content {
            engine.oversize();
        }
        (self.skip, self.content) = (false, false);
    }
}

fn all_ws(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| is_ws(b))
}

/// One whole NDJSON line, its `\n` included if it has one: blank lines pass, a record is masked
/// with its whitespace kept, or dropped with its line.
fn line(engine: &mut Engine, line: &[u8], out: &mut BytesMut) {
    if all_ws(line) {
        out.extend_from_slice(line);
    } else {
        engine.record(line, out);
    }
}

/// Finds the end of one JSON value, fed in pieces. Only as strict as needed to find the end
/// of a valid value; what it delimits is validated by serde_json afterwards.
#[derive(Debug, Default, Clone, Copy)]
struct Scan {
    depth: u64,
    in_string: bool,
    escape: bool,
    /// A number or literal: it ends before the first byte that cannot be part of one.
    scalar: bool,
}

impl Scan {
    fn begin(first: u8) -> Self {
        Scan { scalar: !matches!(first, b'{' | b'[' | b'"'), ..Scan::default() }
    }

    /// Consumes bytes of the value; `Some(n)` when it ends after `n` of them.
    fn run(&mut self, bytes: &[u8]) -> Option<usize> {
        if self.scalar {
            return bytes.iter().position(|&b| is_ws(b) || matches!(b, b',' | b']' | b'}' | b':' | b'"' | b'{' | b'['));
        }
        let mut i = 0;
        while i < bytes.len() {
            if self.in_string {
                if self.escape {
                    self.escape = false;
                    i += 1;
                    continue;
                }
                // Most of a CV is string contents: jump to the next quote or backslash.
                let p = memchr::memchr2(b'"', b'\\', &bytes[i..])?;
                i += p + 1;
                if bytes[i - 1] == b'\\' {
                    self.escape = true;
                } else {
                    self.in_string = false;
                    if self.depth == 0 {
                        return Some(i);
                    }
                }
                continue;
            }
            let b = bytes[i];
            i += 1;
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return Some(i);
                    }
                }
                _ => {}
            }
        }
        None
    }
}

/// Separators of an array or object whose items may be dropped: a comma is written before every
/// kept item but the first; whitespace goes through as it came.
#[derive(Debug, Default)]
struct Seq {
    /// An item has been written.
    kept: bool,
    /// A `,` came since the last item.
    comma: bool,
    /// Whitespace after that `,`, written with the next kept item.
    ws: Vec<u8>,
}

impl Seq {
    fn space(&mut self, b: u8, dst: &mut BytesMut) {
        if !self.comma {
            dst.put_u8(b);
        } else if self.ws.len() < MAX_SEP_WS {
            self.ws.push(b);
        }
    }

    /// Before a kept item. Returns the previous `kept` for [`undo`](Self::undo).
    fn open(&mut self, dst: &mut BytesMut) -> bool {
        if self.comma && self.kept {
            dst.put_u8(b',');
        }
        dst.extend_from_slice(&self.ws);
        self.skip();
        std::mem::replace(&mut self.kept, true)
    }

    /// The item after [`open`](Self::open) was dropped after all.
    fn undo(&mut self, kept: bool) {
        self.kept = kept;
    }

    /// Instead of [`open`](Self::open), for a dropped item.
    fn skip(&mut self) {
        self.ws.clear();
        self.comma = false;
    }
}

/// Where the JSON array body's scanner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Before the top-level value.
    Start,
    /// In the top-level object, before a member name (or `}` when `first`).
    Key {
        first: bool,
    },
    InKey,
    Colon,
    /// Before a member's value.
    Value,
    InValue,
    /// After a member's value: `,` or `}`.
    AfterValue,
    /// In the records array, before an element (or `]` when `first`).
    Elem {
        first: bool,
    },
    InElem,
    AfterElem,
    /// After the top-level object: whitespace only.
    End,
}

/// The JSON array body: the top-level object is scanned here, its records and other members
/// are masked one at a time.
#[derive(Debug)]
struct Wrapper {
    field: String,
    at: At,
    /// The records array has been entered: output goes out from now on.
    found: bool,
    /// Output before the records array, sent when it is entered.
    held: BytesMut,
    /// The current member (name, colon and value as they came) or record, unless it arrived in
    /// one chunk.
    buf: BytesMut,
    /// The current member or record is over the bound: skipped, not buffered.
    skip: bool,
    /// The current member is the records field.
    target: bool,
    /// Where the current member's value starts in `buf`.
    value_at: usize,
    scan: Scan,
    members: Seq,
    elems: Seq,
    /// Body bytes before the current chunk.
    pos: u64,
}

impl Wrapper {
    fn new(field: String) -> Self {
        Wrapper {
            field,
            at: At::Start,
            found: false,
            held: BytesMut::new(),
            buf: BytesMut::new(),
            skip: false,
            target: false,
            value_at: 0,
            scan: Scan::default(),
            members: Seq::default(),
            elems: Seq::default(),
            pos: 0,
        }
    }

    fn feed(&mut self, engine: &mut Engine, chunk: &[u8], out: &mut BytesMut) -> Result<(), MaskError> {
        let max = engine.plan.max_record_bytes;
        let mut i = 0;
        while i < chunk.len() {
            let offset = self.pos + i as u64;
            match self.at {
                At::InKey | At::InValue | At::InElem => {
                    let rest = &chunk[i..];
                    let end = self.scan.run(rest);
                    let piece = &rest[..end.unwrap_or(rest.len())];
                    i += piece.len();
                    if self.at == At::InElem {
                        self.element(engine, piece, end.is_some(), out);
                    } else {
                        self.push(piece, max);
                        if end.is_some() {
                            self.member_part_done(engine, offset, out)?;
                        }
                    }
                }
                _ => {
                    if self.punctuation(chunk[i], offset, max, out)? {
                        i += 1;
                    }
                }
            }
            if !self.found && self.pos + i as u64 > max as u64 {
                return Err(MaskError::PrefixTooLarge { limit: max });
            }
        }
        self.pos += chunk.len() as u64;
        Ok(())
    }

    /// One byte between values. Returns whether it was consumed (a value's first byte is left
    /// for its scan).
    fn punctuation(&mut self, b: u8, offset: u64, max: usize, out: &mut BytesMut) -> Result<bool, MaskError> {
        let bad = |reason| MaskError::Malformed { offset, reason };
        let missing = || MaskError::FieldMissing { field: self.field.clone() };
        let dst: &mut BytesMut = if self.found { &mut *out } else { &mut self.held };
        let ws = is_ws(b);
        match self.at {
            At::Start | At::End if ws => dst.put_u8(b),
            At::Start if b == b'{' => {
                dst.put_u8(b);
                self.at = At::Key { first: true };
            }
            At::Start => return Err(MaskError::NotAnObject),
            At::Key { .. } | At::AfterValue if ws => self.members.space(b, dst),
            At::Key { .. } if b == b'"' => {
                self.buf.clear();
                (self.skip, self.target) = (false, false);
                self.scan = Scan::begin(b);
                self.at = At::InKey;
                return Ok(false);
            }
            At::Key { first: true } if b == b'}' => return Err(missing()),
            At::Key { .. } => return Err(bad("expected a member name")),
            At::Colon | At::Value if ws => self.push(&[b], max),
            At::Colon if b == b':' => {
                self.push(&[b], max);
                self.at = At::Value;
            }
            At::Colon => return Err(bad("expected ':'")),
            At::Value if matches!(b, b',' | b':' | b'}' | b']') => return Err(bad("expected a value")),
            At::Value if self.target && b != b'[' => {
                return Err(MaskError::FieldNotArray { field: self.field.clone() })
            }
            At::Value if self.target => {
                if offset >= max as u64 {
                    return Err(MaskError::PrefixTooLarge { limit: max });
                }
                self.members.open(&mut self.held);
                self.held.extend_from_slice(&self.buf);
                self.held.put_u8(b'[');
                out.extend_from_slice(&self.held);
                self.held = BytesMut::new();
                self.found = true;
                self.at = At::Elem { first: true };
            }
            At::Value => {
                self.value_at = self.buf.len();
                self.scan = Scan::begin(b);
                self.at = At::InValue;
                return Ok(false);
            }
            At::AfterValue if b == b',' => {
                self.members.comma = true;
                self.at = At::Key { first: false };
            }
            At::AfterValue if b == b'}' && !self.found => return Err(missing()),
            At::AfterValue if b == b'}' => {
                dst.put_u8(b);
                self.at = At::End;
            }
            At::AfterValue => return Err(bad("expected ',' or '}'")),
            At::Elem { .. } | At::AfterElem if ws => self.elems.space(b, dst),
            At::Elem { first: true } | At::AfterElem if b == b']' => {
                dst.put_u8(b);
                self.at = At::AfterValue;
            }
            At::Elem { .. } if matches!(b, b',' | b':' | b'}' | b']') => return Err(bad("expected a record")),
            At::Elem { .. } => {
                self.buf.clear();
                self.skip = false;
                self.scan = Scan::begin(b);
                self.at = At::InElem;
                return Ok(false);
            }
            At::AfterElem if b == b',' => {
                self.elems.comma = true;
                self.at = At::Elem { first: false };
            }
            At::AfterElem => return Err(bad("expected ',' or ']'")),
            At::End => return Err(bad("data after the end of the body")),
            At::InKey | At::InValue | At::InElem => return Err(bad("scanner out of step")), // not reached
        }
        Ok(true)
    }

    /// Buffers bytes of the current member, or starts skipping it when it grows over the bound.
    fn push(&mut self, bytes: &[u8], max: usize) {
        if !self.skip {
            if self.buf.len() + bytes.len() > max {
                self.skip = true;
                self.buf = BytesMut::new();
            } else {
                self.buf.extend_from_slice(bytes);
            }
        }
    }

    /// A member's name or value has ended.
    fn member_part_done(&mut self, engine: &mut Engine, offset: u64, out: &mut BytesMut) -> Result<(), MaskError> {
        let bad = |reason| MaskError::Malformed { offset, reason };
        if self.at == At::InKey {
            self.at = At::Colon;
            if !self.skip {
                let name = serde_json::from_slice::<String>(&self.buf).map_err(|_| bad("invalid member name"))?;
                self.target = !self.found && name == self.field;
            }
            return Ok(());
        }
        self.at = At::AfterValue;
        if self.skip {
            engine.stats.members_dropped += 1;
            self.members.skip();
            return Ok(());
        }
        let dst: &mut BytesMut = if self.found { out } else { &mut self.held };
        self.members.open(dst);
        let (name, value) = self.buf.split_at(self.value_at);
        dst.extend_from_slice(name);
        let value = std::str::from_utf8(value).map_err(|_| bad("invalid member value"))?;
        everywhere(&engine.plan, value, dst, &mut engine.stats, 0).map_err(|Invalid| bad("invalid member value"))
    }

    /// A piece of the current record; `done` when the record ends with it.
    fn element(&mut self, engine: &mut Engine, piece: &[u8], done: bool, out: &mut BytesMut) {
        if !self.skip {
            if self.buf.len() + piece.len() > engine.plan.max_record_bytes {
                self.skip = true;
                self.buf = BytesMut::new();
            } else if !(done && self.buf.is_empty()) {
                self.buf.extend_from_slice(piece);
            }
        }
        if !done {
            return;
        }
        self.at = At::AfterElem;
        if self.skip {
            engine.oversize();
            self.elems.skip();
            return;
        }
        // A record that arrived in one chunk is masked where it lies.
        let record = if self.buf.is_empty() { piece } else { &self.buf[..] };
        let mark = out.len();
        let kept = self.elems.open(out);
        if engine.record(record, out) == RecordMask::Dropped {
            out.truncate(mark);
            self.elems.undo(kept);
        }
        self.buf.clear();
    }

    fn finish(&self) -> Result<(), MaskError> {
        match self.at {
            At::End => Ok(()),
            At::Start => Err(MaskError::NotAnObject),
            _ => Err(MaskError::Malformed { offset: self.pos, reason: "the body ends early" }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// The board's decision: contact data off every CV, the phone only where its owner shows it.
    fn spec() -> MaskSpec {
        MaskSpec {
            remove: ["geslacht", "geboortedatum", "adres", "postcode", "woonplaats", "email"]
                .map(String::from)
                .to_vec(),
            replace: BTreeMap::from([("naam".to_owned(), json!("***"))]),
            keep_if: vec![KeepIf { field: "telefoon".into(), when: "toon_telefoon".into(), equals: json!(true) }],
            case_insensitive: false,
            max_record_bytes: 4096,
        }
    }

    fn plan(spec: &MaskSpec) -> Arc<MaskPlan> {
        Arc::new(MaskPlan::new(spec).expect("valid spec"))
    }

    /// Masks `body` fed in `chunks` pieces (split at these offsets); the output, stats and error.
    fn run_split(
        plan: &Arc<MaskPlan>,
        format: MaskFormat,
        body: &[u8],
        splits: &[usize],
    ) -> (String, MaskStats, Option<MaskError>) {
        let mut m = Masker::new(plan.clone(), format);
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

    fn run(plan: &Arc<MaskPlan>, format: MaskFormat, body: &str) -> (String, MaskStats, Option<MaskError>) {
        run_split(plan, format, body.as_bytes(), &[])
    }

    fn results() -> MaskFormat {
        MaskFormat::JsonArrayField("results".into())
    }

    /// Masks one record in single mode; the output.
    fn one(plan: &Arc<MaskPlan>, record: &str) -> String {
        let (out, _, err) = run(plan, MaskFormat::Single, record);
        assert_eq!(err, None, "{record}");
        out
    }

    const JAN: &str = r#"{"id":101,"naam":"Jan de Vries","geslacht":"man","geboortedatum":"1985-03-14","adres":{"straat":"Kerkstraat","huisnummer":"12a"},"postcode":"1012 AB","woonplaats":"Amsterdam","email":"jan.devries@example.nl","telefoon":"06-12345678","toon_telefoon":true,"toon_contactgegevens":false,"profiel":"Lasser TIG/MIG {5 jaar} [VCA] \"vol\" ok","werkervaring":[{"werkgever":"Bouwbedrijf Noord","functie":"Lasser","van":"2015-01","tot":null}]}"#;
    const JAN_MASKED: &str = r#"{"id":101,"naam":"***","telefoon":"06-12345678","toon_telefoon":true,"toon_contactgegevens":false,"profiel":"Lasser TIG/MIG {5 jaar} [VCA] \"vol\" ok","werkervaring":[{"werkgever":"Bouwbedrijf Noord","functie":"Lasser","van":"2015-01","tot":null}]}"#;
    const FATIMA: &str = r#"{"id":102,"email":"f.elamrani@example.nl","naam":"Fatima el Amrani","geslacht":"vrouw","telefoon":"+31 6 87654321","toon_telefoon":false,"toon_contactgegevens":true,"profiel":"Verpleegkundige","werkervaring":[]}"#;
    const FATIMA_MASKED: &str = r#"{"id":102,"naam":"***","toon_telefoon":false,"toon_contactgegevens":true,"profiel":"Verpleegkundige","werkervaring":[]}"#;

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
            MaskStats {
                records_seen: 2,
                records_masked: 2,
                fields_removed: 9,
                fields_replaced: 2,
                ..MaskStats::default()
            }
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
        assert_eq!(
            one(&p, r#"{"adres":"Kerkstraat 1","x":[1,{"a":2}]}"#),
            r#"{"adres":"Kerkstraat 1","x":[1,{"a":2}]}"#
        );
        // Through arrays, and arrays of arrays.
        let record = r#"{"werkervaring":[{"werkgever":"A","referentie":{"naam":"P","telefoon":"06-1"}},[{"referentie":[{"telefoon":"06-2","naam":"Q"}]}],3]}"#;
        let want =
            r#"{"werkervaring":[{"werkgever":"A","referentie":{"naam":"P"}},[{"referentie":[{"naam":"Q"}]}],3]}"#;
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
        let body =
            format!("{JAN}\n  {FATIMA} \r\n\n[1]\n{{\"naam\":\"x\"\n{{\"a\":1}} {{\"b\":2}}\nnull\n{{\"id\":9}}");
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
            assert!(
                out.starts_with(&format!(r#"{{"results":[{JAN_MASKED}"#)) && !out.contains("Jan de Vries"),
                "{out}"
            );
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
        assert_eq!(
            MaskPlan::new(&s).unwrap_err()[0].to_string(),
            "remove[1]: \"naam\" already has a rule, at remove[0]"
        );
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
}
