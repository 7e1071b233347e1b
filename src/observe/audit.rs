//! The audit log: one JSON line per CV request and per rejection on any route.
//!
//! A line says who (account, organisation, client IP, country), what (route, group, tier, CVs
//! reserved and delivered, bytes, truncated), the decision (`allowed` or the problem slug, with
//! the scope and horizon that fired, and shadow-mode would-rejects), the status and how long it
//! took; stamped in UTC and in the local zone (Europe/Amsterdam by default) so that operators
//! reading it by hand see their own clock. Never tokens, never CV content: the line is built
//! from [`Ctx`], which holds neither.
//!
//! Writing never blocks the request path: [`AuditLog::record`] puts the record on a bounded
//! queue (`try_send`) for a dedicated writer thread, which serialises it and writes it to
//! stdout or to a file rotated by size and/or daily (rolling-file). When the writer cannot keep
//! up the line is dropped and counted in `cvgate_audit_dropped_total`: a slow disk must not slow
//! down or stop the proxy. [`AuditLog::close`] at shutdown waits until every line queued before
//! it is written and flushed.

use std::io::{self, Write};
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::Timestamp;
use prometheus::IntCounter;
use serde::{Deserialize, Serialize};

use crate::ctx::Ctx;
use crate::invalid::Invalid;

/// `audit:` in config.yaml.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawAudit {
    /// `stdout` (default; the logs go to stderr), `file` (with `path`), or `off`.
    pub sink: String,
    /// The audit file for `sink: file`; relative paths are relative to the config file.
    pub path: Option<String>,
    pub rotate: RawRotate,
    /// IANA zone of the `local` timestamp (and of the daily rotation).
    pub local_tz: String,
    /// Lines that may wait for the writer; beyond it lines are dropped and counted.
    pub queue: usize,
}

impl Default for RawAudit {
    fn default() -> Self {
        Self {
            sink: "stdout".into(),
            path: None,
            rotate: RawRotate::default(),
            local_tz: "Europe/Amsterdam".into(),
            queue: 8192,
        }
    }
}

/// Rotation of the audit file: `file`, `file.1` (newest old one) … `file.N`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawRotate {
    /// Start a new file once the current one reaches this size; `null`: no size limit.
    pub max_bytes: Option<u64>,
    /// Old files kept; the oldest beyond this is deleted.
    pub max_files: usize,
    /// Start a new file at local midnight (in `local_tz`).
    pub daily: bool,
}

impl Default for RawRotate {
    fn default() -> Self {
        Self { max_bytes: Some(256 << 20), max_files: 30, daily: true }
    }
}

/// Where lines go.
#[derive(Debug, Clone, PartialEq)]
pub enum Sink {
    Off,
    Stdout,
    File { path: PathBuf, max_bytes: Option<u64>, max_files: usize, daily: bool },
}

/// Validated audit settings (read at start; a reload does not reopen the log).
#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub sink: Sink,
    pub local_tz: TimeZone,
    pub queue: NonZeroUsize,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self::from_raw(&RawAudit::default(), Path::new(".")).expect("the default audit settings are valid")
    }
}

impl AuditSettings {
    /// Validate `audit:`. Errors carry key paths relative to `audit`.
    ///
    /// # Errors
    /// Every invalid key, with its path and a message.
    pub fn from_raw(raw: &RawAudit, base: &Path) -> Result<AuditSettings, Invalid> {
        let mut errs = Invalid::new();
        let local_tz = match TimeZone::get(&raw.local_tz) {
            Ok(tz) => Some(tz),
            Err(e) => {
                errs.push("local_tz", format!("not an IANA time zone: {:?} ({e})", raw.local_tz));
                None
            }
        };
        let queue = NonZeroUsize::new(raw.queue);
        if queue.is_none() {
            errs.push("queue", "must be greater than 0");
        }
        let sink = match raw.sink.as_str() {
            "off" => Some(Sink::Off),
            "stdout" => Some(Sink::Stdout),
            "file" => file_sink(raw, base, &mut errs),
            other => {
                errs.push("sink", format!("expected stdout, file or off, got {other:?}"));
                None
            }
        };
        match (sink, local_tz, queue) {
            (Some(sink), Some(local_tz), Some(queue)) if errs.is_empty() => Ok(AuditSettings { sink, local_tz, queue }),
            _ => Err(errs),
        }
    }
}

