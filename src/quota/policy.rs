//! The quota policy: raw YAML structs, their werk.nl defaults, and validation into a
//! [`QuotaPolicy`] in which invalid values cannot exist.
//!
//! Durations (`window`) are jiff's friendly or ISO 8601 forms: `30s`, `1m`, `1h`, `24h`, `90m`,
//! `1h30m`, `1d`, `7d`, `1w`, `1 day`, `PT1H`, `P7D`. Days are exactly 24 h and weeks 168 h;
//! months and years are rejected (not a fixed length). A horizon refills continuously (a rate
//! with a burst) unless `fixed: true` makes it a hard cap per fixed window of UTC time (see
//! `gcra`); the defaults make `day` and `week` fixed.
//!
//! Resolution for one subject, per scope and horizon name, later wins: the scope's horizons →
//! the org's override (its tier, then its inline horizons) → the account's override (tier, then
//! inline). Tiers and overrides may change the account, org and ip scopes (an agency's office
//! needs a larger IP budget); the country scope is set per country in `overrides.countries`;
//! global is never overridden.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU64;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Scope;
use crate::invalid::Invalid;

/// `quota:` in config.yaml. Every field has a default; a scope written in the file replaces that
/// scope's default wholly (so `ip: { horizons: {} }` switches the IP scope off).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawQuota {
    pub ip_prefix: RawIpPrefix,
    /// Hard cap on tracked bucket keys in the memory store; beyond it new keys share an overflow
    /// bucket per scope and horizon (see `memory`).
    pub max_tracked_keys: usize,
    pub scopes: RawScopes,
    /// Named horizon overrides, referenced by `overrides.*.tier`.
    pub tiers: BTreeMap<String, RawTier>,
    pub overrides: RawOverrides,
    pub exempt: RawExempt,
    /// Also send `X-RateLimit-Limit/Remaining/Reset` (Kong's and Envoy's names; Reset in seconds
    /// from now) beside the standard `RateLimit`/`RateLimit-Policy`, for clients built on them.
    pub legacy_headers: bool,
}

/// Prefix lengths that make one IP scope key.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawIpPrefix {
    pub v4: u8,
    pub v6: u8,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawScopes {
    pub account: RawScope,
    pub org: RawScope,
    pub ip: RawScope,
    pub country: RawScope,
    pub global: RawScope,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawScope {
    /// Decide, log and count "would reject", but let the request through.
    pub shadow: bool,
    pub horizons: BTreeMap<String, RawHorizon>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct RawHorizon {
    /// CVs per window; also the bucket's capacity (the largest burst).
    pub budget: u64,
    pub window: String,
    /// A hard cap per fixed window (whole seconds) instead of a continuous refill: at most
    /// `budget` per window, all of it back at the window's end. Windows run from the Unix epoch
    /// (00:00 UTC for `24h`) shifted by `offset`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fixed: bool,
    /// Where fixed windows start, past the epoch (less than `window`): `4d` makes `7d` windows
    /// start on Monday 00:00 UTC (1 January 1970 was a Thursday).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<String>,
}

/// Horizon overrides per scope.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawTier {
    pub account: BTreeMap<String, RawHorizon>,
    pub org: BTreeMap<String, RawHorizon>,
    pub ip: BTreeMap<String, RawHorizon>,
}

/// A tier reference and/or inline horizon overrides.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawOverride {
    pub tier: Option<String>,
    pub account: BTreeMap<String, RawHorizon>,
    pub org: BTreeMap<String, RawHorizon>,
    pub ip: BTreeMap<String, RawHorizon>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawOverrides {
    pub accounts: BTreeMap<String, RawOverride>,
    /// Keyed by KvK number.
    pub orgs: BTreeMap<String, RawOverride>,
    /// Country-scope horizons per ISO 3166 code (`ZZ` = unknown), replacing the scope's by name.
    pub countries: BTreeMap<String, BTreeMap<String, RawHorizon>>,
}

/// Not charged at all (no bucket is touched; the audit line still records what they fetched).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawExempt {
    pub accounts: Vec<String>,
    pub orgs: Vec<String>,
}

