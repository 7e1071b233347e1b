//! The mask spec as config writes it ([`MaskSpec`]), validated and compiled into a tree of path
//! segments ([`MaskPlan`]) once per config, and the lookups the record walk makes in it.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// Default of [`MaskSpec::max_record_bytes`]: a CV record is a few KiB; 1 MiB leaves room.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;

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
    pub(super) root: Node,
    pub(super) conds: Vec<Cond>,
    pub(super) case_insensitive: bool,
    pub(super) max_record_bytes: usize,
}

/// The rules below one level of a record: one child per key (lowercase when case-insensitive).
#[derive(Debug, Default)]
pub(super) struct Node {
    /// The keys of this level that mean something: the children's, and at the root the
    /// conditions' first segments.
    pub(super) keys: Keys,
    pub(super) children: Vec<Child>,
}

/// What a key means at one level of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Meaning {
    /// Its child in the node ([`NO_CHILD`]: none, a condition's key only).
    pub(super) child: u32,
    /// At the root: bit n, condition n's path starts with it.
    pub(super) conds: u64,
}

pub(super) const NO_CHILD: u32 = u32::MAX;

/// Keys to look up a record's keys in (lowercase when case-insensitive) with their meaning.
/// A table by length and first byte answers most keys in one load: slot
/// `[k.len() % 32][(k[0] | 0x20) % 32]` holds 0 (no key there), n (key n - 1 only) or [`MANY`].
#[derive(Debug)]
pub(super) struct Keys {
    keys: Vec<String>,
    meanings: Vec<Meaning>,
    slots: Box<[[u8; 32]; 32]>,
}

const MANY: u8 = u8::MAX;

impl Default for Keys {
    fn default() -> Self {
        Keys { keys: Vec::new(), meanings: Vec::new(), slots: Box::new([[0; 32]; 32]) }
    }
}

impl Keys {
    fn slot(key: &[u8]) -> (usize, usize) {
        (key.len() % 32, key.first().map_or(0, |b| usize::from(b | 0x20) % 32))
    }

    /// The meaning of `key`, added (meaning nothing yet) if it is new.
    fn entry(&mut self, key: &str) -> &mut Meaning {
        let at = match self.keys.iter().position(|k| k == key) {
            Some(at) => at,
            None => {
                let (len, first) = Self::slot(key.as_bytes());
                let slot = &mut self.slots[len][first];
                *slot = match (*slot, self.keys.len()) {
                    (0, n) if n + 1 < usize::from(MANY) => n as u8 + 1,
                    _ => MANY,
                };
                self.keys.push(key.to_owned());
                self.meanings.push(Meaning { child: NO_CHILD, conds: 0 });
                self.keys.len() - 1
            }
        };
        &mut self.meanings[at]
    }

    /// The meaning of a record's key: `key` decoded, valid UTF-8, `ascii` when it has no byte
    /// over 0x7F. With `ci` an ASCII key is compared ASCII-lowercase (its Unicode lowercase),
    /// any other Unicode-lowercased first.
    #[inline(always)]
    pub(super) fn find(&self, key: &[u8], ascii: bool, ci: bool) -> Option<Meaning> {
        if !ascii {
            return self.find_unicode(key, ci);
        }
        let (len, first) = Self::slot(key);
        match self.slots[len][first] {
            0 => None, // most keys, in one load
            slot => self.confirm(slot, key, ci),
        }
    }

    /// An ASCII key whose slot holds something.
    #[inline(never)]
    fn confirm(&self, slot: u8, key: &[u8], ci: bool) -> Option<Meaning> {
        let same = |k: &String| {
            k.len() == key.len() && if ci { key.eq_ignore_ascii_case(k.as_bytes()) } else { key == k.as_bytes() }
        };
        let at = match slot {
            MANY => self.keys.iter().position(same)?,
            n => Some(usize::from(n - 1)).filter(|&at| same(&self.keys[at]))?,
        };
        Some(self.meanings[at])
    }

    #[inline(never)]
    fn find_unicode(&self, key: &[u8], ci: bool) -> Option<Meaning> {
        let key = std::str::from_utf8(key).ok()?;
        let at = if ci {
            let key = key.to_lowercase();
            self.keys.iter().position(|k| *k == key)
        } else {
            self.keys.iter().position(|k| k == key)
        };
        at.map(|at| self.meanings[at])
    }
}

#[derive(Debug)]
pub(super) struct Child {
    pub(super) rule: Option<Rule>,
    /// Where `rule` came from in the spec, for conflict messages.
    origin: String,
    pub(super) node: Node,
}

#[derive(Debug)]
pub(super) enum Rule {
    Remove,
    Replace(Box<RawValue>),
    /// Kept only when condition `n` holds (then the nested rules still apply).
    KeepIf(usize),
}

#[derive(Debug)]
pub(super) struct Cond {
    pub(super) when: Vec<String>,
    pub(super) equals: Value,
}

impl Cond {
    /// A raw JSON value (valid, no whitespace around it) equals `equals`.
    pub(super) fn holds(&self, raw: &[u8]) -> bool {
        match &self.equals {
            Value::Bool(true) => raw == b"true",
            Value::Bool(false) => raw == b"false",
            Value::Null => raw == b"null",
            equals => serde_json::from_slice::<Value>(raw).is_ok_and(|v| v == *equals),
        }
    }
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
        // A record's root members with these keys are listed for the conditions.
        for (n, cond) in conds.iter().enumerate() {
            root.keys.entry(&cond.when[0]).conds |= 1 << n;
        }
        Ok(MaskPlan { root, conds, case_insensitive: ci, max_record_bytes: spec.max_record_bytes })
    }

    /// [`MaskSpec::max_record_bytes`], for the caller's own buffers.
    pub fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
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
            let meaning = node.keys.entry(seg);
            if meaning.child == NO_CHILD {
                meaning.child = node.children.len() as u32;
                node.children.push(Child { rule: None, origin: String::new(), node: Node::default() });
            }
            let child = &mut node.children[meaning.child as usize];
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
}

fn segments(path: &str, ci: bool) -> Result<Vec<String>, String> {
    if path.split('.').any(str::is_empty) {
        return Err(format!("{path:?} has an empty segment (a path is dotted field names, e.g. \"adres.straat\")"));
    }
    Ok(path.split('.').map(|s| if ci { s.to_lowercase() } else { s.to_owned() }).collect())
}

/// A decoded key (valid UTF-8) is the path segment `seg` (lowercase when `ci`).
pub(super) fn key_eq(key: &[u8], seg: &str, ci: bool) -> bool {
    match (ci, key.is_ascii()) {
        (false, _) => key == seg.as_bytes(),
        (true, true) => key.eq_ignore_ascii_case(seg.as_bytes()),
        (true, false) => std::str::from_utf8(key).is_ok_and(|k| k.to_lowercase() == seg),
    }
}
