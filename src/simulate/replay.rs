//! One config's world for `cvgate simulate`: the real [`Shared`] state (routes, blocks and block
//! rules, closure windows, pauses, probation, quotas with every horizon, masking, the population
//! guard) built from the config in memory, on a manual clock, with no listeners, no files and no
//! Redis; each recorded request goes through the proxy's own decision phases
//! ([`crate::decide`]) at its recorded instant.
//!
//! What the replay cannot know it takes from the recording: the identity (tokens are never
//! logged; a request refused for its token is refused again), and what the upstream answered (a
//! request cvgate let through delivers what it delivered then, at most the new grant; one it
//! refused then delivers its whole grant now). A request's end (its reservation settled, its CVs
//! added to the guard's sums) is at its recorded end, in time order with the other requests, as
//! the proxy did; one shorter than the guard's one-second tick ends at its instant. The guard
//! evaluates once a second, as housekeeping does: before the second's first request, and after
//! the last request of a second at its instant (the demo evaluates before and after every
//! request; with requests in different seconds that is the same).

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use jiff::Timestamp;

use super::input::Recorded;
use crate::clock::ManualClock;
use crate::config::Config;
use crate::ctx::Ctx;
use crate::decide::{self, Admitted};
use crate::policy::identity::{Identity, IdentitySource};
use crate::quota::Reservation;
use crate::state::Shared;

/// What the candidate config does with one recorded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `allowed` or the problem slug (a recorded one when the outcome is kept).
    pub decision: Cow<'static, str>,
    /// Scope and horizon that refused it (quota).
    pub fired: Option<(&'static str, String)>,
    pub delivered: u64,
    pub masked: u64,
    pub tier: Option<String>,
}

/// The slugs the policy answers with; any other recorded decision (a bad token, an upstream
/// failure, a client that went away) happened outside the policy and happens again.
const POLICY: [&str; 7] =
    ["blocked", "closed", "paused", "paging-too-deep", "quota-exceeded", "request-too-large", "quota-unavailable"];

/// Is this recorded decision the policy's own (replayed), rather than something that happened to
/// the request outside it (kept)?
pub fn is_policy(decision: &str) -> bool {
    decision == "allowed" || POLICY.contains(&decision)
}

/// A reservation waiting for its request's end, with the request's facts (its guard cohorts).
struct Pending {
    reservation: Arc<Reservation>,
    delivered: u64,
    ctx: Ctx,
}

pub struct World {
    shared: Arc<Shared>,
    clock: Arc<ManualClock>,
    /// Reservations to settle, by their request's end (then arrival order).
    ends: BinaryHeap<Reverse<(Timestamp, u64)>>,
    pending: std::collections::HashMap<u64, Pending>,
    seq: u64,
    /// The second of the last guard evaluation, one owed after a request, and whether there
    /// are rules at all.
    ticked: Option<i64>,
    owed: Option<Timestamp>,
    no_rules: bool,
    _running: crate::server::Running,
}