impl RawHorizon {
    /// `budget` CVs refilling continuously over `window`.
    pub fn continuous(budget: u64, window: &str) -> Self {
        Self { budget, window: window.into(), fixed: false, offset: None }
    }

    /// At most `budget` CVs per fixed `window` starting `offset` past the epoch.
    pub fn fixed(budget: u64, window: &str, offset: Option<&str>) -> Self {
        Self { budget, window: window.into(), fixed: true, offset: offset.map(Into::into) }
    }
}

/// Default horizons by name: `day` and `week` are hard caps per calendar day (00:00 UTC, inside
/// the night closure) and per week (Monday 00:00 UTC); shorter ones refill continuously.
fn horizons(list: &[(&str, u64, &str)]) -> BTreeMap<String, RawHorizon> {
    let h = |n: &str, b: u64, w: &str| match n {
        "day" => RawHorizon::fixed(b, w, None),
        "week" => RawHorizon::fixed(b, w, Some("4d")),
        _ => RawHorizon::continuous(b, w),
    };
    list.iter().map(|(n, b, w)| (n.to_string(), h(n, *b, w))).collect()
}

/// werk.nl defaults. Placeholders to be tuned from the query logs, chosen so that the 4 May 2024
/// pattern (200 CVs per search, ~750 searches in a day) stops after 10 searches per account and
/// 25 per organisation, while a recruiter reading a few hundred CVs a day never notices:
/// - account: 400/min burst (two pages), 1,000/h, 2,000/day, 6,000/week (several days of
///   patient scraping by one account stop at the week horizon);
/// - org (all its accounts): 5,000/day, 15,000/week (several accounts of one organisation);
/// - ip prefix (/24, /56): 2,000/h, 5,000/day (several organisations behind one network);
/// - country: 5,000/h, 20,000/day per country, 100,000/h, 500,000/day for NL and ZZ (unknown:
///   every request is ZZ when no geo database is configured);
/// - global: 200,000/h, 1,000,000/day (a brake on a distributed attack, far above normal use);
/// - tier `staffing_agency`: ten times the account, org and ip budgets.
pub fn default_raw() -> RawQuota {
    RawQuota::default()
}

impl Default for RawQuota {
    fn default() -> Self {
        let big = horizons(&[("hour", 100_000, "1h"), ("day", 500_000, "24h")]);
        Self {
            ip_prefix: RawIpPrefix::default(),
            max_tracked_keys: 1_000_000,
            legacy_headers: false,
            scopes: RawScopes::default(),
            tiers: BTreeMap::from([(
                "staffing_agency".to_string(),
                RawTier {
                    account: horizons(&[
                        ("burst", 2_000, "1m"),
                        ("hour", 10_000, "1h"),
                        ("day", 20_000, "24h"),
                        ("week", 60_000, "7d"),
                    ]),
                    org: horizons(&[("day", 50_000, "24h"), ("week", 150_000, "7d")]),
                    ip: horizons(&[("hour", 20_000, "1h"), ("day", 50_000, "24h")]),
                },
            )]),
            overrides: RawOverrides {
                countries: BTreeMap::from([("NL".to_string(), big.clone()), ("ZZ".to_string(), big)]),
                ..RawOverrides::default()
            },
            exempt: RawExempt::default(),
        }
    }
}

impl Default for RawIpPrefix {
    fn default() -> Self {
        Self { v4: 24, v6: 56 }
    }
}

impl Default for RawScopes {
    fn default() -> Self {
        let scope = |list: &[(&str, u64, &str)]| RawScope { shadow: false, horizons: horizons(list) };
        Self {
            account: scope(&[
                ("burst", 400, "1m"),
                ("hour", 1_000, "1h"),
                ("day", 2_000, "24h"),
                ("week", 6_000, "7d"),
            ]),
            org: scope(&[("day", 5_000, "24h"), ("week", 15_000, "7d")]),
            ip: scope(&[("hour", 2_000, "1h"), ("day", 5_000, "24h")]),
            country: scope(&[("hour", 5_000, "1h"), ("day", 20_000, "24h")]),
            global: scope(&[("hour", 200_000, "1h"), ("day", 1_000_000, "24h")]),
        }
    }
}

