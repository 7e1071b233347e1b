//! Counting records in a streaming response body, and cutting it at a record boundary.
//!
//! Owns the "count" step of the request path: [`RecordCounter`] is a pure, incremental state
//! machine (O(1) memory, never buffers) that counts NDJSON lines or the elements of a named
//! top-level JSON array field; [`CountingBody`] wraps the upstream body, feeds every data frame
//! through the counter in `poll_frame`, and reports one [`BodyOutcome`] when the body ends, fails,
//! is cut or is dropped — the input for settle and audit.
//!
//! # Truncation contract
//! - Only NDJSON is ever cut. A record budget (`limit`) lets records `1..=L` through whole; the
//!   stream ends right before the first non-whitespace byte of record `L + 1`, so a client never
//!   sees a partial line. A stream that ends after exactly `L` records is not cut.
//! - A cut NDJSON stream ends with one marker line, which is not a CV and is not counted:
//!   `{"_cvgate":{"truncated":true,"records":N,"reason":"quota"}}` (`"closed"` when the cut came
//!   from a [`CutHandle`], e.g. a closure window starting mid-stream). It starts on a line of its
//!   own. After it, a trailer frame `cvgate-truncated: true`, `cvgate-records: N` is sent
//!   (HTTP/2 clients get it; HTTP/1.1 chunked clients may).
//! - JSON bodies are never cut, since a cut would leave invalid JSON: the limit is advisory and
//!   the proxy charges whatever was delivered beyond it.
//! - `BodyOutcome::bytes` counts upstream data bytes delivered, not the marker.
//!
//! # Certainty
//! A count is only worth a refund when it is certain (docs/config.md, "count integrity"). The
//! counter judges the shape it saw ([`RecordCounter::verdict`]): a JSON body must be one
//! top-level object whose declared field holds an array, closed, with nothing after it; every
//! NDJSON record must start with `{`. [`BodyOutcome::uncertain`] names why a count is not
//! certain (`shape`, `malformed`, `truncated`, `client-gone`), or is `None`.

pub mod codec;
pub mod integrity;
pub mod mask;
pub mod masked;

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// How a response body is made of records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordFormat {
    /// One record per line with at least one non-whitespace byte.
    Ndjson,
    /// Elements of the array held by this top-level object field, e.g. `"results"`.
    JsonArrayField(String),
}

/// What [`RecordCounter::feed`] allows of one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feed {
    /// Bytes of this chunk allowed through (a prefix).
    pub pass: usize,
    /// Records completed within `pass`.
    pub records: u64,
    /// The stream must end after `pass` bytes.
    pub cut: bool,
}

/// Incremental record counter. Chunk boundaries never change the result: any split of a stream
/// gives the same count and the same cut position as the unsplit stream.
#[derive(Debug)]
pub struct RecordCounter {
    count: u64,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Ndjson(LineState),
    Json(JsonState),
}

#[derive(Debug)]
struct LineState {
    /// A record's first non-whitespace byte has passed but not its newline.
    in_record: bool,
    /// A record started with something other than `{` (not the declared shape).
    odd: bool,
    /// The last byte passed was `\n` (or nothing passed yet): the marker needs no leading newline.
    line_start: bool,
}

/// Streaming JSON tokenizer state, just enough to find one top-level field's array elements.
#[derive(Debug, Default)]
struct JsonState {
    field: String,
    /// Open containers; the top-level object's keys are at depth 1, the target's elements at 2.
    depth: u32,
    in_string: bool,
    /// The previous byte was a backslash inside a string.
    escape: bool,
    /// The top-level value is an object (so depth-1 strings alternate key/value).
    top_object: bool,
    /// At depth 1 the next string is a key (after `{` or `,`, until `:`).
    expect_key: bool,
    /// Reading a depth-1 key: bytes of `field` matched so far; `usize::MAX` once it can't match.
    key: Option<usize>,
    /// The last depth-1 key was `field`; its value decides whether it is the target array.
    key_hit: bool,
    /// Inside the target array.
    in_target: bool,
    /// An element of the target array has started and its `,` or `]` not yet seen.
    elem_open: bool,
    /// The target array was entered at least once.
    target_seen: bool,
    /// The top-level value has closed (depth came back to 0).
    closed_top: bool,
    /// Something other than whitespace came after the top-level value.
    trailing: bool,
}

/// Bit masks of one 64-byte block: quotes, backslashes, `{`/`[`, `}`/`]` (bit j = byte j), 16
/// bytes per vector compare (`wide`: SSE2 on x86_64, NEON on aarch64, scalar elsewhere).
fn masks(block: &[u8; 64]) -> (u64, u64, u64, u64) {
    use wide::u8x16;
    let (q, bs, lower) = (u8x16::splat(b'"'), u8x16::splat(b'\\'), u8x16::splat(0x20));
    // `{` = `[` | 0x20 and `}` = `]` | 0x20: one compare each after setting bit 5.
    let (open, close) = (u8x16::splat(b'{'), u8x16::splat(b'}'));
    let mut m = (0u64, 0u64, 0u64, 0u64);
    for (k, lane) in block.chunks_exact(16).enumerate() {
        let v = u8x16::new(lane.try_into().expect("16 bytes"));
        let folded = v | lower;
        let bits = |x: u8x16| u64::from(x.move_mask() as u16) << (16 * k);
        m.0 |= bits(v.cmp_eq(q));
        m.1 |= bits(v.cmp_eq(bs));
        m.2 |= bits(folded.cmp_eq(open));
        m.3 |= bits(folded.cmp_eq(close));
    }
    m
}

const fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

impl RecordCounter {
    pub fn new(format: RecordFormat) -> Self {
        let kind = match format {
            RecordFormat::Ndjson => Kind::Ndjson(LineState { in_record: false, odd: false, line_start: true }),
            RecordFormat::JsonArrayField(field) => Kind::Json(JsonState { field, ..JsonState::default() }),
        };
        RecordCounter { count: 0, kind }
    }

    /// Feeds the next chunk. `limit` is the most records that may be delivered in total
    /// (`None` = unlimited); a limit below a record already in flight lets that record finish.
    /// For JSON the limit is advisory: `cut` is always false (see the module docs).
    pub fn feed(&mut self, chunk: &[u8], limit: Option<u64>) -> Feed {
        let before = self.count;
        let (pass, cut) = match &mut self.kind {
            Kind::Ndjson(s) => s.feed(&mut self.count, chunk, limit),
            Kind::Json(s) => (s.feed(&mut self.count, chunk), false),
        };
        Feed { pass, records: self.count - before, cut }
    }

    /// At end of stream: counts a final NDJSON record that has no trailing newline. Returns the
    /// total. An unfinished JSON element is not counted. Idempotent.
    pub fn finish(&mut self) -> u64 {
        if let Kind::Ndjson(s) = &mut self.kind {
            if s.in_record {
                s.in_record = false;
                self.count += 1;
            }
        }
        self.count
    }

    /// Records completed so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// After [`finish`](Self::finish): `None` when the body had the declared shape, so its count
    /// is certain; else why not: `shape` (not an object, the field missing or not an array, an
    /// NDJSON record not an object) or `malformed` (unclosed, unbalanced, or data after the end).
    pub fn verdict(&self) -> Option<&'static str> {
        match &self.kind {
            Kind::Ndjson(s) => s.odd.then_some("shape"),
            Kind::Json(s) if s.in_string || s.depth != 0 || !s.closed_top || s.trailing => Some("malformed"),
            Kind::Json(s) if !s.top_object || !s.target_seen => Some("shape"),
            Kind::Json(_) => None,
        }
    }

    /// NDJSON between records, where a cut leaves no partial line.
    fn at_boundary(&self) -> bool {
        matches!(&self.kind, Kind::Ndjson(s) if !s.in_record)
    }
}

impl LineState {
    fn feed(&mut self, count: &mut u64, chunk: &[u8], limit: Option<u64>) -> (usize, bool) {
        let mut i = 0;
        while i < chunk.len() {
            if self.in_record {
                // Inside a record only the newline matters: skip to it.
                match memchr::memchr(b'\n', &chunk[i..]) {
                    Some(p) => {
                        i += p + 1;
                        self.in_record = false;
                        self.line_start = true;
                        *count += 1;
                    }
                    None => {
                        self.line_start = false;
                        i = chunk.len();
                    }
                }
            } else {
                let b = chunk[i];
                if !is_ws(b) {
                    // The first byte of record `count + 1`: the budget is checked here, once.
                    if limit.is_some_and(|l| *count >= l) {
                        return (i, true);
                    }
                    self.in_record = true;
                    self.odd |= b != b'{';
                }
                self.line_start = b == b'\n';
                i += 1;
            }
        }
        (chunk.len(), false)
    }
}

impl JsonState {
    fn feed(&mut self, count: &mut u64, chunk: &[u8]) -> usize {
        let mut i = 0;
        while i < chunk.len() {
            if self.depth >= 3 {
                // Deep inside an element: only depth matters until it is back at 2.
                i = self.skip_deep(chunk, i);
                continue;
            }
            if self.in_string {
                if self.escape {
                    self.escape = false;
                    i += 1;
                } else if let Some(pos) = self.key {
                    // A depth-1 key: compare byte by byte (raw bytes; an escaped name never matches).
                    let b = chunk[i];
                    i += 1;
                    let field = self.field.as_bytes();
                    match b {
                        b'"' => {
                            self.in_string = false;
                            self.key_hit = pos == field.len();
                            self.key = None;
                        }
                        b'\\' => {
                            self.escape = true;
                            self.key = Some(usize::MAX);
                        }
                        _ => self.key = Some(if field.get(pos) == Some(&b) { pos + 1 } else { usize::MAX }),
                    }
                } else {
                    // Fast path through string contents: most of a CV is here (SIMD search).
                    match memchr::memchr2(b'"', b'\\', &chunk[i..]) {
                        Some(p) => {
                            i += p + 1;
                            if chunk[i - 1] == b'"' {
                                self.in_string = false;
                            } else {
                                self.escape = true;
                            }
                        }
                        None => i = chunk.len(),
                    }
                }
                continue;
            }
            let b = chunk[i];
            i += 1;
            if self.depth == 0 && self.closed_top && !is_ws(b) {
                self.trailing = true;
            }
            match b {
                b'"' => {
                    if self.depth == 1 && self.expect_key {
                        self.key = Some(0);
                    } else {
                        self.value_start();
                    }
                    self.in_string = true;
                }
                b'{' | b'[' => {
                    let target = b == b'[' && self.depth == 1 && self.key_hit;
                    self.value_start();
                    if self.depth == 0 {
                        self.top_object = b == b'{';
                        self.expect_key = self.top_object;
                    }
                    self.depth += 1;
                    self.in_target |= target;
                    self.target_seen |= target;
                }
                b'}' | b']' => {
                    self.closed_top |= self.depth == 1;
                    self.depth = self.depth.saturating_sub(1);
                    if self.in_target && self.depth == 1 {
                        *count += u64::from(self.elem_open);
                        self.in_target = false;
                        self.elem_open = false;
                    }
                }
                b',' => {
                    if self.in_target && self.depth == 2 && self.elem_open {
                        *count += 1;
                        self.elem_open = false;
                    }
                    if self.depth == 1 && self.top_object {
                        self.expect_key = true;
                    }
                }
                b':' if self.depth == 1 => self.expect_key = false,
                _ if is_ws(b) => {}
                _ => self.value_start(), // numbers, literals, `:` deeper down
            }
        }
        chunk.len()
    }

