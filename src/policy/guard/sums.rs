//! Sliding sums: per cohort, CVs delivered per minute over the last day, this replica's own and
//! the other replicas' side by side.
//!
//! Each cohort keeps a ring of [`SLOTS`] one-minute slots behind a small mutex (held for one
//! slot update by `add`; for a window's sum, up to 1,440 additions, by the once-a-second tick).
//! Slot `m % SLOTS` holds minute `m` (Unix minutes) for `head - SLOTS < m ≤ head`; moving
//! `head` forward clears the slots it passes over, so nothing older than a day is ever summed.
//! A slot is two `u32`s (local, remote): 8 bytes, 11.5 KiB a cohort.
//!
//! A window's sum is kept running: for each window length asked (a rule set names a few), the
//! sum of its minutes before `head` is remembered and moved along as `head` moves (the minutes
//! leaving subtracted before their slots are cleared, the minute closing added), as late
//! responses and other replicas' totals change a minute inside it. The tick (once a second in
//! the proxy, once per log second in `cvgate simulate`) then reads one number and the head
//! minute instead of summing up to 2 × 1,440 slots per rule.
//!
//! Cohorts live in a registry read through `ArcSwap` (the request path takes no registry lock);
//! `all`, `probation` and every cohort a rule names are made up front, other tiers and
//! countries on first sight, up to [`MAX_TIERS`] and [`MAX_COUNTRIES`] (past the cap a new one
//! is not tracked: its CVs still count in `all`, `probation` and its other cohorts).
//!
//! # Sharing with other replicas
//! `add` also notes what it added per minute; [`Sums::take_deltas`] hands those out (and this
//! replica's running total of each such minute). [`Sums::set_remote`] stores, per cohort and
//! minute, what *the other replicas* delivered. Sums are local + remote, read from memory, so a
//! decision never waits on Redis; it lags the others by one sync period.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

use super::cohort::{Cohort, Subject};

/// One-minute slots kept per cohort: one day.
pub const SLOTS: usize = 1440;
/// Tiers tracked beyond those rules name.
pub const MAX_TIERS: usize = 64;
/// Countries tracked beyond those rules name.
pub const MAX_COUNTRIES: usize = 300;

/// Unix minute of an instant.
pub fn minute_of(t: jiff::Timestamp) -> i64 {
    t.as_second().div_euclid(60)
}

/// What this replica added to one cohort in one minute since the last [`Sums::take_deltas`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Delta {
    pub cohort: Cohort,
    /// Unix minute.
    pub minute: i64,
    /// CVs added since the last take.
    pub cvs: u64,
    /// This replica's whole count for the minute so far (an idempotent value to write).
    pub local_total: u64,
}

/// One cohort's last day.
struct Ring {
    head: i64,
    local: Box<[u32; SLOTS]>,
    remote: Box<[u32; SLOTS]>,
    /// Minutes added to since the last take, with the CVs added; one entry per minute.
    pending: Vec<(i64, u64)>,
    /// Running sums by window length `w`: local + remote over minutes `head - w + 1 ..= head - 1`.
    memo: Vec<(i64, u64)>,
}

/// Window lengths kept running per cohort (a rule set names a few per cohort).
const MEMO: usize = 8;

fn slot(minute: i64) -> usize {
    minute.rem_euclid(SLOTS as i64) as usize
}