fn file_sink(raw: &RawAudit, base: &Path, errs: &mut Invalid) -> Option<Sink> {
    let r = &raw.rotate;
    if r.max_bytes == Some(0) {
        errs.push("rotate.max_bytes", "must be greater than 0 (null: no size limit)");
    }
    if r.max_files == 0 && (r.daily || r.max_bytes.is_some()) {
        errs.push("rotate.max_files", "keep at least one old file when rotating");
    }
    let Some(p) = raw.path.as_deref().filter(|p| !p.is_empty()) else {
        errs.push("path", "sink: file needs a path");
        return None;
    };
    let path = if Path::new(p).is_absolute() { PathBuf::from(p) } else { base.join(p) };
    // Caught by check-config rather than at start: the directory must exist (it is not created,
    // so a typo cannot scatter audit files over the disk).
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        errs.push("path", format!("directory {} does not exist", dir.display()));
        return None;
    }
    Some(Sink::File { path, max_bytes: r.max_bytes, max_files: r.max_files, daily: r.daily })
}

/// One audit line, before serialisation (which the writer thread does, off the request path).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub ts: Timestamp,
    pub request_id: String,
    pub account: Option<String>,
    pub org: Option<String>,
    pub client_ip: Option<IpAddr>,
    pub country: String,
    pub route: Option<Arc<str>>,
    pub group: Option<Arc<str>>,
    pub tier: Option<String>,
    pub reserved: u64,
    pub delivered: u64,
    /// `allowed`, or the problem slug that answered.
    pub decision: String,
    /// Scope and horizon that fired (quota rejections).
    pub fired: Option<(String, String)>,
    /// Shadow-mode buckets that would have rejected.
    pub would_reject: Vec<(String, String)>,
    pub status: u16,
    pub bytes: u64,
    pub duration: Duration,
    pub truncated: bool,
    /// How sure `delivered` is: `exact`, `reserved`, `uncertain:<reason>` (charged requests).
    pub count: crate::count::Certainty,
    /// CVs delivered without contact data, and why (masked answers only).
    pub masked: u64,
    pub mask_reason: Option<&'static str>,
    /// When the policy decided (`ts`); the line's own time before admission.
    pub at: Option<Timestamp>,
    pub method: Option<http::Method>,
    pub path: Option<http::uri::PathAndQuery>,
    pub user_agent: Option<http::HeaderValue>,
    pub asked: u64,
    pub mask_after: Option<u64>,
    pub block: Option<&'static str>,
    pub window: Option<String>,
}

/// The audit line's schema: 2 added `schema`, `method`, `path`, `ua`, `asked`, `mask_after`,
/// `block`, `window`, and `ts` became the admission instant with microseconds (it was the end,
/// with milliseconds). `cvgate simulate` reads 1
/// and 2.
pub const SCHEMA: u32 = 2;

/// Query parameters whose values never reach the audit line (tokens, passwords, signatures).
const SECRET_PARAMS: [&str; 12] = [
    "token",
    "access_token",
    "id_token",
    "refresh_token",
    "jwt",
    "code",
    "password",
    "secret",
    "key",
    "api_key",
    "apikey",
    "signature",
];