    /// Below depth 2 (inside an element of the target array, or inside any nested value) only
    /// strings and brackets change anything: numbers, literals, `,` and `:` matter to nobody.
    /// Returns where depth came back to 2, or the chunk's end. This is most of the counting work:
    /// a CV is many short strings, so it is done 64 bytes at a time with bit masks (the stage-1
    /// technique of simdjson, vector compares from `wide` in [`masks`]), and byte by byte only
    /// for a chunk's last <64 bytes. Down here a backslash escapes the next byte whether or
    /// not it is in a string (outside one it is invalid JSON anyway): both paths agree on that,
    /// so any split of a stream still gives the same result.
    fn skip_deep(&mut self, chunk: &[u8], mut i: usize) -> usize {
        while let Some(block) = chunk.get(i..i + 64) {
            let block: &[u8; 64] = block.try_into().expect("64 bytes");
            match self.deep_block(block) {
                Some(end) => return i + end,
                None => i += 64,
            }
        }
        let n = chunk.len();
        while i < n {
            let b = chunk[i];
            i += 1;
            if self.escape {
                self.escape = false;
            } else if b == b'\\' {
                self.escape = true;
            } else if self.in_string {
                self.in_string = b != b'"';
            } else {
                match b {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth -= 1; // depth >= 3 here
                        if self.depth < 3 {
                            break;
                        }
                    }
                    _ => {}
                }
            }
        }
        i
    }

    /// One 64-byte block of [`skip_deep`]: `Some(offset after the bracket)` where depth comes
    /// back to 2, else `None` with the string/escape state carried to the next block.
    fn deep_block(&mut self, block: &[u8; 64]) -> Option<usize> {
        const EVEN: u64 = 0x5555_5555_5555_5555;
        let (quote, backslash, open, close) = masks(block);
        // Bytes escaped by an odd run of backslashes (runs may start in an earlier block).
        let carry_in = u64::from(self.escape);
        let backslash = backslash & !carry_in;
        let follows = (backslash << 1) | carry_in;
        let odd_starts = backslash & !EVEN & !follows;
        let seq_even = odd_starts.wrapping_add(backslash);
        let escaped = (EVEN ^ (seq_even << 1)) & follows;
        // Inside strings: prefix XOR of the unescaped quotes, flipped when a string was open.
        let quotes = quote & !escaped;
        let mut inside = quotes;
        for shift in [1, 2, 4, 8, 16, 32] {
            inside ^= inside << shift;
        }
        if self.in_string {
            inside = !inside;
        }
        let live = !inside & !escaped;
        let mut brackets = (open | close) & live;
        while brackets != 0 {
            let at = brackets.trailing_zeros() as usize;
            brackets &= brackets - 1;
            if open >> at & 1 == 1 {
                self.depth += 1;
            } else {
                self.depth -= 1;
                if self.depth < 3 {
                    // A live bracket: neither in a string nor escaped.
                    (self.in_string, self.escape) = (false, false);
                    return Some(at + 1);
                }
            }
        }
        self.in_string = inside >> 63 == 1;
        // The next block's first byte is escaped when this one ends in an unescaped backslash.
        self.escape = (backslash & !escaped) >> 63 == 1;
        None
    }

    /// A value begins at the current depth (called before the depth changes).
    fn value_start(&mut self) {
        if self.in_target && self.depth == 2 {
            self.elem_open = true;
        }
        if self.depth == 1 {
            self.key_hit = false;
        }
    }
}

/// The outcome of one response body, reported once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyOutcome {
    /// Records delivered (completed; a cut stream's count excludes the marker line).
    pub records: u64,
    /// Upstream data bytes delivered to the client.
    pub bytes: u64,
    pub end: EndReason,
    /// Why `records` is not a certain count (see the module docs), `None` when it is. Only
    /// meaningful for a counted body.
    pub uncertain: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    Complete,
    /// Cut at a record boundary (budget reached or [`CutHandle`]).
    Cut,
    /// Dropped before its end, e.g. the client disconnected.
    ClientGone,
    UpstreamError(String),
    /// No frame from upstream within the idle timeout.
    IdleTimeout,
}

/// How sure the charge of a response is, for the audit line's `count` field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Certainty {
    /// Not a charged request.
    #[default]
    NotCharged,
    /// Records counted with certainty (body or count header), or nothing delivered (an error).
    Exact,
    /// The route charges its reservation by design (no count configured).
    Reserved,
    /// Not counted with certainty: charged the full reservation, for this reason.
    Uncertain(&'static str),
}

