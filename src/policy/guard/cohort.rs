//! Cohorts: the populations the guard sums CVs over (`all`, `probation`, `tier:<name>`,
//! `country:<CC>`), and the [`Subject`] a request is, as the guard sees it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A population of requesters whose delivered CVs are summed together. A request belongs to
/// several at once: `all`, its tier, its country, and `probation` while it is on probation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cohort {
    All,
    /// Subjects first seen recently (`policy::probation`).
    Probation,
    /// A quota tier by name.
    Tier(String),
    /// A country code as [`crate::country`] writes it (upper case, `ZZ` when unknown).
    Country(String),
}

/// Who asks, as the guard sees it: what places a request in cohorts, and what exempts it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subject<'a> {
    pub account: Option<&'a str>,
    pub org: Option<&'a str>,
    pub tier: Option<&'a str>,
    /// The client's country code; one that is not a code counts as `ZZ`.
    pub country: &'a str,
    pub probation: bool,
}

impl Cohort {
    /// Does `who` belong to this cohort? No allocation (the request path asks).
    pub fn contains(&self, who: &Subject<'_>) -> bool {
        match self {
            Cohort::All => true,
            Cohort::Probation => who.probation,
            Cohort::Tier(t) => who.tier == Some(t.as_str()),
            Cohort::Country(c) => crate::country::or_unknown(who.country) == c.as_str(),
        }
    }
}

impl FromStr for Cohort {
    type Err = String;

    /// `all`, `probation`, `tier:<name>` or `country:<CC>` (any case; stored upper case).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("expected all, probation, tier:<name> or country:<CC>, got {s:?}");
        match s.split_once(':') {
            None if s == "all" => Ok(Cohort::All),
            None if s == "probation" => Ok(Cohort::Probation),
            Some(("tier", name)) if !name.is_empty() && name.trim() == name => Ok(Cohort::Tier(name.to_string())),
            Some(("country", cc)) => crate::country::parse(cc).map(Cohort::Country).ok_or_else(bad),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Cohort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cohort::All => f.write_str("all"),
            Cohort::Probation => f.write_str("probation"),
            Cohort::Tier(t) => write!(f, "tier:{t}"),
            Cohort::Country(c) => write!(f, "country:{c}"),
        }
    }
}

/// Written as its config string, so saved state and admin answers read like the config.
impl Serialize for Cohort {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cohort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_back() {
        for s in ["all", "probation", "tier:gold", "country:NL", "country:T1"] {
            assert_eq!(s.parse::<Cohort>().unwrap().to_string(), s);
        }
        assert_eq!("country:nl".parse::<Cohort>(), Ok(Cohort::Country("NL".into())));
        for bad in ["", "ALL", "tier:", "tier: x", "country:NLD", "country:", "org:1", "everyone"] {
            assert!(bad.parse::<Cohort>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&Cohort::Tier("gold".into())).unwrap();
        assert_eq!(json, "\"tier:gold\"");
        assert_eq!(serde_json::from_str::<Cohort>(&json).unwrap(), Cohort::Tier("gold".into()));
        assert!(serde_json::from_str::<Cohort>("\"country:xyz\"").is_err());
    }

    #[test]
    fn a_subject_is_in_all_its_tier_its_country_and_probation_when_on_it() {
        let who = Subject { tier: Some("basic"), country: "NL", probation: true, ..Subject::default() };
        let is_in = |s: &str| s.parse::<Cohort>().unwrap().contains(&who);
        assert!(is_in("all") && is_in("probation") && is_in("tier:basic") && is_in("country:NL"));
        assert!(!is_in("tier:gold") && !is_in("country:DE"));
        let unknown = Subject { country: "", ..Subject::default() };
        assert!(Cohort::Country("ZZ".into()).contains(&unknown));
        assert!(!Cohort::Probation.contains(&unknown) && !Cohort::Tier("basic".into()).contains(&unknown));
    }
}
