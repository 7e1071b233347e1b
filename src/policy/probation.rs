//! Newcomer probation: an account or organisation cvgate first saw less than `days` ago gets the
//! probation tier (its own budgets in `quota.tiers`, and masking when `masking.tiers` lists it),
//! because registering KvK numbers and eHerkenning means costs an attacker days, not months.
//!
//! cvgate remembers when it first saw each subject ([`FirstSeen`]): kept in `seen.jsonl` beside
//! the block file (written by housekeeping, read at start), shared with the other replicas
//! through Redis (the earliest time any replica saw a subject wins), and seeded on
//! first deployment by `established_before` (everyone seen before that date is established)
//! and by `cvgate import-seen` from the audit logs the operator already keeps.
//!
//! Memory is bounded (`max_tracked`). At the bound a newcomer is not remembered, so it stays on
//! probation and is looked at again next time; a remembered subject is never evicted. Either
//! way the error is on the strict side: forgetting can only put a subject on probation, never
//! take one off it early.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use dashmap::DashMap;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::invalid::Invalid;

/// `probation:` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawProbation {
    /// Days a new account or organisation stays on probation; 0 switches probation off.
    pub days: u32,
    /// The quota tier (in `quota.tiers`) probation applies.
    pub tier: String,
    /// Subjects first seen before this date (`YYYY-MM-DD`, UTC) are established: set it to the
    /// day of the first deployment so nobody starts on probation.
    pub established_before: Option<String>,
    /// Subjects remembered at most.
    pub max_tracked: usize,
}

impl Default for RawProbation {
    fn default() -> Self {
        Self { days: 0, tier: "probation".into(), established_before: None, max_tracked: 1_000_000 }
    }
}

/// `probation:` validated.
#[derive(Debug, Clone)]
pub struct ProbationPolicy {
    /// `None`: off.
    pub period: Option<jiff::SignedDuration>,
    pub tier: std::sync::Arc<str>,
    pub established_before: Option<Timestamp>,
    pub max_tracked: usize,
}

impl Default for ProbationPolicy {
    fn default() -> Self {
        Self::from_raw(&RawProbation::default()).expect("the default is valid")
    }
}

impl ProbationPolicy {
    /// Validate; paths relative to `probation`. The tier is checked against `quota.tiers` by
    /// `config`.
    pub fn from_raw(raw: &RawProbation) -> Result<Self, Invalid> {
        let mut e = Invalid::new();
        if raw.tier.is_empty() {
            e.push("tier", "name the quota tier newcomers get");
        }
        if raw.max_tracked == 0 {
            e.push("max_tracked", "must be greater than 0");
        }
        let established_before = raw.established_before.as_deref().and_then(|d| match parse_day(d) {
            Some(t) => Some(t),
            None => {
                e.push("established_before", format!("expected a date like 2026-12-01, got {d:?}"));
                None
            }
        });
        let period = (raw.days > 0).then(|| jiff::SignedDuration::from_hours(24 * i64::from(raw.days)));
        e.into_result(Self { period, tier: raw.tier.as_str().into(), established_before, max_tracked: raw.max_tracked })
    }

    pub fn enabled(&self) -> bool {
        self.period.is_some()
    }

    /// Is a subject first seen at `first` (Unix seconds) still on probation at `now`?
    pub fn is_new(&self, first: i64, now: Timestamp) -> bool {
        let Some(period) = self.period else { return false };
        let Ok(first) = Timestamp::from_second(first) else { return false };
        if self.established_before.is_some_and(|b| first < b) {
            return false;
        }
        now.duration_since(first) < period
    }
}

/// `YYYY-MM-DD` (midnight UTC) or a full RFC 3339 timestamp.
fn parse_day(s: &str) -> Option<Timestamp> {
    s.parse::<Timestamp>().ok().or_else(|| {
        let d: jiff::civil::Date = s.parse().ok()?;
        d.to_zoned(jiff::tz::TimeZone::UTC).ok().map(|z| z.timestamp())
    })
}