impl Certainty {
    /// `exact`, `reserved` or `uncertain:<reason>`; `None` when not charged.
    pub fn label(self) -> Option<std::borrow::Cow<'static, str>> {
        match self {
            Certainty::NotCharged => None,
            Certainty::Exact => Some("exact".into()),
            Certainty::Reserved => Some("reserved".into()),
            Certainty::Uncertain(r) => Some(format!("uncertain:{r}").into()),
        }
    }
}

/// Lowers a [`CountingBody`]'s record limit from another task.
#[derive(Debug, Clone)]
pub struct CutHandle(Arc<CutShared>);

#[derive(Debug)]
struct CutShared {
    /// Limit asked for through handles; `u64::MAX` = none.
    limit: AtomicU64,
    /// The body's waker while it waits on upstream, so a cut at a boundary need not wait for data.
    waker: Mutex<Option<Waker>>,
}

impl CutHandle {
    /// No new record may start: the stream ends after the records delivered so far (one in
    /// flight finishes first). Only NDJSON bodies are cut; JSON and uncounted bodies ignore it.
    pub fn cut_now(&self) {
        self.lower_limit(0);
    }

    /// Lowers the record limit to `limit` (never raises it).
    pub fn lower_limit(&self, limit: u64) {
        self.0.limit.fetch_min(limit, Ordering::AcqRel);
        if let Some(w) = self.0.waker.lock().unwrap_or_else(PoisonError::into_inner).take() {
            w.wake();
        }
    }
}

type OnEnd = Box<dyn FnOnce(BodyOutcome) + Send>;
type BoxError = Box<dyn StdError + Send + Sync>;

/// Counts and `on_end`; its `Drop` reports `ClientGone` if nothing was reported before.
struct Progress {
    counter: Option<RecordCounter>,
    bytes: u64,
    /// Mutex only so that the body is `Sync` (`BoxBody` needs it): reached through `get_mut`,
    /// never locked.
    on_end: Mutex<Option<OnEnd>>,
}

impl Progress {
    fn end(&mut self, end: EndReason) {
        if let Some(f) = self.on_end.get_mut().unwrap_or_else(PoisonError::into_inner).take() {
            let records = self.counter.as_ref().map_or(0, RecordCounter::count);
            let uncertain = match &end {
                EndReason::Complete => self.counter.as_ref().and_then(RecordCounter::verdict),
                EndReason::Cut => None,
                EndReason::ClientGone => Some("client-gone"),
                EndReason::UpstreamError(_) | EndReason::IdleTimeout => Some("truncated"),
            };
            f(BodyOutcome { records, bytes: self.bytes, end, uncertain });
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.end(EndReason::ClientGone);
    }
}

enum State {
    Streaming,
    /// Cut: the marker line, then the trailers, then the end.
    Tail {
        marker: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    Done,
}

pin_project! {
    /// A response body that counts records as they stream and ends at a record boundary when
    /// the budget is spent. See the module docs for the truncation contract.
    pub struct CountingBody<B> {
        #[pin]
        inner: B,
        // Created on the first wait for upstream, so bodies that are always ready need no timer.
        #[pin]
        idle: Option<Sleep>,
        idle_timeout: Option<Duration>,
        // A frame arrived since the idle timer was last armed.
        idle_rearm: bool,
        limit: Option<u64>,
        cut: Arc<CutShared>,
        cut_by_handle: bool,
        state: State,
        progress: Progress,
    }
}

impl<B> CountingBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    /// `format`: `None` counts nothing (bytes are still measured). `limit`: the record budget
    /// (cuts NDJSON only). `on_end` is called exactly once: at the end, on error, on a cut, or
    /// from `Drop` with [`EndReason::ClientGone`]. An empty body ends here, at construction.
    /// `idle_timeout` runs while waiting on upstream (not while the client applies backpressure)
    /// and restarts after every frame.
    pub fn new(
        inner: B,
        format: Option<RecordFormat>,
        limit: Option<u64>,
        idle_timeout: Option<Duration>,
        on_end: Box<dyn FnOnce(BodyOutcome) + Send>,
    ) -> Self {
        let empty = inner.is_end_stream();
        let mut body = CountingBody {
            inner,
            idle: None,
            idle_timeout,
            idle_rearm: false,
            limit,
            cut: Arc::new(CutShared { limit: AtomicU64::new(u64::MAX), waker: Mutex::new(None) }),
            cut_by_handle: false,
            state: State::Streaming,
            progress: Progress { counter: format.map(RecordCounter::new), bytes: 0, on_end: Mutex::new(Some(on_end)) },
        };
        if empty {
            body.state = State::Done;
            body.progress.end(EndReason::Complete);
        }
        body
    }

