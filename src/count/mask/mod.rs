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
//! - Nothing that could be a record leaves unmasked (but within an allowance, or in shadow mode,
//!   below). A record that is not a JSON object, is not valid JSON (RFC 8259 as serde_json reads
//!   it, keys that decode to Unicode, nested at most 100 levels) or is larger than `max_record_bytes` is dropped whole and
//!   counted in [`MaskStats`].
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
//! # Allowance and shadow
//! [`Masker::with_allowance`]: the first n records pass unmasked, byte for byte (a page that
//! straddles a soft budget's threshold); they are still validated, and dropped when invalid or
//! too large, so the output keeps its contract. [`Masker::shadow`]: the body goes out exactly as
//! it came, and the masking runs into a scratch buffer only for its [`MaskStats`].
//!
//! # Speed
//! A record is parsed once, by a validating scanner of our own (`json`: serde_json's strictness,
//! 16 bytes per vector compare inside strings), which lists the root members whose key a rule
//! names (a table by length and first byte rules most keys out in one load), as positions in the
//! record's bytes: nothing is built, no key is decoded unless it holds an escape. The masked
//! record is then written as runs of its own bytes: an untouched record is one copy, and a record
//! that lies whole in a chunk is masked where it lies, never copied into a buffer. A `keep_if`
//! is answered from the member list. Nested values are walked only along the paths of the rules.
//! About 1.2 GiB/s of CV pages and exports on one core (`benches/mask.rs`, docs/BENCHMARKS.md).
//!
//! # Layout
//! - `plan`: [`MaskSpec`] → [`MaskPlan`], the rules as a tree of path segments.
//! - `stream`: [`Masker`] and the body formats (NDJSON lines, a JSON array field, one record).
//! - `record`: masking one record (parse, then write the kept runs).
//! - `json`: the validating scanner.
//! - `tests`, `props`: unit and property tests; `invariants.rs`: what must hold for any body,
//!   shared by the fuzz target (fuzz/fuzz_targets/mask.rs) and its replay on stable.

mod json;
mod plan;
#[cfg(test)]
mod props;
mod record;
mod stream;
#[cfg(test)]
mod tests;

pub use plan::{KeepIf, MaskPlan, MaskSpec, RecordMask, SpecError, DEFAULT_MAX_RECORD_BYTES};
pub use stream::{MaskError, MaskFormat, MaskStats, Masker};