/// Account or organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Account = 0,
    Org = 1,
}

impl Kind {
    /// The Redis hash field prefix and the file's kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Account => "account",
            Kind::Org => "org",
        }
    }
}

/// One line of `seen.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub kind: Kind,
    pub id: String,
    /// Unix seconds.
    pub first: i64,
}

impl Seen {
    /// The field in the replicas' shared hash: `account:<id>` or `org:<id>`.
    pub fn field(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.id)
    }

    /// A field of the shared hash back as a subject.
    pub fn from_field(field: &str, first: i64) -> Option<Seen> {
        let (kind, id) = field.split_once(':')?;
        let kind = match kind {
            "account" => Kind::Account,
            "org" => Kind::Org,
            _ => return None,
        };
        Some(Seen { kind, id: id.to_string(), first })
    }
}

type SeenMap = DashMap<Box<str>, i64, foldhash::fast::RandomState>;

/// When cvgate first saw each account and organisation.
#[derive(Debug, Default)]
pub struct FirstSeen {
    /// Accounts, then organisations: one map per kind, keyed by the id alone, so a lookup on
    /// the request path borrows the id (no `String` made per request) and hashes it with
    /// foldhash (seeded per process, as the quota store's maps).
    seen: [SeenMap; 2],
    /// Subjects first seen here and not yet shared with the other replicas.
    fresh: Mutex<Vec<Seen>>,
    dirty: AtomicBool,
}

impl FirstSeen {
    /// When `id` was first seen, remembering `now` for a newcomer (when there is room).
    pub fn observe(&self, kind: Kind, id: &str, now: Timestamp, max_tracked: usize) -> i64 {
        if let Some(t) = self.map(kind).get(id) {
            return *t;
        }
        let first = now.as_second();
        if self.len() >= max_tracked {
            return first; // not remembered: on probation, asked again next time
        }
        let t = *self.map(kind).entry(id.into()).or_insert(first);
        if t == first {
            self.dirty.store(true, Ordering::Release);
            self.fresh.lock().unwrap_or_else(PoisonError::into_inner).push(Seen { kind, id: id.to_string(), first });
        }
        t
    }

    /// Take another replica's (or an import's) time: the earliest wins. Returns whether it
    /// changed anything.
    pub fn merge(&self, s: &Seen) -> bool {
        let mut changed = false;
        self.map(s.kind)
            .entry(s.id.as_str().into())
            .and_modify(|t| {
                if s.first < *t {
                    *t = s.first;
                    changed = true;
                }
            })
            .or_insert_with(|| {
                changed = true;
                s.first
            });
        if changed {
            self.dirty.store(true, Ordering::Release);
        }
        changed
    }

    pub fn get(&self, kind: Kind, id: &str) -> Option<i64> {
        self.map(kind).get(id).map(|t| *t)
    }

    pub fn len(&self) -> usize {
        self.seen.iter().map(DashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.iter().all(DashMap::is_empty)
    }

    fn map(&self, kind: Kind) -> &SeenMap {
        &self.seen[kind as usize]
    }

    /// Every subject remembered (to share a whole file, e.g. after `import-seen`).
    pub fn entries(&self) -> Vec<Seen> {
        self.each().collect()
    }

    /// Every subject remembered, accounts then organisations, a map shard locked at a time.
    fn each(&self) -> impl Iterator<Item = Seen> + '_ {
        [Kind::Account, Kind::Org].into_iter().flat_map(move |kind| {
            self.map(kind).iter().map(move |e| Seen { kind, id: e.key().to_string(), first: *e.value() })
        })
    }

