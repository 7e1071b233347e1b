//! The guard as a whole: state machine, exemptions, baselines, validation, sharing.

use std::collections::HashMap;

use jiff::{SignedDuration, Timestamp};

use super::*;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn mins(n: i64) -> SignedDuration {
    SignedDuration::from_mins(n)
}

fn policy(yaml: &str) -> GuardPolicy {
    let raw: RawGuard = serde_yaml_ng::from_str(yaml).unwrap();
    GuardPolicy::from_raw(&raw).unwrap()
}

const SPREAD: &str = "
rules:
  - name: spread
    cohort: probation
    window: 10m
    above: 1000
    escalate_after: 15m
    cool_down: 1h
";

const T0: &str = "2026-03-02T09:00:00Z";

fn newcomer<'a>() -> Subject<'a> {
    Subject { account: Some("a-1"), org: Some("o-1"), tier: Some("probation"), country: "NL", probation: true }
}

fn established<'a>() -> Subject<'a> {
    Subject { account: Some("a-2"), org: Some("o-2"), tier: Some("basic"), country: "NL", probation: false }
}

/// Minute by minute from `from` for `minutes`: deliver `per_minute` CVs to `who`, then tick.
/// The transitions, as (minute offset, from, to, reason).
fn run(
    g: &PopulationGuard,
    who: &Subject<'_>,
    per_minute: u64,
    from: Timestamp,
    minutes: i64,
) -> Vec<(i64, Level, Level, Reason)> {
    let mut out = Vec::new();
    for k in 0..minutes {
        let now = from + mins(k);
        g.add(who, per_minute, now);
        out.extend(g.tick(now).into_iter().map(|t| (k, t.from, t.to, t.reason)));
    }
    out
}

use Level::{Alert, Mask, Normal, Pause};

#[test]
fn trips_escalates_cools_down_and_releases() {
    let t0 = ts(T0);
    let g = PopulationGuard::new(policy(SPREAD), t0);
    // 200 a minute: over 1000 in 10 minutes from the 6th minute on; then 40 minutes of nothing.
    let mut seen = run(&g, &newcomer(), 200, t0, 40);
    assert_eq!(
        seen,
        [(5, Normal, Alert, Reason::Over), (20, Alert, Mask, Reason::Escalated), (35, Mask, Pause, Reason::Escalated)]
    );
    let t = g.tick(t0 + mins(35));
    assert!(t.is_empty(), "pause is the last step");
    assert_eq!(g.action_for(&newcomer()), Action { mask: None, pause: Some("spread".into()) });
    assert_eq!(g.action_for(&established()), Action::default(), "not in the cohort");
    // Last over at minute 43 (minutes 34..=43 hold six of the 200s); released an hour later.
    seen = run(&g, &newcomer(), 0, t0 + mins(40), 70).into_iter().map(|(k, f, to, r)| (k + 40, f, to, r)).collect();
    assert_eq!(seen, [(103, Pause, Normal, Reason::Cooled)]);
    assert_eq!(g.action_for(&newcomer()), Action::default());
    let s = &g.states()[0];
    assert_eq!((s.step, s.since, s.sum, s.threshold), (Normal, Some(t0 + mins(103)), 0, Some(1000)));
}

#[test]
fn the_transition_carries_sum_threshold_and_cohort() {
    let t0 = ts(T0);
    let g = PopulationGuard::new(policy(SPREAD), t0);
    g.add(&newcomer(), 600, t0);
    assert!(g.tick(t0).is_empty());
    g.add(&newcomer(), 500, t0 + mins(1));
    g.add(&established(), 5000, t0 + mins(1));
    let t = g.tick(t0 + mins(1));
    let want = Transition {
        rule: "spread".into(),
        cohort: Cohort::Probation,
        from: Normal,
        to: Alert,
        reason: Reason::Over,
        sum: 1100,
        threshold: Some(1000),
        at: t0 + mins(1),
    };
    assert_eq!(t, [want]);
    let json = serde_json::to_value(&t[0]).unwrap();
    assert_eq!(
        (json["cohort"].as_str(), json["to"].as_str(), json["reason"].as_str()),
        (Some("probation"), Some("alert"), Some("over"))
    );
}

