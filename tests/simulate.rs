//! Issue 20: `cvgate simulate` over a day of demo traffic. The demo runs its scenarios through
//! the real proxy on a manual clock, writing an audit log per scenario; replaying a log with the
//! shipped config reproduces every recorded decision (and every delivered and masked count),
//! and a tightened config reports the extra refusals it would have made, and whom they hit.

use std::path::Path;

use cvgate::devtools::demo::DemoOptions;
use cvgate::simulate::{self, Options};

/// config.yaml with the account's day budget halved (2,000 → 1,000 CVs).
fn tightened(dir: &Path) -> std::path::PathBuf {
    let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yaml")).unwrap();
    let line = "        day:   { budget: 2000, window: 24h, fixed: true }";
    assert_eq!(shipped.matches(line).count(), 1, "config.yaml's account day line moved");
    let path = dir.join("tight.yaml");
    std::fs::write(&path, shipped.replace(line, "        day:   { budget: 1000, window: 24h, fixed: true }")).unwrap();
    // Relative paths in the config resolve beside it, as for the shipped file.
    let mmdb = Path::new(env!("CARGO_MANIFEST_DIR")).join("GeoLite2-Country.mmdb");
    if mmdb.exists() {
        std::fs::copy(&mmdb, dir.join("GeoLite2-Country.mmdb")).unwrap();
    }
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_reproduces_the_recorded_decisions_and_a_tighter_config_reports_its_refusals() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yaml");
    let dir = tempfile::tempdir().unwrap();
    let opts = DemoOptions {
        fast: true,
        audit_dir: Some(dir.path().to_path_buf()),
        only: vec!["may4".into(), "orgs75".into()],
        ..DemoOptions::default()
    };
    let demo = cvgate::devtools::demo::run(&shipped, &opts).await.unwrap();
    assert_eq!(demo.scenarios.len(), 2);

    for sc in &demo.scenarios {
        let log = dir.path().join(format!("audit-{}.log", sc.id));
        let r = simulate::run(&Options { config: shipped.clone(), files: vec![log.clone()], ..Options::default() })
            .await
            .unwrap();
        eprintln!("{}: {}", sc.id, r.render());
        let c = &r.configs[0];
        let attacker = sc.attacker.clone().unwrap_or_default();
        let requests = attacker.requests + sc.legit.requests;
        assert_eq!(r.lines.replayed, requests, "{}: every request of the scenario is in its audit log", sc.id);
        assert_eq!(r.lines.late, 0);
        assert_eq!(c.differences, 0, "{}: decisions differ: {:?}", sc.id, c.first_differences);
        assert_eq!(c.delivered_differences, 0, "{}: delivered CVs differ", sc.id);
        assert_eq!(c.masked_differences, 0, "{}: masked CVs differ", sc.id);
        assert_eq!(c.delivered, attacker.delivered_cvs + sc.legit.delivered_cvs, "{}", sc.id);
        assert!(c.winners.is_empty() && c.losers.is_empty(), "{}", sc.id);
        assert!(r.recorded.get("allowed").copied().unwrap_or(0) > 0);
    }

    // The 4 May replay with the account's day budget halved, beside the shipped config.
    let may4 = demo.scenarios.iter().find(|s| s.id == "may4").unwrap();
    let tight = tightened(dir.path());
    let r = simulate::run(&Options {
        config: tight.clone(),
        against: Some(shipped.clone()),
        files: vec![dir.path().join("audit-may4.log")],
        ..Options::default()
    })
    .await
    .unwrap();
    eprintln!("tightened: {}", r.render());
    let (cand, current) = (&r.configs[0], &r.configs[1]);
    assert_eq!(current.differences, 0, "the shipped config beside it still reproduces the log");
    assert!(cand.differences > 0, "a tighter budget refuses more");
    // The attacker loses what lay between 1,000 and 2,000 CVs a day, refused by account/day.
    let attacker = cand.accounts.get("acct-may4").unwrap();
    assert!(attacker.delivered <= 1000, "{attacker:?}");
    assert!(attacker.recorded_delivered > 1000, "{attacker:?}");
    assert_eq!(cand.losers.first().map(|s| s.id.as_str()), Some("acct-may4"));
    assert!(cand.refusals.get("account/day").is_some_and(|r| r.requests > 0), "{:?}", cand.refusals);
    let extra = cand.decisions.get("quota-exceeded").copied().unwrap_or(0)
        + cand.decisions.get("blocked").copied().unwrap_or(0);
    let before = current.decisions.get("quota-exceeded").copied().unwrap_or(0)
        + current.decisions.get("blocked").copied().unwrap_or(0);
    assert!(extra > before, "extra refusals: {extra} vs {before}");
    // Nobody legitimate is refused by the tighter line: the small employer stays under 1,000.
    assert_eq!(cand.accounts.get("acct-bakery").map_or(0, |s| s.refused), 0);
    assert_eq!(Some(attacker.recorded_delivered), may4.attacker.as_ref().map(|t| t.delivered_cvs));

    // The same as JSON, for machines.
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["configs"][0]["config"], tight.display().to_string());
    assert!(json["accounts"].as_array().is_some_and(|a| !a.is_empty()));
}