/// One validated horizon: `capacity` CVs refilling continuously over `window_ns`, or at most
/// `capacity` per fixed window when `fixed_offset_ns` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Horizon {
    pub name: Arc<str>,
    pub capacity: NonZeroU64,
    /// At least `capacity` ns, so the emission interval is ≥ 1 ns.
    pub window_ns: NonZeroU64,
    /// Fixed windows start this far past the epoch (whole seconds, < window); `None`: continuous.
    pub fixed_offset_ns: Option<u64>,
}

/// One scope's validated horizons, ordered by window (shortest first), then name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopePolicy {
    pub shadow: bool,
    pub horizons: Vec<Horizon>,
}

/// Per-scope horizon overrides (account, org, ip), a tier already merged with inline ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Override {
    pub tier: Option<Arc<str>>,
    /// Indexed by `Scope as usize`; only account, org and ip are ever non-empty.
    pub horizons: [Vec<Horizon>; 5],
}

/// The validated policy. Built only by [`QuotaPolicy::from_raw`]; swapped whole on reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaPolicy {
    pub(crate) v4_prefix: u8,
    pub(crate) v6_prefix: u8,
    pub(crate) max_tracked_keys: usize,
    /// Indexed by `Scope as usize`.
    pub(crate) scopes: [ScopePolicy; 5],
    pub(crate) accounts: HashMap<String, Override>,
    pub(crate) orgs: HashMap<String, Override>,
    /// Country scope horizons already merged with `overrides.countries`.
    pub(crate) countries: HashMap<String, Vec<Horizon>>,
    pub(crate) exempt_accounts: HashSet<String>,
    pub(crate) exempt_orgs: HashSet<String>,
    pub(crate) legacy_headers: bool,
    /// Tiers by name, for a tier given at request time (probation).
    pub(crate) tiers: HashMap<String, Override>,
}

