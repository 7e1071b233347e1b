//! `cvgate demo`: replay the 4 May 2024 incident, the evasions an abuser tries next, and
//! legitimate use, through the real proxy on loopback, on a manual clock so days pass in seconds.
//!
//! Each scenario gets a fresh mock CV API and a fresh proxy (in-memory store; the given config
//! with its listeners moved to port 0, TLS and metrics off, the upstream pointed at the mock;
//! budgets, routes and closure untouched), because the country and global buckets are shared by
//! everyone. A scenario is a [`Plan`]: timed requests by actors. Before each request the manual
//! clock is set to its instant; each actor speaks HTTP/1.1 from its own loopback source address
//! (Linux loopback answers on all of 127.0.0.0/8), so the ip scope sees one shared /24 or
//! separate ones as the scenario needs. Tokens are minted with the config's `identity.dev_hs256`.
//!
//! Per scenario the [`ScenarioReport`] holds what the upstream would have served without
//! cvgate (the sum of requested sizes: the mock serves every page asked for), what came
//! through, the scope and horizon of the first 429 and its local time, the blocks the proxy's
//! rules made and the CVs legitimate users were refused (must be 0).
//!
//! It also holds how many of the CVs that came through still carried their holders' contact
//! data (issue #18), read from what the client received: a CV has contact data when it holds
//! any of the config's `masking.fields.remove` paths, keys compared case-insensitively. The mock
//! shows contact data on about two CVs in three (the job seeker's choice), so each tally also
//! counts the delivered CVs the mock served *with* contact data — every mock CV is a pure
//! function of its id, so the demo looks the id up in the mock's corpus — and the share that
//! kept it is the honest measure: 100% for a user who is never masked.
//!
//! [`Limit::bound`] is the most the scope meant to stop the attack can let through over the
//! attack's span, the least over its horizons: a continuous bucket of budget `B` and window `W`
//! lets through at most `B + B·t/W` over a span `t`; a fixed one `B` per fixed window the span
//! touches. It is what tests/demo.rs holds each attack to.
//!
//! [`run`] is the library entry point (tests/demo.rs asserts its report); [`main`] is
//! `cvgate demo` (table or `--json`, progress bar on stderr, `--serve`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use indicatif::{ProgressBar, ProgressStyle};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use crate::clock::{ManualClock, SharedClock, SystemClock};
use crate::config::Config;
use crate::quota::{Scope, Subject};

/// Zone of the scenarios' local times (the incident's and the closure window's).
const ZONE: &str = "Europe/Amsterdam";
/// Page size of the 4 May 2024 searches.
const PAGE: u64 = 200;
/// Deepest page an attacker asks for before changing the query: 10 × 200 stays within the
/// default `deep_paging.max_depth` (2,000), so the quota, not the paging rule, is what is shown.
const PAGES_PER_QUERY: u64 = 10;
/// Organisations (one account each) of the spread harvest (issue #19).
const SPREAD_ORGS: u8 = 75;
/// Group names of the legitimate users ([`ScenarioReport::legit_groups`]).
const AGENCY: &str = "staffing agency";
const EMPLOYER: &str = "small employer";
/// Every request goes to the proxy as if from the Netherlands-or-unknown (no geo database).
const COUNTRY: &str = "ZZ";

/// How to run the demo.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// Fewer requests (a fifth), same shape: for the test.
    pub fast: bool,
    /// Show a progress bar on stderr (only drawn when stderr is a terminal).
    pub progress: bool,
    /// The mock CV API gzips every CV answer whatever cvgate asks (a backend with compression
    /// forced on); clients send `Accept-Encoding: gzip` either way, as browsers and python do.
    pub upstream_compress: bool,
    /// Write each scenario's audit log to `<dir>/audit-<scenario>.log` (for `cvgate simulate`).
    pub audit_dir: Option<std::path::PathBuf>,
    /// Run only these scenarios (by id, e.g. `may4`); all when empty.
    pub only: Vec<String>,
}

/// Whose behaviour a scenario shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Attack,
    Legit,
}

/// What one group of actors (the attacker's, or the legitimate users') asked for and got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub requests: u64,
    /// CVs asked for: what the upstream would have served without cvgate.
    pub requested_cvs: u64,
    /// CVs that came through cvgate (records counted in the bodies received).
    pub delivered_cvs: u64,
    /// `requested_cvs − delivered_cvs`: refused or cut short.
    pub refused_cvs: u64,
    /// Delivered CVs that still carried contact data (any `masking.fields.remove` path, case
    /// ignored), as the client read them.
    pub with_contact_cvs: u64,
    /// Delivered CVs the upstream served with contact data (the mock's CV of the same id; a CV
    /// without a readable id counts as having had it, so the share can only understate): what
    /// `with_contact_cvs` would be if nothing were masked.
    pub had_contact_cvs: u64,
    /// Answers that came with `cvgate-masked` (contact data removed).
    pub masked_answers: u64,
    /// CVs delivered in answers masked by the population guard (`cvgate-masked` reason `guard`).
    pub guard_masked_cvs: u64,
}

impl Tally {
    /// Percent of the CVs that had contact data upstream that arrived with it (`None`: none had).
    pub fn contact_kept_pct(&self) -> Option<f64> {
        (self.had_contact_cvs > 0).then(|| 100.0 * self.with_contact_cvs as f64 / self.had_contact_cvs as f64)
    }

    /// `16,650 (100%)`: the table's "with contact data" cell.
    fn contact_cell(&self) -> String {
        match self.contact_kept_pct() {
            Some(p) => format!("{} ({})", thousands(self.with_contact_cvs), pct(p)),
            None => thousands(self.with_contact_cvs),
        }
    }

    /// `never masked: all 584 CVs that had contact data upstream arrived with it`, or what
    /// masking took.
    fn contact_summary(&self) -> String {
        if self.masked_answers == 0 && self.with_contact_cvs == self.had_contact_cvs {
            return format!(
                "never masked: all {} CVs that had contact data upstream arrived with it",
                thousands(self.had_contact_cvs)
            );
        }
        format!(
            "{} of the {} CVs that had contact data upstream arrived with it ({}), {} answers masked",
            thousands(self.with_contact_cvs),
            thousands(self.had_contact_cvs),
            self.contact_kept_pct().map_or("-".into(), pct),
            thousands(self.masked_answers)
        )
    }
}

/// `99.96` → `99.9%`, `100` → `100%`, `15.8` → `16%`: never rounds up to 100% or down to 0%.
fn pct(p: f64) -> String {
    if p >= 100.0 {
        "100%".into()
    } else if p >= 99.0 {
        format!("{:.1}%", (p * 10.0).floor() / 10.0)
    } else if p > 0.0 && p < 1.0 {
        format!("{:.1}%", (p * 10.0).ceil() / 10.0)
    } else {
        format!("{p:.0}%")
    }
}

/// The first quota refusal of a scenario.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stop {
    pub scope: String,
    pub horizon: String,
    /// Local time (Europe/Amsterdam), e.g. `Sat 04 May 08:13`.
    pub at: String,
    /// CVs the attacker had received before it.
    pub after_cvs: u64,
}

/// One horizon of a scope, as resolved for the attacker (tiers and overrides applied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HorizonBudget {
    pub name: String,
    pub budget: u64,
    pub window_secs: u64,
    /// `Some(offset)`: a hard cap per fixed window starting `offset` seconds past the epoch.
    pub fixed_offset_secs: Option<u64>,
}

