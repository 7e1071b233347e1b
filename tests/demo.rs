//! Issue 8, `cvgate demo` in fast mode through the real proxy: the 4 May 2024 replay and each
//! evasion leak no more than the scope meant to stop them can let through (budgets read from the
//! repo's config.yaml, never hard-coded here), and legitimate users are refused nothing.

use std::path::Path;

use cvgate::blocks::{BlockScope, Event};
use cvgate::config::Config;
use cvgate::demo::{DemoOptions, DemoReport, HorizonBudget, ScenarioReport};
use cvgate::quota::Scope;

fn scenario<'a>(r: &'a DemoReport, id: &str) -> &'a ScenarioReport {
    r.scenarios.iter().find(|s| s.id == id).unwrap_or_else(|| panic!("no scenario {id}"))
}

/// A scope's default horizons from the config (the attackers have no tier or override).
fn horizons(config: &Config, scope: Scope) -> Vec<HorizonBudget> {
    config
        .quota
        .scope(scope)
        .horizons
        .iter()
        .map(|h| HorizonBudget {
            name: h.name.to_string(),
            budget: h.capacity.get(),
            window_secs: h.window_ns.get() / 1_000_000_000,
        })
        .collect()
}

/// A budget of `B` per window `W` refills continuously, so over a span `t` it lets through at
/// most `B + B·t/W`; the scope's bound is the least over its horizons. Computed here from the
/// config, independently of the demo's own figure.
fn bound(hs: &[HorizonBudget], span_secs: u64) -> u64 {
    hs.iter().map(|h| h.budget + h.budget * span_secs / h.window_secs).min().unwrap()
}

fn day_budget(hs: &[HorizonBudget]) -> u64 {
    hs.iter().find(|h| h.window_secs == 86_400).expect("a 24 h horizon").budget
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_attacks_stay_within_budgets_and_legit_users_are_never_refused() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yaml");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let report = cvgate::demo::run(&path, &DemoOptions { fast: true, progress: false }).await.unwrap();
    eprintln!("{}", cvgate::demo::render(&report));

    for (id, scope) in
        [("may4", Scope::Account), ("accounts30", Scope::Org), ("orgs30", Scope::Ip), ("week", Scope::Account)]
    {
        let s = scenario(&report, id);
        let attacker = s.attacker.as_ref().expect("an attack has an attacker");
        let hs = horizons(&config, scope);
        // A span off by under a second changes the bound by at most one CV per horizon.
        let want = bound(&hs, s.span_secs);
        let limit = s.limit.as_ref().expect("an attack names the scope meant to stop it");
        assert_eq!(limit.scope, scope.as_str(), "{id}");
        assert!(limit.bound.abs_diff(want) <= 1, "{id}: demo bound {} vs config bound {want}", limit.bound);
        assert!(
            attacker.delivered_cvs <= want + 1,
            "{id}: {} CVs got through; the {} scope allows at most {want} over {} s",
            attacker.delivered_cvs,
            scope.as_str(),
            s.span_secs
        );
        assert!(attacker.delivered_cvs > 0, "{id}: some CVs get through before the limit");
        assert!(attacker.requested_cvs > 2 * attacker.delivered_cvs, "{id}: the attack asked for far more");
        let stop = s.first_stop.as_ref().unwrap_or_else(|| panic!("{id}: never stopped"));
        assert!(
            s.rejections.keys().any(|k| k.starts_with(&format!("{}/", scope.as_str()))),
            "{id}: the {} scope refused requests: {:?} (first: {stop:?})",
            scope.as_str(),
            s.rejections
        );
        assert_eq!(s.legit.refused_cvs, 0, "{id}: a bystander was refused");
        assert!(s.legit.delivered_cvs > 0, "{id}: the bystander browsed");
        // Automatic blocking (when configured) may answer the attacker with 403 blocked too.
        assert!(
            s.other_refusals.keys().all(|k| k == "blocked"),
            "{id}: only quota refusals and blocks expected: {:?}",
            s.other_refusals
        );
        assert_eq!(s.blocked_legit_requests, 0, "{id}: a bystander was blocked");
    }

    // The 4 May replay: one account, one day. The 24 h horizon is what bounds the day.
    let may4 = scenario(&report, "may4");
    let acct = horizons(&config, Scope::Account);
    let day = day_budget(&acct);
    assert!(may4.span_secs < 86_400);
    let may4_cvs = may4.attacker.as_ref().unwrap().delivered_cvs;
    assert!(may4_cvs <= day + day * may4.span_secs / 86_400);
    // With a rule that blocks an account at its first day-budget refusal (config.yaml has one),
    // the refill after that refusal never reaches the client: no more than the day budget leaks.
    let blocked_at_day_budget = config.blocks.rules.iter().any(|r| {
        r.on == Event::Quota
            && r.scope.as_deref() == Some("account")
            && r.horizon.as_deref() == Some("day")
            && r.threshold == 1
            && r.block == BlockScope::Account
    });
    if blocked_at_day_budget {
        assert!(may4_cvs <= day, "4 May: {may4_cvs} CVs leaked, day budget {day}");
    }
    assert_eq!(may4.first_stop.as_ref().unwrap().scope, "account");

    // Spread over a week, the account still gets no more than its week horizon allows.
    let week = scenario(&report, "week");
    assert!(week.span_secs > 6 * 86_400, "the attack spans the week");
    assert!(week.rejections.keys().any(|k| k.starts_with("account/")));

    // Legitimate use: nothing refused, and the agency's volume is more than a default account
    // or organisation could fetch in a day (so its tier, not luck, is what lets it through).
    for id in ["agency", "employer"] {
        let s = scenario(&report, id);
        assert!(s.attacker.is_none() && s.limit.is_none());
        assert_eq!(s.legit.refused_cvs, 0, "{id}: {:?} {:?}", s.rejections, s.other_refusals);
        assert_eq!(s.legit.delivered_cvs, s.legit.requested_cvs, "{id}");
        assert!(s.rejections.is_empty() && s.other_refusals.is_empty(), "{id}");
    }
    let agency = scenario(&report, "agency");
    assert!(agency.legit.requested_cvs > day_budget(&horizons(&config, Scope::Org)));
    assert!(agency.legit.requested_cvs / 5 > day, "each recruiter fetches more than a default account's day");

    for s in &report.scenarios {
        assert_eq!(s.blocked_legit_requests, 0, "{}: a legitimate user was blocked", s.id);
    }
}