    /// A handle that lowers this body's limit from another task (see [`CutHandle`]).
    pub fn cut_handle(&self) -> CutHandle {
        CutHandle(self.cut.clone())
    }
}

/// Ends the stream at the current position: reports `Cut` and queues marker and trailers.
fn begin_tail(state: &mut State, progress: &mut Progress, by_handle: bool) {
    let Some(counter) = progress.counter.as_ref() else { return };
    let records = counter.count();
    let newline = if matches!(&counter.kind, Kind::Ndjson(s) if !s.line_start) { "\n" } else { "" };
    let reason = if by_handle { "closed" } else { "quota" };
    let marker =
        format!("{newline}{{\"_cvgate\":{{\"truncated\":true,\"records\":{records},\"reason\":\"{reason}\"}}}}\n");
    let mut trailers = HeaderMap::with_capacity(2);
    trailers.insert(HeaderName::from_static("cvgate-truncated"), HeaderValue::from_static("true"));
    trailers.insert(HeaderName::from_static("cvgate-records"), HeaderValue::from(records));
    *state = State::Tail { marker: Some(Bytes::from(marker)), trailers: Some(trailers) };
    progress.end(EndReason::Cut);
}

impl<B> Body for CountingBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            match this.state {
                State::Streaming => {}
                State::Done => return Poll::Ready(None),
                State::Tail { marker, trailers } => {
                    if let Some(m) = marker.take() {
                        return Poll::Ready(Some(Ok(Frame::data(m))));
                    }
                    let t = trailers.take();
                    *this.state = State::Done;
                    return Poll::Ready(t.map(|t| Ok(Frame::trailers(t))));
                }
            }
            let asked = this.cut.limit.load(Ordering::Acquire);
            if asked < this.limit.unwrap_or(u64::MAX) {
                *this.limit = Some(asked);
                *this.cut_by_handle = true;
            }
            // A handle's cut need not wait for the next record to show up: at a boundary, end now.
            if *this.cut_by_handle {
                if let (Some(c), Some(l)) = (&this.progress.counter, *this.limit) {
                    if c.at_boundary() && c.count() >= l {
                        begin_tail(this.state, this.progress, true);
                        continue;
                    }
                }
            }
            let frame = match this.inner.as_mut().poll_frame(cx) {
                Poll::Pending => {
                    if let Some(d) = *this.idle_timeout {
                        if this.idle.is_none() {
                            this.idle.set(Some(tokio::time::sleep(d)));
                            *this.idle_rearm = false;
                        }
                        let mut sleep = this.idle.as_mut().as_pin_mut().expect("set above");
                        if std::mem::take(this.idle_rearm) {
                            // Measured from the wait after the last frame (a cheap reset: later deadline).
                            sleep.as_mut().reset(Instant::now() + d);
                        }
                        if sleep.poll(cx).is_ready() {
                            *this.state = State::Done;
                            this.progress.end(EndReason::IdleTimeout);
                            let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "upstream body idle timeout");
                            return Poll::Ready(Some(Err(e.into())));
                        }
                    }
                    // Only at a boundary can a handle's cut act without more data.
                    if this.progress.counter.as_ref().is_some_and(RecordCounter::at_boundary) {
                        let mut w = this.cut.waker.lock().unwrap_or_else(PoisonError::into_inner);
                        if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                            *w = Some(cx.waker().clone());
                        }
                        drop(w);
                        // A cut that came before the waker was stored would otherwise be missed.
                        if this.cut.limit.load(Ordering::Acquire) < this.limit.unwrap_or(u64::MAX) {
                            continue;
                        }
                    }
                    return Poll::Pending;
                }
                Poll::Ready(None) => {
                    if let Some(c) = this.progress.counter.as_mut() {
                        c.finish();
                    }
                    *this.state = State::Done;
                    this.progress.end(EndReason::Complete);
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    let e: BoxError = e.into();
                    *this.state = State::Done;
                    this.progress.end(EndReason::UpstreamError(e.to_string()));
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            *this.idle_rearm = true;
            let mut data = match frame.into_data() {
                Ok(data) => data,
                Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
            };
            let feed = match this.progress.counter.as_mut() {
                Some(c) => c.feed(&data, *this.limit),
                None => Feed { pass: data.len(), records: 0, cut: false },
            };
            this.progress.bytes += feed.pass as u64;
            if feed.cut {
                data.truncate(feed.pass); // zero-copy
                begin_tail(this.state, this.progress, *this.cut_by_handle);
                if data.is_empty() {
                    continue;
                }
            } else if this.inner.is_end_stream() {
                // The last frame of a body of known length: hyper writes it and drops the body
                // without asking for the end, which would read as the client going away.
                if let Some(c) = this.progress.counter.as_mut() {
                    c.finish();
                }
                *this.state = State::Done;
                this.progress.end(EndReason::Complete);
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
    }

    fn is_end_stream(&self) -> bool {
        // Never claim the end before returning `None`: hyper drops a body that says it has ended,
        // and the outcome would then be reported as `ClientGone`.
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Done => SizeHint::with_exact(0),
            State::Tail { .. } => SizeHint::new(),
            // An NDJSON body may be cut (a handle can cut any time) and gain a marker line.
            State::Streaming if self.progress.counter.as_ref().is_some_and(|c| matches!(c.kind, Kind::Ndjson(_))) => {
                SizeHint::new()
            }
            State::Streaming => self.inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use proptest::prelude::*;
    use tokio::sync::mpsc;

    /// Feeds `body` split at `splits`; returns the total count and the cut position, if any.
    fn run(format: &RecordFormat, body: &[u8], splits: &[usize], limit: Option<u64>) -> (u64, Option<usize>) {
        let mut c = RecordCounter::new(format.clone());
        let (mut at, mut passed) = (0, 0);
        let mut bounds: Vec<usize> = splits.iter().map(|s| s % (body.len() + 1)).collect();
        bounds.sort_unstable();
        bounds.push(body.len());
        for end in bounds {
            let f = c.feed(&body[at..end], limit);
            passed += f.pass;
            if f.cut {
                return (c.finish(), Some(passed));
            }
            at = end;
        }
        (c.finish(), None)
    }

    fn count(format: RecordFormat, body: &str) -> u64 {
        run(&format, body.as_bytes(), &[], None).0
    }

    fn results() -> RecordFormat {
        RecordFormat::JsonArrayField("results".into())
    }

    fn verdict(format: RecordFormat, body: &str) -> Option<&'static str> {
        let mut c = RecordCounter::new(format);
        c.feed(body.as_bytes(), None);
        c.finish();
        c.verdict()
    }

    #[test]
    fn verdict_names_what_makes_a_count_uncertain() {
        assert_eq!(verdict(results(), r#"{"page":1,"results":[{"a":1},{"b":[2]}]}"#), None);
        assert_eq!(verdict(results(), " {\"results\":[]}\n"), None);
        // The declared field missing, renamed, escaped, or not an array: the shape changed.
        assert_eq!(verdict(results(), r#"{"hits":[{"a":1}]}"#), Some("shape"));
        assert_eq!(verdict(results(), r#"{"result\u0073":[{"a":1}]}"#), Some("shape"));
        assert_eq!(verdict(results(), r#"{"results":{"a":1}}"#), Some("shape"));
        assert_eq!(verdict(results(), r#"[{"results":[1]}]"#), Some("shape"));
        assert_eq!(verdict(results(), ""), Some("malformed"));
        // Cut short, unbalanced, or something after the end.
        assert_eq!(verdict(results(), r#"{"results":[{"a":1},{"b""#), Some("malformed"));
        assert_eq!(verdict(results(), r#"{"results":[{"a":1}]}]"#), Some("malformed"));
        assert_eq!(verdict(results(), r#"{"results":[]}{"results":[{"a":1}]}"#), Some("malformed"));
        assert_eq!(verdict(RecordFormat::Ndjson, "{\"a\":1}\n{\"b\":2}"), None);
        assert_eq!(verdict(RecordFormat::Ndjson, "{\"a\":1}\n[1,2]\n"), Some("shape"));
        assert_eq!(verdict(RecordFormat::Ndjson, "id,name\n1,x\n"), Some("shape"));
    }

    #[test]
    fn json_counts_only_the_top_level_field() {
        let page = r#"{"page":1,"size":3,"total":9,"results":[{"id":1,"name":"A \"B\" [x]"},{"id":2,"skills":["a,b","}"]},{"id":3,"results":[1,2,3]}]}"#;
        assert_eq!(count(results(), page), 3);
        assert_eq!(count(results(), r#"{"page":1,"results":[]}"#), 0);
        assert_eq!(count(results(), "{ \"results\" :\n[ ] }"), 0);
        assert_eq!(count(results(), r#"{"meta":{"results":[1,2]},"x":"results","results":[1,"a",null]}"#), 3);
        assert_eq!(count(results(), r#"{"results2":[1],"result":[1],"results":null}"#), 0);
        assert_eq!(count(results(), r#"{"res\u0075lts":[1]}"#), 0); // escaped key names don't match
        assert_eq!(count(results(), r#"[{"results":[1,2]}]"#), 0);
        assert_eq!(count(results(), r#"{"results":[[1,2],{"a":[3]},"\\"],"total":3}"#), 3);
    }

    #[test]
    fn ndjson_counts_lines_with_content() {
        assert_eq!(count(RecordFormat::Ndjson, "{\"a\":1}\n{\"a\":2}\n"), 2);
        assert_eq!(count(RecordFormat::Ndjson, "{\"a\":1}\n{\"a\":2}"), 2);
        assert_eq!(count(RecordFormat::Ndjson, "{\"a\":1}\r\n\r\n  \t\r\n{\"a\":2}\r\n\n"), 2);
        assert_eq!(count(RecordFormat::Ndjson, "\n \r\n"), 0);
        assert_eq!(count(RecordFormat::Ndjson, ""), 0);
    }

    #[test]
    fn ndjson_limit_edges() {
        let body = b"a\nb\n\r\n  c\nd\n";
        assert_eq!(run(&RecordFormat::Ndjson, body, &[], Some(4)), (4, None)); // exactly L: not cut
        assert_eq!(run(&RecordFormat::Ndjson, body, &[], Some(9)), (4, None));
        assert_eq!(run(&RecordFormat::Ndjson, body, &[], Some(2)), (2, Some(8))); // whitespace passes
        assert_eq!(run(&RecordFormat::Ndjson, body, &[], Some(0)), (0, Some(0)));
        assert_eq!(run(&RecordFormat::Ndjson, b"a\nb", &[], Some(1)), (1, Some(2)));
        // Cut in the middle of a chunk, after records already passed in an earlier chunk.
        let mut c = RecordCounter::new(RecordFormat::Ndjson);
        assert_eq!(c.feed(b"a\nb", Some(2)), Feed { pass: 3, records: 1, cut: false });
        assert_eq!(c.feed(b"b\nccc\n", Some(2)), Feed { pass: 2, records: 1, cut: true });
        // JSON is never cut, whatever the limit.
        assert_eq!(run(&results(), br#"{"results":[1,2,3]}"#, &[], Some(1)), (3, None));
    }

    /// One fake record with strings full of the characters that trip tokenizers.
    fn record(id: usize, s: &str) -> String {
        let esc = s.replace('\\', "\\\\").replace('"', "\\\"");
        format!(r#"{{"id":{id},"name":"{esc}","results":[{{"x":"{esc}"}},[]],"tags":["{esc}",1.5,true]}}"#)
    }

    fn text() -> impl Strategy<Value = String> {
        // Up to 80 bytes, so that strings and escape runs straddle the 64-byte blocks.
        "[a-z \\[\\]{},:\"\\\\]{0,80}"
    }

    proptest! {
        #[test]
        fn ndjson_any_split_same_result(
            recs in prop::collection::vec((text(), 0..4usize, any::<bool>()), 0..12),
            tail_newline in any::<bool>(),
            splits in prop::collection::vec(any::<usize>(), 0..8),
            limit in prop::option::of(0..14u64),
        ) {
            let mut body = String::new();
            for (i, (s, blank, crlf)) in recs.iter().enumerate() {
                body += &[" \n", "\r\n", "\t \r\n"][..*blank].concat();
                body += &record(i, s);
                if i + 1 < recs.len() || tail_newline {
                    body += if *crlf { "\r\n" } else { "\n" };
                }
            }
            let n = recs.len() as u64;
            let whole = run(&RecordFormat::Ndjson, body.as_bytes(), &[], limit);
            prop_assert_eq!(whole, run(&RecordFormat::Ndjson, body.as_bytes(), &splits, limit));
            match limit {
                Some(l) if l < n => {
                    let at = whole.1.expect("cut");
                    prop_assert_eq!(whole.0, l);
                    prop_assert_eq!(count(RecordFormat::Ndjson, &body[..at]), l);
                    prop_assert!(!is_ws(body.as_bytes()[at]));
                }
                _ => prop_assert_eq!(whole, (n, None)),
            }
        }

        /// Invalid JSON too: deep garbage (quotes, backslash runs, brackets) gives the same count
        /// whether its bytes go through the 64-byte block path or the byte-by-byte tail.
        #[test]
        fn json_garbage_any_split_same_result(
            garbage in prop::collection::vec(prop::sample::select(b"{}[]\\\"a ,:".to_vec()), 0..400),
            depth in 0..4usize,
            splits in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut body = b"{\"results\":[".to_vec();
            body.extend(std::iter::repeat_n(b'[', depth));
            body.extend(&garbage);
            let whole = run(&results(), &body, &[], None);
            prop_assert_eq!(whole, run(&results(), &body, &splits, None));
        }

        #[test]
        fn json_any_split_same_result(
            recs in prop::collection::vec(text(), 0..12),
            ws in prop::sample::select(vec!["", " ", "\n", " \r\n\t"]),
            splits in prop::collection::vec(any::<usize>(), 0..8),
            limit in prop::option::of(0..14u64),
        ) {
            let items: Vec<String> = recs.iter().enumerate().map(|(i, s)| record(i, s)).collect();
            let body = format!(
                "{{{ws}\"page\":1,\"note\":\"{ws}results\",\"results\"{ws}:{ws}[{ws}{}{ws}]{ws},\"more\":[{}]}}",
                items.join(&format!("{ws},{ws}")),
                items.join(","),
            );
            let whole = run(&results(), body.as_bytes(), &[], limit);
            prop_assert_eq!(whole, (recs.len() as u64, None));
            prop_assert_eq!(whole, run(&results(), body.as_bytes(), &splits, limit));
        }
    }

    // ---- CountingBody ----

    type Tx = mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;
    type Seen = Arc<Mutex<Vec<BodyOutcome>>>;

    /// An upstream body fed from a channel, frame by frame.
    struct ChanBody(mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>);

    impl Body for ChanBody {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx)
        }
    }

    fn body(
        format: Option<RecordFormat>,
        limit: Option<u64>,
        idle: Option<Duration>,
    ) -> (Tx, Pin<Box<CountingBody<ChanBody>>>, Seen) {
        let (tx, rx) = mpsc::channel(16);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let b = CountingBody::new(ChanBody(rx), format, limit, idle, Box::new(move |o| s.lock().unwrap().push(o)));
        (tx, Box::pin(b), seen)
    }

    async fn send(tx: &Tx, data: &'static str) {
        tx.send(Ok(Frame::data(Bytes::from_static(data.as_bytes())))).await.unwrap();
    }

    fn outcomes(seen: &Mutex<Vec<BodyOutcome>>) -> Vec<BodyOutcome> {
        seen.lock().unwrap().clone()
    }

    /// The outcome of a body of the declared shape that ended with `end`.
    fn outcome(records: u64, bytes: u64, end: EndReason) -> Vec<BodyOutcome> {
        let uncertain = match end {
            EndReason::Complete | EndReason::Cut => None,
            EndReason::ClientGone => Some("client-gone"),
            EndReason::UpstreamError(_) | EndReason::IdleTimeout => Some("truncated"),
        };
        vec![BodyOutcome { records, bytes, end, uncertain }]
    }

    #[test]
    fn body_is_send_and_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<CountingBody<http_body_util::Full<Bytes>>>();
        check::<CutHandle>();
    }

    #[tokio::test]
    async fn complete_body_passes_untouched() {
        let (tx, b, seen) = body(Some(RecordFormat::Ndjson), Some(2), None);
        send(&tx, "{\"a\":1}\n{\"a\"").await;
        send(&tx, ":2}").await;
        let mut trailers = HeaderMap::new();
        trailers.insert("x-upstream", HeaderValue::from_static("1"));
        tx.send(Ok(Frame::trailers(trailers.clone()))).await.unwrap();
        drop(tx);
        let got = b.collect().await.unwrap();
        assert_eq!(got.trailers(), Some(&trailers));
        assert_eq!(got.to_bytes(), "{\"a\":1}\n{\"a\":2}");
        assert_eq!(outcomes(&seen), outcome(2, 15, EndReason::Complete));
    }

    #[tokio::test]
    async fn over_budget_is_cut_with_marker_and_trailers() {
        let (tx, b, seen) = body(Some(RecordFormat::Ndjson), Some(2), None);
        send(&tx, "a\nb\n  c\nd\n").await;
        let got = b.collect().await.unwrap();
        assert_eq!(got.trailers().unwrap()["cvgate-truncated"], "true");
        assert_eq!(got.trailers().unwrap()["cvgate-records"], "2");
        assert_eq!(got.to_bytes(), "a\nb\n  \n{\"_cvgate\":{\"truncated\":true,\"records\":2,\"reason\":\"quota\"}}\n");
        assert_eq!(outcomes(&seen), outcome(2, 6, EndReason::Cut));
    }

    #[tokio::test]
    async fn json_is_never_cut() {
        let (tx, b, seen) = body(Some(results()), Some(1), None);
        send(&tx, r#"{"results":[{"a":"]"},2,"#).await;
        send(&tx, "3]}").await;
        drop(tx);
        assert_eq!(b.collect().await.unwrap().to_bytes().len(), 27);
        assert_eq!(outcomes(&seen), outcome(3, 27, EndReason::Complete));
    }

    #[tokio::test]
    async fn upstream_error_is_reported() {
        let (tx, mut b, seen) = body(Some(RecordFormat::Ndjson), None, None);
        send(&tx, "a\nb").await;
        tx.send(Err(std::io::Error::other("reset"))).await.unwrap();
        assert!(b.frame().await.unwrap().is_ok());
        assert_eq!(b.frame().await.unwrap().unwrap_err().to_string(), "reset");
        assert!(b.frame().await.is_none());
        assert_eq!(outcomes(&seen), outcome(1, 3, EndReason::UpstreamError("reset".into())));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_upstream_times_out_and_frames_reset_the_timer() {
        let (tx, mut b, seen) = body(None, None, Some(Duration::from_secs(10)));
        let feeder = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                send(&tx, "x").await;
            }
            tx // kept open: upstream goes quiet without ending
        });
        for _ in 0..3 {
            assert!(b.frame().await.unwrap().is_ok());
        }
        let started = Instant::now();
        assert!(b.frame().await.unwrap().is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(outcomes(&seen), outcome(0, 3, EndReason::IdleTimeout));
        drop(feeder.await);
    }

    #[tokio::test]
    async fn dropped_halfway_reports_client_gone_with_partial_counts() {
        let (tx, mut b, seen) = body(Some(RecordFormat::Ndjson), Some(10), None);
        send(&tx, "a\nb\nc").await;
        assert!(b.frame().await.unwrap().is_ok());
        assert!(outcomes(&seen).is_empty());
        drop(b);
        assert_eq!(outcomes(&seen), outcome(2, 5, EndReason::ClientGone));
        let (_tx, b, seen) = body(None, None, None);
        drop(b);
        assert_eq!(outcomes(&seen), outcome(0, 0, EndReason::ClientGone));
    }

    #[tokio::test]
    async fn empty_body_completes_at_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let on_end: OnEnd = Box::new(move |o| s.lock().unwrap().push(o));
        let b = CountingBody::new(http_body_util::Empty::<Bytes>::new(), None, None, None, on_end);
        assert!(b.is_end_stream());
        drop(b);
        assert_eq!(outcomes(&seen), outcome(0, 0, EndReason::Complete));
    }

    #[tokio::test]
    async fn cut_handle_cuts_at_the_next_boundary() {
        // Upstream idle at a boundary: the cut happens without waiting for data.
        let (tx, mut b, seen) = body(Some(RecordFormat::Ndjson), None, None);
        let handle = b.cut_handle();
        send(&tx, "a\n").await;
        assert!(b.frame().await.unwrap().is_ok());
        tokio::spawn(async move { handle.cut_now() });
        let marker = b.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(marker, "{\"_cvgate\":{\"truncated\":true,\"records\":1,\"reason\":\"closed\"}}\n");
        assert!(b.frame().await.unwrap().unwrap().is_trailers());
        assert!(b.frame().await.is_none());
        assert_eq!(outcomes(&seen), outcome(1, 2, EndReason::Cut));
        drop(tx);

        // Mid-record: the record in flight finishes first.
        let (tx, mut b, seen) = body(Some(RecordFormat::Ndjson), Some(5), None);
        send(&tx, "a\nb").await;
        assert!(b.frame().await.unwrap().is_ok());
        b.cut_handle().cut_now();
        send(&tx, "b\nc\n").await;
        drop(tx);
        let rest = b.collect().await.unwrap().to_bytes();
        assert!(rest.starts_with(b"b\n{\"_cvgate\""), "{rest:?}");
        assert_eq!(outcomes(&seen), outcome(2, 5, EndReason::Cut));
    }
}
