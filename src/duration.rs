//! One duration grammar for every config key, admin field and flag: jiff's friendly format
//! (`250ms`, `30s`, `5m`, `1h 30m`, `24h`, `7d`, `2w`), days of exactly 24 hours and weeks of 7
//! days; months and years are refused (they have no fixed length). A leaf: it names nothing
//! else in the crate.

use std::num::NonZeroU64;
use std::time::Duration;

/// A duration, zero allowed.
///
/// # Errors
/// A message naming the accepted forms for text that does not parse, a calendar unit
/// (months, years) or a negative duration.
pub fn parse(s: &str) -> Result<Duration, String> {
    let span: jiff::Span =
        s.trim().parse().map_err(|e| format!("{s:?} is not a duration like 30s, 5m, 1h, 24h or 7d ({e})"))?;
    let d = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|_| format!("{s:?}: months and years have no fixed length; use days or weeks"))?;
    Duration::try_from(d).map_err(|_| format!("{s:?}: a duration must not be negative"))
}

/// A duration greater than zero, in whole nanoseconds (quota windows, block durations).
///
/// # Errors
/// As [`parse`], and for zero or a duration too long for 64-bit nanoseconds.
pub fn parse_positive(s: &str) -> Result<NonZeroU64, String> {
    let d = parse(s)?;
    let ns = u64::try_from(d.as_nanos()).map_err(|_| format!("{s:?}: too long"))?;
    NonZeroU64::new(ns).ok_or_else(|| format!("{s:?}: must be greater than 0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_grammar_for_every_duration() {
        for (s, secs) in
            [("30s", 30), ("5m", 300), ("1h 30m", 5400), ("24h", 86_400), ("7d", 604_800), ("2w", 1_209_600)]
        {
            assert_eq!(parse(s).unwrap(), Duration::from_secs(secs), "{s}");
        }
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("0s").unwrap(), Duration::ZERO);
        assert!(parse_positive("0s").is_err());
        for bad in ["1 month", "1y", "-5s", "soon", ""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