impl QuotaPolicy {
    /// Validate a raw policy, reporting every error with its key path relative to `quota`.
    ///
    /// # Errors
    /// All problems found, e.g. `("scopes.account.horizons.day.budget", "must be greater than 0")`.
    pub fn from_raw(raw: &RawQuota) -> Result<QuotaPolicy, Invalid> {
        let mut e = Invalid::new();
        if !(1..=32).contains(&raw.ip_prefix.v4) {
            e.push("ip_prefix.v4", format!("must be 1..=32, got {}", raw.ip_prefix.v4));
        }
        if !(1..=128).contains(&raw.ip_prefix.v6) {
            e.push("ip_prefix.v6", format!("must be 1..=128, got {}", raw.ip_prefix.v6));
        }
        if raw.max_tracked_keys == 0 {
            e.push("max_tracked_keys", "must be greater than 0");
        }
        let s = &raw.scopes;
        let mut scopes: [ScopePolicy; 5] = Default::default();
        for (scope, rs) in [
            (Scope::Account, &s.account),
            (Scope::Org, &s.org),
            (Scope::Ip, &s.ip),
            (Scope::Country, &s.country),
            (Scope::Global, &s.global),
        ] {
            let path = format!("scopes.{}.horizons", scope.as_str());
            scopes[scope as usize] =
                ScopePolicy { shadow: rs.shadow, horizons: horizon_list(&path, &rs.horizons, &mut e) };
        }
        let mut tiers = HashMap::new();
        for (name, t) in &raw.tiers {
            let o = scoped(&format!("tiers.{name}"), [&t.account, &t.org, &t.ip], &mut e);
            tiers.insert(name.as_str(), o);
        }
        let resolve = |kind: &str, map: &BTreeMap<String, RawOverride>, e: &mut Invalid| {
            let mut out = HashMap::new();
            for (id, o) in map {
                let path = format!("overrides.{kind}.{id}");
                if id.is_empty() {
                    e.push(&path, "empty id");
                }
                let mut merged = Override::default();
                if let Some(t) = &o.tier {
                    match tiers.get(t.as_str()) {
                        Some(tier) => merged = tier.clone(),
                        None => e.push(format!("{path}.tier"), format!("unknown tier {t:?}")),
                    }
                    merged.tier = Some(Arc::from(t.as_str()));
                }
                let inline = scoped(&path, [&o.account, &o.org, &o.ip], e);
                for (dst, src) in merged.horizons.iter_mut().zip(inline.horizons) {
                    *dst = merge(dst, &src);
                }
                out.insert(id.clone(), merged);
            }
            out
        };
        let named_tiers: HashMap<String, Override> = tiers
            .iter()
            .map(|(n, o)| ((*n).to_string(), Override { tier: Some(Arc::from(*n)), ..o.clone() }))
            .collect();
        let accounts = resolve("accounts", &raw.overrides.accounts, &mut e);
        let orgs = resolve("orgs", &raw.overrides.orgs, &mut e);
        let mut countries = HashMap::new();
        for (cc, hs) in &raw.overrides.countries {
            let path = format!("overrides.countries.{cc}");
            if crate::country::parse(cc).as_deref() != Some(cc.as_str()) {
                e.push(&path, "must be an upper-case country code like NL (ZZ = unknown, T1 = Tor)");
            }
            let over = horizon_list(&path, hs, &mut e);
            countries.insert(cc.clone(), merge(&scopes[Scope::Country as usize].horizons, &over));
        }
        for (kind, list) in [("accounts", &raw.exempt.accounts), ("orgs", &raw.exempt.orgs)] {
            for (i, id) in list.iter().enumerate() {
                if id.is_empty() {
                    e.push(format!("exempt.{kind}[{i}]"), "empty id");
                }
            }
        }
        e.into_result(QuotaPolicy {
            v4_prefix: raw.ip_prefix.v4,
            v6_prefix: raw.ip_prefix.v6,
            max_tracked_keys: raw.max_tracked_keys,
            legacy_headers: raw.legacy_headers,
            scopes,
            accounts,
            orgs,
            countries,
            exempt_accounts: raw.exempt.accounts.iter().cloned().collect(),
            exempt_orgs: raw.exempt.orgs.iter().cloned().collect(),
            tiers: named_tiers,
        })
    }

    /// Whether `quota.tiers` has a tier called `name`.
    pub fn has_tier(&self, name: &str) -> bool {
        self.tiers.contains_key(name)
    }

    /// Hard cap on keys tracked by the memory store (read once, at store creation).
    pub fn max_tracked_keys(&self) -> usize {
        self.max_tracked_keys
    }

    /// A scope's default horizons and shadow flag.
    pub fn scope(&self, s: Scope) -> &ScopePolicy {
        &self.scopes[s as usize]
    }

    /// Whether any bucket of `scope` (default, override, tier or country) has a horizon called
    /// `name`: what a block rule narrowed to that scope and horizon can ever see fire.
    pub fn has_horizon(&self, scope: Scope, name: &str) -> bool {
        self.horizon_names(scope).contains(name)
    }

    /// Every horizon name a bucket of `scope` can have (default, overrides, tiers, countries).
    pub fn horizon_names(&self, scope: Scope) -> std::collections::BTreeSet<Arc<str>> {
        let overrides = self.accounts.values().chain(self.orgs.values()).map(|o| &o.horizons[scope as usize]);
        let countries = self.countries.values().filter(|_| scope == Scope::Country);
        std::iter::once(&self.scope(scope).horizons)
            .chain(overrides)
            .chain(countries)
            .flat_map(|hs| hs.iter().map(|h| h.name.clone()))
            .collect()
    }

    /// Every tier an override names.
    pub fn tier_names(&self) -> std::collections::BTreeSet<Arc<str>> {
        self.accounts.values().chain(self.orgs.values()).filter_map(|o| o.tier.clone()).collect()
    }
}

/// Account/org/ip overrides at `path`.{account,org,ip}.
fn scoped(path: &str, maps: [&BTreeMap<String, RawHorizon>; 3], e: &mut Invalid) -> Override {
    let mut o = Override::default();
    for (scope, m) in [Scope::Account, Scope::Org, Scope::Ip].into_iter().zip(maps) {
        o.horizons[scope as usize] = horizon_list(&format!("{path}.{}", scope.as_str()), m, e);
    }
    o
}

