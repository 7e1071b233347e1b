//! Masking one record, in two steps over its bytes. First [`parse`]: the scanner validates the
//! record whole and lists the root members whose key a rule or a condition names (raw key, raw
//! value, as positions in the bytes), looked up while the key is at hand. Then [`mask_parsed`]:
//! each listed member is dropped, replaced or walked into along the rules, and the output is
//! written as runs of the record's own bytes: an untouched record is one copy, a masked one a
//! copy per removed field. Knowing the root's listed members before writing one also answers a
//! `keep_if` without a second parse. Nested values are parsed again only along the paths of the
//! rules.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};
use serde::de::IgnoredAny;

use super::json::{self, Member, Stop, ESCAPED, MAX_DEPTH, NON_ASCII};
use super::plan::{key_eq, MaskPlan, Meaning, Node, RecordMask, Rule};

/// What the rules say about a listed member's key.
type Tag = Meaning;

/// Member lists, one per level of objects being walked (level 0: the record's root), kept
/// between records so that a warm masker allocates nothing.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    levels: Vec<Vec<Member<Tag>>>,
}

impl Scratch {
    fn level(&mut self, n: usize) -> &mut Vec<Member<Tag>> {
        if self.levels.len() <= n {
            self.levels.resize_with(n + 1, Vec::new);
        }
        &mut self.levels[n]
    }
}

impl MaskPlan {
    /// Masks one record: a JSON object, whitespace around it allowed and kept. Writes the masked
    /// record to `out`; writes nothing when the record is dropped.
    pub fn mask_record(&self, record: &[u8], out: &mut BytesMut) -> RecordMask {
        let mark = out.len();
        match mask_whole(self, record, &mut Scratch::default(), out) {
            Ok((removed, replaced)) => RecordMask::Kept { removed, replaced },
            Err(_) => {
                out.truncate(mark);
                RecordMask::Dropped
            }
        }
    }
}

/// Step one for the object at `bytes[start]`, which must be `{`: validates it (UTF-8
/// included) and, when `collect`, lists the root members a rule or condition names at scratch
/// level 0. Where it ends. `bytes` may stop inside the object ([`Stop::Eof`]).
pub(super) fn parse_object(
    plan: &MaskPlan,
    bytes: &[u8],
    start: usize,
    scratch: &mut Scratch,
    collect: bool,
) -> Result<usize, Stop> {
    if bytes.get(start) != Some(&b'{') {
        return Err(Stop::Invalid);
    }
    match collect {
        true => json::object(bytes, start, 0, scratch.level(0), tagger(plan, &plan.root)),
        false => json::value(bytes, start, 0),
    }
}

/// Looks a key up in `node` (whose keys, at the root, include the conditions'): the tag of a
/// member to list, or `None` for a member that no rule names.
fn tagger<'p>(
    plan: &'p MaskPlan,
    node: &'p Node,
) -> impl FnMut(&[u8], usize, usize, u8) -> Result<Option<Tag>, Stop> + 'p {
    let ci = plan.case_insensitive;
    move |b, start, end, flags| {
        if flags == 0 {
            // Most keys: plain ASCII, mostly ruled out by one table load.
            return Ok(node.keys.find(&b[start + 1..end - 1], true, ci));
        }
        let decoded;
        let (key, ascii) = if flags & ESCAPED == 0 {
            (&b[start + 1..end - 1], flags & NON_ASCII == 0)
        } else {
            decoded = serde_json::from_slice::<String>(&b[start..end]).map_err(|_| Stop::Invalid)?;
            (decoded.as_bytes(), decoded.is_ascii())
        };
        Ok(node.keys.find(key, ascii, ci))
    }
}

/// Step one for a whole record, whitespace around its object allowed: where the object
/// starts and ends.
pub(super) fn parse(
    plan: &MaskPlan,
    record: &[u8],
    scratch: &mut Scratch,
    collect: bool,
) -> Result<(usize, usize), Stop> {
    let start = json::ws(record, 0);
    let end = parse_object(plan, record, start, scratch, collect)?;
    if json::ws(record, end) != record.len() {
        return Err(Stop::Invalid);
    }
    Ok((start, end))
}

