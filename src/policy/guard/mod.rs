//! The population guard: stops a harvest spread thinly over many organisations, which no
//! per-account, per-org or per-network budget sees (75 organisations × 1 account × 2,000 CVs
//! is 150,000 CVs in a day; issue #19).
//!
//! It owns the `guard:` config section, per-cohort sliding sums of delivered CVs, per-hour-of-
//! week baselines, and one escalating state machine per rule. It never reads the clock, logs
//! or does I/O: the caller feeds deliveries ([`PopulationGuard::add`], once per CV response
//! end), asks per request ([`PopulationGuard::action_for`]), evaluates once a second
//! ([`PopulationGuard::tick`], which returns the transitions to log, audit and count), and
//! carries the sums to and from Redis ([`PopulationGuard::take_deltas`],
//! [`PopulationGuard::set_remote`]).
//!
//! # Parts
//! - [`cohort`]: `all`, `probation`, `tier:<name>`, `country:<CC>`, and the [`Subject`] a request is.
//! - [`sums`]: a ring of 1,440 one-minute slots per cohort; local and remote counts.
//! - [`baseline`]: EWMA per local hour of the week; the threshold a rule trips at.
//! - [`machine`]: Normal → steps → Normal, with the operator's acknowledge, release and trip.
//! - [`config`]: `guard:` as written and validated.
//!
//! # Concurrency
//! The request path (`add`, `action_for`) takes no lock shared with other requests beyond a
//! cohort's ring mutex for one slot update; `action_for` reads an `ArcSwap` snapshot of the
//! rules at `mask` or `pause`, republished by whoever changes a level. Rule state sits behind
//! one mutex taken by `tick` and the admin operations only.
//!
//! # Sharing between replicas (prepared for the integrator)
//! Each replica decides on its own sums plus the other replicas' totals, from memory, never
//! waiting on Redis. Suggested layout: a hash per cohort and minute,
//! `cvgate:guard:{cohort}:{minute}`, field = this process's id (fresh per start, so a restart's
//! counts stay counted as "others"), value = [`Delta::local_total`] written with `HSET`
//! (idempotent: a retried or repeated write does not double count, unlike `INCRBY` of
//! [`Delta::cvs`]), `EXPIRE` 25h. The once-a-second sync pushes `take_deltas()`, then reads
//! back the current and previous minute of each [`PopulationGuard::cohorts`] (the whole day
//! after a start or an outage) and calls `set_remote` with the sum of the *other* fields. Every
//! replica then sees the same sums one sync late, learns the same baselines and takes the same
//! transitions; the operator's acknowledge/release/trip are [`ops::OperatorOp`] values, applied
//! here and carried to the other replicas by `crate::share` (as pauses are).

pub mod baseline;
pub mod cohort;
pub mod config;
pub mod machine;
pub mod ops;
pub mod sums;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use baseline::Baseline;
pub use cohort::{Cohort, Subject};
pub use config::{GuardPolicy, Level, RawGuard, RawRule};
pub use machine::{Machine, Reason};
pub use ops::{OpKind, OperatorOp};
pub use sums::{minute_of, Delta};

use config::Exempt;
use sums::Sums;

/// An hour is learnt this many minutes after it ends, once the other replicas' last counts
/// of it have arrived.
const SETTLE_MINUTES: i64 = 2;

/// What the guard asks of one request: the first rule (config order) masking its cohorts, and
/// the first pausing them. Nothing for exempt subjects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Action {
    pub mask: Option<Arc<str>>,
    pub pause: Option<Arc<str>>,
}

/// A rule changed level: for the caller to log, audit and count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    pub rule: String,
    pub cohort: Cohort,
    pub from: Level,
    pub to: Level,
    pub reason: Reason,
    /// The window's sum at the last evaluation, and the threshold it was held against
    /// (`None`: no threshold yet, the baseline still learning).
    pub sum: u64,
    pub threshold: Option<u64>,
    pub at: Timestamp,
}

/// One rule as the admin API and metrics show it (sum and threshold as of the last tick).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleState {
    pub name: String,
    pub cohort: Cohort,
    pub step: Level,
    pub since: Option<Timestamp>,
    pub acknowledged: bool,
    pub sum: u64,
    pub threshold: Option<u64>,
}

