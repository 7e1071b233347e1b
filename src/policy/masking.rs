//! When a CV answer loses its holders' contact data: the graduated response between "served"
//! and "refused" (the board's decision of 14 May 2024 made a policy).
//!
//! `masking:` in config names what a CV loses (`fields`, compiled once into a
//! [`MaskPlan`] the body's masker runs) and when, for the routes whose answers carry CVs
//! (`routes[].mask`, by default every charged route). The triggers, in the order they are asked:
//! 1. an operator's switch on the route group (`POST /v1/masks/{group}`): everyone, exempt or not;
//! 2. `exempt` tiers, organisations and accounts: never masked by the config's own triggers;
//! 3. `always` (the board's decision as one switch), then listed `tiers`, `orgs`, `accounts`;
//! 4. the `schedule` (closure-window syntax: during these windows CVs are masked, not closed);
//! 5. the population guard masking the asker's cohort (`policy::guard`);
//! 6. `soft_budgets`: past `after` CVs in a quota horizon of a scope ("after 300 CVs in a day an
//!    account gets the rest without contact data; at 2,000 it is refused"), counted on the same
//!    bucket as the quota, so a page that straddles the line passes its first records whole.
//!
//! `shadow: true` counts what would have been masked (metrics, audit) and masks nothing.

use std::collections::HashSet;
use std::sync::Arc;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::count::mask::{KeepIf, MaskFormat, MaskPlan, MaskSpec, Masker};
use crate::count::masked::MaskTally;
use crate::invalid::Invalid;
use crate::policy::closure::{ClosurePolicy, RawClosure};
use crate::quota::{Reservation, Scope};

/// `masking:` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawMasking {
    pub fields: RawFields,
    pub shadow: bool,
    pub always: bool,
    pub tiers: Vec<String>,
    pub orgs: Vec<String>,
    pub accounts: Vec<String>,
    pub exempt: RawExempt,
    pub soft_budgets: Vec<RawSoftBudget>,
    pub schedule: RawClosure,
}

impl Default for RawMasking {
    fn default() -> Self {
        Self {
            fields: RawFields::default(),
            shadow: false,
            always: false,
            tiers: Vec::new(),
            orgs: Vec::new(),
            accounts: Vec::new(),
            exempt: RawExempt::default(),
            soft_budgets: Vec::new(),
            schedule: RawClosure { windows: Vec::new(), one_off: Vec::new() },
        }
    }
}

/// `masking.fields`: paths inside one CV (see `count::mask`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawFields {
    pub remove: Vec<String>,
    pub replace: std::collections::BTreeMap<String, serde_json::Value>,
    pub keep_if: Vec<RawKeepIf>,
    pub case_insensitive: bool,
    pub max_record_bytes: usize,
}

impl Default for RawFields {
    /// The board's decision: name, gender, date of birth, address, postcode, residence and
    /// e-mail go; the phone number stays where the job seeker chose to show it.
    fn default() -> Self {
        let remove = ["naam", "geslacht", "geboortedatum", "adres", "postcode", "woonplaats", "email"];
        Self {
            remove: remove.iter().map(|s| s.to_string()).collect(),
            replace: Default::default(),
            keep_if: vec![RawKeepIf {
                field: "telefoon".into(),
                when: "toon_telefoon".into(),
                equals: serde_json::Value::Bool(true),
            }],
            case_insensitive: true,
            max_record_bytes: crate::count::mask::DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RawKeepIf {
    pub field: String,
    pub when: String,
    pub equals: serde_json::Value,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RawExempt {
    pub tiers: Vec<String>,
    pub orgs: Vec<String>,
    pub accounts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RawSoftBudget {
    pub scope: String,
    pub horizon: String,
    /// CVs in the horizon served with contact data; the rest come masked.
    pub after: u64,
}

/// Why an answer is masked (the `reason` of `cvgate_cvs_masked_total` and the audit line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Admin,
    Always,
    Tier,
    Org,
    Account,
    Window,
    SoftBudget,
    /// The population guard masks the asker's cohort.
    Guard,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::Admin,
        Reason::Always,
        Reason::Tier,
        Reason::Org,
        Reason::Account,
        Reason::Window,
        Reason::SoftBudget,
        Reason::Guard,
    ];

    /// The label in shadow mode (counted, not masked).
    pub fn shadow_str(self) -> &'static str {
        match self {
            Reason::Admin => "shadow:admin",
            Reason::Always => "shadow:always",
            Reason::Tier => "shadow:tier",
            Reason::Org => "shadow:org",
            Reason::Account => "shadow:account",
            Reason::Window => "shadow:window",
            Reason::SoftBudget => "shadow:soft-budget",
            Reason::Guard => "shadow:guard",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Admin => "admin",
            Reason::Always => "always",
            Reason::Tier => "tier",
            Reason::Org => "org",
            Reason::Account => "account",
            Reason::Window => "window",
            Reason::SoftBudget => "soft-budget",
            Reason::Guard => "guard",
        }
    }
}

/// Mask this answer: why, how many records pass whole first, and whether only to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub reason: Reason,
    /// Records that pass with contact data before masking starts (what is left of a soft
    /// budget; 0 for every other reason).
    pub allowance: u64,
    pub shadow: bool,
}

/// One soft budget, validated.
#[derive(Debug, Clone)]
pub struct SoftBudget {
    pub scope: Scope,
    pub horizon: String,
    pub after: u64,
}

/// Who asks, as masking sees it.
pub struct Asker<'a> {
    pub account: Option<&'a str>,
    pub org: Option<&'a str>,
    pub tier: Option<&'a str>,
}