fn clamp32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Ring {
    fn new(now_minute: i64) -> Self {
        Ring {
            head: now_minute,
            local: Box::new([0; SLOTS]),
            remote: Box::new([0; SLOTS]),
            pending: Vec::new(),
            memo: Vec::new(),
        }
    }

    /// Move `head` to `minute` if it is later, clearing the slots passed over.
    fn advance(&mut self, minute: i64) {
        if minute <= self.head {
            return;
        }
        // The running sums first, while the slots leaving are still there: minute `head` closes,
        // minutes `head - w + 1 ..= minute - w` leave (the minutes between are empty).
        let head = self.head;
        let closing = self.at(head);
        let mut memo = std::mem::take(&mut self.memo);
        memo.retain_mut(|(w, sum)| {
            if minute - head >= *w {
                return false; // the whole window moved on: summed afresh when next asked
            }
            let leaving = (head - *w + 1..=minute - *w).map(|m| self.at(m)).sum::<u64>();
            debug_assert!(*sum + closing >= leaving, "a running sum lost track");
            *sum = (*sum + closing).saturating_sub(leaving);
            true
        });
        self.memo = memo;
        let n = (minute - self.head).min(SLOTS as i64);
        for m in minute - n + 1..=minute {
            self.local[slot(m)] = 0;
            self.remote[slot(m)] = 0;
        }
        self.head = minute;
    }

    /// Local + remote of one minute the ring holds.
    fn at(&self, minute: i64) -> u64 {
        let s = slot(minute);
        u64::from(self.local[s]) + u64::from(self.remote[s])
    }

    /// A minute before `head` changed by `old → new`: the running sums that cover it follow.
    fn changed(&mut self, minute: i64, old: u32, new: u32) {
        if minute < self.head {
            for (w, sum) in &mut self.memo {
                if minute > self.head - *w {
                    *sum = (*sum + u64::from(new)).saturating_sub(u64::from(old));
                }
            }
        }
    }

    fn holds(&self, minute: i64) -> bool {
        self.head - (SLOTS as i64) < minute && minute <= self.head
    }

    fn add(&mut self, minute: i64, cvs: u64) {
        self.advance(minute);
        if !self.holds(minute) {
            return; // more than a day late
        }
        let s = slot(minute);
        let old = self.local[s];
        let new = old.saturating_add(clamp32(cvs));
        self.local[s] = new;
        self.changed(minute, old, new);
        // Responses end roughly in time order: the minute is the last entry's or a new one.
        match self.pending.iter_mut().rev().take(4).find(|(m, _)| *m == minute) {
            Some((_, n)) => *n = n.saturating_add(cvs),
            None => self.pending.push((minute, cvs)),
        }
        if self.pending.len() >= 2 * SLOTS {
            self.pending.drain(..SLOTS); // nobody takes them (no sharing): keep the last ones
        }
    }

    /// The pending additions, one per minute, oldest first, with the minute's local total.
    fn take(&mut self) -> Vec<(i64, u64, u64)> {
        let mut pending = std::mem::take(&mut self.pending);
        pending.sort_unstable_by_key(|p| p.0);
        let mut out: Vec<(i64, u64, u64)> = Vec::with_capacity(pending.len());
        for (minute, cvs) in pending.into_iter().filter(|p| self.holds(p.0)) {
            match out.last_mut() {
                Some(last) if last.0 == minute => last.1 = last.1.saturating_add(cvs),
                _ => out.push((minute, cvs, u64::from(self.local[slot(minute)]))),
            }
        }
        out
    }

    /// Local + remote over minutes `from..=to` (those the ring still holds).
    fn sum(&mut self, from: i64, to: i64) -> u64 {
        // A window up to a minute nobody has added to yet: move the head there (those minutes
        // are empty), so the window's length, and with it its running sum, stays the same.
        self.advance(to);
        let from = from.max(self.head - SLOTS as i64 + 1);
        let to = to.min(self.head);
        if from > to {
            return 0;
        }
        if to < self.head {
            return self.sum_slots(from, to);
        }
        // Up to the head: the minutes before it from the running sum, the head minute itself.
        let w = to - from + 1;
        let before = match self.memo.iter().find(|m| m.0 == w) {
            Some(&(_, n)) => n,
            None => {
                let n = if from < to { self.sum_slots(from, to - 1) } else { 0 };
                if self.memo.len() == MEMO {
                    self.memo.remove(0);
                }
                self.memo.push((w, n));
                n
            }
        };
        before + self.at(to)
    }

    /// Local + remote over minutes `from..=to`, both held, `from ≤ to`, summed slot by slot.
    fn sum_slots(&self, from: i64, to: i64) -> u64 {
        // At most one ring's worth, in two contiguous runs (no per-minute modulo: a day's
        // window is 1,440 slots).
        let (start, n) = (slot(from), (to - from + 1) as usize);
        let first = (SLOTS - start).min(n);
        let run = |xs: &[u32]| xs.iter().map(|&x| u64::from(x)).sum::<u64>();
        let both = |a: &[u32; SLOTS]| run(&a[start..start + first]) + run(&a[..n - first]);
        both(&self.local) + both(&self.remote)
    }
}