    /// Newcomers seen here since the last call (to share through Redis).
    pub fn take_fresh(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.fresh.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Put back what could not be shared (Redis down); tried again later.
    pub fn put_back(&self, mut not_shared: Vec<Seen>) {
        let mut fresh = self.fresh.lock().unwrap_or_else(PoisonError::into_inner);
        not_shared.append(&mut fresh);
        *fresh = not_shared;
    }

    /// Write `seen.jsonl` if anything changed since the last write. Blocking I/O.
    ///
    /// # Errors
    /// The file cannot be written (tried again next time).
    pub fn save_if_changed(&self, path: &Path) -> anyhow::Result<bool> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        let mut out = Vec::with_capacity(self.len() * 48);
        for s in self.each() {
            serde_json::to_writer(&mut out, &s)?;
            out.push(b'\n');
        }
        if let Err(e) = crate::persist::write_atomically(path, &out) {
            self.dirty.store(true, Ordering::Release);
            return Err(e);
        }
        Ok(true)
    }

    /// Read `seen.jsonl` (a missing file is empty); how many subjects it held.
    ///
    /// # Errors
    /// The file exists but a line is not a subject: refusing to start beats putting every
    /// employer on probation.
    pub fn load(&self, path: &Path) -> anyhow::Result<usize> {
        let Ok(text) = std::fs::read_to_string(path) else { return Ok(0) };
        let mut n = 0;
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let s: Seen = serde_json::from_str(line)
                .map_err(|e| anyhow::anyhow!("{}: line {}: not a seen subject: {e}", path.display(), i + 1))?;
            self.merge(&s);
            n += 1;
        }
        self.dirty.store(false, Ordering::Release);
        Ok(n)
    }
}

/// What `cvgate import-seen` read.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Imported {
    pub lines: u64,
    /// Subjects whose first-seen time the import set or made earlier.
    pub changed: u64,
    /// Lines that are not audit lines (no `ts`), skipped.
    pub skipped: u64,
}

/// Seed first-seen times from audit lines (cvgate's own, or any JSON lines with `ts` and
/// `account`/`org`, as the operator's logs before cvgate can be made to look): the earliest
/// line of each subject wins.
///
/// # Errors
/// The input cannot be read.
pub fn import_audit(input: impl std::io::BufRead, seen: &FirstSeen) -> std::io::Result<Imported> {
    #[derive(Deserialize)]
    struct Line {
        ts: Timestamp,
        account: Option<String>,
        org: Option<String>,
    }
    let mut out = Imported::default();
    for line in input.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.lines += 1;
        let Ok(l) = serde_json::from_str::<Line>(&line) else {
            out.skipped += 1;
            continue;
        };
        for (kind, id) in [(Kind::Account, l.account), (Kind::Org, l.org)] {
            if let Some(id) = id.filter(|i| !i.is_empty()) {
                out.changed += u64::from(seen.merge(&Seen { kind, id, first: l.ts.as_second() }));
            }
        }
    }
    Ok(out)
}

