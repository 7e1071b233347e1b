//! Baselines: what each hour of the week usually delivers to a cohort, so that a busy Monday
//! morning is not taken for an attack, and the threshold a rule trips at.
//!
//! One bucket per local hour of the week (168, Monday 00:00 first). When an hour has closed the
//! guard feeds its sum to the bucket: the first week seeds the mean, later weeks move it by an
//! EWMA, `mean += alpha × (sum − mean)` (alpha 0.3: the last three weeks carry two thirds of the
//! weight, so a slow trend is followed while one odd week barely moves it). A bucket counts only
//! after `weeks` observations; until every bucket a window touches has them, the rule has no
//! relative threshold (only `above`, if given).
//!
//! Hours are UTC hours of the minute ring, named by the local hour they start in, so a
//! daylight-saving change moves a bucket with the clock on the wall, as people's habits move.

use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::config::Rule;

pub const HOURS_PER_WEEK: usize = 168;

/// The usual hourly sums of one cohort, per local hour of the week.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    buckets: Vec<Bucket>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Bucket {
    mean: f64,
    /// Hours learnt (one a week).
    weeks: u32,
}

impl Default for Baseline {
    fn default() -> Self {
        Baseline { buckets: vec![Bucket::default(); HOURS_PER_WEEK] }
    }
}

/// 0..168: the local hour of the week of Unix hour `hour` in `tz` (Monday 00:00–00:59 is 0).
pub fn hour_of_week(tz: &TimeZone, hour: i64) -> usize {
    let Ok(t) = Timestamp::from_second(hour.saturating_mul(3600)) else {
        return 0;
    };
    let local = t.to_zoned(tz.clone());
    local.weekday().to_monday_zero_offset() as usize * 24 + local.hour() as usize
}

impl Baseline {
    /// Whether it has the shape [`Baseline::learn`] relies on (a restored one might not).
    pub fn is_well_formed(&self) -> bool {
        self.buckets.len() == HOURS_PER_WEEK && self.buckets.iter().all(|b| b.mean.is_finite() && b.mean >= 0.0)
    }

    /// Learn one closed hour's sum (Unix hour `hour`).
    pub fn learn(&mut self, tz: &TimeZone, hour: i64, sum: u64, alpha: f64) {
        let b = &mut self.buckets[hour_of_week(tz, hour)];
        let x = sum as f64;
        b.mean = if b.weeks == 0 { x } else { b.mean + alpha * (x - b.mean) };
        b.weeks = b.weeks.saturating_add(1);
    }

    /// The CVs usually delivered over Unix minutes `from..=to`: each hour the window touches
    /// gives its bucket's mean, in proportion to the minutes of it covered. `None` while any of
    /// those buckets has fewer than `weeks` weeks.
    pub fn expected(&self, tz: &TimeZone, from: i64, to: i64, weeks: u32) -> Option<f64> {
        let mut total = 0.0;
        let mut m = from;
        while m <= to {
            let hour = m.div_euclid(60);
            let end = (hour * 60 + 59).min(to);
            let b = self.buckets[hour_of_week(tz, hour)];
            if b.weeks < weeks {
                return None;
            }
            total += b.mean * (end - m + 1) as f64 / 60.0;
            m = end + 1;
        }
        Some(total)
    }
}

/// The sum above which `rule` is tripped, given what the window usually sees (`expected`):
/// above `above`, or above both `factor × expected` and `min`. `None`: no threshold yet.
pub fn threshold(rule: &Rule, expected: Option<f64>) -> Option<u64> {
    let relative = rule.baseline.zip(expected).map(|(b, e)| ((b.factor * e).floor() as u64).max(b.min));
    match (rule.above, relative) {
        (Some(a), Some(r)) => Some(a.min(r)),
        (a, r) => a.or(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_of_the_week_are_local_and_follow_daylight_saving() {
        let tz = TimeZone::get("Europe/Amsterdam").unwrap();
        let hour = |s: &str| s.parse::<Timestamp>().unwrap().as_second().div_euclid(3600);
        assert_eq!(hour_of_week(&tz, hour("2026-01-05T08:00:00Z")), 9, "Monday 09:00 in winter");
        assert_eq!(hour_of_week(&tz, hour("2026-07-06T07:00:00Z")), 9, "Monday 09:00 in summer");
        assert_eq!(hour_of_week(&tz, hour("2026-01-11T22:59:00Z")), 167, "Sunday 23:00");
        assert_eq!(hour_of_week(&TimeZone::UTC, hour("2026-01-05T00:30:00Z")), 0);
    }

    #[test]
    fn the_first_week_seeds_and_later_weeks_move_by_alpha() {
        let tz = TimeZone::UTC;
        let mon9 = "2026-01-05T09:00:00Z".parse::<Timestamp>().unwrap().as_second() / 60;
        let mut b = Baseline::default();
        let week = 7 * 24;
        b.learn(&tz, mon9 / 60, 1000, 0.5);
        assert_eq!(b.expected(&tz, mon9, mon9 + 59, 1), Some(1000.0));
        assert_eq!(b.expected(&tz, mon9, mon9 + 59, 2), None, "not enough weeks yet");
        b.learn(&tz, mon9 / 60 + week, 2000, 0.5);
        assert_eq!(b.expected(&tz, mon9, mon9 + 59, 2), Some(1500.0));
        // Half of the hour before (never learnt) is needed for a window 08:30–09:29.
        assert_eq!(b.expected(&tz, mon9 - 30, mon9 + 29, 1), None);
        b.learn(&tz, mon9 / 60 - 1, 600, 0.5);
        assert_eq!(b.expected(&tz, mon9 - 30, mon9 + 29, 1), Some(300.0 + 750.0));
        assert!(b.is_well_formed());
    }
}