/// Whether the plan has any rule: with none, step one need not list members.
pub(super) fn has_rules(plan: &MaskPlan) -> bool {
    !plan.root.children.is_empty()
}

/// Step two: writes the object `raw[start..end]`, parsed by step one (with `collect` when the
/// plan has rules), masked. Fields removed and replaced. On an error, `out` holds a partial
/// record: the caller truncates it.
pub(super) fn mask_parsed(
    plan: &MaskPlan,
    raw: &[u8],
    start: usize,
    end: usize,
    scratch: &mut Scratch,
    out: &mut BytesMut,
) -> Result<(u64, u64), Stop> {
    if !has_rules(plan) {
        out.extend_from_slice(&raw[start..end]);
        return Ok((0, 0));
    }
    let mut walk = Walk { plan, raw, scratch, cond_known: 0, cond_true: 0, removed: 0, replaced: 0 };
    walk.object(0, start, end, &plan.root, out, 0)?;
    Ok((walk.removed, walk.replaced))
}

/// Both steps for a whole record, its whitespace kept.
pub(super) fn mask_whole(
    plan: &MaskPlan,
    record: &[u8],
    scratch: &mut Scratch,
    out: &mut BytesMut,
) -> Result<(u64, u64), Stop> {
    let (start, end) = parse(plan, record, scratch, has_rules(plan))?;
    out.extend_from_slice(&record[..start]);
    let done = mask_parsed(plan, record, start, end, scratch, out)?;
    out.extend_from_slice(&record[end..]);
    Ok(done)
}

/// A member's key, decoded when it holds an escape.
fn decode<'a, T>(raw: &'a [u8], m: &Member<T>) -> Result<Cow<'a, [u8]>, Stop> {
    if m.flags & ESCAPED == 0 {
        return Ok(Cow::Borrowed(m.key(raw)));
    }
    let key: String = serde_json::from_slice(&raw[m.key_start..m.key_end]).map_err(|_| Stop::Invalid)?;
    Ok(Cow::Owned(key.into_bytes()))
}

/// Just past the `,` after the member value that ends at `end`, or `end` when the object ends
/// there.
fn past_comma(raw: &[u8], end: usize) -> usize {
    let at = json::ws(raw, end);
    if raw.get(at) == Some(&b',') {
        at + 1
    } else {
        end
    }
}

/// Lists every member.
fn every<T: Default>(_: &[u8], _: usize, _: usize, _: u8) -> Result<Option<T>, Stop> {
    Ok(Some(T::default()))
}

/// What happens to one member.
enum Todo<'a> {
    Keep,
    Drop,
    Replace(&'a [u8]),
    Nested(&'a Node),
}

/// Step two of one record: its bytes, its root's members (scratch level 0), what was done.
struct Walk<'a> {
    plan: &'a MaskPlan,
    raw: &'a [u8],
    scratch: &'a mut Scratch,
    /// Bit n: condition n has been looked at; in `cond_true`: it holds.
    cond_known: u64,
    cond_true: u64,
    removed: u64,
    replaced: u64,
}