impl World {
    /// The world of `config` at `start`: its listeners, files and shared store switched off.
    ///
    /// # Errors
    /// The config, so changed, does not validate, or the state cannot be built.
    pub async fn new(
        path: &std::path::Path,
        start: Timestamp,
        seen: Option<&std::path::Path>,
    ) -> anyhow::Result<World> {
        let mut raw = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?.raw;
        raw.audit.sink = "off".into();
        let base = path.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
        let c = Config::detached(raw, &base).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let clock = ManualClock::new(start);
        let running = crate::server::start(c, None, clock.clone()).await?;
        // No housekeeping on the real clock: the replay evaluates the guard at each instant.
        running.stop_token().cancel();
        let shared = running.shared.clone();
        if let Some(path) = seen {
            shared.seen.load(path)?;
        }
        let shared_rules_empty = shared.guard.states().is_empty();
        Ok(World {
            shared,
            clock,
            ends: BinaryHeap::new(),
            pending: Default::default(),
            seq: 0,
            ticked: None,
            owed: None,
            no_rules: shared_rules_empty,
            _running: running,
        })
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Settle every reservation whose request ended by `t`, at its end.
    pub async fn settle_until(&mut self, t: Timestamp) {
        while let Some(Reverse((end, id))) = self.ends.peek().copied() {
            if end > t {
                break;
            }
            self.ends.pop();
            let Some(p) = self.pending.remove(&id) else { continue };
            self.clock.set(end);
            self.end_request(p).await;
        }
    }

    async fn end_request(&self, p: Pending) {
        let s = &self.shared;
        if p.reservation.needs_settle(p.delivered) {
            s.quota.settle(&p.reservation, p.delivered).await;
        }
        decide::add_to_guard(s, &p.ctx, p.delivered, s.clock.now());
    }

    /// Evaluate the guard at `at`, at most once a second as housekeeping does: a tick in the
    /// second already ticked is skipped; one owed after a request (`after`) is made before the
    /// next second's first tick, at that request's instant, as the demo does after every request.
    fn tick(&mut self, at: Timestamp, after: bool) {
        if self.no_rules {
            return;
        }
        let second = at.as_second();
        if after {
            self.owed = Some(at);
            return;
        }
        if self.ticked == Some(second) {
            return;
        }
        if let Some(owed) = self.owed.take() {
            let _ = self.shared.guard.tick(owed);
        }
        let _ = self.shared.guard.tick(at);
        self.ticked = Some(second);
    }

    /// Replay one recorded request at its instant.
    pub async fn replay(&mut self, r: &Recorded) -> Outcome {
        self.settle_until(r.at).await;
        self.clock.set(r.at);
        self.tick(r.at, false);
        let out = self.decide(r).await;
        self.tick(r.at, true);
        out
    }

    /// Settle what is still pending (the end of the log).
    pub async fn finish(&mut self) {
        self.settle_until(Timestamp::MAX).await;
    }

    async fn decide(&mut self, r: &Recorded) -> Outcome {
        let refused = |decision: &'static str| Outcome {
            decision: decision.into(),
            fired: None,
            delivered: 0,
            masked: 0,
            tier: None,
        };
        let kept = |r: &Recorded| Outcome {
            decision: r.decision.clone().into(),
            fired: None,
            delivered: r.delivered,
            masked: r.masked,
            tier: None,
        };
        let rt = self.shared.runtime();
        let cfg = &rt.config;
        let (path, query) = match &r.path {
            Some(p) => p.split_once('?').unwrap_or((p.as_str(), "")),
            None => ("", ""),
        };
        let by_path = r.method.as_deref().and_then(|m| http::Method::from_bytes(m.as_bytes()).ok());
        let route = match by_path {
            Some(m) if !path.is_empty() => cfg.routes.find(&m, path).cloned(),
            _ => cfg.routes.iter().find(|x| *x.name == *r.route).cloned(),
        };
        let Some(route) = route else { return refused("no-route") };
        if !route.is_charged() {
            return kept(r);
        }
        // Outside the policy then (a bad token, before any policy): the same now.
        if !is_policy(&r.decision) && r.account.is_none() {
            return kept(r);
        }
        // As the proxy's admission leaves it: who, from where.
        let mut ctx =
            Ctx { account: r.account.clone(), org: r.org.clone(), country: r.country.clone(), ..Ctx::default() };
        let identity = r.account.as_ref().map(|account| Identity {
            account: account.clone(),
            org: r.org.clone(),
            assurance: None,
            source: IdentitySource::Jwt,
        });
        // Schema 1 lines have no query: the CVs asked stand for the size parameter.
        let synthetic;
        let query = match (&r.path, &route.reserve) {
            (None, crate::policy::route::Reserve::Query { param, .. }) => {
                synthetic = format!("{param}={}", r.asked.max(1));
                synthetic.as_str()
            }
            _ => query,
        };
        let ip_prefix = crate::quota::ip_prefix(&cfg.quota, r.client_ip);
        let a = Admitted { route, identity, client_ip: r.client_ip, ip_prefix, now: r.at };
        if let Err(e) = decide::check(&self.shared, cfg, &a, query) {
            return refused(e.slug());
        }
        let reservation = match decide::reserve(&self.shared, &rt, &a, query, &mut ctx).await {
            Ok(res) => res,
            Err(e) => {
                let fired = e.fired().map(|(scope, horizon)| (scope, horizon.to_string()));
                return Outcome { fired, ..refused(e.slug()) };
            }
        };
        let granted = reservation.as_ref().map_or(0, |res| res.granted);
        // What the upstream delivers: what it did then (at most the grant); a request refused
        // then, its grant; a failure outside the policy, what it was.
        let (decision, delivered): (Cow<'static, str>, u64) = match r.decision.as_str() {
            "allowed" if reservation.is_some() => ("allowed".into(), r.delivered.min(granted)),
            "allowed" => ("allowed".into(), r.delivered),
            d if is_policy(d) => ("allowed".into(), granted),
            d => (d.to_string().into(), r.delivered.min(granted)),
        };
        let status = if decision == "allowed" { http::StatusCode::OK } else { http::StatusCode::BAD_GATEWAY };
        let mask = decide::mask_step(&self.shared, &rt, &a, reservation.as_deref(), status, ctx.guard_mask.is_some());
        let masked = mask.map_or(0, |m| delivered.saturating_sub(m.decision.allowance));
        let mut tier = None;
        if let Some(res) = reservation {
            let id = self.seq;
            self.seq += 1;
            tier = ctx.tier.clone();
            let p = Pending { reservation: res, delivered, ctx };
            // A request shorter than the guard's one-second tick ends at its instant (the proxy
            // could not tell the difference either); a longer one at its recorded end.
            if r.ended.duration_since(r.at) < jiff::SignedDuration::from_secs(1) {
                self.end_request(p).await;
            } else {
                self.pending.insert(id, p);
                self.ends.push(Reverse((r.ended, id)));
            }
        }
        Outcome { decision, fired: None, delivered, masked, tier }
    }
}
