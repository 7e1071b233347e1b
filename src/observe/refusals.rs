//! The last refusals of each account, organisation and client IP, kept in memory so that the
//! admin API's `explain` can answer "why was this employer refused?" without a trip through the
//! audit log (which stays the full record; each refusal carries its `request_id` to find it
//! there).
//!
//! Bounded: the last [`PER_SUBJECT`] refusals per subject, at most [`MAX_SUBJECTS`] subjects;
//! past that, the subject refused longest ago is forgotten first. An IP is kept as the exact
//! address (not its quota prefix). Recording is one short critical section of one of
//! [`SHARDS`] mutexes picked by the subject's hash, so refusals of different subjects rarely
//! wait for each other; reading copies a subject's list out. Nothing here is persisted or shared
//! between replicas: a replica knows the refusals it answered since it started.
//!
//! Memory: a refusal is ~200 bytes and is shared by the up to three subjects it is filed under,
//! so the bound is about `MAX_SUBJECTS × PER_SUBJECT × 200 B` ≈ 32 MB in the worst case (every
//! subject refused 16 times); usually far less.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use jiff::Timestamp;

use crate::ctx::{Ctx, Decision};

/// Refusals kept per subject.
pub const PER_SUBJECT: usize = 16;
/// Subjects kept at most (accounts, organisations and IPs together).
pub const MAX_SUBJECTS: usize = 10_000;
/// Independent locks.
pub const SHARDS: usize = 16;

/// One refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The order refusals were filed in here (times may be equal): newer is larger.
    pub seq: u64,
    pub at: Timestamp,
    pub request_id: String,
    pub route: Option<Arc<str>>,
    /// The problem slug that answered (`quota-exceeded`, `blocked`, `closed`, ...).
    pub decision: &'static str,
    /// The quota bucket that fired, if one did.
    pub scope: Option<String>,
    pub horizon: Option<String>,
    pub status: u16,
}

/// What a refusal is filed under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    Account(String),
    Org(String),
    Ip(IpAddr),
}

/// One subject's refusals, newest last, and when it was last refused (the eviction order).
struct Kept {
    list: VecDeque<Arc<Refusal>>,
    seq: u64,
}

#[derive(Default)]
struct Shard {
    subjects: HashMap<Subject, Kept>,
    /// `(seq, subject)` in the order refused; an entry whose `seq` is no longer the subject's
    /// is stale (it was refused again since) and is skipped. Rebuilt when it holds twice the
    /// subjects, so it stays within a small multiple of them.
    order: VecDeque<(u64, Subject)>,
    next: u64,
}

impl Shard {
    fn file(&mut self, who: Subject, r: &Arc<Refusal>, cap: usize) {
        self.next += 1;
        let seq = self.next;
        match self.subjects.entry(who.clone()) {
            Entry::Occupied(mut o) => {
                let k = o.get_mut();
                if k.list.len() == PER_SUBJECT {
                    k.list.pop_front();
                }
                k.list.push_back(r.clone());
                k.seq = seq;
            }
            Entry::Vacant(v) => {
                v.insert(Kept { list: VecDeque::from([r.clone()]), seq });
            }
        }
        self.order.push_back((seq, who));
        while self.subjects.len() > cap {
            let Some((seq, oldest)) = self.order.pop_front() else { break };
            if self.subjects.get(&oldest).is_some_and(|k| k.seq == seq) {
                self.subjects.remove(&oldest);
            }
        }
        if self.order.len() > 2 * self.subjects.len().max(8) {
            let mut live: Vec<(u64, Subject)> = self.subjects.iter().map(|(s, k)| (k.seq, s.clone())).collect();
            live.sort_unstable_by_key(|(seq, _)| *seq);
            self.order = live.into();
        }
    }
}

/// The last refusals per subject (see the module doc).
pub struct Refusals {
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
    /// Subjects per shard.
    cap: usize,
    /// The next [`Refusal::seq`].
    seq: std::sync::atomic::AtomicU64,
}

impl Default for Refusals {
    fn default() -> Self {
        Self::with_capacity(MAX_SUBJECTS)
    }
}