/// What outlives a restart: each rule's level and baseline (weeks of learning). The sums are
/// not in it: after a restart they come back from the other replicas, or start empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedGuard {
    pub rules: Vec<SavedRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedRule {
    pub name: String,
    pub cohort: Cohort,
    pub machine: Machine,
    pub baseline: Option<Baseline>,
}

/// An admin operation named something the guard cannot do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("no guard rule named {0:?}")]
    UnknownRule(String),
    #[error("guard rule {0:?} is not tripped")]
    NotTripped(String),
    #[error("guard rule {rule:?} has no step {level}")]
    NoSuchStep { rule: String, level: Level },
}

/// The guard: sums, rules and their states.
pub struct PopulationGuard {
    sums: Sums,
    inner: Mutex<Inner>,
    published: ArcSwap<Published>,
}

struct Inner {
    policy: GuardPolicy,
    /// One per rule, in config order.
    runs: Vec<Run>,
    /// Hours starting before this minute are not learnt: the guard did not see them whole.
    learn_from: i64,
    /// The last Unix hour learnt.
    learned_through: i64,
}

#[derive(Default)]
struct Run {
    machine: Machine,
    baseline: Option<Baseline>,
    sum: u64,
    threshold: Option<u64>,
    /// The baseline's expectation for the window (first minute, last minute, hours learned
    /// through): it changes once a minute or an hour, and working it out converts every hour of
    /// the window to local time, so it is not redone every second.
    expected: Option<((i64, i64, i64), Option<f64>)>,
}

/// What the request path reads: the rules now at mask or pause, and who is exempt.
#[derive(Default)]
struct Published {
    active: Vec<Active>,
    exempt: Arc<Exempt>,
}

struct Active {
    name: Arc<str>,
    cohort: Cohort,
    level: Level,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    fn fresh_runs(policy: &GuardPolicy) -> Vec<Run> {
        let run = |r: &config::Rule| Run { baseline: r.baseline.map(|_| Baseline::default()), ..Run::default() };
        policy.rules.iter().map(run).collect()
    }

    fn position(&self, rule: &str) -> Result<usize, GuardError> {
        self.policy.rules.iter().position(|r| *r.name == *rule).ok_or_else(|| GuardError::UnknownRule(rule.into()))
    }

    /// Take over saved rules of the same name and cohort: the level when the rule still has
    /// that step, the baseline when it still has one.
    fn adopt(&mut self, saved: SavedGuard) {
        for s in saved.rules {
            let found = self.policy.rules.iter().position(|r| *r.name == *s.name && r.cohort == s.cohort);
            let Some(i) = found else { continue };
            let (rule, run) = (&self.policy.rules[i], &mut self.runs[i]);
            if s.machine.level == Level::Normal || rule.steps.contains(&s.machine.level) {
                run.machine = s.machine;
            }
            if let (Some(b), Some(_)) = (s.baseline, &run.baseline) {
                if b.is_well_formed() {
                    run.baseline = Some(b);
                    run.expected = None;
                }
            }
        }
    }

    fn save(&self) -> SavedGuard {
        let rules = self.policy.rules.iter().zip(&self.runs);
        let saved = |(r, run): (&config::Rule, &Run)| SavedRule {
            name: r.name.to_string(),
            cohort: r.cohort.clone(),
            machine: run.machine.clone(),
            baseline: run.baseline.clone(),
        };
        SavedGuard { rules: rules.map(saved).collect() }
    }

    /// Feed every hour that has closed (and settled) since the last call to the baselines;
    /// at most the last day's, which the ring still holds.
    fn learn(&mut self, sums: &Sums, now_minute: i64) {
        let closed = (now_minute - SETTLE_MINUTES).div_euclid(60); // hours before it are done
        let first = (self.learned_through + 1).max((self.learn_from + 59).div_euclid(60)).max(closed - 22);
        let Inner { policy, runs, .. } = self;
        for hour in first..closed {
            for (rule, run) in policy.rules.iter().zip(runs.iter_mut()) {
                if let (Some(spec), Some(b)) = (rule.baseline, run.baseline.as_mut()) {
                    let sum = sums.sum_minutes(&rule.cohort, hour * 60, hour * 60 + 59);
                    b.learn(&policy.tz, hour, sum, spec.alpha);
                }
            }
        }
        self.learned_through = self.learned_through.max(closed - 1);
    }