#[test]
fn acknowledge_holds_the_step_until_released() {
    let t0 = ts(T0);
    let g = PopulationGuard::new(policy(SPREAD), t0);
    assert_eq!(g.acknowledge("spread"), Err(GuardError::NotTripped("spread".into())));
    assert_eq!(run(&g, &newcomer(), 200, t0, 6), [(5, Normal, Alert, Reason::Over)]);
    g.acknowledge("spread").unwrap();
    assert!(g.states()[0].acknowledged);
    assert!(run(&g, &newcomer(), 200, t0 + mins(6), 60).is_empty(), "an hour over, still alert");
    let after = run(&g, &newcomer(), 0, t0 + mins(66), 80);
    // The last minute over is 69 (minutes 60..=69 hold six of the 200s): Normal at 129.
    assert_eq!(after, [(129 - 66, Alert, Normal, Reason::Cooled)], "cooled an hour after the last minute over");
    assert!(!g.states()[0].acknowledged, "back at Normal the acknowledgement goes");
    // The next trip escalates again.
    let again = run(&g, &newcomer(), 200, t0 + mins(200), 25);
    assert_eq!(again, [(5, Normal, Alert, Reason::Over), (20, Alert, Mask, Reason::Escalated)]);
    assert_eq!(g.acknowledge("nope"), Err(GuardError::UnknownRule("nope".into())));
}

#[test]
fn a_manual_release_suppresses_re_trip_for_cool_down() {
    let t0 = ts(T0);
    let g = PopulationGuard::new(policy(SPREAD), t0);
    run(&g, &newcomer(), 200, t0, 21);
    assert_eq!(g.states()[0].step, Mask);
    let t = g.release("spread", t0 + mins(21)).unwrap().unwrap();
    assert_eq!((t.from, t.to, t.reason, t.sum), (Mask, Normal, Reason::Manual, 2000));
    assert_eq!(g.action_for(&newcomer()), Action::default(), "published at once");
    // Still over, but no re-trip for the hour of cool_down; then it trips at the first step.
    let seen = run(&g, &newcomer(), 200, t0 + mins(21), 70);
    assert_eq!(seen, [(60, Normal, Alert, Reason::Over)]);
    assert_eq!(g.release("spread", t0 + mins(100)).unwrap().map(|t| t.to), Some(Normal));
    assert_eq!(g.release("spread", t0 + mins(100)).unwrap(), None, "already normal");
}

#[test]
fn a_manual_trip_forces_a_step_and_cools_down_without_load() {
    let t0 = ts(T0);
    let g = PopulationGuard::new(policy(SPREAD), t0);
    let t = g.trip("spread", Mask, t0).unwrap();
    assert_eq!((t.from, t.to, t.reason), (Normal, Mask, Reason::Manual));
    assert_eq!(g.action_for(&newcomer()), Action { mask: Some("spread".into()), pause: None });
    assert_eq!(g.states()[0].since, Some(t0));
    assert_eq!(run(&g, &newcomer(), 0, t0, 61), [(60, Mask, Normal, Reason::Cooled)]);
    let bad = g.trip("spread", Normal, t0);
    assert_eq!(bad, Err(GuardError::NoSuchStep { rule: "spread".into(), level: Normal }));
    let p = policy("rules: [{ name: only-mask, above: 5, steps: [mask] }]");
    let g = PopulationGuard::new(p, t0);
    assert!(matches!(g.trip("only-mask", Pause, t0), Err(GuardError::NoSuchStep { .. })));
    assert!(matches!(g.trip("other", Mask, t0), Err(GuardError::UnknownRule(_))));
}

#[test]
fn exempt_subjects_are_neither_counted_nor_acted_on() {
    let t0 = ts(T0);
    let p = policy(
        "
rules: [{ name: all-day, cohort: all, window: 1h, above: 100, steps: [mask] }]
exempt: { tiers: [partner], orgs: [o-9], accounts: [a-9] }
",
    );
    let g = PopulationGuard::new(p, t0);
    let partner = Subject { tier: Some("partner"), country: "NL", ..Subject::default() };
    g.add(&partner, 10_000, t0);
    assert!(g.tick(t0).is_empty(), "a partner's bulk does not trip the guard");
    g.add(&established(), 101, t0);
    assert_eq!(g.tick(t0).len(), 1);
    assert_eq!(g.action_for(&established()).mask.as_deref(), Some("all-day"));
    assert_eq!(g.action_for(&partner), Action::default());
    let by_org = Subject { org: Some("o-9"), ..established() };
    let by_account = Subject { account: Some("a-9"), ..established() };
    assert_eq!((g.action_for(&by_org), g.action_for(&by_account)), (Action::default(), Action::default()));
}