/// A cohort's ring behind its own small lock.
type Series = Arc<Mutex<Ring>>;

#[derive(Clone, Default)]
struct Registry {
    all: Option<Series>,
    probation: Option<Series>,
    tiers: HashMap<String, Series>,
    countries: HashMap<String, Series>,
}

impl Registry {
    fn get(&self, c: &Cohort) -> Option<&Series> {
        match c {
            Cohort::All => self.all.as_ref(),
            Cohort::Probation => self.probation.as_ref(),
            Cohort::Tier(t) => self.tiers.get(t),
            Cohort::Country(cc) => self.countries.get(cc),
        }
    }

    fn each(&self) -> impl Iterator<Item = (Cohort, &Series)> {
        let fixed = [(Cohort::All, &self.all), (Cohort::Probation, &self.probation)];
        let fixed = fixed.into_iter().filter_map(|(c, s)| Some((c, s.as_ref()?)));
        let tiers = self.tiers.iter().map(|(t, s)| (Cohort::Tier(t.clone()), s));
        fixed.chain(tiers).chain(self.countries.iter().map(|(cc, s)| (Cohort::Country(cc.clone()), s)))
    }
}

/// Every cohort's ring.
pub struct Sums {
    registry: ArcSwap<Registry>,
    /// Serialises registry growth (copy, insert, publish); never taken by `add` for a known cohort.
    grow: Mutex<()>,
}

