//! The `guard:` config section as written ([`RawGuard`]) and validated ([`GuardPolicy`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use jiff::tz::TimeZone;
use jiff::SignedDuration;
use serde::{Deserialize, Serialize};

use super::cohort::{Cohort, Subject};
use super::sums::SLOTS;
use crate::invalid::Invalid;

/// The zone whose hours of the week the baselines learn ("Monday 09:00" is local).
pub const DEFAULT_TZ: &str = crate::policy::closure::DEFAULT_TZ;

/// `guard:` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RawGuard {
    pub rules: Vec<RawRule>,
    pub exempt: RawExempt,
    /// IANA zone of the baselines' hours of the week; [`DEFAULT_TZ`] when absent.
    pub tz: Option<String>,
}

/// `guard.rules[i]` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawRule {
    /// Unique: it names the rule in transitions, the admin API and metrics.
    pub name: String,
    pub cohort: String,
    /// Whole minutes, at most 24h (the sums keep one day).
    pub window: String,
    /// CVs in the window above which the rule trips, whatever the baseline says.
    pub above: Option<u64>,
    pub baseline: Option<RawBaseline>,
    /// Escalating actions: a non-empty subset of `alert`, `mask`, `pause`, in this order.
    pub steps: Vec<String>,
    pub escalate_after: String,
    pub cool_down: String,
}

impl Default for RawRule {
    fn default() -> Self {
        Self {
            name: String::new(),
            cohort: "all".into(),
            window: "1h".into(),
            above: None,
            baseline: None,
            steps: ["alert", "mask", "pause"].map(String::from).to_vec(),
            escalate_after: "15m".into(),
            cool_down: "1h".into(),
        }
    }
}

/// `guard.rules[i].baseline`: trip on `factor` × what this hour of the week usually sees.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawBaseline {
    pub factor: f64,
    /// The window sum must also exceed this floor (a quiet night at 3 × nothing is no attack).
    pub min: u64,
    /// EWMA weight of the newest week.
    pub alpha: f64,
    /// Weeks of data an hour of the week needs before relative checks apply to it.
    pub weeks: u32,
}

impl Default for RawBaseline {
    fn default() -> Self {
        Self { factor: 3.0, min: 0, alpha: 0.3, weeks: 3 }
    }
}

/// `guard.exempt`: never counted, masked or paused by the guard.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RawExempt {
    pub tiers: Vec<String>,
    pub orgs: Vec<String>,
    pub accounts: Vec<String>,
}

/// What a tripped rule does; a closed, ordered set (`Normal < Alert < Mask < Pause`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Not tripped.
    #[default]
    Normal,
    /// Log, audit and count only.
    Alert,
    /// CVs of the cohort come without contact data.
    Mask,
    /// CV requests of the cohort are refused.
    Pause,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::Alert => "alert",
            Level::Mask => "mask",
            Level::Pause => "pause",
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A relative threshold, validated: `factor > 1`, `0 < alpha ≤ 1`, `1 ≤ weeks ≤ 52`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BaselineSpec {
    pub factor: f64,
    pub min: u64,
    pub alpha: f64,
    pub weeks: u32,
}

/// One rule, validated: at least one of `above` and `baseline`; `steps` non-empty, strictly
/// increasing, without `Normal`; `1 ≤ window_minutes ≤ 1440`.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: Arc<str>,
    pub cohort: Cohort,
    pub window_minutes: u32,
    pub above: Option<u64>,
    pub baseline: Option<BaselineSpec>,
    pub steps: Vec<Level>,
    pub escalate_after: SignedDuration,
    pub cool_down: SignedDuration,
}

impl Rule {
    /// The step after `level` (`Normal` → the first), if any.
    pub fn next_step(&self, level: Level) -> Option<Level> {
        self.steps.iter().copied().find(|&s| s > level)
    }
}

/// `guard.exempt`, validated.
#[derive(Debug, Clone, Default)]
pub struct Exempt {
    tiers: HashSet<String>,
    orgs: HashSet<String>,
    accounts: HashSet<String>,
}

impl Exempt {
    pub fn covers(&self, who: &Subject<'_>) -> bool {
        let has = |set: &HashSet<String>, v: Option<&str>| v.is_some_and(|v| set.contains(v));
        has(&self.tiers, who.tier) || has(&self.orgs, who.org) || has(&self.accounts, who.account)
    }
}

/// `guard:` validated.
#[derive(Debug, Clone)]
pub struct GuardPolicy {
    pub rules: Vec<Rule>,
    pub exempt: Arc<Exempt>,
    pub tz: TimeZone,
}

impl Default for GuardPolicy {
    fn default() -> Self {
        Self::from_raw(&RawGuard::default()).expect("the empty guard config is valid")
    }
}