impl HorizonBudget {
    /// For a fixed horizon, the number of the fixed window holding second `t`.
    fn fixed_window(&self, t: u64) -> Option<u64> {
        self.fixed_offset_secs.map(|o| t.saturating_sub(o) / self.window_secs.max(1))
    }
}

/// The scope meant to stop an attack and the most its buckets can let through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limit {
    pub scope: String,
    pub horizons: Vec<HorizonBudget>,
    /// Least over the horizons of what each lets through over the attack's span (see
    /// [`bound`]): the most this scope can deliver to the attacker in this scenario.
    pub bound: u64,
    /// Per horizon (same order), the most the attacker got within one of its windows: one
    /// fixed window for a fixed horizon, any span of the window's length for a continuous one.
    pub most_in_one_window: Vec<u64>,
}

/// One scenario's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub id: &'static str,
    pub title: String,
    pub kind: Kind,
    /// Seconds from the attacker's first request to its last (0 for legit scenarios).
    pub span_secs: u64,
    /// The attacker's first request, seconds since the epoch (0 for legit scenarios).
    pub attack_start_secs: u64,
    /// The attacker's requests (attack scenarios only).
    pub attacker: Option<Tally>,
    /// Legitimate users: the scenario's subject, or a bystander during an attack.
    pub legit: Tally,
    /// Attack scenarios: the scope that should stop it.
    pub limit: Option<Limit>,
    pub first_stop: Option<Stop>,
    /// 429s by `scope/horizon`.
    pub rejections: BTreeMap<String, u64>,
    /// Other refusals by problem slug (or `http-<status>`).
    pub other_refusals: BTreeMap<String, u64>,
    /// Blocks the proxy made (`cvgate_blocks_created_total`).
    pub blocks: u64,
    /// Distinct blocks the clients ran into (scope, blocked key, `until`), from 403 `blocked`.
    pub blocks_seen: u64,
    /// 403 `blocked` answers, by whom.
    pub blocked_attacker_requests: u64,
    pub blocked_legit_requests: u64,
    /// Masked answers (everyone's) by the reason in `cvgate-masked` (`soft-budget`, ...).
    pub mask_reasons: BTreeMap<String, u64>,
    /// What masking did to whom, in words: the attacker's and the legitimate users' share of
    /// CVs with contact data ("never masked" when nothing was taken from them).
    pub contact_note: String,
    /// Everyone counted as new (first seen on the demo day): `probation.established_before`
    /// overridden to none for this scenario, so the probation tier and cohort apply.
    pub newcomers: bool,
    /// The legitimate users' tally by who they are (`staffing agency`, `small employer`,
    /// `bystander`): `legit` split up.
    pub legit_groups: BTreeMap<String, Tally>,
    /// The population guard's changes of level during the scenario, in order.
    pub guard_steps: Vec<GuardStep>,
}

/// A population guard rule changed level (seen after the guard's evaluation at a request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuardStep {
    pub rule: String,
    /// `normal`, `alert`, `mask` or `pause`.
    pub level: String,
    /// Local time (Europe/Amsterdam), e.g. `Sat 04 May 08:13`.
    pub at: String,
    /// CVs the attacker had received before it.
    pub after_cvs: u64,
    /// Of which with contact data.
    pub after_contact_cvs: u64,
}

impl ScenarioReport {
    /// The headline tally: the attacker's in an attack, the legitimate users' otherwise.
    pub fn headline(&self) -> &Tally {
        self.attacker.as_ref().unwrap_or(&self.legit)
    }
}

/// The whole demo.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub config: String,
    pub fast: bool,
    /// The upstream compressed every CV answer (`--upstream-compress`).
    pub upstream_compress: bool,
    pub requests: u64,
    pub elapsed_ms: u64,
    pub scenarios: Vec<ScenarioReport>,
}

/// What one request asks for.
#[derive(Debug, Clone)]
enum Fetch {
    Search { query: String, page: u64, size: u64 },
    Export { limit: u64 },
    Get { id: u64 },
}

impl Fetch {
    fn cvs(&self) -> u64 {
        match self {
            Fetch::Search { size, .. } => *size,
            Fetch::Export { limit } => *limit,
            Fetch::Get { .. } => 1,
        }
    }

    fn path(&self) -> String {
        match self {
            Fetch::Search { query, page, size } => format!("/api/v1/cvs?query={query}&page={page}&size={size}"),
            Fetch::Export { limit } => format!("/api/v1/cvs/export?limit={limit}"),
            Fetch::Get { id } => format!("/api/v1/cvs/cv-{id:07}"),
        }
    }

    /// The CVs in a 200 body of this request: a search page's `results`, an export's lines
    /// (not the marker line of an export cut at its grant, which is no CV; a line that is not
    /// JSON is still a record, as `Null`), or the one CV.
    fn records(&self, body: &[u8]) -> Vec<Value> {
        match self {
            Fetch::Search { .. } => match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(mut page)) => match page.remove("results") {
                    Some(Value::Array(cvs)) => cvs,
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            },
            Fetch::Export { .. } => body
                .split(|&b| b == b'\n')
                .filter(|l| !l.trim_ascii().is_empty())
                .map(|l| serde_json::from_slice::<Value>(l).unwrap_or(Value::Null))
                .filter(|v| v.get("_cvgate").is_none())
                .collect(),
            Fetch::Get { .. } => vec![serde_json::from_slice(body).unwrap_or(Value::Null)],
        }
    }
}

/// What makes a CV one "with contact data": the config's `masking.fields.remove` paths, as
/// lowercase segments (a dotted path reaches into nested objects, and a segment applies to each
/// element of an array it meets, as the masker reads them).
struct ContactFields(Vec<Vec<String>>);

impl ContactFields {
    /// From `masking.fields.remove` as the config writes it.
    fn new(remove: &[String]) -> Self {
        ContactFields(remove.iter().map(|p| p.split('.').map(str::to_lowercase).collect()).collect())
    }

    /// Does `cv` hold any of the paths, whatever the case of its keys?
    fn held_by(&self, cv: &Value) -> bool {
        fn has(v: &Value, path: &[String]) -> bool {
            let Some((seg, rest)) = path.split_first() else { return true };
            match v {
                Value::Array(items) => items.iter().any(|x| has(x, path)),
                Value::Object(m) => m.iter().any(|(k, x)| k.to_lowercase() == *seg && has(x, rest)),
                _ => false,
            }
        }
        self.0.iter().any(|p| has(cv, p))
    }

    /// Did the upstream serve `cv` with contact data? The mock's CV `cv-0001234` is a pure
    /// function of 1234, so it is written again and read with the same paths. A CV without a
    /// readable id is counted as having had contact data.
    fn held_upstream(&self, cv: &Value) -> bool {
        let id = cv.get("id").and_then(Value::as_str).and_then(|s| s.strip_prefix("cv-")).and_then(|n| n.parse().ok());
        let Some(id) = id else { return true };
        let mut served = String::new();
        super::mock_api::write_cv(&mut served, id);
        serde_json::from_str::<Value>(&served).map_or(true, |v| self.held_by(&v))
    }
}

