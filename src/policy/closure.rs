//! Closure windows: when a route group is closed, and until when.
//!
//! Owns the `closure` config section (recurring daily windows such as the night 23:00–07:00, and
//! one-off maintenance windows), its validation, and the pure decision
//! `(policy, group, account, org, instant) → Option<Closed>` that the proxy turns into a 503 with
//! `Retry-After`. It never reads the clock: "now" is always a parameter.
//!
//! # Time rules
//! - A recurring window has one *occurrence* per local start date `D` whose weekday is in `days`:
//!   from `D start` to `D end` (or `D+1 end` when `end < start`, i.e. it crosses midnight), both
//!   local to the window's zone. An occurrence is half-open: closed at `start`, open at `end`.
//! - Local times become instants with jiff's *compatible* disambiguation (the RFC 5545 / Temporal
//!   rule), so the 23- and 25-hour days come out right and nothing panics:
//!   - **gap** (spring forward, e.g. 02:00–03:00 on the last Sunday of March in Amsterdam): the
//!     offset from *before* the gap is used, so the time lands after the gap, shifted forward by
//!     the gap length: a 02:30 start or end means 03:30+02:00.
//!   - **fold** (fall back, 02:00–03:00 happens twice on the last Sunday of October): the
//!     *earlier* instant is used: an end of 02:30 means 02:30+02:00, so the second pass of
//!     02:00–02:30 (+01:00) is open.
//!   - Because a gap shifts times forward, an occurrence can resolve to `start >= end` (e.g.
//!     02:30–03:15 on the spring-forward night: 03:30+02:00 to 03:15+02:00). Such an occurrence
//!     is empty: the window does not close that night.
//! - One-off windows resolve `from` and `until` with the same rule, once, at validation.
//! - Overlapping or abutting windows form one closed span; [`Closed::opens_at`] is its end (the
//!   search stops after [`MAX_SPAN_STEPS`] windows; the bound only matters for a config that is
//!   closed for ever).
//!
//! # Cost per request
//! Whether a window is closed at an instant takes a few local-time conversions; the answer
//! stays the same until the window's next start or end. Each window remembers its last answer
//! with the span of instants it holds for ([`Known`]), behind an `ArcSwap` (a lock-free read),
//! so a request in the same span (nearly all of them: the span is the whole open day or night)
//! pays one atomic load and two comparisons.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use serde::{Deserialize, Serialize};

use crate::invalid::Invalid;

/// The zone used when a window does not name one.
pub const DEFAULT_TZ: &str = "Europe/Amsterdam";

/// Upper bound on the windows chained while looking for the end of a closed span.
pub const MAX_SPAN_STEPS: usize = 100;

/// The `closure` section as written in YAML. When the key is absent the loader uses
/// [`default_windows`]; when present, what it lists replaces the default entirely.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct RawClosure {
    #[serde(default)]
    pub windows: Vec<RawWindow>,
    #[serde(default)]
    pub one_off: Vec<RawOneOff>,
}

/// A recurring window, as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RawWindow {
    /// Unique across `windows` and `one_off`: it is the `window` label of `cvgate_closed`.
    pub name: String,
    /// IANA zone; [`DEFAULT_TZ`] when absent.
    #[serde(default)]
    pub tz: Option<String>,
    /// Days on which the window *starts* ("mon" or "monday", any case); every day when absent.
    #[serde(default)]
    pub days: Option<Vec<String>>,
    /// Local "HH:MM" or "HH:MM:SS".
    pub start: String,
    /// Local "HH:MM" or "HH:MM:SS"; before `start` means the window crosses midnight.
    pub end: String,
    /// Route groups the window closes.
    pub groups: Vec<String>,
    #[serde(default)]
    pub exempt_accounts: Vec<String>,
    #[serde(default)]
    pub exempt_orgs: Vec<String>,
    #[serde(default)]
    pub in_flight: InFlight,
}

/// A one-off window (planned maintenance), as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RawOneOff {
    pub name: String,
    #[serde(default)]
    pub tz: Option<String>,
    /// Local date-time in `tz`, e.g. "2026-12-01T22:00" (no offset). Closed from `from`
    /// (inclusive) to `until` (exclusive).
    pub from: String,
    pub until: String,
    pub groups: Vec<String>,
    #[serde(default)]
    pub exempt_accounts: Vec<String>,
    #[serde(default)]
    pub exempt_orgs: Vec<String>,
    #[serde(default)]
    pub in_flight: InFlight,
}

/// What happens to responses still streaming when a window starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InFlight {
    /// Let them finish.
    #[default]
    Finish,
    /// End them at the next record boundary (see [`ClosurePolicy::next_cut_after`]).
    Cut,
}

