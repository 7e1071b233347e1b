//! The body side of the masker: [`Masker`] takes a response body in chunks, finds its records
//! in the [`MaskFormat`] at hand (NDJSON lines, the elements of a JSON array field, one single
//! record), passes each through the [`Engine`] (allowance, masking, stats), and writes valid
//! output around what it drops. Scanners carry their state across chunks; a record is held back
//! only when it straddles two chunks.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use super::super::{is_ws, RecordFormat};
use super::json::Stop;
use super::plan::{MaskPlan, RecordMask};
use super::record::{self, Scratch};

/// Whitespace kept between a `,` and the next element (plenty for any pretty-printer); more is
/// dropped, which only changes the layout.
const MAX_SEP_WS: usize = 1024;

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

/// What every record goes through, whatever the format: the allowance, then the plan; and the
/// stats of both.
#[derive(Debug)]
struct Engine {
    plan: Arc<MaskPlan>,
    stats: MaskStats,
    /// Records still to pass unmasked.
    allowance: u64,
    scratch: Scratch,
}

impl Engine {
    /// Step one for the record at the start of `bytes` (a `{`): lists its named members when it
    /// will be masked (not within the allowance). See [`record::parse_object`].
    fn parse_object(&mut self, bytes: &[u8]) -> Result<usize, Stop> {
        let collect = self.allowance == 0 && record::has_rules(&self.plan);
        record::parse_object(&self.plan, bytes, 0, &mut self.scratch, collect)
    }

    /// One whole record, whitespace around it allowed and kept: passed within the allowance,
    /// else masked; dropped when it is not one valid JSON object.
    fn record(&mut self, record: &[u8], out: &mut BytesMut) -> RecordMask {
        let collect = self.allowance == 0 && record::has_rules(&self.plan);
        match record::parse(&self.plan, record, &mut self.scratch, collect) {
            Ok((start, end)) => {
                out.extend_from_slice(&record[..start]);
                let done = self.parsed(record, start, end, out);
                if done != RecordMask::Dropped {
                    out.extend_from_slice(&record[end..]);
                }
                done
            }
            Err(_) => self.invalid(),
        }
    }

    /// Step two for the record `raw[start..end]`, which step one accepted
    /// (whether in a whole record or where it lay in a chunk): copied within the allowance,
    /// else masked. Writes nothing when dropped.
    fn parsed(&mut self, raw: &[u8], start: usize, end: usize, out: &mut BytesMut) -> RecordMask {
        if self.allowance > 0 {
            self.allowance -= 1;
            self.stats.records_seen += 1;
            self.stats.records_allowed += 1;
            out.extend_from_slice(&raw[start..end]);
            return RecordMask::Kept { removed: 0, replaced: 0 };
        }
        let mark = out.len();
        match record::mask_parsed(&self.plan, raw, start, end, &mut self.scratch, out) {
            Ok((removed, replaced)) => {
                self.stats.records_seen += 1;
                self.stats.fields_removed += removed;
                self.stats.fields_replaced += replaced;
                self.stats.records_masked += u64::from(removed + replaced > 0);
                RecordMask::Kept { removed, replaced }
            }
            Err(_) => {
                out.truncate(mark);
                self.invalid()
            }
        }
    }

    /// A record that is not one valid JSON object: dropped (in its place in the allowance).
    fn invalid(&mut self) -> RecordMask {
        self.allowance = self.allowance.saturating_sub(1);
        self.stats.records_seen += 1;
        self.stats.records_dropped_invalid += 1;
        RecordMask::Dropped
    }

    /// A record over `max_record_bytes`, dropped unseen (in its place in the allowance).
    fn oversize(&mut self) {
        self.allowance = self.allowance.saturating_sub(1);
        self.stats.records_seen += 1;
        self.stats.records_dropped_oversize += 1;
    }
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
        let engine = Engine { plan, stats: MaskStats::default(), allowance: 0, scratch: Scratch::default() };
        Masker { engine, mode, fed: 0, failed: None, shadow: false, scratch: BytesMut::new() }
    }

    /// The first `n` records of the body pass unmasked, byte for byte (counted in
    /// [`MaskStats::records_allowed`]): a page that straddles a soft budget's threshold. Only
    /// the masking is left out: a record that is not one valid JSON object, or is over
    /// `max_record_bytes`, is still dropped (and takes its place in the allowance), and the
    /// top-level object's other members are still masked. Records are counted by position as
    /// [`RecordCounter`](crate::count::RecordCounter) counts them: array elements, NDJSON lines
    /// with content.
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
                        // Before the member is masked (and counted): a member that ends past
                        // the bound is an error however the chunks fall.
                        if !self.found && self.pos + i as u64 > max as u64 {
                            return Err(MaskError::PrefixTooLarge { limit: max });
                        }
                        if end.is_some() {
                            // The offset just past the name or value: the same however split.
                            self.member_part_done(engine, self.pos + i as u64, out)?;
                        }
                    }
                }
                At::Elem { .. } if chunk[i] == b'{' => {
                    let bytes = &chunk[i..chunk.len().min(i + max)];
                    match self.whole_element(engine, bytes, out) {
                        Some(len) => i += len,
                        None => {
                            self.punctuation(chunk[i], offset, max, out)?;
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
        std::str::from_utf8(value).map_err(|_| bad("invalid member value"))?;
        let mut counts = (0, 0);
        let done = record::everywhere(&engine.plan, value, dst, &mut counts, 0);
        engine.stats.fields_removed += counts.0;
        engine.stats.fields_replaced += counts.1;
        done.map_err(|_| bad("invalid member value"))
    }

    /// A record that lies whole at the start of `bytes` (the rest of the chunk, up to the bound)
    /// is parsed and masked where it lies, in one pass: its length. A record cut by the chunk's
    /// end, too large or invalid goes the scanner's way instead (`None`, nothing done), which
    /// treats it exactly as if it had been split.
    fn whole_element(&mut self, engine: &mut Engine, bytes: &[u8], out: &mut BytesMut) -> Option<usize> {
        let end = engine.parse_object(bytes).ok()?;
        let mark = out.len();
        let kept = self.elems.open(out);
        if engine.parsed(bytes, 0, end, out) == RecordMask::Dropped {
            out.truncate(mark);
            self.elems.undo(kept);
        }
        self.at = At::AfterElem;
        Some(end)
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