#[derive(Debug, Clone)]
struct Actor {
    account: String,
    org: String,
    ip: Ipv4Addr,
    legit: bool,
    /// Who a legitimate user is, for [`ScenarioReport::legit_groups`].
    group: &'static str,
}

#[derive(Debug, Clone)]
struct Step {
    at: Timestamp,
    actor: usize,
    fetch: Fetch,
}

/// A scenario: who does what when.
#[derive(Debug, Clone)]
struct Plan {
    id: &'static str,
    title: String,
    kind: Kind,
    actors: Vec<Actor>,
    /// Sorted by time.
    steps: Vec<Step>,
    /// The scope meant to stop the attack (`None`: no one scope; the population guard's job).
    stops: Option<Scope>,
    /// Everyone is new: the scenario's config has no `probation.established_before`.
    newcomers: bool,
}

impl Plan {
    fn new(id: &'static str, title: String, kind: Kind, stops: Option<Scope>) -> Self {
        Self { id, title, kind, actors: Vec::new(), steps: Vec::new(), stops, newcomers: false }
    }

    fn actor(&mut self, account: String, org: &str, ip: Ipv4Addr, legit: bool) -> usize {
        self.actor_in(account, org, ip, legit, if legit { "bystander" } else { "attacker" })
    }

    fn actor_in(&mut self, account: String, org: &str, ip: Ipv4Addr, legit: bool, group: &'static str) -> usize {
        self.actors.push(Actor { account, org: org.to_string(), ip, legit, group });
        self.actors.len() - 1
    }

    /// Searches of [`PAGE`] CVs by `actors` in turn, `n` of them evenly over `[from, to)`; the
    /// query changes every [`PAGES_PER_QUERY`] pages, as a scraper walking the database would.
    fn scrape(&mut self, actors: &[usize], from: Timestamp, to: Timestamp, n: u64, first: u64) {
        self.scrape_by(actors, from, to, n, first, PAGE);
    }

    /// [`Plan::scrape`] with pages of `size` CVs.
    fn scrape_by(&mut self, actors: &[usize], from: Timestamp, to: Timestamp, n: u64, first: u64, size: u64) {
        for (i, at) in spread(from, to, n).enumerate() {
            let k = first + i as u64;
            let fetch =
                Fetch::Search { query: format!("q{}", k / PAGES_PER_QUERY), page: k % PAGES_PER_QUERY + 1, size };
            self.steps.push(Step { at, actor: actors[i % actors.len()], fetch });
        }
    }

    /// A small employer browsing during office hours: `searches` pages of 20 and `gets` single CVs.
    fn browse(&mut self, actor: usize, day: jiff::civil::Date, searches: u64, gets: u64) {
        let (from, to) = (local(day, 9, 0), local(day, 17, 0));
        for (i, at) in spread(from, to, searches).enumerate() {
            let fetch = Fetch::Search { query: "kok-utrecht".into(), page: i as u64 % 5 + 1, size: 20 };
            self.steps.push(Step { at, actor, fetch });
        }
        for (i, at) in spread(from + Duration::from_secs(90), to, gets).enumerate() {
            self.steps.push(Step { at, actor, fetch: Fetch::Get { id: 1_000 + i as u64 * 37 } });
        }
    }

    /// A staffing agency (config.yaml's org override) at work on `day`: five recruiters in one
    /// office, each `pages` full pages and a 1,000-CV export between 09:00 and 17:00.
    fn agency(&mut self, day: jiff::civil::Date, pages: u64) {
        for r in 0..5u8 {
            let a =
                self.actor_in(format!("acct-agency-{r}"), "87654321", Ipv4Addr::new(127, 0, 3, r + 1), true, AGENCY);
            let from = local(day, 9, 0) + Duration::from_secs(60 * u64::from(r));
            for (i, at) in spread(from, local(day, 17, 0), pages).enumerate() {
                let fetch =
                    Fetch::Search { query: format!("agency{r}-{}", i / 10), page: i as u64 % 10 + 1, size: PAGE };
                self.steps.push(Step { at, actor: a, fetch });
            }
            self.steps.push(Step { at: local(day, 13, 30 + r as i8), actor: a, fetch: Fetch::Export { limit: 1_000 } });
        }
    }

    fn sort(mut self) -> Self {
        self.steps.sort_by_key(|s| s.at); // stable: same-instant steps keep their order
        self
    }
}

/// `n` instants evenly over `[from, to)`, on whole milliseconds (as the audit line stamps them,
/// so `cvgate simulate` replays the demo's audit log at the very instants it ran).
fn spread(from: Timestamp, to: Timestamp, n: u64) -> impl Iterator<Item = Timestamp> {
    let span = to.as_nanosecond() - from.as_nanosecond();
    (0..n).map(move |i| {
        let off = span * i128::from(i) / i128::from(n.max(1)) / 1_000_000 * 1_000_000;
        Timestamp::from_nanosecond(from.as_nanosecond() + off).expect("within jiff's range")
    })
}

fn zone() -> TimeZone {
    TimeZone::get(ZONE).expect("tzdb is bundled (jiff tzdb-bundle-always)")
}

/// `day` at `h:m` local time.
fn local(day: jiff::civil::Date, h: i8, m: i8) -> Timestamp {
    day.at(h, m, 0, 0).to_zoned(zone()).expect("a valid local time").timestamp()
}

fn local_string(t: Timestamp) -> String {
    t.to_zoned(zone()).strftime("%a %d %b %H:%M").to_string()
}

