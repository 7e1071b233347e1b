//! What `cvgate simulate` reports: per config, the decisions and CVs against what really
//! happened (the recorded decision of each audit line), per account and organisation, the
//! blocks its rules would have made, refusals by scope and horizon, and the biggest winners and
//! losers; as text for people and JSON (`--json`) for machines.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde::Serialize;

use super::input::{Recorded, Skip};
use super::replay::Outcome;

/// One subject's (account's or organisation's) traffic: recorded, and under a config.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Subject {
    pub id: String,
    pub requests: u64,
    pub recorded_delivered: u64,
    pub delivered: u64,
    pub recorded_refused: u64,
    /// Requests the config refuses.
    pub refused: u64,
    pub recorded_masked: u64,
    pub masked: u64,
    /// CVs delivered under the config minus recorded (negative: the config takes CVs away).
    pub change: i64,
}

impl Subject {
    fn add(&mut self, r: &Recorded, o: &Outcome) {
        self.requests += 1;
        self.recorded_delivered += r.delivered;
        self.delivered += o.delivered;
        self.recorded_refused += u64::from(r.decision != "allowed");
        self.refused += u64::from(o.decision != "allowed");
        self.recorded_masked += r.masked;
        self.masked += o.masked;
        self.change = self.delivered as i64 - self.recorded_delivered as i64;
    }
}

/// Requests and CVs asked that one scope and horizon refused.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Refusals {
    pub requests: u64,
    pub cvs_asked: u64,
}

/// A block the config's rules would have made.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BlockMade {
    pub scope: String,
    pub key: String,
    pub reason: String,
    pub at: String,
    pub until: Option<String>,
}

/// Subjects by id; foldhash rather than SipHash: ids come from our own logs, and the two
/// lookups per line were a twentieth of a replay.
pub type Subjects = HashMap<String, Subject, foldhash::fast::RandomState>;

/// One config's replay.
#[derive(Debug, Default, Serialize)]
pub struct ConfigReport {
    pub config: String,
    /// Lines whose decision differs from the recorded one.
    pub differences: u64,
    /// Lines whose delivered CVs differ from the recorded ones.
    pub delivered_differences: u64,
    /// Lines whose masked CVs differ from the recorded ones.
    pub masked_differences: u64,
    pub decisions: BTreeMap<String, u64>,
    pub delivered: u64,
    pub masked: u64,
    /// `scope/horizon` → what it refused.
    pub refusals: BTreeMap<String, Refusals>,
    pub blocks: Vec<BlockMade>,
    /// The first differing lines (line number, recorded and simulated: decision, CVs, masked),
    /// at most 20.
    pub first_differences: Vec<(u64, String, String)>,
    pub winners: Vec<Subject>,
    pub losers: Vec<Subject>,
    #[serde(skip)]
    pub accounts: Subjects,
    #[serde(skip)]
    pub orgs: Subjects,
}

impl ConfigReport {
    pub fn new(config: String) -> Self {
        ConfigReport { config, ..Default::default() }
    }

    pub fn add(&mut self, n: u64, r: &Recorded, o: &Outcome) {
        let (decision, delivered, masked) =
            (r.decision != o.decision, r.delivered != o.delivered, r.masked != o.masked);
        self.differences += u64::from(decision);
        self.delivered_differences += u64::from(delivered);
        self.masked_differences += u64::from(masked);
        if (decision || delivered || masked) && self.first_differences.len() < 20 {
            let show = |d: &str, n: u64, m: u64| format!("{d} {n} CVs ({m} masked)");
            self.first_differences.push((
                n,
                show(&r.decision, r.delivered, r.masked),
                show(&o.decision, o.delivered, o.masked),
            ));
        }
        match self.decisions.get_mut(&*o.decision) {
            Some(n) => *n += 1,
            None => {
                self.decisions.insert(o.decision.to_string(), 1);
            }
        }
        self.delivered += o.delivered;
        self.masked += o.masked;
        if let Some((scope, horizon)) = &o.fired {
            let e = self.refusals.entry(format!("{scope}/{horizon}")).or_default();
            e.requests += 1;
            e.cvs_asked += r.asked;
        }
        for (map, id) in [(&mut self.accounts, &r.account), (&mut self.orgs, &r.org)] {
            let Some(id) = id else { continue };
            // Looked up before inserting: no key allocated for a subject already there.
            match map.get_mut(id) {
                Some(s) => s.add(r, o),
                None => {
                    map.entry(id.clone()).or_insert_with(|| Subject { id: id.clone(), ..Default::default() }).add(r, o)
                }
            }
        }
    }

    /// Rank winners and losers (`n` each) once every line is in.
    pub fn rank(&mut self, n: usize) {
        let mut all: Vec<&Subject> = self.accounts.values().filter(|s| s.change != 0).collect();
        all.sort_by(|a, b| b.change.cmp(&a.change).then(a.id.cmp(&b.id)));
        self.winners = all.iter().take_while(|s| s.change > 0).take(n).map(|s| (*s).clone()).collect();
        self.losers = all.iter().rev().take_while(|s| s.change < 0).take(n).map(|s| (*s).clone()).collect();
    }

    /// Per account (or organisation), sorted by CVs delivered under the config, most first.
    pub fn subjects(&self, orgs: bool) -> Vec<&Subject> {
        let map = if orgs { &self.orgs } else { &self.accounts };
        let mut v: Vec<&Subject> = map.values().collect();
        v.sort_by(|a, b| b.delivered.cmp(&a.delivered).then(a.id.cmp(&b.id)));
        v
    }
}