impl<'a> Walk<'a> {
    /// Writes the object `raw[start..end]`, whose named members are listed at scratch `level`,
    /// with `node`'s rules applied. Bytes go out in runs from `pending`: a kept member extends
    /// the run, a removed one ends it. Each member goes with the gap before it (whitespace and
    /// comma as they came), except that the first one written loses its comma: an untouched
    /// object comes out byte for byte and a masked one stays valid.
    fn object(
        &mut self,
        level: usize,
        start: usize,
        end: usize,
        node: &'a Node,
        out: &mut BytesMut,
        depth: usize,
    ) -> Result<(), Stop> {
        if depth > MAX_DEPTH {
            return Err(Stop::Invalid);
        }
        let raw = self.raw;
        let mut pending = start;
        // A member has been written (kept, replaced or walked).
        let mut written = false;
        for j in 0..self.scratch.levels[level].len() {
            let m = self.scratch.levels[level][j];
            written |= m.index > j; // a member no rule names (kept) came before
            match self.todo(node, &m)? {
                Todo::Drop if written => {
                    out.extend_from_slice(&raw[pending..m.prev_end]);
                    pending = m.value_end;
                    self.removed += 1;
                }
                Todo::Drop => {
                    // Nothing written yet: `{` goes out, and the next member loses its comma.
                    if pending == start {
                        out.put_u8(b'{');
                    }
                    pending = past_comma(raw, m.value_end);
                    self.removed += 1;
                }
                Todo::Keep => written = true,
                Todo::Replace(with) => {
                    out.extend_from_slice(&raw[pending..m.value_start]);
                    out.extend_from_slice(with);
                    pending = m.value_end;
                    written = true;
                    self.replaced += 1;
                }
                Todo::Nested(next) => {
                    out.extend_from_slice(&raw[pending..m.value_start]);
                    self.value(level + 1, m.value_start, m.value_end, next, out, depth + 1)?;
                    pending = m.value_end;
                    written = true;
                }
            }
        }
        out.extend_from_slice(&raw[pending..end]);
        Ok(())
    }

    /// Writes the value `raw[start..end]` with `node`'s rules applied: an object walked at
    /// scratch `level`, an array element by element, a scalar as it is.
    fn value(
        &mut self,
        level: usize,
        start: usize,
        end: usize,
        node: &'a Node,
        out: &mut BytesMut,
        depth: usize,
    ) -> Result<(), Stop> {
        match self.raw[start] {
            b'{' => {
                json::object(self.raw, start, 0, self.scratch.level(level), tagger(self.plan, node))?;
                self.object(level, start, end, node, out, depth)
            }
            b'[' => self.array(level, start, end, node, out, depth),
            _ => {
                out.extend_from_slice(&self.raw[start..end]);
                Ok(())
            }
        }
    }

    /// A path segment applies to each element of an array it meets (objects and arrays in it;
    /// scalars stay).
    fn array(
        &mut self,
        level: usize,
        start: usize,
        end: usize,
        node: &'a Node,
        out: &mut BytesMut,
        depth: usize,
    ) -> Result<(), Stop> {
        if depth > MAX_DEPTH {
            return Err(Stop::Invalid);
        }
        let raw = self.raw;
        let mut pending = start;
        json::elements(raw, start, 0, |s, e| {
            if matches!(raw[s], b'{' | b'[') {
                out.extend_from_slice(&raw[pending..s]);
                self.value(level, s, e, node, out, depth + 1)?;
                pending = e;
            }
            Ok(())
        })?;
        out.extend_from_slice(&raw[pending..end]);
        Ok(())
    }