/// Is this request's subject on probation? A new account, or an account of a new
/// organisation, is (a new organisation's first accounts are what a spread harvest uses).
pub fn on_probation(
    policy: &ProbationPolicy,
    seen: &FirstSeen,
    account: Option<&str>,
    org: Option<&str>,
    now: Timestamp,
) -> bool {
    if !policy.enabled() {
        return false;
    }
    let mut new = false;
    for (kind, id) in [(Kind::Account, account), (Kind::Org, org)] {
        if let Some(id) = id.filter(|i| !i.is_empty()) {
            new |= policy.is_new(seen.observe(kind, id, now, policy.max_tracked), now);
        }
    }
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn policy(days: u32, before: Option<&str>) -> ProbationPolicy {
        let raw = RawProbation { days, established_before: before.map(str::to_string), ..RawProbation::default() };
        ProbationPolicy::from_raw(&raw).unwrap()
    }

    #[test]
    fn newcomers_are_on_probation_for_the_period_and_established_ones_never() {
        let p = policy(7, Some("2026-11-01"));
        let seen = FirstSeen::default();
        let day0 = t("2026-11-10T09:00:00Z");
        assert!(on_probation(&p, &seen, Some("new-acct"), Some("11111111"), day0));
        assert!(on_probation(&p, &seen, Some("new-acct"), Some("11111111"), t("2026-11-17T08:59:59Z")));
        assert!(!on_probation(&p, &seen, Some("new-acct"), Some("11111111"), t("2026-11-17T09:00:00Z")));
        // Seen before established_before (an import of old audit logs): established at once.
        seen.merge(&Seen { kind: Kind::Account, id: "old".into(), first: t("2026-10-01T00:00:00Z").as_second() });
        seen.merge(&Seen { kind: Kind::Org, id: "22222222".into(), first: t("2026-10-01T00:00:00Z").as_second() });
        assert!(!on_probation(&p, &seen, Some("old"), Some("22222222"), day0));
        // An established organisation's brand-new account is on probation (the account is new).
        assert!(on_probation(&p, &seen, Some("fresh"), Some("22222222"), day0));
        // Off: nobody.
        assert!(!on_probation(&policy(0, None), &seen, Some("x"), Some("y"), day0));
    }

    #[test]
    fn the_earliest_time_wins_and_the_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seen.jsonl");
        let seen = FirstSeen::default();
        let now = t("2026-11-10T09:00:00Z");
        seen.observe(Kind::Account, "a", now, 10);
        assert_eq!(seen.take_fresh().len(), 1);
        assert!(seen.merge(&Seen { kind: Kind::Account, id: "a".into(), first: now.as_second() - 100 }));
        assert!(!seen.merge(&Seen { kind: Kind::Account, id: "a".into(), first: now.as_second() }));
        assert!(seen.save_if_changed(&path).unwrap());
        assert!(!seen.save_if_changed(&path).unwrap(), "nothing changed");
        let again = FirstSeen::default();
        assert_eq!(again.load(&path).unwrap(), 1);
        assert_eq!(again.get(Kind::Account, "a"), Some(now.as_second() - 100));
        std::fs::write(&path, "not json\n").unwrap();
        assert!(FirstSeen::default().load(&path).unwrap_err().to_string().contains("line 1"));
    }

    #[test]
    fn at_the_bound_newcomers_stay_on_probation_and_nobody_is_evicted() {
        let p = ProbationPolicy { max_tracked: 2, ..policy(7, None) };
        let seen = FirstSeen::default();
        let day0 = t("2026-11-10T09:00:00Z");
        on_probation(&p, &seen, Some("a"), None, day0);
        on_probation(&p, &seen, Some("b"), None, day0);
        let later = t("2026-11-20T09:00:00Z");
        assert!(on_probation(&p, &seen, Some("c"), None, later), "not remembered: still new");
        assert!(on_probation(&p, &seen, Some("c"), None, t("2026-12-20T09:00:00Z")), "and never graduates early");
        assert!(!on_probation(&p, &seen, Some("a"), None, later), "remembered subjects stay");
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn audit_lines_seed_the_earliest_time() {
        let seen = FirstSeen::default();
        let log = concat!(
            r#"{"ts":"2026-11-03T10:00:00.000Z","account":"a","org":"11111111","decision":"allowed"}"#,
            "\n",
            r#"{"ts":"2026-11-01T08:00:00.000Z","account":"a","org":null}"#,
            "\nnot json\n\n",
        );
        let r = import_audit(log.as_bytes(), &seen).unwrap();
        assert_eq!(r, Imported { lines: 3, changed: 3, skipped: 1 });
        assert_eq!(seen.get(Kind::Account, "a"), Some(t("2026-11-01T08:00:00Z").as_second()));
        assert_eq!(seen.get(Kind::Org, "11111111"), Some(t("2026-11-03T10:00:00Z").as_second()));
    }

    #[test]
    fn validation_names_the_key() {
        let raw = RawProbation { established_before: Some("soon".into()), max_tracked: 0, ..RawProbation::default() };
        let keys: Vec<String> =
            ProbationPolicy::from_raw(&raw).unwrap_err().into_vec().into_iter().map(|e| e.0).collect();
        assert_eq!(keys, ["max_tracked", "established_before"]);
        assert_eq!(policy(3, Some("2026-12-01")).established_before, Some(t("2026-12-01T00:00:00Z")));
    }
}