/// The default when the config has no `closure` key: the night 23:00–07:00, every day, for "cv".
pub fn default_windows() -> RawClosure {
    RawClosure {
        windows: vec![RawWindow {
            name: "night".into(),
            tz: None,
            days: None,
            start: "23:00".into(),
            end: "07:00".into(),
            groups: vec!["cv".into()],
            exempt_accounts: vec![],
            exempt_orgs: vec![],
            in_flight: InFlight::Finish,
        }],
        one_off: vec![],
    }
}

/// Why a request is refused, and when to come back.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    /// The first window (config order) that closes the group at the instant asked about.
    pub window: String,
    /// End of the contiguous closed span, in the zone of the window that ends it.
    pub opens_at: Zoned,
    /// Seconds from the instant asked about to `opens_at`, rounded up (at least 1).
    pub retry_after_secs: u64,
}

impl Closed {
    /// `opens_at` as RFC 3339 with offset and no zone name, e.g. `2026-03-29T07:00:00+02:00`.
    pub fn opens_at_rfc3339(&self) -> String {
        self.opens_at.timestamp().display_with_offset(self.opens_at.offset()).to_string()
    }
}

/// Validated closure windows: zones and times are parsed, names unique, groups non-empty.
#[derive(Debug, Clone)]
pub struct ClosurePolicy {
    windows: Vec<Window>,
}

#[derive(Debug, Clone)]
struct Window {
    name: String,
    tz: TimeZone,
    when: When,
    groups: Vec<String>,
    exempt_accounts: Vec<String>,
    exempt_orgs: Vec<String>,
    in_flight: InFlight,
    known: Memo,
}

/// A window's answer for the instants `from..until`: closed until `end`, or open (`None`).
#[derive(Debug, Clone, Copy)]
struct Known {
    from: Timestamp,
    until: Timestamp,
    end: Option<Timestamp>,
}

/// The last [`Known`] answer of a window; a copy of the window starts without one.
#[derive(Debug, Default)]
struct Memo(ArcSwapOption<Known>);

impl Clone for Memo {
    fn clone(&self) -> Self {
        Memo::default()
    }
}

#[derive(Debug, Clone)]
enum When {
    /// `days` is indexed by `Weekday::to_monday_zero_offset`.
    Daily { days: [bool; 7], start: Time, end: Time },
    /// Already resolved; `from < until`.
    Once { from: Timestamp, until: Timestamp },
}

impl Window {
    fn applies(&self, group: &str, account: Option<&str>, org: Option<&str>) -> bool {
        let listed = |list: &[String], v: Option<&str>| v.is_some_and(|v| list.iter().any(|x| x == v));
        self.groups.iter().any(|g| g == group)
            && !listed(&self.exempt_accounts, account)
            && !listed(&self.exempt_orgs, org)
    }

    /// The occurrence of a daily window starting on local date `date`, if there is a non-empty one.
    fn occurrence(&self, date: Date) -> Option<(Timestamp, Timestamp)> {
        let When::Daily { days, start, end } = &self.when else {
            return None;
        };
        if !days[date.weekday().to_monday_zero_offset() as usize] {
            return None;
        }
        let end_date = if end > start { date } else { date.tomorrow().ok()? };
        let from = self.resolve(date.to_datetime(*start))?;
        let until = self.resolve(end_date.to_datetime(*end))?;
        (from < until).then_some((from, until))
    }

    fn resolve(&self, dt: DateTime) -> Option<Timestamp> {
        self.tz.to_ambiguous_timestamp(dt).compatible().ok()
    }

    /// Every occurrence that could contain or follow `t`, starting from two local days before it
    /// (an occurrence spans less than 24 local hours; the extra day covers a gap-shifted end).
    fn occurrences_around(&self, t: Timestamp, days_after: i8) -> impl Iterator<Item = (Timestamp, Timestamp)> + '_ {
        let today = self.tz.to_datetime(t).date();
        let once = match self.when {
            When::Once { from, until } => Some((from, until)),
            When::Daily { .. } => None,
        };
        let daily = (-2..=days_after).filter_map(move |n| {
            let date = today.checked_add(jiff::Span::new().days(n)).ok()?;
            self.occurrence(date)
        });
        once.into_iter().chain(daily)
    }

    /// The end of the (latest-ending) occurrence containing `t`, remembered for the span of
    /// instants it holds for.
    fn end_if_closed(&self, t: Timestamp) -> Option<Timestamp> {
        if let Some(k) = &*self.known.0.load() {
            if k.from <= t && t < k.until {
                return k.end;
            }
        }
        let end = self.end_if_closed_at(t);
        // The answer holds until an occurrence ends (the one containing `t`) or a new one starts:
        // between those the set of occurrences containing an instant only shrinks, and the
        // latest-ending one still contains it. A day at most, so a window with no start ahead
        // is asked again.
        let day = t.checked_add(jiff::SignedDuration::from_hours(24)).unwrap_or(Timestamp::MAX);
        let until = [end, self.next_start_after(t), Some(day)].into_iter().flatten().min().unwrap_or(day);
        self.known.0.store(Some(Arc::new(Known { from: t, until, end })));
        end
    }

    /// [`Self::end_if_closed`], worked out from the occurrences.
    fn end_if_closed_at(&self, t: Timestamp) -> Option<Timestamp> {
        self.occurrences_around(t, 0).filter(|&(from, until)| from <= t && t < until).map(|o| o.1).max()
    }

    /// The first occurrence start strictly after `t` (a week and a day ahead covers any `days`).
    fn next_start_after(&self, t: Timestamp) -> Option<Timestamp> {
        self.occurrences_around(t, 8).map(|o| o.0).filter(|&from| from > t).min()
    }
}