    fn todo(&mut self, node: &'a Node, m: &Member<Tag>) -> Result<Todo<'a>, Stop> {
        let Some(child) = node.children.get(m.tag.child as usize) else { return Ok(Todo::Keep) };
        Ok(match &child.rule {
            Some(Rule::Remove) => Todo::Drop,
            Some(Rule::Replace(with)) => Todo::Replace(with.get().as_bytes()),
            Some(Rule::KeepIf(n)) if !self.cond(*n)? => Todo::Drop,
            _ if child.node.children.is_empty() => Todo::Keep,
            _ => Todo::Nested(&child.node),
        })
    }

    /// Condition `n` on this record's root: every occurrence of its path equals its value, and
    /// there is at least one. Looked up once per record, when first needed, in the root's
    /// member list (nested paths parse the values they go through).
    fn cond(&mut self, n: usize) -> Result<bool, Stop> {
        let bit = 1u64 << n;
        if self.cond_known & bit == 0 {
            let cond = &self.plan.conds[n];
            let ci = self.plan.case_insensitive;
            let rest = cond.when.get(1..).unwrap_or_default();
            let (mut any, mut all) = (false, true);
            let mut hit = |value: &[u8]| {
                any = true;
                all &= cond.holds(value);
            };
            for m in self.scratch.levels[0].iter().filter(|m| m.tag.conds & bit != 0) {
                find(self.raw, m.value_start, m.value_end, rest, ci, 1, &mut hit)?;
            }
            self.cond_known |= bit;
            if any && all {
                self.cond_true |= bit;
            }
        }
        Ok(self.cond_true & bit != 0)
    }
}

/// Every value at `path` below `raw[start..end]` (through arrays), to `hit`.
fn find(
    raw: &[u8],
    start: usize,
    end: usize,
    path: &[String],
    ci: bool,
    depth: usize,
    hit: &mut dyn FnMut(&[u8]),
) -> Result<(), Stop> {
    let Some((seg, rest)) = path.split_first() else {
        hit(&raw[start..end]);
        return Ok(());
    };
    if depth > MAX_DEPTH {
        return Err(Stop::Invalid);
    }
    match raw[start] {
        b'{' => {
            let mut members = Vec::new();
            json::object(raw, start, 0, &mut members, every::<()>)?;
            for m in &members {
                if key_eq(&decode(raw, m)?, seg, ci) {
                    find(raw, m.value_start, m.value_end, rest, ci, depth + 1, hit)?;
                }
            }
            Ok(())
        }
        b'[' => json::elements(raw, start, 0, |s, e| find(raw, s, e, path, ci, depth + 1, hit)).map(|_| ()),
        _ => Ok(()),
    }
}

/// Fields removed and replaced.
pub(super) type Counts = (u64, u64);

/// Writes `raw` (one JSON value, no whitespace around it) with every object in it, at any
/// depth, masked as a record rooted at that object: for the top-level object's members other
/// than the records. Adds the fields it removed and replaced to `counts`. Rare and small, so it
/// allocates freely.
pub(super) fn everywhere(
    plan: &MaskPlan,
    raw: &[u8],
    out: &mut BytesMut,
    counts: &mut Counts,
    depth: usize,
) -> Result<(), Stop> {
    if depth > MAX_DEPTH {
        return Err(Stop::Invalid);
    }
    match raw.first() {
        Some(b'{') => {
            let mut masked = BytesMut::with_capacity(raw.len());
            let (removed, replaced) = mask_whole(plan, raw, &mut Scratch::default(), &mut masked)?;
            counts.0 += removed;
            counts.1 += replaced;
            everywhere_within(plan, &masked, out, counts, depth)
        }
        Some(b'[') => everywhere_within(plan, raw, out, counts, depth),
        _ => {
            serde_json::from_slice::<IgnoredAny>(raw).map_err(|_| Stop::Invalid)?;
            out.extend_from_slice(raw);
            Ok(())
        }
    }
}

/// Copies the object or array `raw` with each object or array value in it through
/// [`everywhere`].
fn everywhere_within(
    plan: &MaskPlan,
    raw: &[u8],
    out: &mut BytesMut,
    counts: &mut Counts,
    depth: usize,
) -> Result<(), Stop> {
    let mut copied = 0;
    let mut each = |s: usize, e: usize| -> Result<(), Stop> {
        if matches!(raw[s], b'{' | b'[') {
            out.extend_from_slice(&raw[copied..s]);
            everywhere(plan, &raw[s..e], out, counts, depth + 1)?;
            copied = e;
        }
        Ok(())
    };
    let end = if raw.first() == Some(&b'{') {
        let mut members = Vec::new();
        let end = json::object(raw, 0, 0, &mut members, every::<()>)?;
        for m in &members {
            each(m.value_start, m.value_end)?;
        }
        end
    } else {
        json::elements(raw, 0, 0, each)?
    };
    if end != raw.len() {
        return Err(Stop::Invalid);
    }
    out.put_slice(&raw[copied..]);
    Ok(())
}