/// `over` replaces `base` by horizon name and adds new names; result ordered like a scope's.
pub(crate) fn merge(base: &[Horizon], over: &[Horizon]) -> Vec<Horizon> {
    if over.is_empty() {
        return base.to_vec();
    }
    let mut out: Vec<Horizon> = base.iter().filter(|b| !over.iter().any(|o| o.name == b.name)).cloned().collect();
    out.extend(over.iter().cloned());
    sort(&mut out);
    out
}

fn sort(v: &mut [Horizon]) {
    v.sort_by(|a, b| a.window_ns.cmp(&b.window_ns).then_with(|| a.name.cmp(&b.name)));
}

fn horizon_list(path: &str, raw: &BTreeMap<String, RawHorizon>, e: &mut Invalid) -> Vec<Horizon> {
    let mut out = Vec::new();
    for (name, rh) in raw {
        let p = format!("{path}.{name}");
        // Names appear in store keys (`a:{id}|{name}`) and header items: keep them plain.
        if name.is_empty()
            || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            e.push(&p, "horizon name must be non-empty [a-z0-9_-]");
        }
        let budget = NonZeroU64::new(rh.budget);
        if budget.is_none() {
            e.push(format!("{p}.budget"), "must be greater than 0");
        }
        let window = match parse_window(&rh.window) {
            Ok(w) => Some(w),
            Err(m) => {
                e.push(format!("{p}.window"), m);
                None
            }
        };
        let fixed_offset_ns = fixed_offset(&p, rh, window, e);
        if let (Some(b), Some(w), Ok(fixed_offset_ns)) = (budget, window, fixed_offset_ns) {
            if w.get() < b.get() {
                e.push(format!("{p}.budget"), "more than one CV per nanosecond of window");
            } else {
                out.push(Horizon { name: Arc::from(name.as_str()), capacity: b, window_ns: w, fixed_offset_ns });
            }
        }
    }
    sort(&mut out);
    out
}

/// A fixed horizon's offset (`Ok(None)`: continuous). Fixed windows and offsets are whole
/// seconds, so the Redis store (µs) computes the very same window ends.
fn fixed_offset(p: &str, rh: &RawHorizon, window: Option<NonZeroU64>, e: &mut Invalid) -> Result<Option<u64>, ()> {
    use super::gcra::NS_PER_SEC as SEC;
    if !rh.fixed {
        if rh.offset.is_some() {
            e.push(format!("{p}.offset"), "only a fixed horizon has an offset (add `fixed: true`)");
            return Err(());
        }
        return Ok(None);
    }
    let Some(w) = window else { return Err(()) };
    if w.get() % SEC != 0 {
        e.push(format!("{p}.window"), "a fixed window must be a whole number of seconds");
        return Err(());
    }
    let offset = match rh.offset.as_deref().map(parse_offset) {
        None => 0,
        Some(Ok(o)) => o,
        Some(Err(m)) => {
            e.push(format!("{p}.offset"), m);
            return Err(());
        }
    };
    if offset % SEC != 0 || offset >= w.get() {
        e.push(format!("{p}.offset"), "must be whole seconds, at least 0 and less than the window");
        return Err(());
    }
    Ok(Some(offset))
}

/// An offset: a window-like duration, where `0` is allowed.
fn parse_offset(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    parse_window(s).map(NonZeroU64::get)
}