/// `path?query` with the values of the secret parameters (`token`, `access_token`, `password`,
/// …; any case, percent-encoded names too) replaced by `REDACTED`.
pub fn redact_query(pq: &str) -> std::borrow::Cow<'_, str> {
    let Some((path, query)) = pq.split_once('?') else { return pq.into() };
    let secret = |k: &str| {
        let k = if k.contains('%') { percent_decoded(k) } else { k.to_string() };
        SECRET_PARAMS.iter().any(|s| k.eq_ignore_ascii_case(s))
    };
    if !query.split('&').any(|kv| secret(kv.split_once('=').map_or(kv, |(k, _)| k))) {
        return pq.into();
    }
    let parts: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if secret(k) => format!("{k}=REDACTED"),
            _ => kv.to_string(),
        })
        .collect();
    format!("{path}?{}", parts.join("&")).into()
}

fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())) {
            (b'%', Some(x)) => {
                out.push(x);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl AuditRecord {
    /// The line for a finished request.
    pub fn from_ctx(ctx: Ctx, now: Timestamp, duration: Duration) -> Self {
        let decision = ctx.decision.as_str().to_string();
        Self {
            ts: now,
            request_id: ctx.request_id,
            account: ctx.account,
            org: ctx.org,
            client_ip: ctx.client_ip,
            country: ctx.country,
            route: ctx.route,
            group: ctx.group,
            tier: ctx.tier,
            reserved: ctx.reserved,
            delivered: ctx.delivered,
            decision,
            fired: ctx.fired,
            would_reject: ctx.would_reject,
            status: ctx.status,
            bytes: ctx.bytes,
            duration,
            truncated: ctx.truncated,
            count: ctx.count,
            masked: ctx.masked,
            mask_reason: ctx.mask_reason,
            at: ctx.at,
            method: ctx.method,
            path: ctx.path,
            user_agent: ctx.user_agent,
            asked: ctx.asked,
            mask_after: ctx.mask_after,
            block: ctx.block,
            window: ctx.window,
        }
    }

    /// Append the JSON line (with its newline) to `out`.
    pub fn write_json(&self, stamps: &mut Stamps, out: &mut Vec<u8>) {
        #[derive(Serialize)]
        struct Pair<'a> {
            scope: &'a str,
            horizon: &'a str,
        }
        #[derive(Serialize)]
        struct Line<'a> {
            schema: u32,
            ts: String,
            local: String,
            request_id: &'a str,
            account: Option<&'a str>,
            org: Option<&'a str>,
            client_ip: Option<IpAddr>,
            country: &'a str,
            route: Option<&'a str>,
            group: Option<&'a str>,
            tier: Option<&'a str>,
            reserved: u64,
            delivered: u64,
            decision: &'a str,
            scope: Option<&'a str>,
            horizon: Option<&'a str>,
            would_reject: Vec<Pair<'a>>,
            status: u16,
            bytes: u64,
            duration_ms: f64,
            truncated: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            count: Option<std::borrow::Cow<'static, str>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            masked: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            mask_reason: Option<&'static str>,
            method: Option<&'a str>,
            path: Option<std::borrow::Cow<'a, str>>,
            ua: Option<std::borrow::Cow<'a, str>>,
            asked: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            mask_after: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            block: Option<&'static str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            window: Option<&'a str>,
        }
        let ts = self.at.unwrap_or(self.ts);
        // A user agent is the client's to choose: at most 256 characters of it.
        let ua = self.user_agent.as_ref().map(|v| {
            let s = String::from_utf8_lossy(v.as_bytes());
            match s.char_indices().nth(256) {
                Some((i, _)) => std::borrow::Cow::Owned(s[..i].to_string()),
                None => s,
            }
        });
        let line = Line {
            schema: SCHEMA,
            // Fixed precision (µs; `local` ms, for people): lines sort and parse the same everywhere.
            ts: stamps.utc(ts),
            local: stamps.local(ts),
            request_id: &self.request_id,
            account: self.account.as_deref(),
            org: self.org.as_deref(),
            client_ip: self.client_ip,
            country: &self.country,
            route: self.route.as_deref(),
            group: self.group.as_deref(),
            tier: self.tier.as_deref(),
            reserved: self.reserved,
            delivered: self.delivered,
            decision: &self.decision,
            scope: self.fired.as_ref().map(|f| f.0.as_str()),
            horizon: self.fired.as_ref().map(|f| f.1.as_str()),
            would_reject: self.would_reject.iter().map(|(s, h)| Pair { scope: s, horizon: h }).collect(),
            status: self.status,
            bytes: self.bytes,
            duration_ms: (self.duration.as_secs_f64() * 1e6).round() / 1e3,
            truncated: self.truncated,
            count: self.count.label(),
            masked: self.mask_reason.map(|_| self.masked),
            mask_reason: self.mask_reason,
            method: self.method.as_ref().map(http::Method::as_str),
            path: self.path.as_ref().map(|p| redact_query(p.as_str())),
            ua,
            asked: self.asked,
            mask_after: self.mask_reason.and(self.mask_after),
            block: self.block,
            window: self.window.as_deref(),
        };
        serde_json::to_writer(&mut *out, &line).expect("audit lines serialise");
        out.push(b'\n');
    }
}