#[test]
fn each_request_gets_the_first_masking_and_the_first_pausing_rule_of_its_cohorts() {
    let t0 = ts(T0);
    let p = policy(
        "
rules:
  - { name: newcomers, cohort: probation, above: 10, steps: [alert, mask] }
  - { name: dutch, cohort: country:nl, above: 10, steps: [pause] }
  - { name: basic, cohort: tier:basic, above: 10, steps: [mask, pause] }
  - { name: everyone, above: 10, steps: [alert] }
",
    );
    let g = PopulationGuard::new(p, t0);
    for (rule, level) in [("newcomers", Mask), ("dutch", Pause), ("basic", Mask), ("everyone", Alert)] {
        g.trip(rule, level, t0).unwrap();
    }
    let a = g.action_for(&newcomer());
    assert_eq!((a.mask.as_deref(), a.pause.as_deref()), (Some("newcomers"), Some("dutch")));
    let a = g.action_for(&established());
    assert_eq!((a.mask.as_deref(), a.pause.as_deref()), (Some("basic"), Some("dutch")));
    let german = Subject { country: "DE", tier: Some("gold"), ..Subject::default() };
    assert_eq!(g.action_for(&german), Action::default(), "alert only, for everyone");
    let names: Vec<_> = g.states().into_iter().map(|s| (s.name, s.step)).collect();
    let want = [("newcomers", Mask), ("dutch", Pause), ("basic", Mask), ("everyone", Alert)];
    assert_eq!(names, want.map(|(n, l)| (n.to_string(), l)));
}

/// Four weeks of a load with a busy Monday 09:00 (Amsterdam): `busy` CVs a minute in that hour,
/// 10 a minute in every other. Returns the guard and the start of the fifth Monday.
fn four_weeks(busy: u64) -> (PopulationGuard, Timestamp) {
    let p = policy(
        "
rules:
  - name: usual
    cohort: all
    window: 1h
    baseline: { factor: 3.0, min: 500, alpha: 0.3, weeks: 3 }
    steps: [alert]
",
    );
    let monday = ts("2026-01-04T23:00:00Z"); // Monday 5 January, 00:00 in Amsterdam
    let g = PopulationGuard::new(p, monday);
    for k in 0..4 * 7 * 24 * 60 {
        let now = monday + mins(k);
        let nine = (k % (7 * 24 * 60)) / 60 == 9;
        g.add(&established(), if nine { busy } else { 10 }, now);
        assert!(g.tick(now).is_empty(), "the usual load never trips ({now})");
    }
    (g, monday + SignedDuration::from_hours(4 * 7 * 24))
}

/// One hour from `start` at `per_minute` (the other cohorts' traffic aside).
fn hour_at(g: &PopulationGuard, start: Timestamp, per_minute: u64) -> Vec<Transition> {
    (0..60)
        .flat_map(|k| {
            g.add(&established(), per_minute, start + mins(k));
            g.tick(start + mins(k))
        })
        .collect()
}

#[test]
fn a_baseline_lets_a_busy_monday_morning_pass_but_not_five_times_it() {
    let n = 100; // 6,000 CVs in the Monday 09:00 hour, 600 in every other
    let (g, monday) = four_weeks(n);
    assert_eq!(run(&g, &established(), 10, monday, 9 * 60), [], "Monday night as usual");
    let t = hour_at(&g, monday + SignedDuration::from_hours(9), n * 12 / 10);
    assert!(t.is_empty(), "1.2 × a busy Monday morning is no attack: {t:?}");
    let s = &g.states()[0];
    assert_eq!((s.sum, s.threshold), (7200, Some(18_000)));
    // 1.2 × the Monday-morning rate in an hour that usually sees 600 is.
    let tuesday3 = monday + SignedDuration::from_hours(24 + 3);
    run(&g, &established(), 10, monday + SignedDuration::from_hours(10), 17 * 60);
    let t = hour_at(&g, tuesday3, n * 12 / 10);
    assert_eq!(t.iter().map(|t| (t.to, t.reason)).collect::<Vec<_>>(), [(Alert, Reason::Over)]);

    let (g, monday) = four_weeks(n);
    run(&g, &established(), 10, monday, 9 * 60);
    let t = hour_at(&g, monday + SignedDuration::from_hours(9), n * 5);
    assert_eq!(t.len(), 1, "5 × trips");
    // At 09:05: 54 usual minutes of 08:xx and six at 500 against 3 × (540 + 600).
    assert_eq!((t[0].at, t[0].sum, t[0].threshold), (monday + mins(9 * 60 + 5), 3540, Some(3420)));
}