/// Parse a window (see the module doc for the accepted forms) into whole nanoseconds.
///
/// # Errors
/// A message for unparsable, calendar (months/years), zero or negative durations.
pub fn parse_window(s: &str) -> Result<NonZeroU64, String> {
    crate::duration::parse_positive(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_are_documented_values() {
        let p = QuotaPolicy::from_raw(&default_raw()).unwrap();
        let acct = p.scope(Scope::Account);
        let names: Vec<&str> = acct.horizons.iter().map(|h| &*h.name).collect();
        assert_eq!(names, ["burst", "hour", "day", "week"]); // ordered by window
        assert_eq!(acct.horizons[2].capacity.get(), 2000);
        assert_eq!(acct.horizons[2].window_ns.get(), 86_400_000_000_000);
        assert_eq!(p.scope(Scope::Org).horizons[0].capacity.get(), 5000);
        assert_eq!(p.max_tracked_keys(), 1_000_000);
        assert!(p.countries.contains_key("NL") && p.countries.contains_key("ZZ"));
    }

    #[test]
    fn windows_parse() {
        for (s, secs) in [
            ("1m", 60),
            ("1h", 3600),
            ("24h", 86_400),
            ("7d", 604_800),
            ("1w", 604_800),
            ("1 day", 86_400),
            ("P7D", 604_800),
            ("1h30m", 5400),
        ] {
            assert_eq!(parse_window(s).unwrap().get(), secs * 1_000_000_000, "{s}");
        }
        for s in ["", "0s", "-1h", "1mo", "1y", "soon"] {
            assert!(parse_window(s).is_err(), "{s}");
        }
    }

    #[test]
    fn reports_every_error_with_its_path() {
        let mut raw = default_raw();
        raw.ip_prefix.v4 = 33;
        raw.ip_prefix.v6 = 0;
        raw.max_tracked_keys = 0;
        raw.scopes.account.horizons.get_mut("day").unwrap().budget = 0;
        raw.scopes.org.horizons.get_mut("week").unwrap().window = "-7d".into();
        raw.scopes.ip.horizons.insert("Bad Name".into(), RawHorizon::continuous(1, "1h"));
        raw.tiers.get_mut("staffing_agency").unwrap().org.insert("day".into(), RawHorizon::continuous(5, "1mo"));
        raw.overrides.accounts.insert("acct-1".into(), RawOverride { tier: Some("nope".into()), ..Default::default() });
        raw.overrides.countries.insert("nl".into(), BTreeMap::new());
        raw.exempt.orgs.push(String::new());
        let errs = QuotaPolicy::from_raw(&raw).unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
        for want in [
            "ip_prefix.v4",
            "ip_prefix.v6",
            "max_tracked_keys",
            "scopes.account.horizons.day.budget",
            "scopes.org.horizons.week.window",
            "scopes.ip.horizons.Bad Name",
            "tiers.staffing_agency.org.day.window",
            "overrides.accounts.acct-1.tier",
            "overrides.countries.nl",
            "exempt.orgs[0]",
        ] {
            assert!(paths.contains(&want), "missing {want} in {errs:?}");
        }
        assert_eq!(errs.len(), 10, "{errs:?}");
    }

    #[test]
    fn tier_then_inline_override() {
        let mut raw = default_raw();
        raw.overrides.accounts.insert(
            "acct-123".into(),
            RawOverride {
                tier: Some("staffing_agency".into()),
                account: horizons(&[("day", 30_000, "24h")]),
                ..Default::default()
            },
        );
        let p = QuotaPolicy::from_raw(&raw).unwrap();
        let o = &p.accounts["acct-123"];
        assert_eq!(o.tier.as_deref(), Some("staffing_agency"));
        let acct = &o.horizons[Scope::Account as usize];
        let day = acct.iter().find(|h| &*h.name == "day").unwrap();
        assert_eq!(day.capacity.get(), 30_000); // inline beats tier
        let week = acct.iter().find(|h| &*h.name == "week").unwrap();
        assert_eq!(week.capacity.get(), 60_000); // from the tier
    }

    #[test]
    fn yaml_shape_round_trips_through_json() {
        let raw = default_raw();
        let text = serde_json::to_string(&raw).unwrap();
        let back: RawQuota = serde_json::from_str(&text).unwrap();
        assert_eq!(back, raw);
        // A partial section keeps the other defaults.
        let part: RawQuota = serde_json::from_str(r#"{"scopes":{"ip":{"horizons":{}}}}"#).unwrap();
        assert!(part.scopes.ip.horizons.is_empty());
        assert_eq!(part.scopes.account, raw.scopes.account);
    }
}
