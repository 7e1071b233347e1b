//! `cvgate simulate`'s speed in audit lines per second, on one core (a current-thread runtime):
//! a synthetic month of schema-2 audit lines — 20,000 employers on 20,000 /24s searching 20 CVs at a
//! time, one harvester paging 200 at a time into its budgets, blocks and masks — written to a
//! temp file, then replayed with the shipped config.yaml. Bounded: LINES lines (default
//! 1,000,000), ROUNDS rounds (default 3); prints each round and the median.
//!
//! `cargo bench --bench simulate` (target: ≥ 500,000 lines/s, so a month of logs takes minutes).

use std::io::Write;
use std::path::Path;

use cvgate::simulate::{self, Options};

fn line(i: u64, t: jiff::Timestamp, harvester: bool) -> String {
    let (account, org, ip, size) = if harvester {
        ("acct-harvest".to_string(), "10000001".to_string(), "198.51.100.7".to_string(), 200)
    } else {
        let e = i % 20_000;
        (format!("acct-{e}"), format!("{:08}", 20_000_000 + e), format!("10.{}.{}.9", e / 250, e % 250), 20)
    };
    let ts = t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ");
    format!(
        r#"{{"schema":2,"ts":"{ts}","local":"-","request_id":"r{i}","account":"{account}","org":"{org}","client_ip":"{ip}","country":"NL","route":"cv_search","group":"cv","tier":null,"reserved":{size},"delivered":{size},"decision":"allowed","scope":null,"horizon":null,"would_reject":[],"status":200,"bytes":7500,"duration_ms":3.2,"truncated":false,"count":"exact","method":"GET","path":"/api/v1/cvs?query=java&size={size}&page=1","ua":"Mozilla/5.0","asked":{size}}}"#
    )
}

fn main() {
    let lines: u64 = std::env::var("LINES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("audit.log");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&log).expect("audit file"));
        // A month of open hours (07:00–23:00 Amsterdam; config.yaml closes 23:00–07:00), the
        // lines spread evenly over each day's 16 hours: ~17,000 requests a day at 1,000,000 lines,
        // within the site's budgets (a real day: 20,000–30,000 CVs).
        let start: jiff::Timestamp = "2026-11-02T06:00:00Z".parse().expect("instant");
        let per_day = (lines / 30).max(1);
        let span_ns = 16 * 3600 * 1_000_000_000i128;
        for i in 0..lines {
            let (day, k) = (i128::from(i / per_day), i128::from(i % per_day));
            let ns = start.as_nanosecond() + day * 86_400 * 1_000_000_000 + span_ns * k / i128::from(per_day);
            let t = jiff::Timestamp::from_nanosecond(ns).expect("instant");
            writeln!(f, "{}", line(i, t, i % 50 == 0)).expect("write");
        }
    }
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yaml");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut rates = Vec::new();
    for round in 0..rounds {
        let opts = Options { config: config.clone(), files: vec![log.clone()], ..Options::default() };
        let t = std::time::Instant::now();
        let r = rt.block_on(simulate::run(&opts)).expect("simulate");
        let secs = t.elapsed().as_secs_f64();
        let rate = r.lines.read as f64 / secs;
        let c = &r.configs[0];
        println!(
            "round {}: {} lines in {:.2}s = {:.0} lines/s ({} replayed; decisions {:?}; {} masked)",
            round + 1,
            r.lines.read,
            secs,
            rate,
            r.lines.replayed,
            c.decisions,
            c.masked
        );
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    println!("simulate: median {:.0} lines/s over {} rounds of {} lines", rates[rates.len() / 2], rounds, lines);
}