fn lock(s: &Series) -> std::sync::MutexGuard<'_, Ring> {
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Sums {
    /// `all` and `probation`, plus `named` (the rules' cohorts, exempt from the caps).
    pub fn new(named: &[Cohort], now: jiff::Timestamp) -> Self {
        let sums = Sums { registry: ArcSwap::from_pointee(Registry::default()), grow: Mutex::new(()) };
        for c in [Cohort::All, Cohort::Probation].iter().chain(named) {
            sums.series(c, minute_of(now), false);
        }
        sums
    }

    /// Make sure the rules' cohorts are tracked (after a reload).
    pub fn track(&self, named: &[Cohort], now: jiff::Timestamp) {
        for c in named {
            self.series(c, minute_of(now), false);
        }
    }

    /// The ring of `c`, made if new (within the caps when `capped`).
    fn series(&self, c: &Cohort, now_minute: i64, capped: bool) -> Option<Series> {
        if let Some(s) = self.registry.load().get(c) {
            return Some(s.clone());
        }
        let _one = self.grow.lock().unwrap_or_else(PoisonError::into_inner);
        let mut reg = Registry::clone(&self.registry.load());
        if let Some(s) = reg.get(c) {
            return Some(s.clone()); // made while we waited
        }
        let new = || Arc::new(Mutex::new(Ring::new(now_minute)));
        let s = new();
        match c {
            Cohort::All => reg.all = Some(s.clone()),
            Cohort::Probation => reg.probation = Some(s.clone()),
            Cohort::Tier(t) if !capped || reg.tiers.len() < MAX_TIERS => _ = reg.tiers.insert(t.clone(), s.clone()),
            Cohort::Country(cc) if !capped || reg.countries.len() < MAX_COUNTRIES => {
                _ = reg.countries.insert(cc.clone(), s.clone())
            }
            _ => return None,
        }
        self.registry.store(Arc::new(reg));
        Some(s)
    }

    /// Count `cvs` delivered to `who` at `now` in each of its cohorts. Cheap: one lock-free
    /// registry read, then one short lock per cohort (four at most); a registry copy only the
    /// first time a tier or country is seen.
    pub fn add(&self, who: &Subject<'_>, cvs: u64, now: jiff::Timestamp) {
        if cvs == 0 {
            return;
        }
        let m = minute_of(now);
        let reg = self.registry.load();
        let bump = |s: &Series| lock(s).add(m, cvs);
        if let Some(s) = &reg.all {
            bump(s);
        }
        if let (true, Some(s)) = (who.probation, &reg.probation) {
            bump(s);
        }
        if let Some(t) = who.tier {
            match reg.tiers.get(t) {
                Some(s) => bump(s),
                None => self.series(&Cohort::Tier(t.to_string()), m, true).iter().for_each(bump),
            }
        }
        let cc = crate::country::or_unknown(who.country);
        match reg.countries.get(cc.as_ref()) {
            Some(s) => bump(s),
            None => self.series(&Cohort::Country(cc.into_owned()), m, true).iter().for_each(bump),
        }
    }

    /// Local + remote CVs of `c` over the `window` minutes up to and including `now`'s minute
    /// (so a 60-minute window at 10:00:30 covers 09:01:00–10:00:59); 0 for an unknown cohort.
    pub fn sum(&self, c: &Cohort, window: u32, now: jiff::Timestamp) -> u64 {
        let to = minute_of(now);
        self.sum_minutes(c, to - i64::from(window) + 1, to)
    }

    /// Local + remote CVs of `c` over minutes `from..=to` that are still held.
    pub fn sum_minutes(&self, c: &Cohort, from: i64, to: i64) -> u64 {
        self.registry.load().get(c).map_or(0, |s| lock(s).sum(from, to))
    }

    /// Per cohort and minute, what this replica added since the last call (see [`Delta`]).
    pub fn take_deltas(&self) -> Vec<Delta> {
        let mut out = Vec::new();
        for (cohort, s) in self.registry.load().each() {
            let taken = lock(s).take();
            let delta = |(minute, cvs, local_total)| Delta { cohort: cohort.clone(), minute, cvs, local_total };
            out.extend(taken.into_iter().map(delta));
        }
        out
    }

    /// Record that the other replicas together delivered `total` CVs to `c` in `minute`
    /// (replacing what was known: totals, not increments, so a repeated sync is harmless).
    /// `false` when the minute is not within the day up to `now`, or `c` is past the caps.
    pub fn set_remote(&self, c: &Cohort, minute: i64, total: u64, now: jiff::Timestamp) -> bool {
        let now_minute = minute_of(now);
        let Some(s) = self.series(c, now_minute, true) else {
            return false;
        };
        let mut ring = lock(&s);
        ring.advance(now_minute);
        if !ring.holds(minute) {
            return false;
        }
        let s = slot(minute);
        let old = ring.remote[s];
        let new = clamp32(total);
        ring.remote[s] = new;
        ring.changed(minute, old, new);
        true
    }

    /// Every tracked cohort (for the sync to know what to read back).
    pub fn cohorts(&self) -> Vec<Cohort> {
        self.registry.load().each().map(|(c, _)| c).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::{SignedDuration, Timestamp};
    use proptest::prelude::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn nl<'a>() -> Subject<'a> {
        Subject { tier: Some("basic"), country: "NL", ..Subject::default() }
    }

    #[test]
    fn windows_cross_minute_boundaries_and_whole_minutes_count() {
        let s = Sums::new(&[], ts("2026-03-02T09:00:00Z"));
        s.add(&nl(), 5, ts("2026-03-02T09:58:59.999Z"));
        s.add(&nl(), 7, ts("2026-03-02T09:59:00Z"));
        s.add(&nl(), 11, ts("2026-03-02T10:00:30Z"));
        let at = ts("2026-03-02T10:00:45Z");
        assert_eq!(s.sum(&Cohort::All, 1, at), 11);
        assert_eq!(s.sum(&Cohort::All, 2, at), 18);
        assert_eq!(s.sum(&Cohort::All, 3, at), 23);
        assert_eq!(s.sum(&Cohort::Country("NL".into()), 60, at), 23);
        assert_eq!(s.sum(&Cohort::Tier("basic".into()), 60, at), 23);
        assert_eq!(s.sum(&Cohort::Probation, 60, at), 0);
        assert_eq!(s.sum(&Cohort::Tier("gold".into()), 60, at), 0);
        // A minute later the oldest minute of a 3-minute window has gone.
        assert_eq!(s.sum(&Cohort::All, 3, ts("2026-03-02T10:01:00Z")), 18);
    }

    #[test]
    fn a_day_wraps_the_ring_and_older_minutes_are_forgotten() {
        let t0 = ts("2026-03-02T23:30:00Z");
        let s = Sums::new(&[], t0);
        for k in 0..(SLOTS as i64 + 30) {
            s.add(&nl(), 1, t0 + SignedDuration::from_mins(k)); // one CV every minute for a day and a half hour
        }
        let last = t0 + SignedDuration::from_mins(SLOTS as i64 + 29);
        assert_eq!(s.sum(&Cohort::All, SLOTS as u32, last), SLOTS as u64);
        assert_eq!(s.sum(&Cohort::All, 60, last), 60);
        // Two hours of silence: the day window loses those two hours.
        let later = last + SignedDuration::from_hours(2);
        s.add(&nl(), 1000, later);
        assert_eq!(s.sum(&Cohort::All, SLOTS as u32, later), SLOTS as u64 - 120 + 1000);
        // A CV more than a day late is dropped; one within the day counts.
        s.add(&nl(), 50, later - SignedDuration::from_hours(25));
        s.add(&nl(), 3, later - SignedDuration::from_hours(23));
        assert_eq!(s.sum(&Cohort::All, SLOTS as u32, later), SLOTS as u64 - 120 + 1003);
    }

    #[test]
    fn countries_appear_on_demand_up_to_the_cap() {
        let t = ts("2026-03-02T09:00:00Z");
        let s = Sums::new(&[Cohort::Country("AA".into())], t);
        let codes: Vec<String> = (0..36u16 * 36)
            .map(|i| {
                let d = |x: u16| char::from_digit(u32::from(x), 36).unwrap().to_ascii_uppercase();
                format!("{}{}", d(i / 36), d(i % 36))
            })
            .collect();
        for cc in &codes {
            s.add(&Subject { country: cc, ..Subject::default() }, 1, t);
        }
        let countries = s.cohorts().iter().filter(|c| matches!(c, Cohort::Country(_))).count();
        assert_eq!(countries, MAX_COUNTRIES);
        assert_eq!(s.sum(&Cohort::All, 1, t), 36 * 36);
        assert_eq!(s.sum(&Cohort::Country("AA".into()), 1, t), 1, "a rule's cohort is tracked from the start");
        assert!(!s.set_remote(&Cohort::Country("ZY".into()), minute_of(t), 5, t));
    }

    #[test]
    fn deltas_are_taken_once_and_remote_totals_replace() {
        let t = ts("2026-03-02T09:00:10Z");
        let s = Sums::new(&[], t);
        s.add(&nl(), 3, t);
        s.add(&nl(), 4, t + SignedDuration::from_secs(5));
        s.add(&nl(), 2, t + SignedDuration::from_mins(1));
        let mut d = s.take_deltas();
        d.sort_by_key(|a| (a.cohort.clone(), a.minute));
        let m = minute_of(t);
        let all: Vec<_> =
            d.iter().filter(|x| x.cohort == Cohort::All).map(|x| (x.minute, x.cvs, x.local_total)).collect();
        assert_eq!(all, [(m, 7, 7), (m + 1, 2, 2)]);
        assert_eq!(d.len(), 6, "all, tier:basic, country:NL over two minutes");
        s.add(&nl(), 1, t);
        let again: Vec<_> = s.take_deltas().into_iter().filter(|x| x.cohort == Cohort::All).collect();
        assert_eq!(again, [Delta { cohort: Cohort::All, minute: m, cvs: 1, local_total: 8 }]);
        assert!(s.take_deltas().is_empty());
        // A late response for an older minute, after five newer ones: still one delta a minute.
        for k in [0, 1, 2, 3, 4, 5, 0] {
            s.add(&nl(), 10, t + SignedDuration::from_mins(k));
        }
        let late: Vec<_> =
            s.take_deltas().into_iter().filter(|x| x.cohort == Cohort::All).map(|x| (x.minute, x.cvs)).collect();
        assert_eq!(late, [(m, 20), (m + 1, 10), (m + 2, 10), (m + 3, 10), (m + 4, 10), (m + 5, 10)]);
        let now = t + SignedDuration::from_mins(1);
        let s = Sums::new(&[], t);
        s.add(&nl(), 8, t);
        s.add(&nl(), 2, now);
        assert!(s.set_remote(&Cohort::All, m, 100, now));
        assert!(s.set_remote(&Cohort::All, m, 90, now), "a later total replaces, it does not add");
        assert!(!s.set_remote(&Cohort::All, m + 5, 1, now), "not a minute from the future");
        assert!(!s.set_remote(&Cohort::All, m - SLOTS as i64, 1, now), "nor one older than a day");
        assert_eq!(s.sum(&Cohort::All, 2, now), 8 + 2 + 90);
        assert!(s.set_remote(&Cohort::Country("DE".into()), m, 4, now), "a cohort only others saw");
        assert_eq!(s.sum(&Cohort::Country("DE".into()), 2, now), 4);
    }

    proptest! {
        #[test]
        fn a_window_sum_equals_the_naive_sum_of_the_log(
            events in prop::collection::vec((0i64..3 * 86_400, 1u64..500), 0..300),
            after in 0i64..7200,
            window in 1u32..=SLOTS as u32,
        ) {
            let t0 = ts("2026-03-01T00:00:00Z").as_second();
            let at = |secs: i64| Timestamp::from_second(t0 + secs).unwrap();
            let s = Sums::new(&[], at(0));
            for &(secs, cvs) in &events {
                s.add(&nl(), cvs, at(secs)); // in any order, as concurrent responses end
            }
            let last = events.iter().map(|e| e.0).max().unwrap_or(0);
            let now = last + after;
            let now_minute = (t0 + now).div_euclid(60);
            let naive: u64 = events
                .iter()
                .filter(|&&(secs, _)| (t0 + secs).div_euclid(60) > now_minute - i64::from(window))
                .map(|e| e.1)
                .sum();
            prop_assert_eq!(s.sum(&Cohort::All, window, at(now)), naive);
            prop_assert_eq!(s.sum(&Cohort::Country("NL".into()), window, at(now)), naive);
        }

        /// The remembered sums never go stale: sums asked between adds (late ones included) and
        /// other replicas' totals, for a few windows, equal the slot-by-slot sum every time.
        #[test]
        fn remembered_sums_equal_fresh_sums_between_changes(
            steps in prop::collection::vec((0u8..3, 0i64..4 * 3600, 1u64..500, 0usize..4), 1..200),
        ) {
            let t0 = ts("2026-03-01T00:00:00Z").as_second();
            let at = |secs: i64| Timestamp::from_second(t0 + secs).unwrap();
            let windows = [1u32, 7, 60, SLOTS as u32];
            let s = Sums::new(&[], at(0));
            let mut clock = 0i64;
            for &(op, secs, n, w) in &steps {
                match op {
                    // An add at the clock or up to an hour late (a long response ending).
                    0 => {
                        clock = clock.max(secs);
                        s.add(&nl(), n, at(clock - (secs % 3600).min(clock)));
                    }
                    1 => _ = s.set_remote(&Cohort::All, (t0 + clock - secs % 600).div_euclid(60), n, at(clock)),
                    _ => clock = clock.max(secs),
                }
                let to = (t0 + clock).div_euclid(60);
                let from = to - i64::from(windows[w]) + 1;
                let fresh = {
                    let reg = s.registry.load();
                    let ring = lock(reg.all.as_ref().unwrap());
                    let (lo, hi) = (from.max(ring.head - SLOTS as i64 + 1), to.min(ring.head));
                    if lo > hi { 0 } else { ring.sum_slots(lo, hi) }
                };
                prop_assert_eq!(s.sum(&Cohort::All, windows[w], at(clock)), fresh);
            }
        }
    }
}