    fn transition(&self, i: usize, (from, to, reason): machine::Change, at: Timestamp) -> Transition {
        let (rule, run) = (&self.policy.rules[i], &self.runs[i]);
        let (sum, threshold) = (run.sum, run.threshold);
        Transition { rule: rule.name.to_string(), cohort: rule.cohort.clone(), from, to, reason, sum, threshold, at }
    }
}

impl PopulationGuard {
    /// A guard for `policy` that starts at `now`, knowing nothing.
    pub fn new(policy: GuardPolicy, now: Timestamp) -> Self {
        let named: Vec<Cohort> = policy.rules.iter().map(|r| r.cohort.clone()).collect();
        let runs = Inner::fresh_runs(&policy);
        let inner = Inner { policy, runs, learn_from: minute_of(now), learned_through: i64::MIN / 2 };
        let guard = PopulationGuard {
            sums: Sums::new(&named, now),
            inner: Mutex::new(inner),
            published: ArcSwap::from_pointee(Published::default()),
        };
        guard.publish(&lock(&guard.inner));
        guard
    }

    /// Count `cvs` delivered to `who` at `now` (once per CV response, at its end). Exempt
    /// subjects are not counted: a contracted bulk partner must not trip the guard for everyone.
    pub fn add(&self, who: &Subject<'_>, cvs: u64, now: Timestamp) {
        if !self.published.load().exempt.covers(who) {
            self.sums.add(who, cvs, now);
        }
    }

    /// What to do with this request: O(rules at mask or pause), no lock, no allocation.
    pub fn action_for(&self, who: &Subject<'_>) -> Action {
        let p = self.published.load();
        let mut a = Action::default();
        for r in p.active.iter().filter(|r| r.cohort.contains(who)) {
            let slot = if r.level == Level::Pause { &mut a.pause } else { &mut a.mask };
            if slot.is_none() {
                *slot = Some(r.name.clone());
            }
        }
        if a != Action::default() && p.exempt.covers(who) {
            return Action::default();
        }
        a
    }

    /// Evaluate every rule at `now` (once a second): learn the hours that closed, sum each
    /// rule's window, step its machine. Returns the changes of level, in rule order.
    pub fn tick(&self, now: Timestamp) -> Vec<Transition> {
        let mut inner = lock(&self.inner);
        let now_minute = minute_of(now);
        inner.learn(&self.sums, now_minute);
        let mut changes = Vec::new();
        let Inner { policy, runs, learned_through, .. } = &mut *inner;
        for (i, (rule, run)) in policy.rules.iter().zip(runs.iter_mut()).enumerate() {
            let sum = self.sums.sum(&rule.cohort, rule.window_minutes, now);
            let from = now_minute - i64::from(rule.window_minutes) + 1;
            let key = (from, now_minute, *learned_through);
            let expected = match run.expected {
                Some((k, e)) if k == key => e,
                _ => {
                    let usual = run.baseline.as_ref().zip(rule.baseline);
                    let e = usual.and_then(|(b, spec)| b.expected(&policy.tz, from, now_minute, spec.weeks));
                    run.expected = Some((key, e));
                    e
                }
            };
            run.threshold = baseline::threshold(rule, expected);
            run.sum = sum;
            let over = run.threshold.is_some_and(|t| sum > t);
            if let Some(change) = run.machine.step(rule, over, now) {
                changes.push((i, change));
            }
        }
        let out: Vec<Transition> = changes.into_iter().map(|(i, c)| inner.transition(i, c, now)).collect();
        if !out.is_empty() {
            self.publish(&inner);
        }
        out
    }

    /// Hold `rule` at its current step: no further escalation until it is back to Normal.
    ///
    /// # Errors
    /// No such rule, or the rule is not tripped.
    pub fn acknowledge(&self, rule: &str) -> Result<(), GuardError> {
        let mut inner = lock(&self.inner);
        let i = inner.position(rule)?;
        if inner.runs[i].machine.acknowledge() {
            Ok(())
        } else {
            Err(GuardError::NotTripped(rule.into()))
        }
    }