impl ClosurePolicy {
    /// Validate the raw section.
    ///
    /// # Errors
    /// Every problem found, each as (key path relative to the section, e.g. `windows[0].tz`,
    /// message): unknown zone, bad time or date-time, `start == end`, unknown or no day,
    /// `from >= until`, empty name, duplicate name, empty groups.
    pub fn from_raw(raw: &RawClosure) -> Result<ClosurePolicy, Invalid> {
        let mut errs = Invalid::new();
        let mut seen = HashMap::new();
        let mut windows = Vec::new();
        for (i, w) in raw.windows.iter().enumerate() {
            let at = format!("windows[{i}]");
            errs.under(&at, |e| {
                let tz = check_common(e, &at, &w.name, &w.tz, &w.groups, &mut seen);
                let (start, end) = (parse_time(e, "start", &w.start), parse_time(e, "end", &w.end));
                if start.is_some() && start == end {
                    e.push("end", "end equals start: the window would be empty");
                }
                let days = parse_days(e, w.days.as_deref());
                if let (Some(tz), Some(start), Some(end), Some(days)) = (tz, start, end, days) {
                    windows.push(Window {
                        name: w.name.clone(),
                        tz,
                        when: When::Daily { days, start, end },
                        groups: w.groups.clone(),
                        exempt_accounts: w.exempt_accounts.clone(),
                        exempt_orgs: w.exempt_orgs.clone(),
                        in_flight: w.in_flight,
                        known: Memo::default(),
                    });
                }
            });
        }
        for (i, o) in raw.one_off.iter().enumerate() {
            let at = format!("one_off[{i}]");
            errs.under(&at, |e| {
                let tz = check_common(e, &at, &o.name, &o.tz, &o.groups, &mut seen);
                let (from, until) = (parse_datetime(e, "from", &o.from), parse_datetime(e, "until", &o.until));
                let (Some(tz), Some(from), Some(until)) = (tz, from, until) else {
                    return;
                };
                let resolve = |dt| tz.to_ambiguous_timestamp(dt).compatible().ok();
                match (resolve(from), resolve(until)) {
                    (Some(from), Some(until)) if from < until => windows.push(Window {
                        name: o.name.clone(),
                        tz,
                        when: When::Once { from, until },
                        groups: o.groups.clone(),
                        exempt_accounts: o.exempt_accounts.clone(),
                        exempt_orgs: o.exempt_orgs.clone(),
                        in_flight: o.in_flight,
                        known: Memo::default(),
                    }),
                    (Some(_), Some(_)) => e.push("until", "until must be after from"),
                    _ => e.push("from", "date-time out of range"),
                }
            });
        }
        errs.into_result(ClosurePolicy { windows })
    }

    /// Is `group` closed at `now` for this account and org? `None` means open.
    ///
    /// Only windows that list `group` and exempt neither `account` nor `org` count. The opening
    /// time is the end of the whole contiguous span those windows close, so a client told to
    /// come back is not refused again by an overlapping or abutting window.
    pub fn decide(&self, group: &str, account: Option<&str>, org: Option<&str>, now: Timestamp) -> Option<Closed> {
        let applicable = || self.windows.iter().filter(|w| w.applies(group, account, org));
        let first = applicable().find(|w| w.end_if_closed(now).is_some())?;
        let (mut opens, mut ender) = (now, first);
        // The span's end is looked for at later instants, worked out without the remembered
        // answer: remembering those would replace the answer for `now`, and every request in a
        // closed span would then work its answer out again.
        for _ in 0..MAX_SPAN_STEPS {
            let later =
                applicable().filter_map(|w| w.end_if_closed_at(opens).map(|end| (end, w))).max_by_key(|&(end, _)| end);
            match later {
                Some((end, w)) => (opens, ender) = (end, w),
                None => break,
            }
        }
        let nanos = opens.as_nanosecond() - now.as_nanosecond();
        let secs = u64::try_from((nanos + 999_999_999) / 1_000_000_000).unwrap_or(u64::MAX);
        Some(Closed { window: first.name.clone(), opens_at: opens.to_zoned(ender.tz.clone()), retry_after_secs: secs })
    }