impl Refusals {
    /// At most about `subjects` subjects (rounded up to a multiple of [`SHARDS`]).
    pub fn with_capacity(subjects: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
            cap: subjects.div_ceil(SHARDS).max(1),
            seq: Default::default(),
        }
    }

    fn shard(&self, who: &Subject) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(who) % SHARDS as u64) as usize]
    }

    /// File a finished request under its account, organisation and client IP, if cvgate
    /// refused it (other requests are not kept).
    pub fn record(&self, ctx: &Ctx, now: Timestamp) {
        let Decision::Refused(decision) = ctx.decision else { return };
        let (scope, horizon) = ctx.fired.clone().unzip();
        let r = Arc::new(Refusal {
            seq: self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            at: now,
            request_id: ctx.request_id.clone(),
            route: ctx.route.clone(),
            decision,
            scope,
            horizon,
            status: ctx.status,
        });
        let subjects = [
            ctx.account.as_ref().filter(|a| !a.is_empty()).map(|a| Subject::Account(a.clone())),
            ctx.org.as_ref().filter(|o| !o.is_empty()).map(|o| Subject::Org(o.clone())),
            ctx.client_ip.map(Subject::Ip),
        ];
        for who in subjects.into_iter().flatten() {
            self.shard(&who).lock().unwrap_or_else(PoisonError::into_inner).file(who, &r, self.cap);
        }
    }

    /// The refusals kept for `who`, newest first.
    pub fn of(&self, who: &Subject) -> Vec<Arc<Refusal>> {
        let shard = self.shard(who).lock().unwrap_or_else(PoisonError::into_inner);
        shard.subjects.get(who).map(|k| k.list.iter().rev().cloned().collect()).unwrap_or_default()
    }

    /// Subjects kept (tests and the bound).
    pub fn subjects(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).subjects.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(account: &str, ip: [u8; 4], slug: &'static str, id: u32) -> Ctx {
        Ctx {
            request_id: format!("req-{id}"),
            account: Some(account.into()),
            client_ip: Some(IpAddr::from(ip)),
            decision: Decision::Refused(slug),
            fired: (slug == "quota-exceeded").then(|| ("account".into(), "day".into())),
            status: 429,
            ..Ctx::default()
        }
    }

    fn t(s: u32) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + i64::from(s)).unwrap()
    }

    #[test]
    fn the_last_refusals_per_subject_newest_first_and_only_refusals() {
        let r = Refusals::default();
        for i in 0..20 {
            r.record(&refused("acct-1", [10, 0, 0, 1], "quota-exceeded", i), t(i));
        }
        r.record(&Ctx { account: Some("acct-1".into()), ..Ctx::default() }, t(30)); // allowed
        let got = r.of(&Subject::Account("acct-1".into()));
        assert_eq!(got.len(), PER_SUBJECT);
        assert_eq!(got[0].request_id, "req-19");
        assert_eq!(got[PER_SUBJECT - 1].request_id, "req-4");
        assert_eq!((got[0].scope.as_deref(), got[0].horizon.as_deref()), (Some("account"), Some("day")));
        assert_eq!(r.of(&Subject::Ip(IpAddr::from([10, 0, 0, 1]))).len(), PER_SUBJECT);
        assert!(r.of(&Subject::Org("12345678".into())).is_empty());
    }

    #[test]
    fn past_the_bound_the_subject_refused_longest_ago_goes_first() {
        let r = Refusals::with_capacity(SHARDS * 4);
        // A subject refused again and again stays while a flood of others passes through. Eviction
        // is per shard (4 subjects here) and shards are picked by a random hash, so "again and
        // again" must be more often than a shard can fill: after every other subject's refusal
        // (2 new subjects at most), never evicted whatever shards they land in. (Refused once
        // every 8, it was evicted in 2 of 15 runs, when 4 of the 16 new subjects hit its shard.)
        for i in 0..10_000u32 {
            let ip = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
            r.record(&refused(&format!("flood-{i}"), ip, "blocked", i), t(i));
            r.record(&refused("steady", [192, 0, 2, 1], "quota-exceeded", i), t(i));
        }
        assert!(r.subjects() <= SHARDS * 4, "{} subjects kept", r.subjects());
        assert_eq!(r.of(&Subject::Account("steady".into())).len(), PER_SUBJECT);
        assert!(r.of(&Subject::Account("flood-0".into())).is_empty(), "the oldest went");
        assert_eq!(r.of(&Subject::Account("flood-9999".into())).len(), 1);
        for s in &r.shards {
            let s = s.lock().unwrap();
            assert!(s.order.len() <= 2 * s.subjects.len().max(8) + 1, "order queue stays bounded");
        }
    }
}