    /// Back to Normal now; no re-trip for the rule's `cool_down`. `None` when it was Normal
    /// already (the re-trip is suppressed all the same).
    ///
    /// # Errors
    /// No such rule.
    pub fn release(&self, rule: &str, now: Timestamp) -> Result<Option<Transition>, GuardError> {
        let mut inner = lock(&self.inner);
        let i = inner.position(rule)?;
        let change = inner.runs[i].machine.release(now);
        let t = change.map(|c| inner.transition(i, c, now));
        self.publish(&inner);
        Ok(t)
    }

    /// Force `rule` to `level`, one of its steps (see [`Machine::trip`]).
    ///
    /// # Errors
    /// No such rule, or `level` is not one of its steps (`normal` is [`PopulationGuard::release`]).
    pub fn trip(&self, rule: &str, level: Level, now: Timestamp) -> Result<Transition, GuardError> {
        let mut inner = lock(&self.inner);
        let i = inner.position(rule)?;
        if !inner.policy.rules[i].steps.contains(&level) {
            return Err(GuardError::NoSuchStep { rule: rule.into(), level });
        }
        let change = inner.runs[i].machine.trip(level, now);
        let t = inner.transition(i, change, now);
        self.publish(&inner);
        Ok(t)
    }

    /// Every rule, in config order, as of the last tick.
    pub fn states(&self) -> Vec<RuleState> {
        let inner = lock(&self.inner);
        let state = |(r, run): (&config::Rule, &Run)| RuleState {
            name: r.name.to_string(),
            cohort: r.cohort.clone(),
            step: run.machine.level,
            since: run.machine.since,
            acknowledged: run.machine.acknowledged,
            sum: run.sum,
            threshold: run.threshold,
        };
        inner.policy.rules.iter().zip(&inner.runs).map(state).collect()
    }

    /// A new config (a reload): rules of the same name and cohort keep their level and
    /// baseline; the sums carry on.
    pub fn reconfigure(&self, policy: GuardPolicy, now: Timestamp) {
        let mut inner = lock(&self.inner);
        let saved = inner.save();
        let named: Vec<Cohort> = policy.rules.iter().map(|r| r.cohort.clone()).collect();
        self.sums.track(&named, now);
        inner.runs = Inner::fresh_runs(&policy);
        inner.policy = policy;
        inner.adopt(saved);
        self.publish(&inner);
    }

    /// Levels and baselines, to write to disk.
    pub fn save(&self) -> SavedGuard {
        lock(&self.inner).save()
    }

    /// Take back what [`PopulationGuard::save`] wrote (rules matched by name and cohort).
    /// Hours before `now` are not learnt: the sums of the time the guard was down are missing.
    pub fn restore(&self, saved: SavedGuard, now: Timestamp) {
        let mut inner = lock(&self.inner);
        inner.adopt(saved);
        inner.learn_from = inner.learn_from.max(minute_of(now));
        self.publish(&inner);
    }

    /// What this replica delivered since the last call, per cohort and minute (for Redis).
    pub fn take_deltas(&self) -> Vec<Delta> {
        self.sums.take_deltas()
    }

    /// What the other replicas together delivered to `cohort` in Unix `minute` (a total, which
    /// replaces the previous one). `false` when the minute is outside the day up to `now`.
    pub fn set_remote(&self, cohort: &Cohort, minute: i64, total: u64, now: Timestamp) -> bool {
        self.sums.set_remote(cohort, minute, total, now)
    }

    /// The cohorts being summed (for the sync to read back).
    pub fn cohorts(&self) -> Vec<Cohort> {
        self.sums.cohorts()
    }

    /// Local + remote CVs of `cohort` over the `window` minutes up to `now` (metrics, admin).
    pub fn sum(&self, cohort: &Cohort, window: u32, now: Timestamp) -> u64 {
        self.sums.sum(cohort, window, now)
    }

    fn publish(&self, inner: &Inner) {
        let active = inner.policy.rules.iter().zip(&inner.runs).filter(|(_, run)| run.machine.level >= Level::Mask);
        let active =
            active.map(|(r, run)| Active { name: r.name.clone(), cohort: r.cohort.clone(), level: run.machine.level });
        let exempt = inner.policy.exempt.clone();
        self.published.store(Arc::new(Published { active: active.collect(), exempt }));
    }
}