    /// The next instant strictly after `now` at which a window with `in_flight: cut` that
    /// applies to this request starts, so the proxy can end the stream there. Looks a week ahead
    /// for recurring windows; `None` if nothing applicable is due.
    pub fn next_cut_after(
        &self,
        group: &str,
        account: Option<&str>,
        org: Option<&str>,
        now: Timestamp,
    ) -> Option<Timestamp> {
        self.windows
            .iter()
            .filter(|w| w.in_flight == InFlight::Cut && w.applies(group, account, org))
            .filter_map(|w| w.next_start_after(now))
            .min()
    }

    /// For the `cvgate_closed{window=…}` gauge: every window in config order (recurring, then
    /// one-off) and whether it is active at `now`, regardless of groups and exemptions.
    pub fn states(&self, now: Timestamp) -> Vec<(String, bool)> {
        let state = |w: &Window| (w.name.clone(), w.end_if_closed(now).is_some());
        self.windows.iter().map(state).collect()
    }
}

/// Checks shared by both kinds of window; returns the zone when it is valid. `e` is the entry's
/// collector, `at` its key path (named in a later duplicate's message).
fn check_common<'a>(
    e: &mut Invalid,
    at: &str,
    name: &'a str,
    tz: &Option<String>,
    groups: &[String],
    seen: &mut HashMap<&'a str, String>,
) -> Option<TimeZone> {
    if name.trim().is_empty() {
        e.push("name", "name must not be empty");
    } else if let Some(first) = seen.get(name) {
        e.push("name", format!("duplicate window name {name:?} (see {first})"));
    } else {
        seen.insert(name, format!("{at}.name"));
    }
    if groups.is_empty() {
        e.push("groups", "groups must list at least one route group");
    }
    let zone = tz.as_deref().unwrap_or(DEFAULT_TZ);
    let tz = TimeZone::get(zone).ok();
    if tz.is_none() {
        e.push("tz", format!("unknown time zone {zone:?}"));
    }
    tz
}

/// Strict "HH:MM" or "HH:MM:SS", two digits each (midnight is 00:00, not 24:00).
fn parse_time(e: &mut Invalid, key: &str, s: &str) -> Option<Time> {
    let two = |f: &str, max: i8| -> Option<i8> {
        let digits = f.len() == 2 && f.bytes().all(|b| b.is_ascii_digit());
        f.parse().ok().filter(|&v| digits && v <= max)
    };
    let parse = || match s.split(':').collect::<Vec<_>>()[..] {
        [h, m] => Time::new(two(h, 23)?, two(m, 59)?, 0, 0).ok(),
        [h, m, sec] => Time::new(two(h, 23)?, two(m, 59)?, two(sec, 59)?, 0).ok(),
        _ => None,
    };
    let time = parse();
    if time.is_none() {
        e.push(key, format!("expected HH:MM or HH:MM:SS, got {s:?}"));
    }
    time
}

/// A civil date-time ("2026-12-01T22:00"; a bare date means 00:00). jiff would accept and then
/// silently drop an offset or `[zone]` suffix; those are refused, since `tz` is what applies.
fn parse_datetime(e: &mut Invalid, key: &str, s: &str) -> Option<DateTime> {
    let zoned = s.get(10..).unwrap_or("").contains(['+', '-', '\u{2212}', '[', 'Z', 'z']);
    let dt = s.parse::<DateTime>().ok().filter(|_| !zoned);
    if dt.is_none() {
        let msg = "expected a local date-time without offset or zone, like 2026-12-01T22:00";
        e.push(key, format!("{msg}, got {s:?}"));
    }
    dt
}