/// Lines read and why some were not replayed.
#[derive(Debug, Default, Serialize)]
pub struct Lines {
    pub read: u64,
    pub replayed: u64,
    pub unreadable: u64,
    pub not_requests: u64,
    pub newer_schema: u64,
    /// Lines that arrived after the reorder window had passed their instant (replayed late).
    pub late: u64,
}

impl Lines {
    pub fn skip(&mut self, s: Skip) {
        match s {
            Skip::Unreadable => self.unreadable += 1,
            Skip::NotARequest => self.not_requests += 1,
            Skip::Schema => self.newer_schema += 1,
        }
    }
}

/// The whole answer.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub files: Vec<String>,
    pub lines: Lines,
    pub from: Option<String>,
    pub to: Option<String>,
    pub recorded: BTreeMap<String, u64>,
    pub recorded_delivered: u64,
    pub recorded_masked: u64,
    /// The candidate first, then `--against`.
    pub configs: Vec<ConfigReport>,
    /// Per account: `[candidate, against]` rows (JSON only, the 100 heaviest).
    pub accounts: Vec<Vec<Subject>>,
    pub orgs: Vec<Vec<Subject>>,
    pub elapsed_ms: u64,
    pub lines_per_second: u64,
}

impl Report {
    /// Per-subject rows for the JSON answer: the `n` heaviest under the candidate, with the
    /// same subject's row under each other config.
    pub fn tabulate(&mut self, n: usize) {
        let pick = |orgs: bool, configs: &[ConfigReport]| -> Vec<Vec<Subject>> {
            let Some(first) = configs.first() else { return Vec::new() };
            first
                .subjects(orgs)
                .into_iter()
                .take(n)
                .map(|s| {
                    configs
                        .iter()
                        .map(|c| {
                            let map = if orgs { &c.orgs } else { &c.accounts };
                            map.get(&s.id).cloned().unwrap_or_default()
                        })
                        .collect()
                })
                .collect()
        };
        self.accounts = pick(false, &self.configs);
        self.orgs = pick(true, &self.configs);
    }

    /// The report for people.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let l = &self.lines;
        let _ = writeln!(
            o,
            "{} lines read from {} file(s), {} CV requests replayed ({} unreadable, {} not requests, {} of a newer schema, {} late), {} to {}; {} lines/s",
            l.read,
            self.files.len(),
            l.replayed,
            l.unreadable,
            l.not_requests,
            l.newer_schema,
            l.late,
            self.from.as_deref().unwrap_or("-"),
            self.to.as_deref().unwrap_or("-"),
            self.lines_per_second
        );
        let _ = writeln!(
            o,
            "recorded: {} CVs delivered, {} masked; decisions {}",
            self.recorded_delivered,
            self.recorded_masked,
            counts(&self.recorded)
        );
        for c in &self.configs {
            let _ = writeln!(o, "\n== {} ==", c.config);
            let _ = writeln!(
                o,
                "decisions {}; {} CVs delivered ({:+} vs recorded), {} masked ({:+})",
                counts(&c.decisions),
                c.delivered,
                c.delivered as i64 - self.recorded_delivered as i64,
                c.masked,
                c.masked as i64 - self.recorded_masked as i64
            );
            let _ = writeln!(
                o,
                "differences from the recorded decisions: {} (delivered CVs differ on {} lines, masked on {})",
                c.differences, c.delivered_differences, c.masked_differences
            );
            for (line, rec, sim) in c.first_differences.iter().take(5) {
                let _ = writeln!(o, "  line {line}: recorded {rec}, now {sim}");
            }
            if !c.refusals.is_empty() {
                let _ = writeln!(o, "refusals by scope/horizon:");
                for (k, v) in &c.refusals {
                    let _ = writeln!(o, "  {k:<24} {:>8} requests {:>10} CVs asked", v.requests, v.cvs_asked);
                }
            }
            if !c.blocks.is_empty() {
                let _ = writeln!(o, "blocks its rules would make: {}", c.blocks.len());
                for b in c.blocks.iter().take(20) {
                    let _ = writeln!(
                        o,
                        "  {} {} at {} until {} ({})",
                        b.scope,
                        b.key,
                        b.at,
                        b.until.as_deref().unwrap_or("-"),
                        b.reason
                    );
                }
            }
            for (title, list) in
                [("winners (more CVs than recorded)", &c.winners), ("losers (fewer CVs than recorded)", &c.losers)]
            {
                if list.is_empty() {
                    continue;
                }
                let _ = writeln!(o, "{title}:");
                for s in list {
                    let _ = writeln!(
                        o,
                        "  {:<28} {:>+8} CVs ({} → {}), refused {} → {}, masked {} → {}",
                        s.id,
                        s.change,
                        s.recorded_delivered,
                        s.delivered,
                        s.recorded_refused,
                        s.refused,
                        s.recorded_masked,
                        s.masked
                    );
                }
            }
            let _ = writeln!(o, "heaviest accounts:");
            for s in c.subjects(false).into_iter().take(10) {
                let _ = writeln!(
                    o,
                    "  {:<28} {:>8} CVs ({:+}), {} masked, {} of {} requests refused",
                    s.id, s.delivered, s.change, s.masked, s.refused, s.requests
                );
            }
            let _ = writeln!(o, "heaviest organisations:");
            for s in c.subjects(true).into_iter().take(10) {
                let _ = writeln!(
                    o,
                    "  {:<28} {:>8} CVs ({:+}), {} masked, {} of {} requests refused",
                    s.id, s.delivered, s.change, s.masked, s.refused, s.requests
                );
            }
        }
        o
    }
}

fn counts(m: &BTreeMap<String, u64>) -> String {
    m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
}