enum Msg {
    Line(Box<AuditRecord>),
    /// A line that is not a request (a guard trip or release), already JSON, at its time.
    Event(Vec<u8>, Timestamp),
    /// Write and flush everything queued before this, then answer.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The two timestamps of an audit line (`ts`: UTC, µs; `local`: the audit zone, ms, with its
/// offset), the date, time and offset formatted by jiff once a second and the fraction per line:
/// formatting both in full was ~3.4 k instructions a line, a fifth of the writer's work (issue
/// 21's callgrind). The writer thread owns one.
pub struct Stamps {
    tz: TimeZone,
    second: Option<i64>,
    utc: String,
    local: String,
    offset: String,
}

impl Stamps {
    pub fn new(tz: TimeZone) -> Self {
        Self { tz, second: None, utc: String::new(), local: String::new(), offset: String::new() }
    }

    fn refresh(&mut self, ts: Timestamp) {
        let second = ts.as_second();
        if self.second != Some(second) {
            let z = ts.to_zoned(self.tz.clone());
            self.utc = ts.strftime("%Y-%m-%dT%H:%M:%S").to_string();
            self.local = z.strftime("%Y-%m-%dT%H:%M:%S").to_string();
            self.offset = z.strftime("%:z").to_string();
            self.second = Some(second);
        }
    }

    /// `2026-11-24T09:00:00.123456Z`.
    pub fn utc(&mut self, ts: Timestamp) -> String {
        if ts.subsec_nanosecond() < 0 {
            return ts.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(); // before 1970: not cached
        }
        self.refresh(ts);
        let mut s = String::with_capacity(self.utc.len() + 8);
        s.push_str(&self.utc);
        push_fraction(&mut s, ts.subsec_microsecond().unsigned_abs(), 6);
        s.push('Z');
        s
    }