/// The scenarios, in the order they are shown.
fn plans(fast: bool) -> Vec<Plan> {
    let n: u64 = if fast { 150 } else { 750 };
    let may4 = jiff::civil::date(2024, 5, 4); // a Saturday
    let monday = jiff::civil::date(2024, 5, 6);
    let (open, close) = (local(may4, 7, 0), local(may4, 23, 0));
    let bystander = |p: &mut Plan| {
        let a = p.actor("acct-bakery".into(), "20000001", Ipv4Addr::new(127, 0, 9, 1), true);
        p.browse(a, may4, if fast { 6 } else { 20 }, if fast { 6 } else { 20 });
    };
    let mut out = Vec::new();

    let mut p =
        Plan::new("may4", format!("4 May 2024: 1 account, {n} searches x {PAGE}"), Kind::Attack, Some(Scope::Account));
    let a = p.actor("acct-may4".into(), "10000001", Ipv4Addr::new(127, 0, 2, 1), false);
    p.scrape(&[a], open, close, n, 0);
    bystander(&mut p);
    out.push(p.sort());

    // Each account on its own /24 too, so that the org scope, not the ip scope, is what holds.
    let mut p =
        Plan::new("accounts30", "Evasion: 30 accounts of 1 organisation".into(), Kind::Attack, Some(Scope::Org));
    let actors: Vec<usize> = (0..30u8)
        .map(|i| p.actor(format!("acct-org2-{i:02}"), "10000002", Ipv4Addr::new(127, 0, 10 + i, 1), false))
        .collect();
    p.scrape(&actors, open, close, n, 0);
    bystander(&mut p);
    out.push(p.sort());

    let mut p = Plan::new("orgs30", "Evasion: 30 organisations behind 1 /24".into(), Kind::Attack, Some(Scope::Ip));
    let actors: Vec<usize> = (0..30u8)
        .map(|i| p.actor(format!("acct-o{i:02}"), &format!("100001{i:02}"), Ipv4Addr::new(127, 0, 1, i + 1), false))
        .collect();
    p.scrape(&actors, open, close, n, 0);
    bystander(&mut p);
    out.push(p.sort());

    // The same haul spread over a week of opening hours.
    let mut p = Plan::new("week", "Evasion: 1 account over 7 days".into(), Kind::Attack, Some(Scope::Account));
    let a = p.actor("acct-week".into(), "10000003", Ipv4Addr::new(127, 0, 2, 1), false);
    let per_day = n / 7;
    for d in 0..7 {
        let day = may4.checked_add(jiff::Span::new().days(d)).expect("a date in 2024");
        p.scrape(&[a], local(day, 7, 0), local(day, 23, 0), per_day, per_day * d as u64);
    }
    bystander(&mut p);
    out.push(p.sort());

    // A staffing agency (config.yaml's org override) on a Monday: five recruiters in one office,
    // each 20 full pages and a 1,000-CV export (fast: 6 pages) between 09:00 and 17:00.
    let mut p = Plan::new("agency", "Legit: staffing agency, 5 recruiters".into(), Kind::Legit, None);
    p.agency(monday, if fast { 6 } else { 20 });
    out.push(p.sort());

    let mut p = Plan::new("employer", "Legit: small employer browsing".into(), Kind::Legit, None);
    let a = p.actor_in("acct-garage".into(), "30000001", Ipv4Addr::new(127, 0, 4, 1), true, EMPLOYER);
    p.browse(a, monday, if fast { 10 } else { 40 }, if fast { 10 } else { 40 });
    out.push(p.sort());

    // Issue 19: the harvest spread over 75 organisations of one account each, every account on
    // its own /24, each asking for 2,000 CVs (an established account's day budget) in turn from
    // 07:00 to 23:00: 150,000 CVs asked for, ~9,400 an hour, no account, organisation or /24
    // over any budget. Full size in fast mode too: the guard's thresholds are the site's, not
    // the demo's. The staffing agency and a small employer (both established) work through it.
    // Newcomers (first seen that day) page by 100, as the probation tier's hour budget allows
    // no more; established accounts by 200.
    for (id, title, newcomers, size) in [
        ("orgs75new", "Spread: 75 new orgs x 1 account, 75 /24s", true, PAGE / 2),
        ("orgs75", "Spread: the 75 orgs, established", false, PAGE),
    ] {
        let mut p = Plan::new(id, title.into(), Kind::Attack, None);
        p.newcomers = newcomers;
        let actors: Vec<usize> = (0..SPREAD_ORGS)
            .map(|i| p.actor(format!("acct-s{i:02}"), &format!("400000{i:02}"), Ipv4Addr::new(127, 1, i, 1), false))
            .collect();
        let pages = u64::from(SPREAD_ORGS) * PAGES_PER_QUERY * PAGE / size;
        p.scrape_by(&actors, open, close, pages, 0, size);
        p.agency(may4, if fast { 6 } else { 20 });
        let a = p.actor_in("acct-garage".into(), "30000001", Ipv4Addr::new(127, 0, 4, 1), true, EMPLOYER);
        p.browse(a, may4, if fast { 10 } else { 40 }, if fast { 10 } else { 40 });
        out.push(p.sort());
    }
    out
}

/// What the client got: status, the reason in `cvgate-masked` (masked answers only), the body
/// as the client reads it (decoded if the proxy compressed it).
struct Answer {
    status: StatusCode,
    masked: Option<String>,
    body: Bytes,
}

/// One actor's keep-alive HTTP/1.1 connection to the proxy, from its own source address.
struct Conn {
    src: IpAddr,
    dst: SocketAddr,
    tx: Option<SendRequest<Empty<Bytes>>>,
}