/// `masking:` validated.
#[derive(Debug, Clone)]
pub struct MaskingPolicy {
    pub plan: Arc<MaskPlan>,
    pub shadow: bool,
    always: bool,
    tiers: HashSet<String>,
    orgs: HashSet<String>,
    accounts: HashSet<String>,
    exempt_tiers: HashSet<String>,
    exempt_orgs: HashSet<String>,
    exempt_accounts: HashSet<String>,
    pub soft_budgets: Vec<SoftBudget>,
    schedule: ClosurePolicy,
}

impl Default for MaskingPolicy {
    fn default() -> Self {
        Self::from_raw(&RawMasking::default()).expect("the default masking config is valid")
    }
}

impl MaskingPolicy {
    /// Validate; error paths relative to `masking`. Soft budgets' horizons are checked against
    /// the quota section by `config`.
    pub fn from_raw(raw: &RawMasking) -> Result<Self, Invalid> {
        let mut e = Invalid::new();
        let f = &raw.fields;
        let spec = MaskSpec {
            remove: f.remove.clone(),
            replace: f.replace.clone(),
            keep_if: f
                .keep_if
                .iter()
                .map(|k| KeepIf { field: k.field.clone(), when: k.when.clone(), equals: k.equals.clone() })
                .collect(),
            case_insensitive: f.case_insensitive,
            max_record_bytes: f.max_record_bytes,
        };
        let plan = match MaskPlan::new(&spec) {
            Ok(p) => Some(Arc::new(p)),
            Err(errs) => {
                for s in errs {
                    e.push(format!("fields.{}", s.key), s.problem);
                }
                None
            }
        };
        let mut soft_budgets = Vec::new();
        for (i, s) in raw.soft_budgets.iter().enumerate() {
            let p = format!("soft_budgets[{i}]");
            let Some(scope) = Scope::ALL.iter().copied().find(|x| x.as_str() == s.scope) else {
                e.push(
                    format!("{p}.scope"),
                    format!("expected account, org, ip, country or global, got {:?}", s.scope),
                );
                continue;
            };
            if s.after == 0 {
                e.push(format!("{p}.after"), "must be greater than 0 (use `always` to mask every CV)");
            }
            soft_budgets.push(SoftBudget { scope, horizon: s.horizon.clone(), after: s.after });
        }
        let schedule = e.nest("schedule", ClosurePolicy::from_raw(&raw.schedule));
        let set = |v: &[String]| v.iter().cloned().collect::<HashSet<_>>();
        match (plan, schedule) {
            (Some(plan), Some(schedule)) if e.is_empty() => Ok(Self {
                plan,
                shadow: raw.shadow,
                always: raw.always,
                tiers: set(&raw.tiers),
                orgs: set(&raw.orgs),
                accounts: set(&raw.accounts),
                exempt_tiers: set(&raw.exempt.tiers),
                exempt_orgs: set(&raw.exempt.orgs),
                exempt_accounts: set(&raw.exempt.accounts),
                soft_budgets,
                schedule,
            }),
            _ => Err(e),
        }
    }

    /// Is this answer masked, and from which record on? `switched`: an operator masked the
    /// route's group. `granted` and `reservation`: the CVs this answer may carry and the
    /// buckets they were charged to (soft budgets read them).
    pub fn decide(
        &self,
        group: &str,
        who: &Asker<'_>,
        switched: bool,
        guard: bool,
        reservation: Option<&Reservation>,
        now: Timestamp,
    ) -> Option<Decision> {
        let at = |reason| Some(Decision { reason, allowance: 0, shadow: self.shadow });
        if switched {
            return at(Reason::Admin);
        }
        let has = |set: &HashSet<String>, v: Option<&str>| v.is_some_and(|v| set.contains(v));
        if has(&self.exempt_tiers, who.tier)
            || has(&self.exempt_orgs, who.org)
            || has(&self.exempt_accounts, who.account)
        {
            return None;
        }
        if self.always {
            return at(Reason::Always);
        }
        if has(&self.tiers, who.tier) {
            return at(Reason::Tier);
        }
        if has(&self.orgs, who.org) {
            return at(Reason::Org);
        }
        if has(&self.accounts, who.account) {
            return at(Reason::Account);
        }
        if self.schedule.decide(group, who.account, who.org, now).is_some() {
            return at(Reason::Window);
        }
        if guard {
            return at(Reason::Guard);
        }
        let r = reservation?;
        let left = self.unmasked_left(r)?;
        (left.here < r.granted).then_some(Decision {
            reason: Reason::SoftBudget,
            allowance: left.here,
            shadow: self.shadow,
        })
    }