    /// `2026-11-24T10:00:00.123+01:00`.
    pub fn local(&mut self, ts: Timestamp) -> String {
        if ts.subsec_nanosecond() < 0 {
            return ts.to_zoned(self.tz.clone()).strftime("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string();
        }
        self.refresh(ts);
        let mut s = String::with_capacity(self.local.len() + 4 + self.offset.len());
        s.push_str(&self.local);
        push_fraction(&mut s, ts.subsec_millisecond().unsigned_abs(), 3);
        s.push_str(&self.offset);
        s
    }
}

/// `.` and `value` in exactly `digits` digits, zero-padded.
fn push_fraction(s: &mut String, value: u32, digits: u32) {
    s.push('.');
    for i in (0..digits).rev() {
        let d = (value / 10u32.pow(i)) % 10;
        s.push(char::from(b'0' + d as u8));
    }
}

/// Where the writer thread puts serialised lines.
trait LineSink: Send {
    /// Write one whole line (rotation happens between lines, never inside one).
    fn write_line(&mut self, line: &[u8], at: Timestamp) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}

/// Any plain writer (stdout; tests).
struct Plain<W>(W);

impl<W: Write + Send> LineSink for Plain<W> {
    fn write_line(&mut self, line: &[u8], _at: Timestamp) -> io::Result<()> {
        self.0.write_all(line)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// When to start a new audit file: at a size, and/or when the local date (in the audit zone)
/// of the line being written differs from the previous one's. The time is the line's own
/// timestamp, which comes from the proxy's clock, so tests with a manual clock rotate too.
struct Roll {
    max_bytes: Option<u64>,
    daily: Option<TimeZone>,
    day: Option<jiff::civil::Date>,
}

impl rolling_file::RollingCondition for Roll {
    fn should_rollover(&mut self, now: &chrono::DateTime<chrono::Local>, size: u64) -> bool {
        let mut roll = size > 0 && self.max_bytes.is_some_and(|m| size >= m);
        if let Some(tz) = &self.daily {
            let ts = Timestamp::new(now.timestamp(), now.timestamp_subsec_nanos() as i32).unwrap_or_default();
            let day = ts.to_zoned(tz.clone()).date();
            roll |= size > 0 && self.day.is_some_and(|d| d != day);
            self.day = Some(day);
        }
        roll
    }
}

struct Rolling(rolling_file::RollingFileAppender<Roll>);

impl LineSink for Rolling {
    fn write_line(&mut self, line: &[u8], at: Timestamp) -> io::Result<()> {
        let secs = at.as_second();
        let nanos = at.subsec_nanosecond().max(0) as u32;
        let when = chrono::DateTime::from_timestamp(secs, nanos).unwrap_or_default().with_timezone(&chrono::Local);
        self.0.write_with_datetime(line, &when).map(|_| ())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

fn open_file(path: &Path, max_bytes: Option<u64>, max_files: usize, daily: bool, tz: &TimeZone) -> io::Result<Rolling> {
    // The date of the existing file's last write, so a restart after midnight still rotates.
    let day = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| Timestamp::try_from(t).ok())
        .map(|t| t.to_zoned(tz.clone()).date());
    let roll = Roll { max_bytes, daily: daily.then(|| tz.clone()), day };
    let appender = rolling_file::RollingFileAppender::new_with_buffer_capacity(path, roll, max_files, 64 * 1024)?;
    Ok(Rolling(appender))
}

/// The audit log handle, kept in `server::Shared`.
pub struct AuditLog {
    /// `None` when the sink is `off`.
    tx: Option<SyncSender<Msg>>,
    dropped: IntCounter,
}

impl AuditLog {
    /// Validate `raw` and start the log (see [`AuditSettings::from_raw`], [`AuditLog::start`]).
    ///
    /// # Errors
    /// Invalid settings, or the audit file cannot be opened (reported under `path`).
    pub fn from_raw(raw: &RawAudit, base: &Path, dropped: IntCounter) -> Result<AuditLog, Invalid> {
        let settings = AuditSettings::from_raw(raw, base)?;
        Self::start(&settings, dropped).map_err(|e| Invalid::single("path", e.to_string()))
    }

    /// Open the sink and start the writer thread. `dropped` counts lines the writer could not
    /// take (`cvgate_audit_dropped_total`).
    ///
    /// # Errors
    /// The audit file cannot be opened.
    pub fn start(s: &AuditSettings, dropped: IntCounter) -> io::Result<AuditLog> {
        let sink: Box<dyn LineSink> = match &s.sink {
            Sink::Off => return Ok(AuditLog { tx: None, dropped }),
            Sink::Stdout => Box::new(Plain(io::BufWriter::with_capacity(64 * 1024, io::stdout()))),
            Sink::File { path, max_bytes, max_files, daily } => {
                Box::new(open_file(path, *max_bytes, *max_files, *daily, &s.local_tz).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot open the audit file {}: {e}", path.display()))
                })?)
            }
        };
        Self::spawn(sink, s.local_tz.clone(), s.queue, dropped)
    }

    fn spawn(sink: Box<dyn LineSink>, tz: TimeZone, queue: NonZeroUsize, dropped: IntCounter) -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(queue.get());
        std::thread::Builder::new().name("cvgate-audit".into()).spawn(move || write_loop(rx, sink, tz))?;
        Ok(AuditLog { tx: Some(tx), dropped })
    }