#[test]
fn a_baseline_still_learning_gives_no_threshold_and_above_still_applies() {
    let t0 = ts(T0);
    let p = policy("rules: [{ name: r, window: 1h, above: 5000, baseline: { min: 10 }, steps: [alert] }]");
    let g = PopulationGuard::new(p, t0);
    g.add(&established(), 4000, t0);
    assert!(g.tick(t0).is_empty());
    assert_eq!(g.states()[0].threshold, Some(5000), "no baseline yet: only `above`");
    g.add(&established(), 1001, t0);
    assert_eq!(g.tick(t0).len(), 1);
}

#[test]
fn validation_collects_every_error_with_its_key_path() {
    let yaml = "
tz: Mars/Olympus
rules:
  - name: a
    cohort: org:1
    window: 25h
    above: 10
    steps: [mask, alert]
  - name: ''
    window: 90s
    above: 0
    steps: [alert, halt]
    escalate_after: soon
  - name: b
    baseline: { factor: 0.5, alpha: 0, min: 0, weeks: 0 }
    steps: []
  - { name: a, above: 5 }
  - { name: d, cool_down: 0s }
";
    let raw: RawGuard = serde_yaml_ng::from_str(yaml).unwrap();
    let errs = GuardPolicy::from_raw(&raw).unwrap_err().into_vec();
    let paths: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "tz",
            "rules[0].cohort",
            "rules[0].window",
            "rules[0].steps[1]",
            "rules[1].name",
            "rules[1].window",
            "rules[1].above",
            "rules[1].steps[1]",
            "rules[1].escalate_after",
            "rules[2].baseline.factor",
            "rules[2].baseline.alpha",
            "rules[2].baseline.min",
            "rules[2].baseline.weeks",
            "rules[2].steps",
            "rules[3].name",
            "rules[4]",
            "rules[4].cool_down",
        ]
    );
    let msg = |p: &str| errs.iter().find(|(q, _)| q == p).unwrap().1.as_str();
    assert_eq!(msg("rules[0].cohort"), "expected all, probation, tier:<name> or country:<CC>, got \"org:1\"");
    assert_eq!(msg("rules[0].window"), "\"25h\": must be whole minutes, at most 24h");
    assert_eq!(msg("rules[0].steps[1]"), "steps escalate: alert, mask, pause, each at most once, in this order");
    assert_eq!(msg("rules[3].name"), "duplicate rule name \"a\" (see rules[0].name)");
    assert_eq!(msg("rules[4]"), "give `above`, `baseline` or both: with neither the rule never trips");
    // 24h and 1m are the bounds.
    assert!(
        GuardPolicy::from_raw(&serde_yaml_ng::from_str("rules: [{name: x, window: 24h, above: 1}]").unwrap()).is_ok()
    );
    let one = GuardPolicy::from_raw(&serde_yaml_ng::from_str("rules: [{name: x, window: 1m, above: 1}]").unwrap());
    assert_eq!(one.unwrap().rules[0].window_minutes, 1);
}

#[test]
fn the_documented_example_loads_with_defaults() {
    let p = policy(
        "
rules:
  - name: spread-harvest
    cohort: probation
    window: 1h
    above: 20000
    baseline: { factor: 3.0, min: 5000, alpha: 0.3 }
    steps: [alert, mask, pause]
    escalate_after: 15m
    cool_down: 1h
  - name: short
    above: 10
exempt: { tiers: [], orgs: [], accounts: [] }
",
    );
    let r = &p.rules[0];
    assert_eq!(
        (&*r.name, &r.cohort, r.window_minutes, r.above),
        ("spread-harvest", &Cohort::Probation, 60, Some(20000))
    );
    assert_eq!(r.baseline.unwrap().weeks, 3);
    assert_eq!((r.escalate_after, r.cool_down), (mins(15), mins(60)));
    let d = &p.rules[1];
    assert_eq!((&d.cohort, d.window_minutes, &d.steps[..]), (&Cohort::All, 60, &[Alert, Mask, Pause][..]));
    assert!(GuardPolicy::default().rules.is_empty());
}