impl GuardPolicy {
    /// Validate the raw section.
    ///
    /// # Errors
    /// Every problem found, with its key path relative to `guard` (e.g. `rules[1].window`).
    pub fn from_raw(raw: &RawGuard) -> Result<Self, Invalid> {
        let mut e = Invalid::new();
        let zone = raw.tz.as_deref().unwrap_or(DEFAULT_TZ);
        let tz = TimeZone::get(zone).ok();
        if tz.is_none() {
            e.push("tz", format!("unknown time zone {zone:?}"));
        }
        let mut seen = HashMap::new();
        let mut rules = Vec::new();
        for (i, r) in raw.rules.iter().enumerate() {
            let at = format!("rules[{i}]");
            let rule = e.under(&at, |e| validate_rule(e, r));
            if let Some(first) = seen.get(r.name.as_str()) {
                e.push(format!("{at}.name"), format!("duplicate rule name {:?} (see {first})", r.name));
            } else if !r.name.trim().is_empty() {
                seen.insert(r.name.as_str(), format!("{at}.name"));
            }
            rules.extend(rule);
        }
        let set = |v: &[String]| v.iter().cloned().collect::<HashSet<_>>();
        let x = &raw.exempt;
        let exempt = Arc::new(Exempt { tiers: set(&x.tiers), orgs: set(&x.orgs), accounts: set(&x.accounts) });
        match tz {
            Some(tz) if e.is_empty() => Ok(Self { rules, exempt, tz }),
            _ => Err(e),
        }
    }
}

/// One rule; `None` when anything is wrong (all of it recorded in `e`).
fn validate_rule(e: &mut Invalid, r: &RawRule) -> Option<Rule> {
    let before = e.len();
    if r.name.trim().is_empty() {
        e.push("name", "name must not be empty");
    }
    let cohort = r.cohort.parse::<Cohort>().map_err(|m| e.push("cohort", m)).ok();
    let window = e.positive_duration("window", &r.window).and_then(|d| {
        let whole = d.subsec_nanos() == 0 && d.as_secs().is_multiple_of(60);
        let minutes = d.as_secs() / 60;
        if !whole || minutes > SLOTS as u64 {
            e.push("window", format!("{:?}: must be whole minutes, at most 24h", r.window));
            return None;
        }
        Some(minutes as u32)
    });
    if r.above == Some(0) {
        e.push("above", "must be greater than 0");
    }
    let baseline = r.baseline.as_ref().and_then(|b| e.under("baseline", |e| validate_baseline(e, b)));
    if r.above.is_none() && r.baseline.is_none() {
        e.push("", "give `above`, `baseline` or both: with neither the rule never trips");
    }
    let steps = validate_steps(e, &r.steps);
    let mut span = |key: &str, s: &str| {
        let d = e.positive_duration(key, s)?;
        SignedDuration::try_from(d).map_err(|_| e.push(key, format!("{s:?}: too long"))).ok()
    };
    let escalate_after = span("escalate_after", &r.escalate_after);
    let cool_down = span("cool_down", &r.cool_down);
    if e.len() > before {
        return None;
    }
    Some(Rule {
        name: r.name.as_str().into(),
        cohort: cohort?,
        window_minutes: window?,
        above: r.above,
        baseline,
        steps: steps?,
        escalate_after: escalate_after?,
        cool_down: cool_down?,
    })
}

fn validate_baseline(e: &mut Invalid, b: &RawBaseline) -> Option<BaselineSpec> {
    let before = e.len();
    if !(b.factor.is_finite() && b.factor > 1.0) {
        e.push("factor", format!("must be a number above 1 (times the usual load), got {}", b.factor));
    }
    if !(b.alpha > 0.0 && b.alpha <= 1.0) {
        e.push("alpha", format!("must be in (0, 1], got {}", b.alpha));
    }
    if b.min == 0 {
        e.push("min", "give a floor above 0: three times a quiet night's nothing is no attack");
    }
    if !(1..=52).contains(&b.weeks) {
        e.push("weeks", format!("must be from 1 to 52, got {}", b.weeks));
    }
    (e.len() == before).then_some(BaselineSpec { factor: b.factor, min: b.min, alpha: b.alpha, weeks: b.weeks })
}

/// A non-empty, strictly increasing subset of alert, mask, pause.
fn validate_steps(e: &mut Invalid, steps: &[String]) -> Option<Vec<Level>> {
    if steps.is_empty() {
        e.push("steps", "give at least one of alert, mask, pause");
        return None;
    }
    let mut out: Vec<Level> = Vec::new();
    let mut ok = true;
    for (j, s) in steps.iter().enumerate() {
        let level = match s.as_str() {
            "alert" => Level::Alert,
            "mask" => Level::Mask,
            "pause" => Level::Pause,
            _ => {
                e.push(format!("steps[{j}]"), format!("expected alert, mask or pause, got {s:?}"));
                ok = false;
                continue;
            }
        };
        if out.last().is_some_and(|&prev| prev >= level) {
            e.push(format!("steps[{j}]"), "steps escalate: alert, mask, pause, each at most once, in this order");
            ok = false;
        }
        out.push(level);
    }
    ok.then_some(out)
}