    /// Queue one line. Never blocks: when the queue is full the line is dropped and counted.
    pub fn record(&self, line: AuditRecord) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Msg::Line(Box::new(line))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    /// An audit line for an event that is not a request (the population guard's trips and
    /// releases): `{"ts", "local", "event", ...fields}`.
    pub fn event(&self, at: Timestamp, event: &str, fields: serde_json::Value) {
        let Some(tx) = &self.tx else { return };
        let mut line = serde_json::Map::new();
        line.insert("ts".into(), at.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string().into());
        line.insert("event".into(), event.into());
        if let serde_json::Value::Object(f) = fields {
            line.extend(f);
        }
        let mut buf = serde_json::to_vec(&line).unwrap_or_default();
        buf.push(b'\n');
        if tx.try_send(Msg::Event(buf, at)).is_err() {
            self.dropped.inc();
        }
    }

    /// Wait (at most 10 s) until every line queued before this call is written and flushed.
    /// Called at shutdown; safe to call more than once, and lines recorded later are still
    /// written.
    pub async fn close(&self) {
        let Some(tx) = self.tx.clone() else { return };
        let (ack, done) = tokio::sync::oneshot::channel();
        // The queue may be full: wait for room on a blocking thread, not on the runtime.
        let sent = tokio::task::spawn_blocking(move || tx.send(Msg::Flush(ack)).is_ok());
        let wait = async {
            if matches!(sent.await, Ok(true)) {
                let _ = done.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), wait).await.is_err() {
            tracing::warn!("audit log did not flush within 10s; some lines may be lost");
        }
    }
}

/// The writer thread: serialise, write, flush whenever the queue stays empty for 2 ms (so a
/// quiet proxy has everything on disk within milliseconds, and a busy one writes in batches).
/// Ends when the [`AuditLog`] is dropped, after writing what was queued.
fn write_loop(rx: Receiver<Msg>, mut sink: Box<dyn LineSink>, tz: TimeZone) {
    let mut buf = Vec::with_capacity(1024);
    let mut stamps = Stamps::new(tz);
    let mut failing = false;
    let report = |r: io::Result<()>, failing: &mut bool| match r {
        Ok(()) => *failing = false,
        Err(e) => {
            // Once per failure streak: a full disk must not flood the logs as well.
            if !*failing {
                tracing::error!(error = %e, "writing the audit log failed");
            }
            *failing = true;
        }
    };
    loop {
        let msg = match rx.try_recv() {
            Ok(m) => m,
            Err(TryRecvError::Empty) => {
                // Give producers a moment to queue more before parking: under load the writer
                // then drains batches and senders rarely have to wake it (a futex wake and two
                // context switches per line were ~7 µs/request in docs/BENCHMARKS.md's profile).
                std::thread::sleep(Duration::from_millis(2));
                match rx.try_recv() {
                    Ok(m) => m,
                    Err(TryRecvError::Disconnected) => break,
                    Err(TryRecvError::Empty) => {
                        report(sink.flush(), &mut failing);
                        match rx.recv() {
                            Ok(m) => m,
                            Err(_) => break,
                        }
                    }
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        match msg {
            Msg::Line(r) => {
                buf.clear();
                r.write_json(&mut stamps, &mut buf);
                report(sink.write_line(&buf, r.ts), &mut failing);
            }
            Msg::Event(line, at) => report(sink.write_line(&line, at), &mut failing),
            Msg::Flush(ack) => {
                report(sink.flush(), &mut failing);
                let _ = ack.send(());
            }
        }
    }
    report(sink.flush(), &mut failing);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn record(at: &str, id: &str) -> AuditRecord {
        AuditRecord {
            ts: at.parse().unwrap(),
            request_id: id.into(),
            account: Some("acct-1".into()),
            org: Some("12345678".into()),
            client_ip: Some("192.0.2.7".parse().unwrap()),
            country: "NL".into(),
            route: Some("cv_search".into()),
            group: Some("cv".into()),
            tier: None,
            reserved: 20,
            delivered: 20,
            decision: "allowed".into(),
            fired: None,
            would_reject: vec![("org".into(), "day".into())],
            status: 200,
            bytes: 1234,
            duration: Duration::from_micros(12_345),
            truncated: false,
            count: crate::count::Certainty::Exact,
            masked: 0,
            mask_reason: None,
            at: None,
            method: Some(http::Method::GET),
            path: Some(http::uri::PathAndQuery::from_static("/api/v1/cvs?size=20&access_token=abc")),
            user_agent: Some(http::HeaderValue::from_static("curl/8.5.0")),
            asked: 20,
            mask_after: None,
            block: None,
            window: None,
        }
    }

    #[test]
    fn secrets_in_the_query_are_redacted_and_the_rest_kept() {
        assert_eq!(redact_query("/api/v1/cvs?size=20"), "/api/v1/cvs?size=20");
        assert_eq!(redact_query("/a?size=2&TOKEN=x&q=y"), "/a?size=2&TOKEN=REDACTED&q=y");
        assert_eq!(redact_query("/a?acc%65ss_token=x"), "/a?acc%65ss_token=REDACTED");
        assert_eq!(redact_query("/a?password"), "/a?password");
        assert_eq!(redact_query("/a"), "/a");
    }

    fn ams() -> TimeZone {
        TimeZone::get("Europe/Amsterdam").unwrap()
    }

    /// The per-second cache writes what jiff writes in full: within a second, across seconds,
    /// across the autumn DST change (the same local hour twice) and before 1970.
    #[test]
    fn cached_stamps_equal_full_formatting() {
        let mut st = Stamps::new(ams());
        let start: Timestamp = "2026-10-25T00:59:58.999999Z".parse().unwrap();
        let steps = [0i64, 1, 999, 1_000_001, 3_600_000_000, 7, 86_400_000_000, -200_000_000_000_000_000];
        let mut t = start;
        for (i, us) in steps.iter().enumerate() {
            t = t.checked_add(jiff::SignedDuration::from_micros(*us)).unwrap();
            let z = t.to_zoned(ams());
            assert_eq!(st.utc(t), t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(), "step {i}");
            assert_eq!(st.local(t), z.strftime("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string(), "step {i}");
        }
    }

    #[test]
    fn a_line_has_utc_and_local_time_and_every_field() {
        let mut out = Vec::new();
        record("2026-07-01T21:30:00Z", "r1").write_json(&mut Stamps::new(ams()), &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["ts"], "2026-07-01T21:30:00.000000Z");
        assert_eq!(v["local"], "2026-07-01T23:30:00.000+02:00"); // summer time
        assert_eq!(v["request_id"], "r1");
        assert_eq!(v["client_ip"], "192.0.2.7");
        assert_eq!(v["would_reject"][0]["scope"], "org");
        assert_eq!(v["scope"], serde_json::Value::Null);
        assert_eq!(v["duration_ms"], 12.345);
        let mut winter = Vec::new();
        record("2026-12-01T22:30:00Z", "r2").write_json(&mut Stamps::new(ams()), &mut winter);
        let v: serde_json::Value = serde_json::from_slice(&winter).unwrap();
        assert_eq!(v["local"], "2026-12-01T23:30:00.000+01:00");
    }

    #[test]
    fn settings_report_every_error_with_its_key() {
        let raw = RawAudit {
            sink: "file".into(),
            path: None,
            local_tz: "Mars/Olympus".into(),
            queue: 0,
            rotate: RawRotate { max_bytes: Some(0), max_files: 0, daily: true },
        };
        let errs = AuditSettings::from_raw(&raw, Path::new(".")).unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|(k, _)| k.as_str()).collect();
        for k in ["local_tz", "queue", "rotate.max_bytes", "rotate.max_files", "path"] {
            assert!(keys.contains(&k), "{k} missing in {errs:?}");
        }
        let raw = RawAudit { sink: "syslog".into(), ..RawAudit::default() };
        assert_eq!(AuditSettings::from_raw(&raw, Path::new(".")).unwrap_err().into_vec()[0].0, "sink");
        let raw = RawAudit { sink: "file".into(), path: Some("/no/such/dir/audit.log".into()), ..RawAudit::default() };
        assert_eq!(AuditSettings::from_raw(&raw, Path::new(".")).unwrap_err().into_vec()[0].0, "path");
    }

    /// A writer that blocks until the test opens the gate: the writer thread is stuck, as on a
    /// hung disk.
    #[derive(Clone)]
    struct Gated {
        gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gated {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let (lock, cv) = &*self.gate;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.out.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let gated = Gated { gate: Arc::new((Mutex::new(false), std::sync::Condvar::new())), out: Arc::default() };
        let dropped = IntCounter::new("dropped", "test").unwrap();
        let queue = NonZeroUsize::new(4).unwrap();
        let log = AuditLog::spawn(Box::new(Plain(gated.clone())), ams(), queue, dropped.clone()).unwrap();
        // The writer takes at most one line and blocks on it; the queue holds 4 more. Every
        // further record must return at once (this loop would hang otherwise) and be counted.
        let total = 50u64;
        for i in 0..total {
            log.record(record("2026-11-24T09:00:00Z", &format!("r{i}")));
        }
        assert!(dropped.get() >= total - 5, "dropped {} of {total}", dropped.get());
        {
            let (lock, cv) = &*gated.gate;
            *lock.lock().unwrap() = true;
            cv.notify_all();
        }
        log.close().await;
        let written = gated.out.lock().unwrap().split(|b| *b == b'\n').filter(|l| !l.is_empty()).count() as u64;
        assert_eq!(written + dropped.get(), total, "every line is either written or counted");
        assert!(written >= 4);
    }

    #[tokio::test]
    async fn close_writes_everything_queued_and_files_rotate_by_size_and_day() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let raw = RawAudit {
            sink: "file".into(),
            path: Some("audit.log".into()),
            rotate: RawRotate { max_bytes: Some(2000), max_files: 3, daily: true },
            ..RawAudit::default()
        };
        let dropped = IntCounter::new("dropped", "test").unwrap();
        let log = AuditLog::from_raw(&raw, dir.path(), dropped.clone()).unwrap();
        // 30 lines of ~450 bytes on one day: size rotation, 3 old files kept, older ones deleted.
        for i in 0..30 {
            log.record(record("2026-11-24T09:00:00Z", &format!("size-{i}")));
        }
        log.close().await;
        assert_eq!(dropped.get(), 0);
        let old = |n: usize| dir.path().join(format!("audit.log.{n}"));
        assert!(old(1).exists() && old(3).exists() && !old(4).exists());
        // 23:59 and 00:01 Amsterdam (22:59 and 23:01 UTC in winter): a new file at local midnight.
        log.record(record("2026-11-24T22:59:00Z", "late"));
        log.record(record("2026-11-24T23:01:00Z", "next-day"));
        log.close().await;
        let current = std::fs::read_to_string(&path).unwrap();
        assert_eq!(current.lines().count(), 1, "{current}");
        assert!(current.contains("next-day"));
        assert!(std::fs::read_to_string(old(1)).unwrap().contains("\"late\""));
    }
}