impl Conn {
    async fn connect(&self) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
        let sock = TcpSocket::new_v4()?;
        sock.bind(SocketAddr::new(self.src, 0)).with_context(|| format!("binding a client socket to {}", self.src))?;
        let stream =
            sock.connect(self.dst).await.with_context(|| format!("connecting to the proxy at {}", self.dst))?;
        stream.set_nodelay(true)?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(tx)
    }

    /// GET `path`; one retry on a fresh connection when the kept-alive one was closed.
    async fn get(&mut self, path: &str, bearer: &str) -> anyhow::Result<Answer> {
        let mut last = None;
        for _ in 0..2 {
            let mut tx = match self.tx.take() {
                Some(tx) if !tx.is_closed() => tx,
                _ => self.connect().await?,
            };
            let req = Request::get(path)
                .header(http::header::HOST, "cvgate.demo")
                .header(http::header::AUTHORIZATION, bearer)
                .header(http::header::ACCEPT_ENCODING, "gzip")
                .body(Empty::new())?;
            let sent = async {
                tx.ready().await?;
                let resp = tx.send_request(req).await?;
                let status = resp.status();
                // `contact;reason=soft-budget` → `soft-budget`.
                let masked = resp.headers().get("cvgate-masked").map(|v| {
                    let v = v.to_str().unwrap_or("?");
                    v.split(';').find_map(|p| p.trim().strip_prefix("reason=")).unwrap_or(v).to_string()
                });
                let coding = crate::count::codec::content_coding(resp.headers());
                let body = resp.into_body();
                // What the client reads: decoded, when the proxy compressed it for the client.
                let body = match coding {
                    Ok(Some(c)) => {
                        let failure = crate::count::codec::Failure::default();
                        let guard = crate::count::codec::BombGuard::default();
                        crate::count::codec::decode(body, c, guard, failure).collect().await.map(|b| b.to_bytes())
                    }
                    _ => body.collect().await.map(|b| b.to_bytes()).map_err(Into::into),
                };
                Ok::<_, crate::problem::BoxError>(Answer { status, masked, body: body? })
            };
            match sent.await {
                Ok(r) => {
                    self.tx = Some(tx);
                    return Ok(r);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(anyhow::anyhow!("request to the proxy failed twice: {}", last.map(|e| e.to_string()).unwrap_or_default()))
    }
}

/// The scenario's proxy config: `base` with listeners on loopback port 0 (plain HTTP only) and
/// the upstream at `mock`. Everything else — budgets, routes, closure — stays as configured,
/// but for `newcomers`: then no `probation.established_before`, so everyone first seen on the
/// demo day is new (config.yaml's date is after May 2024 and would make everyone established).
fn scenario_config(
    base: &Config,
    dir: &Path,
    mock: SocketAddr,
    newcomers: bool,
    audit: Option<std::path::PathBuf>,
) -> anyhow::Result<Config> {
    let mut raw = base.raw.clone();
    if newcomers {
        raw.probation.established_before = None;
    }
    raw.upstream.url = format!("http://{mock}");
    raw.upstream.ca_file = None;
    // Fresh state per scenario and nothing written beside the config (`Config::detached`):
    // buckets in memory, blocks in memory only (a block file would carry one scenario's blocks
    // into the next run), no audit lines (they would go to stdout and bury the table or break
    // `--json`) unless asked for.
    raw.audit.sink = "off".into();
    if let Some(path) = audit {
        // One file per scenario, never rotated (the simulated day would rotate it at midnight).
        raw.audit.sink = "file".into();
        raw.audit.path = Some(path.display().to_string());
        raw.audit.rotate.daily = false;
        raw.audit.rotate.max_bytes = None;
    }
    let mut config =
        Config::detached(raw, dir).map_err(|e| anyhow::anyhow!("config with the demo's upstream is invalid: {e}"))?;
    config.listen.plain = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    Ok(config)
}

/// Mint a dev token (`identity.dev_hs256`) for `actor`, valid for `ttl` from `now`.
fn mint(config: &Config, actor: &Actor, ttl: Duration, now: Timestamp) -> anyhow::Result<String> {
    let id = &config.raw.identity;
    let acr = id.accepted_assurance.first().map_or("urn:etoegang:core:assurance-class:loa3", String::as_str);
    crate::policy::identity::mint_from_config(id, &actor.account, Some(&actor.org), acr, ttl, now)
        .map_err(|e| anyhow::anyhow!("the demo mints tokens with identity.dev_hs256: {e}"))
}

/// Blocks the proxy made during a scenario (`cvgate_blocks_created_total`, every scope and source).
fn blocks_triggered(running: &crate::server::Running) -> u64 {
    use prometheus::core::Collector;
    running
        .shared
        .metrics
        .blocks_created
        .collect()
        .iter()
        .flat_map(|f| f.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// The most `horizons` (one scope's) can let through to requests from `first` to `last`
/// (seconds since the epoch): the least over the horizons of `B + B·t/W` for a continuous one
/// (it refills `B` per `W` as a rate, `t = last − first`), and of `B` × the fixed windows
/// `[first, last]` touches for a fixed one.
pub fn bound(horizons: &[HorizonBudget], first: u64, last: u64) -> u64 {
    let span = last.saturating_sub(first);
    horizons
        .iter()
        .map(|h| {
            let allowed = match (h.fixed_window(first), h.fixed_window(last)) {
                (Some(a), Some(b)) => u128::from(h.budget) * u128::from(b - a + 1),
                _ => u128::from(h.budget) + u128::from(h.budget) * u128::from(span) / u128::from(h.window_secs.max(1)),
            };
            u64::try_from(allowed).unwrap_or(u64::MAX)
        })
        .min()
        .unwrap_or(u64::MAX)
}

/// The most CVs `deliveries` (second, CVs; in time order) put into one window of `h`: a fixed
/// window of a fixed horizon, or any `window_secs`-long span for a continuous one.
pub fn most_in_one_window(h: &HorizonBudget, deliveries: &[(u64, u64)]) -> u64 {
    let (mut best, mut sum, mut lo) = (0, 0, 0);
    for (hi, &(t, n)) in deliveries.iter().enumerate() {
        sum += n;
        // Drop what falls outside the window that ends at `t`.
        while match h.fixed_window(t) {
            Some(k) => h.fixed_window(deliveries[lo].0) != Some(k),
            None => deliveries[lo].0 + h.window_secs.max(1) <= t,
        } {
            sum -= deliveries[lo].1;
            lo += 1;
        }
        debug_assert!(lo <= hi);
        best = best.max(sum);
    }
    best
}

async fn run_plan(
    base: &Config,
    dir: &Path,
    plan: &Plan,
    bar: &ProgressBar,
    opts: &DemoOptions,
) -> anyhow::Result<ScenarioReport> {
    bar.set_message(plan.id);
    let mock = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.context("binding the mock CV API")?;
    let mock_addr = mock.local_addr()?;
    let mock_stop = CancellationToken::new();
    let mock_opts = super::mock_api::MockOptions {
        force_encoding: opts.upstream_compress.then(|| "gzip".to_string()),
        ..super::mock_api::MockOptions::default()
    };
    tokio::spawn(super::mock_api::serve_with(mock, mock_opts, mock_stop.clone().cancelled_owned()));

    let audit = opts.audit_dir.as_ref().map(|d| d.join(format!("audit-{}.log", plan.id)));
    let config = scenario_config(base, dir, mock_addr, plan.newcomers, audit)?;
    let first = plan.steps.first().context("empty scenario")?.at;
    let last = plan.steps.last().context("empty scenario")?.at;
    let clock = ManualClock::new(first);
    let running = crate::server::start(config.clone(), None, clock.clone()).await?;
    let dst = running.plain_addr.context("the plain listener did not start")?;
    if plan.newcomers {
        // Only the attackers are new: the legitimate users have used the site for a year, as
        // `cvgate import-seen` would have recorded from the audit logs.
        use crate::policy::probation::{Kind as SeenKind, Seen};
        let first = first.as_second() - 365 * 86_400;
        for a in plan.actors.iter().filter(|a| a.legit) {
            running.shared.seen.merge(&Seen { kind: SeenKind::Account, id: a.account.clone(), first });
            running.shared.seen.merge(&Seen { kind: SeenKind::Org, id: a.org.clone(), first });
        }
    }

    let ttl = Duration::from_secs(u64::try_from(last.duration_since(first).as_secs()).unwrap_or(0) + 86_400);
    let mut bearers = Vec::with_capacity(plan.actors.len());
    let mut conns = Vec::with_capacity(plan.actors.len());
    for a in &plan.actors {
        bearers.push(format!("Bearer {}", mint(&config, a, ttl, first)?));
        conns.push(Conn { src: IpAddr::V4(a.ip), dst, tx: None });
    }

    let (mut attacker, mut legit) = (Tally::default(), Tally::default());
    let (mut rejections, mut other_refusals) = (BTreeMap::new(), BTreeMap::new());
    let mut first_stop = None;
    let (mut blocks_seen, mut blocked_attacker_requests, mut blocked_legit_requests) = (BTreeSet::new(), 0, 0);
    let (mut attack_first, mut attack_last) = (None::<Timestamp>, None::<Timestamp>);
    let mut deliveries: Vec<(u64, u64)> = Vec::new(); // the attacker's (second, CVs), in time order
    let contact = ContactFields::new(&config.raw.masking.fields.remove);
    let mut mask_reasons = BTreeMap::new();
    let mut legit_groups: BTreeMap<String, Tally> = BTreeMap::new();
    let mut guard_steps = Vec::new();
    let mut guard_levels: BTreeMap<String, crate::policy::guard::Level> = BTreeMap::new();

    // The guard's evaluation, as housekeeping runs it once a (real) second, here before and
    // after every request at its instant: deterministic, whatever the machine's speed.
    // Housekeeping may evaluate in between, on the same clock and sums, so to the same levels.
    let guard_tick = |at: Timestamp, attacker: &Tally, levels: &mut BTreeMap<_, _>, steps: &mut Vec<GuardStep>| {
        running.shared.report_guard(running.shared.guard.tick(at));
        for r in running.shared.guard.states() {
            if levels.get(&r.name).copied().unwrap_or_default() != r.step {
                levels.insert(r.name.clone(), r.step);
                steps.push(GuardStep {
                    rule: r.name,
                    level: r.step.as_str().to_string(),
                    at: local_string(at),
                    after_cvs: attacker.delivered_cvs,
                    after_contact_cvs: attacker.with_contact_cvs,
                });
            }
        }
    };
    for step in &plan.steps {
        clock.set(step.at);
        guard_tick(step.at, &attacker, &mut guard_levels, &mut guard_steps);
        let actor = &plan.actors[step.actor];
        let Answer { status, masked, body } = conns[step.actor].get(&step.fetch.path(), &bearers[step.actor]).await?;
        let cvs = if status == StatusCode::OK { step.fetch.records(&body) } else { Vec::new() };
        let got = cvs.len() as u64;
        let (mut with_contact, mut had_contact) = (0, 0);
        for cv in &cvs {
            let with = contact.held_by(cv);
            with_contact += u64::from(with);
            had_contact += u64::from(with || contact.held_upstream(cv));
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let (scope, horizon) = (v["scope"].as_str().unwrap_or("?"), v["horizon"].as_str().unwrap_or("?"));
            *rejections.entry(format!("{scope}/{horizon}")).or_insert(0) += 1;
            if first_stop.is_none() && !actor.legit {
                first_stop = Some(Stop {
                    scope: scope.to_string(),
                    horizon: horizon.to_string(),
                    at: local_string(step.at),
                    after_cvs: attacker.delivered_cvs,
                });
            }
        } else if status != StatusCode::OK {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let slug = v["type"]
                .as_str()
                .and_then(|t| t.strip_prefix("urn:cvgate:problem:"))
                .map_or_else(|| format!("http-{}", status.as_u16()), str::to_string);
            if slug == "blocked" {
                *(if actor.legit { &mut blocked_legit_requests } else { &mut blocked_attacker_requests }) += 1;
                let scope = v["scope"].as_str().unwrap_or("?").to_string();
                let key = match scope.as_str() {
                    "account" => actor.account.clone(),
                    "org" => actor.org.clone(),
                    // An ip block covers the client's prefix, as the quota scope cuts it.
                    _ => crate::quota::ip_prefix(&base.quota, actor.ip.into()).to_string(),
                };
                blocks_seen.insert((scope, key, v["until"].as_str().unwrap_or("").to_string()));
            }
            *other_refusals.entry(slug).or_insert(0) += 1;
        }
        let group = actor.legit.then(|| legit_groups.entry(actor.group.to_string()).or_default());
        let t = if actor.legit { &mut legit } else { &mut attacker };
        for t in std::iter::once(t).chain(group) {
            t.requests += 1;
            t.requested_cvs += step.fetch.cvs();
            t.delivered_cvs += got;
            t.refused_cvs += step.fetch.cvs().saturating_sub(got);
            t.with_contact_cvs += with_contact;
            t.had_contact_cvs += had_contact;
            if let Some(reason) = &masked {
                t.masked_answers += 1;
                if reason == "guard" {
                    t.guard_masked_cvs += got;
                }
            }
        }
        if let Some(reason) = masked {
            *mask_reasons.entry(reason).or_insert(0) += 1;
        }
        if !actor.legit {
            attack_first.get_or_insert(step.at);
            attack_last = Some(step.at);
            if got > 0 {
                deliveries.push((u64::try_from(step.at.as_second()).unwrap_or(0), got));
            }
        }
        guard_tick(step.at, &attacker, &mut guard_levels, &mut guard_steps);
        bar.inc(1);
    }

    let secs = |t: Option<Timestamp>| t.map_or(0, |t| u64::try_from(t.as_second()).unwrap_or(0));
    let (first_secs, last_secs) = (secs(attack_first), secs(attack_last));
    let limit = plan.stops.map(|scope| {
        let a = plan.actors.iter().find(|a| !a.legit).expect("an attack has an attacker");
        let subject = Subject { account: Some(&a.account), org: Some(&a.org), ip: IpAddr::V4(a.ip), country: COUNTRY };
        let horizons: Vec<HorizonBudget> = running
            .shared
            .quota
            .buckets(&config.quota, &subject)
            .into_iter()
            .filter(|b| b.scope == scope)
            .map(|b| HorizonBudget {
                name: b.horizon.to_string(),
                budget: b.capacity,
                window_secs: b.window_ns / 1_000_000_000,
                fixed_offset_secs: b.fixed_offset_ns.map(|o| o / 1_000_000_000),
            })
            .collect();
        let most_in_one_window = horizons.iter().map(|h| most_in_one_window(h, &deliveries)).collect();
        Limit {
            scope: scope.as_str().to_string(),
            bound: bound(&horizons, first_secs, last_secs),
            horizons,
            most_in_one_window,
        }
    });
    let blocks = blocks_triggered(&running);
    let contact_note = if plan.kind == Kind::Attack {
        format!("attacker: {}; bystander: {}", attacker.contact_summary(), legit.contact_summary())
    } else {
        legit.contact_summary()
    };
    drop(conns); // closes the client connections, so the drain below does not wait for them
    running.shutdown().await;
    mock_stop.cancel();
    Ok(ScenarioReport {
        id: plan.id,
        title: plan.title.clone(),
        kind: plan.kind,
        span_secs: last_secs - first_secs,
        attack_start_secs: first_secs,
        attacker: (plan.kind == Kind::Attack).then_some(attacker),
        legit,
        limit,
        first_stop,
        rejections,
        other_refusals,
        blocks,
        blocks_seen: blocks_seen.len() as u64,
        blocked_attacker_requests,
        blocked_legit_requests,
        mask_reasons,
        contact_note,
        newcomers: plan.newcomers,
        legit_groups,
        guard_steps,
    })
}

/// Run every scenario against the config at `path`.
///
/// # Errors
/// The config does not load or has no `identity.dev_hs256`; a listener cannot bind; the proxy
/// cannot be reached.
pub async fn run(path: &Path, opts: &DemoOptions) -> anyhow::Result<DemoReport> {
    let started = std::time::Instant::now();
    let config = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut plans = plans(opts.fast);
    if !opts.only.is_empty() {
        plans.retain(|p| opts.only.iter().any(|o| o == p.id));
    }
    let total: u64 = plans.iter().map(|p| p.steps.len() as u64).sum();
    let bar = if opts.progress && std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg:12} [{bar:40}] {pos}/{len} requests ({elapsed})")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut scenarios = Vec::with_capacity(plans.len());
    for plan in &plans {
        scenarios
            .push(run_plan(&config, &dir, plan, &bar, opts).await.with_context(|| format!("scenario {}", plan.id))?);
    }
    bar.finish_and_clear();
    Ok(DemoReport {
        config: path.display().to_string(),
        fast: opts.fast,
        upstream_compress: opts.upstream_compress,
        requests: total,
        elapsed_ms: started.elapsed().as_millis() as u64,
        scenarios,
    })
}

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `86400` → `24h`, `604800` → `7d`: windows as config.yaml writes them.
fn window(secs: u64) -> String {
    match secs {
        s if s >= 172_800 && s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        s if s.is_multiple_of(3_600) => format!("{}h", s / 3_600),
        s if s.is_multiple_of(60) => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The report as a table for people.
pub fn render(r: &DemoReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cvgate demo: {} scenarios, {} requests through the real proxy in {:.1} s (manual clock; config {}{})\n",
        r.scenarios.len(),
        thousands(r.requests),
        r.elapsed_ms as f64 / 1000.0,
        r.config,
        if r.upstream_compress { "; the upstream gzips every answer" } else { "" }
    );
    let _ = writeln!(
        out,
        "{:<42} {:>14} {:>14} {:>17} {:>17}  {:<43} {:>6} {:>13}",
        "scenario",
        "without cvgate",
        "through cvgate",
        "with contact data",
        "bound (scope)",
        "stopped by (first 429)",
        "blocks",
        "legit refused"
    );
    for s in &r.scenarios {
        let t = s.headline();
        let bound = s.limit.as_ref().map_or("-".to_string(), |l| format!("{} ({})", thousands(l.bound), l.scope));
        // No 429 for the attacker: the population guard's first mask or pause, if any.
        let guard = s.guard_steps.iter().find(|g| g.level == "mask" || g.level == "pause");
        let stop = match (&s.first_stop, guard) {
            (Some(f), _) => format!("{}/{} {}", f.scope, f.horizon, f.at),
            (None, Some(g)) => format!("guard {}/{} {}", g.rule, g.level, g.at),
            (None, None) => "-".to_string(),
        };
        let blocks = s.blocks.to_string();
        let _ = writeln!(
            out,
            "{:<42} {:>14} {:>14} {:>17} {:>17}  {:<43} {:>6} {:>13}",
            s.title,
            thousands(t.requested_cvs),
            thousands(t.delivered_cvs),
            t.contact_cell(),
            bound,
            stop,
            blocks,
            thousands(s.legit.refused_cvs)
        );
    }
    let _ = writeln!(out, "\nDetails:");
    for s in &r.scenarios {
        let mut parts = Vec::new();
        if let Some(a) = &s.attacker {
            parts.push(format!("attacker {} requests", thousands(a.requests)));
        }
        parts.push(format!(
            "legit {} requests, {}/{} CVs",
            thousands(s.legit.requests),
            thousands(s.legit.delivered_cvs),
            thousands(s.legit.requested_cvs)
        ));
        if !s.rejections.is_empty() {
            let list: Vec<String> = s.rejections.iter().map(|(k, v)| format!("{k} {v}")).collect();
            parts.push(format!("429s: {}", list.join(", ")));
        }
        if !s.other_refusals.is_empty() {
            let list: Vec<String> = s.other_refusals.iter().map(|(k, v)| format!("{k} {v}")).collect();
            parts.push(format!("other refusals: {}", list.join(", ")));
        }
        if !s.mask_reasons.is_empty() {
            let list: Vec<String> = s.mask_reasons.iter().map(|(k, v)| format!("{k} {v}")).collect();
            parts.push(format!("masked answers: {}", list.join(", ")));
        }
        if let Some(l) = &s.limit {
            let hs: Vec<String> = l
                .horizons
                .iter()
                .zip(&l.most_in_one_window)
                .map(|(h, most)| {
                    let kind = if h.fixed_offset_secs.is_some() { " fixed" } else { "" };
                    let w = window(h.window_secs);
                    format!("{} {}/{w}{kind} (most in one: {})", h.name, thousands(h.budget), thousands(*most))
                })
                .collect();
            parts.push(format!(
                "{} budgets: {} over a {:.1} h span",
                l.scope,
                hs.join(", "),
                s.span_secs as f64 / 3600.0
            ));
        }
        let _ = writeln!(out, "  {:<11} {}", s.id, parts.join("; "));
        let _ = writeln!(out, "  {:<11} contact data: {}", "", s.contact_note);
        if s.newcomers {
            let _ =
                writeln!(out, "  {:<11} everyone new (no probation.established_before) but the legitimate users", "");
        }
        if !s.guard_steps.is_empty() {
            let list: Vec<String> = s
                .guard_steps
                .iter()
                .map(|g| {
                    let cvs =
                        format!("{} CVs, {} with contact data", thousands(g.after_cvs), thousands(g.after_contact_cvs));
                    format!("{} {} {} (after {cvs})", g.rule, g.level, &g.at[g.at.len() - 5..])
                })
                .collect();
            let _ = writeln!(out, "  {:<11} guard: {}", "", list.join(", "));
        }
        if s.kind == Kind::Attack && s.legit_groups.len() > 1 {
            let list: Vec<String> = s
                .legit_groups
                .iter()
                .map(|(g, t)| {
                    format!(
                        "{g} {}/{} CVs, {} refused, {} masked by the guard",
                        thousands(t.delivered_cvs),
                        thousands(t.requested_cvs),
                        thousands(t.refused_cvs),
                        thousands(t.guard_masked_cvs)
                    )
                })
                .collect();
            let _ = writeln!(out, "  {:<11} during the attack: {}", "", list.join("; "));
        }
    }
    let _ = writeln!(
        out,
        "\n\"bound\": the most the scope meant to stop the attack can let through over the attack's span, least over\n\
         its horizons. A continuous horizon (budget B per window W) refills as a rate: at most B + B*t/W over a span t.\n\
         A fixed one is a hard cap: B per fixed window (days from 00:00 UTC, weeks from Monday) the span touches.\n\
         \"with contact data\": CVs received that still held a masking.fields.remove field; in brackets, the share\n\
         of the received CVs the upstream served with contact data (the mock shows it on about two in three) that kept it."
    );
    out
}

/// `--serve`: the mock on the config's upstream address and the proxy on the config's own
/// listeners, on the real clock, until Ctrl-C. Prints a ready-to-paste curl command.
async fn serve(path: &Path, json: bool) -> anyhow::Result<()> {
    let config = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let up = config.upstream.authority.as_str();
    let mock_addr: SocketAddr =
        up.parse().ok().filter(|a: &SocketAddr| a.ip().is_loopback() && !config.upstream.https).with_context(|| {
            format!("--serve runs the mock CV API at upstream.url, which must be http://<loopback ip>:<port>, not {up}")
        })?;
    let mock = TcpListener::bind(mock_addr).await.with_context(|| format!("binding the mock CV API on {mock_addr}"))?;
    let mock_stop = CancellationToken::new();
    tokio::spawn(super::mock_api::serve(mock, mock_stop.clone().cancelled_owned()));
    let clock: SharedClock = Arc::new(SystemClock);
    let now = clock.now();
    let running = crate::server::start(config.clone(), Some(path.to_path_buf()), clock).await?;
    let actor = Actor {
        account: "demo-employer".into(),
        org: "12345678".into(),
        ip: Ipv4Addr::LOCALHOST,
        legit: true,
        group: "demo",
    };
    let token = mint(&config, &actor, Duration::from_secs(8 * 3600), now)?;
    let url = match (running.plain_addr, running.tls_addr) {
        (Some(a), _) => format!("http://{a}"),
        (None, Some(a)) => format!("-k https://localhost:{}", a.port()),
        (None, None) => anyhow::bail!("the config has no proxy listener"),
    };
    let mut msg = format!(
        "\ncvgate and the mock CV API are up (mock on {mock_addr}); Ctrl-C stops them.\n\
         Token for account demo-employer of KvK 12345678, valid 8 h (mint more with `cvgate token`):\n\n\
         curl -si -H 'Authorization: Bearer {token}' '{url}/api/v1/cvs?query=kok&size=200'\n"
    );
    if let Some(ops) = running.ops_addr {
        msg.push_str(&format!("curl -s http://{ops}/metrics | grep cvgate_quota\n"));
    }
    if let Some(c) = config.closure.decide("cv", None, None, now) {
        msg.push_str(&format!(
            "\nNote: the CV routes are closed now (window {}), until {}: expect 503 closed.\n",
            c.window,
            c.opens_at_rfc3339()
        ));
    }
    // With --json, stdout carries only the report.
    if json {
        eprint!("{msg}");
    } else {
        print!("{msg}");
    }
    tokio::signal::ctrl_c().await?;
    running.shutdown().await;
    mock_stop.cancel();
    Ok(())
}

/// `cvgate demo`: run the scenarios, print the table (or JSON), optionally keep serving.
///
/// # Errors
/// See [`run`]; with `serve`, also when the configured ports are taken.
pub async fn main(path: PathBuf, json: bool, serve_after: bool, opts: DemoOptions) -> anyhow::Result<()> {
    let report = run(&path, &DemoOptions { progress: !json, ..opts }).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    if serve_after {
        serve(&path, json).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_is_least_over_horizons_of_refill_or_windows_touched() {
        let h = |name: &str, budget, window_secs, fixed_offset_secs| HorizonBudget {
            name: name.into(),
            budget,
            window_secs,
            fixed_offset_secs,
        };
        const SAT_0700: u64 = 1_714_798_800; // Sat 4 May 2024 07:00 Amsterdam = 05:00 UTC
        let hs = [h("hour", 1000, 3600, None), h("day", 2000, 86_400, None)];
        assert_eq!(bound(&hs, SAT_0700, SAT_0700), 1000);
        // After 16 h: hour allows 1000 + 16000, day 2000 + 1333.
        assert_eq!(bound(&hs, SAT_0700, SAT_0700 + 16 * 3600), 3333);
        // A fixed day: 07:00–23:00 Amsterdam is one UTC day, so the cap itself.
        let fixed = [h("hour", 1000, 3600, None), h("day", 2000, 86_400, Some(0))];
        assert_eq!(bound(&fixed, SAT_0700, SAT_0700 + 16 * 3600), 2000);
        // Sat to Fri touches 7 days and, Monday-based, 2 weeks: 2 × 6000 < 7 × 2000.
        let week = [h("day", 2000, 86_400, Some(0)), h("week", 6000, 7 * 86_400, Some(4 * 86_400))];
        assert_eq!(bound(&week, SAT_0700, SAT_0700 + 6 * 86_400 + 16 * 3600), 12_000);
        assert_eq!(bound(&[], 5, 6), u64::MAX);
    }

    #[test]
    fn most_in_one_window_fixed_and_sliding() {
        let h = |window_secs, fixed_offset_secs| HorizonBudget {
            name: "x".into(),
            budget: 0,
            window_secs,
            fixed_offset_secs,
        };
        let d = [(90, 5), (110, 7), (150, 1), (260, 2)];
        // Fixed windows of 100 s: [0,100) 5, [100,200) 8, [200,300) 2.
        assert_eq!(most_in_one_window(&h(100, Some(0)), &d), 8);
        // Shifted by 50: [50,150) 12, [150,250) 1, [250,350) 2.
        assert_eq!(most_in_one_window(&h(100, Some(50)), &d), 12);
        // Any 100 s: 90..190 holds 13.
        assert_eq!(most_in_one_window(&h(100, None), &d), 13);
        assert_eq!(most_in_one_window(&h(100, None), &[]), 0);
    }

    #[test]
    fn plans_stay_within_opening_hours_and_paging_depth() {
        for fast in [true, false] {
            for p in plans(fast) {
                assert!(p.steps.windows(2).all(|w| w[0].at <= w[1].at), "{} sorted", p.id);
                for s in &p.steps {
                    let h = s.at.to_zoned(zone()).hour();
                    assert!((7..23).contains(&h), "{} has a step at {}", p.id, local_string(s.at));
                    if let Fetch::Search { page, size, .. } = &s.fetch {
                        assert!(page * size <= PAGES_PER_QUERY * PAGE, "{}", p.id);
                    }
                }
            }
        }
    }

    #[test]
    fn may4_is_a_saturday_from_seven_to_eleven() {
        let p = &plans(false)[0];
        assert_eq!(p.steps.iter().filter(|s| !p.actors[s.actor].legit).count(), 750);
        assert_eq!(local_string(p.steps[0].at), "Sat 04 May 07:00");
    }

    #[test]
    fn contact_data_is_any_remove_path_in_any_case_nested_or_in_arrays() {
        let remove: Vec<String> = ["naam", "adres.huisnummer", "werkervaring.werkgever"].map(String::from).into();
        let c = ContactFields::new(&remove);
        let held = |j: &str| c.held_by(&serde_json::from_str(j).unwrap());
        assert!(held(r#"{"id":"cv-1","NAAM":"Jan"}"#), "keys in any case");
        assert!(held(r#"{"Adres":{"HuisNummer":"4a"}}"#));
        assert!(!held(r#"{"adres":{"straat":"Dorpsstraat"}}"#), "only the path, not its parent");
        assert!(held(r#"{"werkervaring":[{"functie":"kok"},{"werkgever":"Hema"}]}"#), "each element of an array");
        assert!(!held(r#"{"id":"cv-1","beroep":"kok","naam_zichtbaar":false}"#));
        assert!(!held("null"), "an export line that is not JSON has none");
    }

    #[test]
    fn contact_upstream_is_the_mocks_cv_of_the_same_id() {
        let remove = crate::policy::masking::RawFields::default().remove;
        let c = ContactFields::new(&remove);
        let (mut shown, mut hidden) = (0, 0);
        for id in 1..=60 {
            let mut s = String::new();
            super::super::mock_api::write_cv(&mut s, id);
            let mut cv: Value = serde_json::from_str(&s).unwrap();
            let upstream = cv["toon_contactgegevens"] == Value::Bool(true);
            assert_eq!(c.held_by(&cv), upstream, "{s}");
            // Masked as cvgate would: the upstream still had it.
            for k in &remove {
                cv.as_object_mut().unwrap().remove(k);
            }
            assert!(!c.held_by(&cv));
            assert_eq!(c.held_upstream(&cv), upstream, "cv {id}");
            if upstream {
                shown += 1
            } else {
                hidden += 1
            }
        }
        assert!(shown > 0 && hidden > 0, "the mock shows some and hides some: {shown}/{hidden}");
        assert!(c.held_upstream(&serde_json::json!({"beroep": "kok"})), "no id: counted as having had it");
    }

    #[test]
    fn export_records_leave_out_the_cut_marker() {
        let body = b"{\"id\":\"cv-0000001\"}\n{\"id\":\"cv-0000002\"}\n{\"_cvgate\":{\"truncated\":true,\"records\":2,\"reason\":\"quota\"}}\n";
        assert_eq!(Fetch::Export { limit: 5 }.records(body).len(), 2);
        let page = br#"{"page":1,"size":2,"results":[{"id":"cv-0000001"},{"id":"cv-0000002"}]}"#;
        assert_eq!(Fetch::Search { query: "q".into(), page: 1, size: 2 }.records(page).len(), 2);
        assert_eq!(Fetch::Get { id: 1 }.records(br#"{"id":"cv-0000001"}"#).len(), 1);
    }

    #[test]
    fn percentages_never_round_to_all_or_nothing() {
        assert_eq!([pct(100.0), pct(99.96), pct(15.8), pct(0.04), pct(0.0)], ["100%", "99.9%", "16%", "0.1%", "0%"]);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(150_000), "150,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(
            [window(60), window(3600), window(86_400), window(604_800), window(90)],
            ["1m", "1h", "24h", "7d", "90s"]
        );
    }
}