#[test]
fn levels_and_baselines_survive_a_restart_and_a_reload() {
    let t0 = ts(T0);
    let yaml = "rules: [{ name: spread, cohort: probation, above: 10, baseline: { min: 5 } }, { name: b, above: 10 }]";
    let g = PopulationGuard::new(policy(yaml), t0);
    g.trip("spread", Mask, t0).unwrap();
    g.acknowledge("spread").unwrap();
    let json = serde_json::to_string(&g.save()).unwrap();
    let back = PopulationGuard::new(policy(yaml), t0 + mins(5));
    back.restore(serde_json::from_str(&json).unwrap(), t0 + mins(5));
    assert_eq!(back.states(), g.states());
    assert_eq!(back.action_for(&newcomer()).mask.as_deref(), Some("spread"));
    assert_eq!(back.save(), g.save());
    // A reload that keeps the rule keeps its level; one without the step or with another
    // cohort starts it afresh.
    back.reconfigure(policy("rules: [{ name: spread, cohort: probation, above: 99, steps: [mask] }]"), t0);
    assert_eq!(back.states()[0].step, Mask);
    back.reconfigure(policy("rules: [{ name: spread, cohort: probation, above: 99, steps: [pause] }]"), t0);
    assert_eq!(back.states()[0].step, Normal);
    assert_eq!(back.action_for(&newcomer()), Action::default());
    back.trip("spread", Pause, t0).unwrap();
    back.reconfigure(policy("rules: [{ name: spread, cohort: all, above: 99, steps: [pause] }]"), t0);
    assert_eq!(back.states()[0].step, Normal);
}

/// A tiny deterministic generator (xorshift) for the traffic of the sharing test.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn replicas_sharing_deltas_decide_as_one_process_seeing_everything() {
    let yaml = "
rules:
  - { name: newcomers, cohort: probation, window: 30m, above: 3000, escalate_after: 5m, cool_down: 20m }
  - { name: dutch, cohort: country:NL, window: 10m, above: 800, steps: [mask], cool_down: 10m }
  - { name: basic, cohort: tier:basic, window: 2h, above: 9000, steps: [alert, pause], escalate_after: 30m }
";
    let t0 = ts(T0);
    let replicas = [PopulationGuard::new(policy(yaml), t0), PopulationGuard::new(policy(yaml), t0)];
    let single = PopulationGuard::new(policy(yaml), t0);
    // The Redis hashes: (cohort, minute) → replica → its total for the minute.
    let mut redis: HashMap<(Cohort, i64), [u64; 2]> = HashMap::new();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (countries, tiers) = (["NL", "DE", "BE"], ["basic", "gold", "probation"]);
    let mut transitions = 0;
    for second in 0..6 * 3600 {
        let now = t0 + SignedDuration::from_secs(second);
        for _ in 0..rng.next(3) {
            let who = Subject {
                tier: Some(tiers[rng.next(3) as usize]),
                country: countries[rng.next(3) as usize],
                probation: rng.next(4) == 0,
                ..Subject::default()
            };
            // Bursts now and then, so that rules trip, escalate and cool down.
            let cvs = if (second / 1800) % 3 == 1 { rng.next(20) } else { rng.next(5) };
            replicas[rng.next(2) as usize].add(&who, cvs, now);
            single.add(&who, cvs, now);
        }
        if second % 10 != 0 {
            continue;
        }
        for (i, r) in replicas.iter().enumerate() {
            for d in r.take_deltas() {
                redis.entry((d.cohort, d.minute)).or_default()[i] = d.local_total;
            }
        }
        for (i, r) in replicas.iter().enumerate() {
            // Read back the current and the previous minute, as the sync would.
            for ((cohort, minute), totals) in redis.iter().filter(|((_, m), _)| *m >= minute_of(now) - 1) {
                r.set_remote(cohort, *minute, totals[1 - i], now);
            }
        }
        let want = single.tick(now);
        transitions += want.len();
        for r in &replicas {
            assert_eq!(r.tick(now), want, "at {now}");
            assert_eq!(r.states(), single.states());
            for who in [newcomer(), established()] {
                assert_eq!(r.action_for(&who), single.action_for(&who));
            }
        }
    }
    assert!(transitions >= 6, "the traffic exercises the rules ({transitions} transitions)");
}
