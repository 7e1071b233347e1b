//! Country codes: one rule for every part that reads them (geo, the quota's country scope, the
//! country overrides in config, the audit line). A leaf.
//!
//! A code is two ASCII letters or digits, upper-cased: ISO 3166-1 alpha-2, and the user-assigned
//! codes edges send (`XX`, Cloudflare's `T1` for Tor), kept as they are so that an override can
//! name them. Anything else is not a country, and a client whose country is not known is [`UNKNOWN`].

use std::borrow::Cow;

/// The country of a client whose country is not known.
pub const UNKNOWN: &str = "ZZ";

/// `s` as a country code, or `None` when it is not one.
pub fn parse(s: &str) -> Option<String> {
    let s = s.trim();
    (s.len() == 2 && s.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| s.to_ascii_uppercase())
}

/// `s` as a country code, or [`UNKNOWN`]; no allocation when `s` already is one.
pub fn or_unknown(s: &str) -> Cow<'_, str> {
    if s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
        return Cow::Borrowed(s);
    }
    parse(s).map_or(Cow::Borrowed(UNKNOWN), Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_for_every_code() {
        assert_eq!(parse("de").as_deref(), Some("DE"));
        assert_eq!(parse(" NL ").as_deref(), Some("NL"));
        assert_eq!(parse("T1").as_deref(), Some("T1"));
        assert_eq!(parse("NLD"), None);
        assert_eq!(parse("ü1"), None);
        assert_eq!(or_unknown("T1"), "T1", "Tor keeps its code: an override can name it");
        assert_eq!(or_unknown("nl"), "NL");
        assert_eq!(or_unknown(""), UNKNOWN);
        assert_eq!(or_unknown("N-"), UNKNOWN);
    }
}