/// Weekday set indexed by `Weekday::to_monday_zero_offset`; `None` (absent) means every day.
fn parse_days(e: &mut Invalid, days: Option<&[String]>) -> Option<[bool; 7]> {
    let Some(days) = days else {
        return Some([true; 7]);
    };
    if days.is_empty() {
        e.push("days", "days is empty: the window would never close");
        return None;
    }
    let names = "monday tuesday wednesday thursday friday saturday sunday";
    let mut set = [false; 7];
    let mut ok = true;
    for (i, day) in days.iter().enumerate() {
        let d = day.to_ascii_lowercase();
        match names.split(' ').position(|n| n == d || n[..3] == d) {
            Some(idx) => set[idx] = true,
            None => {
                ok = false;
                e.push(format!("days[{i}]"), format!("unknown day {day:?} (mon..sun)"));
            }
        }
    }
    ok.then_some(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn policy(windows: Vec<RawWindow>, one_off: Vec<RawOneOff>) -> ClosurePolicy {
        ClosurePolicy::from_raw(&RawClosure { windows, one_off }).unwrap()
    }

    fn daily(name: &str, start: &str, end: &str) -> RawWindow {
        RawWindow { name: name.into(), start: start.into(), end: end.into(), ..default_windows().windows[0].clone() }
    }

    fn once(name: &str, from: &str, until: &str) -> RawOneOff {
        RawOneOff {
            name: name.into(),
            tz: None,
            from: from.into(),
            until: until.into(),
            groups: vec!["cv".into()],
            exempt_accounts: vec![],
            exempt_orgs: vec![],
            in_flight: InFlight::Finish,
        }
    }

    /// (instant, expected Retry-After and opening) for the group "cv", no identity.
    fn check(p: &ClosurePolicy, rows: &[(&str, Option<(u64, &str)>)]) {
        for &(at, want) in rows {
            let got = p.decide("cv", None, None, ts(at));
            let got = got.as_ref().map(|c| (c.retry_after_secs, c.opens_at_rfc3339()));
            assert_eq!(got, want.map(|(s, o)| (s, o.to_string())), "at {at}");
        }
    }

    #[test]
    fn default_night_on_ordinary_days_and_both_dst_changes() {
        let p = ClosurePolicy::from_raw(&default_windows()).unwrap();
        #[rustfmt::skip]
        check(&p, &[
            // Ordinary winter and summer nights: 8 hours.
            ("2026-01-14T22:59:59+01:00", None),
            ("2026-01-14T23:00:00+01:00", Some((28800, "2026-01-15T07:00:00+01:00"))),
            ("2026-01-15T06:59:59+01:00", Some((1, "2026-01-15T07:00:00+01:00"))),
            ("2026-01-15T07:00:00+01:00", None),
            ("2026-07-14T22:59:59+02:00", None),
            ("2026-07-14T23:00:00+02:00", Some((28800, "2026-07-15T07:00:00+02:00"))),
            ("2026-07-15T06:59:59+02:00", Some((1, "2026-07-15T07:00:00+02:00"))),
            ("2026-07-15T07:00:00+02:00", None),
            // Into the spring-forward Sunday: 7 hours.
            ("2026-03-28T22:59:59+01:00", None),
            ("2026-03-28T23:00:00+01:00", Some((25200, "2026-03-29T07:00:00+02:00"))),
            ("2026-03-29T06:59:59+02:00", Some((1, "2026-03-29T07:00:00+02:00"))),
            ("2026-03-29T07:00:00+02:00", None),
            ("2026-03-29T23:00:00+02:00", Some((28800, "2026-03-30T07:00:00+02:00"))),
            ("2027-03-27T22:59:59+01:00", None),
            ("2027-03-27T23:00:00+01:00", Some((25200, "2027-03-28T07:00:00+02:00"))),
            ("2027-03-28T06:59:59+02:00", Some((1, "2027-03-28T07:00:00+02:00"))),
            ("2027-03-28T07:00:00+02:00", None),
            // Into the fall-back Sunday: 9 hours.
            ("2026-10-24T22:59:59+02:00", None),
            ("2026-10-24T23:00:00+02:00", Some((32400, "2026-10-25T07:00:00+01:00"))),
            ("2026-10-25T02:30:00+01:00", Some((16200, "2026-10-25T07:00:00+01:00"))),
            ("2026-10-25T06:59:59+01:00", Some((1, "2026-10-25T07:00:00+01:00"))),
            ("2026-10-25T07:00:00+01:00", None),
            ("2026-10-25T23:00:00+01:00", Some((28800, "2026-10-26T07:00:00+01:00"))),
            ("2027-10-30T22:59:59+02:00", None),
            ("2027-10-30T23:00:00+02:00", Some((32400, "2027-10-31T07:00:00+01:00"))),
            ("2027-10-31T06:59:59+01:00", Some((1, "2027-10-31T07:00:00+01:00"))),
            ("2027-10-31T07:00:00+01:00", None),
            // Sub-second instants round Retry-After up.
            ("2026-01-15T06:59:59.001+01:00", Some((1, "2026-01-15T07:00:00+01:00"))),
            ("2026-01-15T06:59:58.5+01:00", Some((2, "2026-01-15T07:00:00+01:00"))),
        ]);
        let c = p.decide("cv", None, None, ts("2026-03-28T23:00:00+01:00")).unwrap();
        assert_eq!(c.window, "night");
        assert_eq!(c.opens_at.time_zone().iana_name(), Some("Europe/Amsterdam"));
        // The ends of jiff's range (where the next date does not exist) do not panic.
        for t in [Timestamp::MIN, Timestamp::MAX] {
            let _ = (p.decide("cv", None, None, t), p.next_cut_after("cv", None, None, t));
        }
    }

    #[test]
    fn gap_and_fold_follow_compatible_disambiguation() {
        // Start 02:30 does not exist on 29 March 2026: it means 03:30+02:00 (gap length added).
        let p = policy(vec![daily("gap", "02:30", "05:00")], vec![]);
        #[rustfmt::skip]
        check(&p, &[
            ("2026-03-28T02:30:00+01:00", Some((9000, "2026-03-28T05:00:00+01:00"))),
            ("2026-03-29T03:29:59+02:00", None),
            ("2026-03-29T03:30:00+02:00", Some((5400, "2026-03-29T05:00:00+02:00"))),
        ]);
        // End 02:30 exists twice on 25 October 2026: the first one (+02:00) ends the window, so
        // the second pass of 02:00–02:30 (+01:00) is open.
        let p = policy(vec![daily("fold", "23:00", "02:30")], vec![]);
        #[rustfmt::skip]
        check(&p, &[
            ("2026-10-24T23:00:00+02:00", Some((12600, "2026-10-25T02:30:00+02:00"))),
            ("2026-10-25T02:29:59+02:00", Some((1, "2026-10-25T02:30:00+02:00"))),
            ("2026-10-25T02:30:00+02:00", None),
            ("2026-10-25T02:00:00+01:00", None),
            ("2026-10-25T02:29:59+01:00", None),
        ]);
        // Start 02:30 in the fold: the first one; 4.5 elapsed hours to 06:00+01:00.
        let p = policy(vec![daily("fold-start", "02:30", "06:00")], vec![]);
        #[rustfmt::skip]
        check(&p, &[
            ("2026-10-25T02:29:59+02:00", None),
            ("2026-10-25T02:30:00+02:00", Some((16200, "2026-10-25T06:00:00+01:00"))),
        ]);
        // 02:30–03:15 resolves to 03:30–03:15 on the spring-forward night: empty, no closure.
        let p = policy(vec![daily("inverted", "02:30", "03:15")], vec![]);
        #[rustfmt::skip]
        check(&p, &[
            ("2026-03-28T02:30:00+01:00", Some((2700, "2026-03-28T03:15:00+01:00"))),
            ("2026-03-29T03:10:00+02:00", None),
            ("2026-03-29T03:40:00+02:00", None),
        ]);
        // A cut scheduled into the gap lands at the resolved start.
        let mut w = daily("gap-cut", "02:30", "05:00");
        w.in_flight = InFlight::Cut;
        let p = policy(vec![w], vec![]);
        let cut = p.next_cut_after("cv", None, None, ts("2026-03-28T12:00:00+01:00"));
        assert_eq!(cut, Some(ts("2026-03-29T03:30:00+02:00")));
    }

    #[test]
    fn overlapping_and_abutting_windows_open_at_end_of_span() {
        let maintenance = once("maintenance", "2026-12-01T06:00", "2026-12-01T09:00");
        let morning = daily("morning", "09:00", "09:30");
        let p = policy(vec![daily("night", "23:00", "07:00"), morning], vec![maintenance]);
        #[rustfmt::skip]
        check(&p, &[
            ("2026-11-30T23:00:00+01:00", Some((37800, "2026-12-01T09:30:00+01:00"))),
            ("2026-12-01T08:00:00+01:00", Some((5400, "2026-12-01T09:30:00+01:00"))),
            ("2026-12-01T09:30:00+01:00", None),
            ("2026-12-02T06:00:00+01:00", Some((3600, "2026-12-02T07:00:00+01:00"))),
        ]);
        let c = p.decide("cv", None, None, ts("2026-12-01T08:00:00+01:00")).unwrap();
        assert_eq!(c.window, "maintenance");
        let states = p.states(ts("2026-12-01T06:30:00+01:00"));
        let want = [("night", true), ("morning", false), ("maintenance", true)];
        assert_eq!(states, want.map(|(n, b)| (n.to_string(), b)));
    }

    #[test]
    fn exemptions_and_groups() {
        let mut night = daily("night", "23:00", "07:00");
        night.exempt_accounts = vec!["acct-1".into()];
        night.exempt_orgs = vec!["12345678".into()];
        let mut maint = once("maintenance", "2026-12-01T06:00", "2026-12-01T09:00");
        maint.groups = vec!["cv".into(), "vacancies".into()];
        let p = policy(vec![night], vec![maint]);
        let at = ts("2026-12-01T01:00:00+01:00");
        assert!(p.decide("cv", None, None, at).is_some());
        assert!(p.decide("cv", Some("acct-1"), None, at).is_none());
        assert!(p.decide("cv", Some("acct-2"), Some("12345678"), at).is_none());
        assert!(p.decide("vacancies", None, None, at).is_none());
        // The exempt account is still closed by the window that does not exempt it.
        let c = p.decide("cv", Some("acct-1"), None, ts("2026-12-01T06:30:00+01:00")).unwrap();
        assert_eq!((c.window.as_str(), c.retry_after_secs), ("maintenance", 9000));
        assert!(p.decide("other", None, None, ts("2026-12-01T06:30:00+01:00")).is_none());
    }

    #[test]
    fn one_off_window_in_its_own_zone() {
        let mut o = once("upgrade", "2026-12-01T22:00", "2026-12-02T01:30:30");
        o.tz = Some("Europe/London".into());
        let p = policy(vec![], vec![o]);
        #[rustfmt::skip]
        check(&p, &[
            ("2026-12-01T21:59:59Z", None),
            ("2026-12-01T22:00:00Z", Some((12630, "2026-12-02T01:30:30+00:00"))),
            ("2026-12-02T01:30:30Z", None),
        ]);
    }

    #[test]
    fn next_cut_after_only_for_applicable_cut_windows() {
        let mut mon = daily("monday-night", "23:00", "07:00");
        mon.days = Some(vec!["Monday".into()]);
        mon.in_flight = InFlight::Cut;
        mon.exempt_orgs = vec!["12345678".into()];
        let mut maint = once("maintenance", "2026-12-01T22:00", "2026-12-02T02:00");
        maint.in_flight = InFlight::Cut;
        let p = policy(vec![daily("night", "23:00", "07:00"), mon], vec![maint]);
        let tue = ts("2026-11-24T12:00:00+01:00");
        assert_eq!(p.next_cut_after("cv", None, None, tue), Some(ts("2026-11-30T23:00:00+01:00")));
        let org = Some("12345678");
        assert_eq!(p.next_cut_after("cv", None, org, tue), Some(ts("2026-12-01T22:00:00+01:00")));
        // Strictly after: at the start instant itself the next one is a week later.
        let start = ts("2026-11-30T23:00:00+01:00");
        assert_eq!(p.next_cut_after("cv", None, org, start), Some(ts("2026-12-01T22:00:00+01:00")));
        assert_eq!(p.next_cut_after("vacancies", None, None, tue), None);
        let only_finish = policy(vec![daily("night", "23:00", "07:00")], vec![]);
        assert_eq!(only_finish.next_cut_after("cv", None, None, tue), None);
    }

    #[test]
    fn validation_collects_every_error_with_its_path() {
        let mut bad_tz = daily("a", "25:00", "7:00");
        bad_tz.tz = Some("Europe/Amsterdamm".into());
        bad_tz.groups = vec![];
        let mut bad_days = daily("", "10:00", "10:00");
        bad_days.days = Some(vec!["mon".into(), "Funday".into()]);
        let dup = daily("a", "01:00", "02:00:60");
        let mut empty_days = daily("b", "01:00", "02:00");
        empty_days.days = Some(vec![]);
        let backwards = once("c", "2026-12-01T22:00", "2026-12-01T21:00");
        let dup_once = once("b", "tomorrow", "2026-12-01T21:00+01:00");
        let raw = RawClosure { windows: vec![bad_tz, bad_days, dup, empty_days], one_off: vec![backwards, dup_once] };
        let errs = ClosurePolicy::from_raw(&raw).unwrap_err().into_vec();
        let paths: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "windows[0].groups",
                "windows[0].tz",
                "windows[0].start",
                "windows[0].end",
                "windows[1].name",
                "windows[1].end",
                "windows[1].days[1]",
                "windows[2].name",
                "windows[2].end",
                "windows[3].days",
                "one_off[0].until",
                "one_off[1].name",
                "one_off[1].from",
                "one_off[1].until",
            ]
        );
        let msg = |i: usize| errs[i].1.as_str();
        assert_eq!(msg(1), "unknown time zone \"Europe/Amsterdamm\"");
        assert_eq!(msg(6), "unknown day \"Funday\" (mon..sun)");
        assert_eq!(msg(7), "duplicate window name \"a\" (see windows[0].name)");
    }

    #[test]
    fn raw_config_defaults_from_serde() {
        let json = r#"{"windows":[{"name":"n","start":"23:00","end":"07:00:30","groups":["cv"],
            "days":["SAT","sunday"],"in_flight":"cut"}]}"#;
        let raw: RawClosure = serde_json::from_str(json).unwrap();
        assert_eq!((raw.windows[0].tz.as_deref(), raw.windows[0].in_flight), (None, InFlight::Cut));
        assert!(raw.one_off.is_empty());
        let p = ClosurePolicy::from_raw(&raw).unwrap();
        let (fri, sat) = (ts("2026-01-16T23:00:00+01:00"), ts("2026-01-17T23:00:00+01:00"));
        assert!(p.decide("cv", None, None, fri).is_none());
        assert!(p.decide("cv", None, None, sat).is_some());
    }

    /// Configurations for the property test: crossing midnight, day subsets, other zones and
    /// hemispheres, overlap. Start and end avoid DST gaps and folds (covered above), so the
    /// wall-clock oracle and the compatible rule agree.
    fn configs() -> Vec<Vec<RawWindow>> {
        let with = |mut w: RawWindow, tz: &str, days: &[&str]| {
            w.tz = Some(tz.into());
            w.days = (!days.is_empty()).then(|| days.iter().map(|d| d.to_string()).collect());
            w
        };
        vec![
            default_windows().windows,
            vec![with(daily("w", "22:30:15", "06:45"), "Europe/Amsterdam", &["fri", "sat"])],
            vec![with(daily("w", "09:00", "17:30"), "America/New_York", &["mon", "tue", "wed"])],
            vec![with(daily("w", "20:00", "04:00"), "Australia/Sydney", &["sun"])],
            vec![
                daily("night", "23:00", "07:00"),
                with(daily("lunch", "06:00", "13:00"), "Asia/Kolkata", &["thu"]),
                with(daily("late", "18:00", "23:00"), "UTC", &[]),
            ],
        ]
    }

    /// Independent oracle: is the local wall time inside an interval of a window that started
    /// on the local date or the day before?
    fn oracle(windows: &[RawWindow], t: Timestamp) -> bool {
        windows.iter().any(|w| {
            let local = t.to_zoned(TimeZone::get(w.tz.as_deref().unwrap_or(DEFAULT_TZ)).unwrap());
            let (start, end): (Time, Time) = (w.start.parse().unwrap(), w.end.parse().unwrap());
            let starts_on = |d: Date| {
                let name = format!("{:?}", d.weekday()).to_ascii_lowercase();
                w.days.as_ref().is_none_or(|ds| ds.iter().any(|x| name.starts_with(&x.to_ascii_lowercase())))
            };
            let (today, time) = (local.date(), local.time());
            let yesterday = today.yesterday().unwrap();
            if start < end {
                starts_on(today) && start <= time && time < end
            } else {
                (starts_on(today) && time >= start) || (starts_on(yesterday) && time < end)
            }
        })
    }

    #[test]
    fn a_closed_decision_keeps_the_answer_for_now() {
        let p = policy(vec![daily("night", "23:00", "07:00"), daily("early", "07:00", "08:00")], vec![]);
        let now = ts("2026-03-03T01:00:00Z"); // 02:00 in Amsterdam: closed, opens at 08:00
        let c = p.decide("cv", None, None, now).expect("closed");
        assert_eq!(c.opens_at_rfc3339(), "2026-03-03T08:00:00+01:00");
        let known = p.windows[0].known.0.load_full().expect("remembered");
        assert!(known.from <= now && now < known.until, "the span search replaced the answer for now");
        assert_eq!(
            p.decide("cv", None, None, now + jiff::SignedDuration::from_secs(1)).map(|c| c.opens_at),
            Some(c.opens_at)
        );
    }

    proptest! {
        /// The remembered answer is the worked-out one: one policy asked along a walk of
        /// instants (steps from a nanosecond to two days, some backwards, across both DST
        /// changes), every window's answer equal to its occurrences' at every step, and the
        /// decision equal to the oracle's.
        #[test]
        fn remembered_answers_equal_worked_out_ones(
            which in 0..5usize,
            start in 1_711_000_000i64..1_730_000_000, // March .. October 2024: both changes ahead
            steps in prop::collection::vec((-3_600i64..172_800, 0..1_000_000_000i32), 1..120),
        ) {
            let windows = configs().swap_remove(which);
            let p = policy(windows.clone(), vec![once("m", "2024-10-27T01:30", "2024-10-27T02:45")]);
            let mut now = Timestamp::new(start, 0).unwrap();
            for (secs, nanos) in steps {
                now += jiff::SignedDuration::new(secs, nanos);
                for w in &p.windows {
                    prop_assert_eq!(w.end_if_closed(now), w.end_if_closed_at(now), "{} at {}", w.name, now);
                }
                let in_once = (ts("2024-10-26T23:30:00Z")..ts("2024-10-27T00:45:00Z")) // 02:45 in the fold: +02:00
                    .contains(&now);
                prop_assert_eq!(p.decide("cv", None, None, now).is_some(), oracle(&windows, now) || in_once, "at {}", now);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn closed_iff_wall_time_inside_and_opening_is_open(
            which in 0..5usize,
            secs in 1_704_067_200i64..1_924_991_999, // 2024-01-01 .. 2030-12-31 UTC
            nanos in prop_oneof![Just(0i32), 0..1_000_000_000i32],
        ) {
            let windows = configs().swap_remove(which);
            let p = policy(windows.clone(), vec![]);
            let now = Timestamp::new(secs, nanos).unwrap();
            let closed = p.decide("cv", None, None, now);
            prop_assert_eq!(closed.is_some(), oracle(&windows, now), "at {}", now);
            if let Some(c) = closed {
                let opens = c.opens_at.timestamp();
                let back = now + jiff::SignedDuration::from_secs(c.retry_after_secs as i64);
                prop_assert!(back >= opens && back - jiff::SignedDuration::from_secs(1) < opens);
                prop_assert!(p.decide("cv", None, None, back).is_none(), "closed at {}", back);
                prop_assert!(!oracle(&windows, opens));
                let just_before = opens - jiff::SignedDuration::from_nanos(1);
                prop_assert!(oracle(&windows, just_before));
                prop_assert!(p.decide("cv", None, None, just_before).is_some());
            }
        }
    }
}
