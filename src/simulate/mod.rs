//! `cvgate simulate`: what a candidate config would have done to recorded traffic, before a
//! reload. Every CV request in the audit logs ([`input`]) is replayed in time order through the
//! candidate's decision path on a simulated clock, in memory ([`replay`]), and compared with the
//! decision recorded then ([`report`]); `--against` replays a second config beside it.
//!
//! Lines are written when a request ends but replayed at their admission instant, so they pass
//! a reorder window ([`REORDER`]) first: a line whose instant the window has already passed (a
//! request that ran longer than the window) is replayed late and counted as such.

pub mod input;
pub mod replay;
pub mod report;
mod scan;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::BufRead;
use std::path::PathBuf;

use jiff::{SignedDuration, Timestamp};

use input::Recorded;
use replay::World;
use report::{BlockMade, ConfigReport, Report};

/// How long a line may wait for earlier-admitted lines written after it.
pub const REORDER: SignedDuration = SignedDuration::from_mins(5);

/// What to replay, against what.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub config: PathBuf,
    pub against: Option<PathBuf>,
    pub files: Vec<PathBuf>,
    /// First-seen times (probation) as the proxy had them: a `seen.jsonl`.
    pub seen: Option<PathBuf>,
    /// Progress on stderr every this many lines (0: none).
    pub progress_every: u64,
}

/// A line waiting in the reorder window, by (instant, arrival).
struct Waiting(Timestamp, u64, Box<Recorded>);

impl PartialEq for Waiting {
    fn eq(&self, o: &Self) -> bool {
        (self.0, self.1) == (o.0, o.1)
    }
}
impl Eq for Waiting {}
impl PartialOrd for Waiting {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Waiting {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(o.0, o.1))
    }
}

struct Run {
    worlds: Vec<World>,
    report: Report,
    window: BinaryHeap<Reverse<Waiting>>,
    newest: Option<Timestamp>,
    replayed_until: Option<Timestamp>,
    arrivals: u64,
    /// The instant of the last line replayed (the report's `to`).
    last: Option<Timestamp>,
}

impl Run {
    async fn push(&mut self, n: u64, r: Recorded) {
        if self.replayed_until.is_some_and(|t| r.at < t) {
            self.report.lines.late += 1;
        }
        self.newest = Some(self.newest.map_or(r.at, |t| t.max(r.at)));
        self.arrivals += 1;
        self.window.push(Reverse(Waiting(r.at, n, Box::new(r))));
        let horizon = self.newest.and_then(|t| t.checked_sub(REORDER).ok());
        while let Some(Reverse(w)) = self.window.peek() {
            if horizon.is_none_or(|h| w.0 > h) {
                break;
            }
            let Some(Reverse(Waiting(_, n, r))) = self.window.pop() else { break };
            self.replay(n, &r).await;
        }
    }

    async fn drain(&mut self) {
        while let Some(Reverse(Waiting(_, n, r))) = self.window.pop() {
            self.replay(n, &r).await;
        }
        for w in &mut self.worlds {
            w.finish().await;
        }
    }

    async fn replay(&mut self, n: u64, r: &Recorded) {
        let at = self.replayed_until.map_or(r.at, |t| t.max(r.at));
        self.replayed_until = Some(at);
        let rep = &mut self.report;
        rep.lines.replayed += 1;
        match rep.recorded.get_mut(&r.decision) {
            Some(n) => *n += 1,
            None => _ = rep.recorded.insert(r.decision.clone(), 1),
        }
        rep.recorded_delivered += r.delivered;
        rep.recorded_masked += r.masked;
        if rep.from.is_none() {
            rep.from = Some(r.at.to_string());
        }
        self.last = Some(r.at); // written out once, at the end (not formatted per line)
        for (i, w) in self.worlds.iter_mut().enumerate() {
            // A late line is replayed at the latest instant replayed: the clock never goes back.
            let out = if r.at < at {
                let mut moved = r.clone();
                moved.at = at;
                moved.ended = moved.ended.max(at);
                w.replay(&moved).await
            } else {
                w.replay(r).await
            };
            rep.configs[i].add(n, r, &out);
        }
    }
}

/// Replay `opts.files` (in the order given) through the candidate and `--against` configs.
///
/// # Errors
/// A config that does not load, a file that cannot be read.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    let started = std::time::Instant::now();
    let mut names = vec![opts.config.display().to_string()];
    names.extend(opts.against.iter().map(|p| p.display().to_string()));
    // Both configs must load before any line is read.
    for p in std::iter::once(&opts.config).chain(opts.against.iter()) {
        crate::config::Config::load(p).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let mut run: Option<Run> = None;
    let mut report =
        Report { files: opts.files.iter().map(|f| f.display().to_string()).collect(), ..Report::default() };
    let mut n = 0u64;
    let mut buf = String::new();
    for f in &opts.files {
        let mut input = input::open(f)?;
        loop {
            buf.clear();
            if input.read_line(&mut buf).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))? == 0 {
                break;
            }
            let line = buf.trim_end();
            if line.is_empty() {
                continue;
            }
            n += 1;
            let rep = run.as_mut().map_or(&mut report, |r| &mut r.report);
            rep.lines.read += 1;
            let r = match input::parse(line) {
                Ok(r) => r,
                Err(skip) => {
                    rep.lines.skip(skip);
                    continue;
                }
            };
            if run.is_none() {
                // The worlds start at the first request's instant (less the reorder window).
                let start = r.at.checked_sub(REORDER).unwrap_or(r.at);
                let mut worlds = Vec::new();
                for p in std::iter::once(&opts.config).chain(opts.against.iter()) {
                    worlds.push(World::new(p, start, opts.seen.as_deref()).await?);
                }
                let mut report = std::mem::take(&mut report);
                report.configs = names.iter().map(|c| ConfigReport::new(c.clone())).collect();
                run = Some(Run {
                    worlds,
                    report,
                    window: BinaryHeap::new(),
                    newest: None,
                    replayed_until: None,
                    arrivals: 0,
                    last: None,
                });
            }
            let Some(run) = run.as_mut() else { continue };
            run.push(n, r).await;
            if opts.progress_every > 0 && n.is_multiple_of(opts.progress_every) {
                let secs = started.elapsed().as_secs_f64().max(1e-9);
                eprintln!(
                    "simulate: {n} lines, {:.0} lines/s, at {}",
                    n as f64 / secs,
                    run.replayed_until.map(|t| t.to_string()).unwrap_or_default()
                );
            }
        }
    }
    let mut report = match run {
        Some(mut run) => {
            run.drain().await;
            run.report.to = run.last.map(|t| t.to_string());
            for (i, w) in run.worlds.iter().enumerate() {
                let now = w.shared().clock.now();
                run.report.configs[i].blocks = w
                    .shared()
                    .blocks
                    .list(now)
                    .into_iter()
                    .map(|b| BlockMade {
                        scope: b.scope.as_str().to_string(),
                        key: b.key.clone(),
                        reason: b.reason.clone(),
                        at: b.created.to_string(),
                        until: b.until.map(|u| u.to_string()),
                    })
                    .collect();
            }
            run.report
        }
        None => {
            report.configs = names.iter().map(|c| ConfigReport::new(c.clone())).collect();
            report
        }
    };
    for c in &mut report.configs {
        c.rank(10);
    }
    report.tabulate(100);
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report.lines_per_second = (report.lines.read as f64 / started.elapsed().as_secs_f64().max(1e-9)) as u64;
    Ok(report)
}