    /// What the config says of this asker whatever the route group and time (the admin API's
    /// `explain`): whether it is exempt, and which of `always`, `tiers`, `orgs` and `accounts`
    /// name it (in the order [`MaskingPolicy::decide`] asks them; exempt askers are masked by
    /// none of them).
    pub fn applies_to(&self, who: &Asker<'_>) -> (bool, Vec<Reason>) {
        let has = |set: &HashSet<String>, v: Option<&str>| v.is_some_and(|v| set.contains(v));
        let exempt = has(&self.exempt_tiers, who.tier)
            || has(&self.exempt_orgs, who.org)
            || has(&self.exempt_accounts, who.account);
        let named = [
            (self.always, Reason::Always),
            (has(&self.tiers, who.tier), Reason::Tier),
            (has(&self.orgs, who.org), Reason::Org),
            (has(&self.accounts, who.account), Reason::Account),
        ];
        (exempt, named.into_iter().filter(|(on, _)| *on).map(|(_, r)| r).collect())
    }

    /// The tightest soft budget for this reservation (none configured, or none of its buckets
    /// charged: `None`).
    pub fn unmasked_left(&self, r: &Reservation) -> Option<SoftLeft<'_>> {
        let mut best: Option<SoftLeft> = None;
        for s in &self.soft_budgets {
            let Some(i) = r.buckets.iter().position(|b| b.scope == s.scope && *b.horizon == *s.horizon) else {
                continue;
            };
            let used_after = r.buckets[i].capacity.saturating_sub(r.states[i].remaining);
            let used_before = used_after.saturating_sub(r.granted);
            let here = s.after.saturating_sub(used_before);
            let left_after = s.after.saturating_sub(used_after);
            if best.as_ref().is_none_or(|b| here < b.here) {
                best = Some(SoftLeft { here, budget: s, left_after });
            }
        }
        best
    }
}

/// Where an answer stands against its tightest soft budget.
pub struct SoftLeft<'a> {
    /// CVs of this answer that still come with contact data.
    pub here: u64,
    pub budget: &'a SoftBudget,
    /// CVs with contact data left after this answer.
    pub left_after: u64,
}

impl SoftLeft<'_> {
    /// `cvgate-mask-budget` (RateLimit style): `"account-day";after=300;r=120`, so a
    /// well-behaved employer sees masking coming.
    pub fn header(&self) -> String {
        format!(
            "\"{}-{}\";after={};r={}",
            self.budget.scope.as_str(),
            self.budget.horizon,
            self.budget.after,
            self.left_after
        )
    }
}

/// One masked answer: the decision, the masker its body runs, and what the masker did.
pub struct MaskStep {
    pub decision: Decision,
    format: MaskFormat,
    plan: Arc<MaskPlan>,
    pub tally: Arc<MaskTally>,
}

impl MaskStep {
    pub fn new(policy: &MaskingPolicy, decision: Decision, format: MaskFormat) -> Self {
        MaskStep { decision, format, plan: policy.plan.clone(), tally: Arc::default() }
    }

    /// The masker for the body: past the allowance, or counting only in shadow mode.
    pub fn masker(&self) -> Masker {
        let m = Masker::new(self.plan.clone(), self.format.clone()).with_allowance(self.decision.allowance);
        if self.decision.shadow {
            m.shadow()
        } else {
            m
        }
    }

    /// The reason as metrics and the audit line give it.
    pub fn label(&self) -> &'static str {
        if self.decision.shadow {
            self.decision.reason.shadow_str()
        } else {
            self.decision.reason.as_str()
        }
    }

    /// `cvgate-masked` toward the client (none in shadow mode): `contact;reason=soft-budget`.
    pub fn header(&self) -> Option<String> {
        (!self.decision.shadow).then(|| format!("contact;reason={}", self.decision.reason.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_to_names_the_config_triggers_and_exemption() {
        let raw: RawMasking =
            serde_yaml_ng::from_str("tiers: [probation]\norgs: ['12345678']\nexempt: { tiers: [staffing_agency] }\n")
                .unwrap();
        let p = MaskingPolicy::from_raw(&raw).unwrap();
        let who = |tier, org| Asker { account: Some("a"), org, tier };
        assert_eq!(p.applies_to(&who(Some("probation"), Some("12345678"))), (false, vec![Reason::Tier, Reason::Org]));
        assert_eq!(p.applies_to(&who(None, None)), (false, vec![]));
        let (exempt, named) = p.applies_to(&who(Some("staffing_agency"), Some("12345678")));
        assert!(exempt);
        assert_eq!(named, [Reason::Org], "named, but exempt wins in decide");
        assert_eq!(
            p.decide("cv", &who(Some("staffing_agency"), Some("12345678")), false, false, None, Timestamp::UNIX_EPOCH),
            None
        );
    }
}
