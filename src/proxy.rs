//! The story of one request, top to bottom, in phases (like pingora's `ProxyHttp`), each a
//! function below in this order:
//!
//! ```text
//! admit       client IP and country; header size, path sanity  → 431 / 400
//!             route: method + path → Route (group, access, cost) → 404 when unmatched
//!             identify: verified JWT or trusted-gateway headers  → 401 / 403
//!             block, pause, closure window, deep paging          → 403 / 503 / 503 / 403
//! reserve     expected CVs from every bucket, all or nothing     → 429 + Retry-After + RateLimit
//!             (a newcomer on probation: in the probation tier's buckets)
//! forward     stream the request to the upstream (pooled)        → 502 / 504
//!             (charged routes: no Range/If-*, Accept-Encoding: identity — see `integrity`)
//! judge       can the answer's records be counted with certainty? (status, type, coding) → 502
//! mask        does it lose its holders' contact data, from which record on? (`masking`) → 502
//!             when a masked answer is in a coding cvgate cannot decode
//! respond     the body layers (`Respond::wrap`): decode if compressed, mask contact data,
//!             count records as they pass, cut at the grant, compress again for the client
//! settle      when the body ends or is dropped: refund the unused part or charge the excess —
//!             only on a certain count; an uncertain one is charged its full reservation
//! finish      the audit line and metrics, exactly once (also for an early answer, and for a
//!             request the client cancels before its answer: `Unanswered`)
//! ```
//! The policy's part of admit (block … deep paging), reserve and mask lives in [`crate::decide`],
//! free of HTTP, so that `cvgate simulate` replays recorded requests through the same functions.
//! Every early answer is a [`ProxyError`], turned into problem+json in one place ([`handle`]),
//! where its metrics are counted too (`count_error`). The request's facts are gathered in a
//! [`Ctx`] that the end of the story reads once.

use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH, ETAG, VARY};
use http::{Request, Response};
use http_body_util::{BodyExt, Either};
use hyper::body::Incoming;

use crate::count::codec::{Coding, Failure};
use crate::count::integrity::Plan;
use crate::count::masked::{MaskTally, MaskedBody};
use crate::count::{BodyOutcome, Certainty, CountingBody, EndReason, RecordFormat};
pub use crate::ctx::{Ctx, Decision};
use crate::decide::{self, Admitted};
use crate::forward::{request_id, Hop, X_REQUEST_ID};
use crate::net::listener::ConnInfo;
use crate::policy::masking::MaskStep;
use crate::policy::route::{Access, Count, Route};
use crate::problem::{ProxyBody, ProxyError};
use crate::quota::Reservation;
use crate::state::{Runtime, Shared};

/// Handle one request from a client connection. Never fails: every error is an answer.
pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
    let started = Instant::now();
    let rt = shared.runtime();
    let id = request_id(req.headers());
    let id_header = HeaderValue::from_str(&id).ok();
    let request_bytes = http_body::Body::size_hint(req.body()).exact().unwrap_or(0);
    let ctx = Ctx { request_id: id, country: "ZZ".into(), request_bytes, ..Ctx::default() };
    shared.metrics.in_flight.inc(); // until `finish`, which every request reaches once
                                    // If the client goes away before an answer (the future is dropped mid-await, e.g. while
                                    // the upstream thinks), the guard still writes the request's one audit line.
    let mut pending = Unanswered { shared: shared.clone(), ctx, started, answered: false };
    let result = run(&shared, &rt, req, conn, &mut pending.ctx).await;
    pending.answered = true;
    let mut ctx = std::mem::take(&mut pending.ctx);
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            count_error(&shared.metrics, &e, ctx.route.as_deref());
            ctx.decision = Decision::Refused(e.slug());
            ctx.fired = e.fired().map(|(scope, horizon)| (scope.to_string(), horizon.to_string()));
            match &e {
                ProxyError::Blocked { scope, .. } => ctx.block = Some(scope),
                ProxyError::Closed { window, .. } => ctx.window = Some(window.clone()),
                _ => {}
            }
            let resp = e.into_response(&ctx.request_id);
            ctx.status = resp.status().as_u16();
            finish(&shared, ctx, started);
            resp
        }
    };
    if let Some(v) = id_header {
        resp.headers_mut().insert(X_REQUEST_ID, v);
    }
    resp
}

/// The phases in order; each early answer is an error, turned into a problem in [`handle`].
async fn run(
    shared: &Arc<Shared>,
    rt: &Arc<Runtime>,
    mut req: Request<Incoming>,
    conn: ConnInfo,
    ctx: &mut Ctx,
) -> Result<Response<ProxyBody>, ProxyError> {
    let started = Instant::now(); // the audit line's duration covers the whole request
    let a = admit(shared, rt, &mut req, conn, ctx)?;
    let reservation = decide::reserve(shared, rt, &a, req.uri().query().unwrap_or(""), ctx).await?;
    let (upstream, client_coding) = match forward(shared, rt, &a, req, conn, ctx).await {
        Ok(x) => x,
        Err(e) => return Err(give_back(shared, reservation.as_ref(), e).await),
    };
    let (parts, body) = upstream.into_parts();
    // judge: can this answer's records be counted with certainty, and how?
    let plan = match a.route.is_charged() {
        true => {
            crate::count::integrity::judge(parts.status, &parts.headers, a.format(), &a.route.encoding, a.route.up_to)
        }
        false => Plan::Uncounted { uncertain: None },
    };
    if plan == Plan::Refuse {
        return Err(give_back(shared, reservation.as_ref(), ProxyError::UpstreamUndecodable).await);
    }
    // mask: what a masked answer's body must be decoded from (never passed on unmasked).
    let mask = decide::mask_step(shared, rt, &a, reservation.as_deref(), parts.status, ctx.guard_mask.is_some());
    let mask_decode = match (&mask, crate::count::codec::content_coding(&parts.headers)) {
        (None, _) => None,
        (Some(_), Ok(coding)) => coding,
        (Some(_), Err(())) => {
            return Err(give_back(shared, reservation.as_ref(), ProxyError::UpstreamUndecodable).await)
        }
    };
    let soft = match (a.route.mask.is_some() && parts.status.is_success(), reservation.as_deref()) {
        (true, Some(r)) => rt.config.masking.unmasked_left(r).map(|l| l.header()),
        _ => None,
    };
    ctx.status = parts.status.as_u16();
    ctx.decision = Decision::Allowed;
    ctx.mask_after = mask.as_ref().map(|m| m.decision.allowance);
    let cut_at = (a.format() == Some(&RecordFormat::Ndjson))
        .then(|| rt.config.closure.next_cut_after(&a.route.group, a.account(), a.org(), a.now))
        .flatten();
    let respond =
        Respond { route: &a.route, reservation, plan, client_coding, started, cut_at, mask, mask_decode, soft };
    Ok(respond.wrap(shared, &rt.config.limits, parts, body, ctx))
}

/// Says a masked answer lost contact data, and why: `contact;reason=soft-budget`.
const MASKED: http::HeaderName = http::HeaderName::from_static("cvgate-masked");
/// Where the asker stands against its soft budget: `"account-day";after=300;r=120`.
const MASK_BUDGET: http::HeaderName = http::HeaderName::from_static("cvgate-mask-budget");

/// admit: who is asking and from where (first, so every audit line has the client IP), then
/// header and path checks, route, identity, blocks, pauses, closure windows, deep paging.
fn admit(
    shared: &Shared,
    rt: &Runtime,
    req: &mut Request<Incoming>,
    conn: ConnInfo,
    ctx: &mut Ctx,
) -> Result<Admitted, ProxyError> {
    let cfg = &rt.config;
    let peer = conn.peer.ip();
    (ctx.method, ctx.path) = (Some(req.method().clone()), req.uri().path_and_query().cloned());
    ctx.user_agent = req.headers().get(http::header::USER_AGENT).cloned();
    let client_ip = rt.identifier.client_ip(req.headers(), peer);
    ctx.client_ip = Some(client_ip);
    ctx.country = cfg.geo.locate(req.headers_mut(), cfg.identity.is_trusted_proxy(peer), client_ip);
    check_headers(req, cfg.limits.max_header_bytes)?;
    if !path_is_sane(req.uri().path()) {
        return Err(ProxyError::BadRequest("path has dot segments, encoded slashes or empty segments"));
    }
    let route = match cfg.routes.find(req.method(), req.uri().path()) {
        Some(r) => r.clone(),
        None if cfg.routes.forward_unmatched => Arc::new(Route::unmatched()),
        None => return Err(ProxyError::NoRoute),
    };
    (ctx.route, ctx.group, ctx.audited) = (Some(route.name.clone()), Some(route.group.clone()), route.is_charged());
    // identify (strips gateway headers from untrusted peers before anything else reads them)
    let identity = rt.identifier.identify(req.headers_mut(), peer).map_err(auth_error)?;
    if let Some(id) = &identity {
        (ctx.account, ctx.org) = (Some(id.account.clone()), id.org.clone());
    }
    if route.access == Access::Employer {
        rt.identifier.require_employer(identity.as_ref()).map_err(auth_error)?;
    }
    let ip_prefix = crate::quota::ip_prefix(&cfg.quota, client_ip);
    let a = Admitted { route, identity, client_ip, ip_prefix, now: shared.clock.now() };
    ctx.at = Some(a.now);
    decide::check(shared, cfg, &a, req.uri().query().unwrap_or(""))?;
    Ok(a)
}

/// forward: a charged route asks for a whole, plain, countable answer (see `integrity`); the
/// request streams to the upstream over a pooled connection. Returns the answer's head and
/// body, and the coding the client accepts for the way back.
async fn forward(
    shared: &Shared,
    rt: &Runtime,
    a: &Admitted,
    mut req: Request<Incoming>,
    conn: ConnInfo,
    ctx: &Ctx,
) -> Result<(Response<Incoming>, Option<Coding>), ProxyError> {
    let client_coding = match a.route.is_charged() {
        true => crate::count::integrity::prepare_request(req.headers_mut(), &a.route.encoding, a.format()),
        false => None,
    };
    let hop = Hop {
        peer: conn.peer.ip(),
        peer_trusted: rt.config.identity.is_trusted_proxy(conn.peer.ip()),
        proto: if conn.tls { "https" } else { "http" },
        request_id: &ctx.request_id,
    };
    let sent = Instant::now();
    let resp = rt.upstreams.send(req, &hop).await?;
    shared.metrics.upstream_latency.with_label_values(&[&a.route.name]).observe(sent.elapsed().as_secs_f64());
    Ok((resp, client_coding))
}

/// Nothing was delivered (the upstream failed, or its answer was refused): the reservation is
/// given back whole.
async fn give_back(shared: &Shared, reservation: Option<&Arc<Reservation>>, e: ProxyError) -> ProxyError {
    if let Some(r) = reservation {
        shared.quota.settle(r, 0).await;
    }
    e
}

/// The answer's way back: headers, then the body layers (decode → count/cut → encode), with
/// settle and the audit line at the body's end.
struct Respond<'a> {
    route: &'a Route,
    reservation: Option<Arc<Reservation>>,
    plan: Plan,
    client_coding: Option<Coding>,
    started: Instant,
    /// When a closure window with `in_flight: cut` ends a running export.
    cut_at: Option<jiff::Timestamp>,
    /// The answer loses contact data; its body is decoded from `mask_decode` first.
    mask: Option<MaskStep>,
    mask_decode: Option<Coding>,
    /// `cvgate-mask-budget`: where the asker stands against its soft budget.
    soft: Option<String>,
}

impl Respond<'_> {
    fn wrap(
        self,
        shared: &Arc<Shared>,
        limits: &crate::config::Limits,
        mut parts: http::response::Parts,
        body: Incoming,
        ctx: &mut Ctx,
    ) -> Response<ProxyBody> {
        let Respond { route, reservation, plan, client_coding, started, cut_at, mask, mask_decode, soft } = self;
        let mut l = Layers::decide(route, plan, client_coding, &parts, ctx.reserved);
        l.decode = l.decode.or(mask_decode);
        l.rewrite_head(&mut parts, route, reservation.as_deref());
        mask_head(&mut parts.headers, mask.as_ref(), soft);
        let failure = Failure::default();
        let inner = match l.decode {
            Some(c) => Either::Right(crate::count::codec::decode(body, c, limits.bomb, failure.clone())),
            None => Either::Left(body),
        };
        let inner = match &mask {
            Some(m) => Either::Right(MaskedBody::new(inner, m.masker(), m.tally.clone())),
            None => Either::Left(inner),
        };
        let cut = CutByWindow::default();
        // The context moves into the settle step, which writes the audit line when the body ends.
        let end = Settle {
            shared: shared.clone(),
            reservation,
            ctx: std::mem::take(ctx),
            started,
            header_count: l.header_count,
            pre: l.pre,
            failure,
            by_design: l.by_design,
            cut: cut.clone(),
            mask: mask.map(|m| (m.label(), m.tally)),
        };
        let on_end = Box::new(move |o: BodyOutcome| end.done(o));
        let counted = CountingBody::new(inner, l.format, l.limit, Some(limits.idle_body_timeout), on_end);
        if let Some(at) = cut_at {
            cut.schedule(shared, counted.cut_handle(), at);
        }
        let body = match l.encode {
            Some(c) => crate::count::codec::encode(counted.boxed(), c),
            None => counted.boxed(),
        };
        Response::from_parts(parts, body)
    }
}

/// The body layers an answer gets, decided on its head: decode → count/cut → encode, or no
/// count at all (then the charge is `header_count`).
struct Layers {
    /// The counted format (`None`: the body is not counted).
    format: Option<RecordFormat>,
    decode: Option<Coding>,
    encode: Option<Coding>,
    /// The record budget that cuts an export.
    limit: Option<u64>,
    /// The charge when the body is not counted: nothing on an error, the count header, or the
    /// reservation.
    header_count: Option<u64>,
    /// Why the head already makes the count uncertain.
    pre: Option<&'static str>,
    /// The route charges its reservation by design.
    by_design: bool,
}

impl Layers {
    fn decide(route: &Route, plan: Plan, client: Option<Coding>, parts: &http::response::Parts, reserved: u64) -> Self {
        let (format, decode, mut pre) = match (plan, &route.count) {
            (Plan::Count { decode, uncertain }, Count::Body(f)) => (Some(f.clone()), decode, uncertain),
            (Plan::Count { uncertain, .. } | Plan::Uncounted { uncertain }, _) => (None, None, uncertain),
            (Plan::Refuse, _) => (None, None, None),
        };
        let header_count = match &route.count {
            _ if format.is_some() => None,
            _ if !parts.status.is_success() => Some(0),
            Count::Header(h) => {
                let n = parts.headers.get(h).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok());
                pre = pre.or(n.is_none().then_some("count-header"));
                Some(n.unwrap_or(reserved))
            }
            _ => Some(reserved),
        };
        Layers {
            limit: format.as_ref().and_then(|_| route.up_to.then_some(reserved)),
            encode: client.filter(|_| format.is_some()),
            by_design: route.count == Count::Reserved && parts.status.is_success() && route.is_charged(),
            format,
            decode,
            header_count,
            pre,
        }
    }

    /// Quota headers, and what decoding, cutting and encoding change in the head.
    fn rewrite_head(&self, parts: &mut http::response::Parts, route: &Route, reservation: Option<&Reservation>) {
        let h = &mut parts.headers;
        for (k, v) in reservation.map(crate::quota::ratelimit_headers).unwrap_or_default() {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(k, v);
            }
        }
        let transformed = self.decode.is_some() || self.encode.is_some();
        if transformed || self.limit.is_some() {
            h.remove(CONTENT_LENGTH); // decoded, re-encoded or cut short
        }
        if transformed {
            h.remove(CONTENT_ENCODING);
            weaken_etag(h);
        }
        if let Some(c) = self.encode {
            h.insert(CONTENT_ENCODING, HeaderValue::from_static(c.as_str()));
        }
        if route.encoding.compress && self.format.is_some() {
            h.append(VARY, HeaderValue::from_static("accept-encoding"));
        }
    }
}

/// What masking changes in the head: the length, the validator, and a word to the client.
fn mask_head(h: &mut http::HeaderMap, mask: Option<&MaskStep>, soft: Option<String>) {
    if let Some(v) = soft.and_then(|v| HeaderValue::from_str(&v).ok()) {
        h.insert(MASK_BUDGET, v);
    }
    let Some(m) = mask else { return };
    h.remove(CONTENT_LENGTH);
    weaken_etag(h);
    if let Some(v) = m.header().and_then(|v| HeaderValue::from_str(&v).ok()) {
        h.insert(MASKED, v);
    }
}

/// A body cvgate changed (decoded, re-encoded) keeps only a weak validator (RFC 9110 §8.8.1).
fn weaken_etag(h: &mut http::HeaderMap) {
    if let Some(v) = h.get(ETAG).and_then(|v| v.to_str().ok()).filter(|v| !v.starts_with("W/")) {
        if let Ok(weak) = HeaderValue::from_str(&format!("W/{v}")) {
            h.insert(ETAG, weak);
        }
    }
}

/// Settles the reservation and writes the audit line when the response body ends.
struct Settle {
    shared: Arc<Shared>,
    reservation: Option<Arc<Reservation>>,
    ctx: Ctx,
    started: Instant,
    /// The charge when the body is not counted (error status, count header, reservation).
    header_count: Option<u64>,
    /// Why the head already made the count uncertain (status, partial, content-type, encoding).
    pre: Option<&'static str>,
    /// Why the decoder ended the body (decode-error, bomb), if it did.
    failure: Failure,
    /// The route charges its reservation by design (no count configured).
    by_design: bool,
    cut: CutByWindow,
    /// A masked answer: its reason label and what the masker did.
    mask: Option<(&'static str, Arc<MaskTally>)>,
}

/// The timer that cuts an export when a closure window starts; stopped when the body ends so a
/// finished request leaves nothing behind.
#[derive(Clone, Default)]
struct CutByWindow(Arc<std::sync::Mutex<Option<tokio::task::AbortHandle>>>, Arc<std::sync::atomic::AtomicBool>);

impl CutByWindow {
    fn schedule(&self, shared: &Arc<Shared>, handle: crate::count::CutHandle, at: jiff::Timestamp) {
        let wait = at.duration_since(shared.clock.now()).unsigned_abs();
        let fired = self.1.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            fired.store(true, std::sync::atomic::Ordering::SeqCst);
            handle.cut_now();
        });
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(task.abort_handle());
    }

    /// Stop the timer; whether it had fired (the cut was the window's, not the quota's).
    fn stop(&self) -> bool {
        if let Some(t) = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            t.abort();
        }
        self.1.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Settle {
    fn done(self, o: BodyOutcome) {
        let Settle { shared, reservation, mut ctx, started, header_count, pre, failure, by_design, cut, mask } = self;
        if let Some((label, tally)) = mask {
            tally_mask(&shared, &mut ctx, label, &tally);
        }
        let by_window = cut.stop();
        // The rule: a refund only on a certain count; otherwise the full reservation (or what
        // was counted, if more).
        let uncertain = pre.or_else(|| failure.get().copied()).or(header_count.map_or(o.uncertain, |_| None));
        let counted = header_count.unwrap_or(o.records);
        let delivered = if uncertain.is_some() { counted.max(ctx.reserved) } else { counted };
        ctx.delivered = if reservation.is_some() || header_count.is_some() { delivered } else { o.records };
        if reservation.is_some() {
            ctx.count = match uncertain {
                Some(reason) => {
                    let route = ctx.route.clone().unwrap_or_else(|| "-".into());
                    shared.metrics.count_uncertain.with_label_values(&[&route, reason]).inc();
                    shared.uncertain_log.warn(&route, reason, &ctx.request_id);
                    Certainty::Uncertain(reason)
                }
                None if by_design => Certainty::Reserved,
                None => Certainty::Exact,
            };
        }
        ctx.bytes = o.bytes;
        ctx.truncated = matches!(o.end, EndReason::Cut);
        if ctx.truncated {
            shared.metrics.streams_truncated.with_label_values(&[if by_window { "closed" } else { "quota" }]).inc();
        }
        // Off the body's poll (the store may be Redis); most requests deliver what they
        // reserved and need no store call at all.
        if let Some(r) = reservation.filter(|r| r.needs_settle(delivered)) {
            let s = shared.clone();
            tokio::spawn(async move { s.quota.settle(&r, delivered).await });
        }
        finish(&shared, ctx, started);
    }
}

/// A masked answer's share of the audit line and the metrics.
fn tally_mask(shared: &Shared, ctx: &mut Ctx, label: &'static str, tally: &MaskTally) {
    use std::sync::atomic::Ordering::Relaxed;
    let route = ctx.route.as_deref().unwrap_or("-");
    ctx.masked = tally.masked.load(Relaxed);
    ctx.mask_reason = Some(label);
    shared.metrics.cvs_masked.with_label_values(&[route, label]).inc_by(ctx.masked);
    let dropped = tally.dropped.load(Relaxed);
    if dropped > 0 {
        shared.metrics.mask_dropped.with_label_values(&[route]).inc_by(dropped);
        tracing::warn!(route, dropped, request_id = %ctx.request_id, "records dropped whole by the masker (too large, or not a JSON object)");
    }
}

/// The metrics of an early answer, counted in this one place (the conversions that make the
/// errors have no side effects).
fn count_error(m: &crate::observe::metrics::Metrics, e: &ProxyError, route: Option<&str>) {
    match e {
        ProxyError::Auth { reason, .. } => m.auth_failures.with_label_values(&[reason]).inc(),
        ProxyError::QuotaExceeded { scope, horizon, .. } | ProxyError::TooLarge { scope, horizon, .. } => {
            m.quota_rejections.with_label_values(&[scope, horizon.as_str()]).inc();
        }
        ProxyError::QuotaUnavailable => m.store_errors.with_label_values(&["reserve"]).inc(),
        ProxyError::UpstreamUnreachable | ProxyError::UpstreamTimeout | ProxyError::UpstreamFailed => {
            m.upstream_errors.with_label_values(&[e.slug()]).inc();
        }
        ProxyError::UpstreamUndecodable => {
            m.count_uncertain.with_label_values(&[route.unwrap_or("-"), "encoding"]).inc();
        }
        _ => {}
    }
}

/// A request whose answer has not been made yet; dropped unanswered, it was cancelled by the
/// client, and its audit line says so (`cancelled`, status 499 as nginx logs it). A
/// reservation taken before the cancel stays charged: nothing was counted.
struct Unanswered {
    shared: Arc<Shared>,
    ctx: Ctx,
    started: Instant,
    answered: bool,
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let mut ctx = std::mem::take(&mut self.ctx);
        ctx.decision = Decision::Cancelled;
        ctx.status = 499;
        if ctx.reserved > 0 {
            ctx.delivered = ctx.reserved;
            ctx.count = Certainty::Uncertain("cancelled");
        }
        finish(&self.shared, ctx, self.started);
    }
}

/// End of the story: metrics and the audit line, once per request.
fn finish(shared: &Shared, ctx: Ctx, started: Instant) {
    let route = ctx.route.as_deref().unwrap_or("-");
    let group = ctx.group.as_deref().unwrap_or("-");
    let class = match ctx.status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let decision = ctx.decision.as_str();
    let m = &shared.metrics;
    m.in_flight.dec();
    m.requests.with_label_values(&[route, group, class, decision]).inc();
    m.request_duration.with_label_values(&[route, class]).observe(started.elapsed().as_secs_f64());
    if ctx.bytes > 0 {
        m.response_bytes.with_label_values(&[route]).inc_by(ctx.bytes);
    }
    if ctx.request_bytes > 0 {
        m.request_bytes.with_label_values(&[route]).inc_by(ctx.request_bytes);
    }
    decide::add_to_guard(shared, &ctx, ctx.delivered, shared.clock.now());
    if ctx.delivered > 0 {
        let tier = ctx.tier.as_deref().unwrap_or("default");
        shared.metrics.cvs_delivered.with_label_values(&[route, tier]).inc_by(ctx.delivered);
    }
    if let Decision::Refused(_) = ctx.decision {
        shared.refusals.record(&ctx, shared.clock.now());
    }
    if ctx.audited || ctx.decision != Decision::Allowed {
        let line = crate::observe::audit::AuditRecord::from_ctx(ctx, shared.clock.now(), started.elapsed());
        shared.audit.record(line);
    }
}

fn auth_error(e: crate::policy::identity::AuthError) -> ProxyError {
    ProxyError::Auth { status: e.status(), reason: e.reason(), detail: e.to_string() }
}

/// Rejects request headers over the limit with a 431 problem (hyper's own limit is a backstop).
fn check_headers(req: &Request<Incoming>, limit: usize) -> Result<(), ProxyError> {
    let uri = req.uri();
    let uri_len = uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.scheme_str().map_or(0, |s| s.len() + 3);
    let size: usize = uri_len + req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum::<usize>();
    if size > limit {
        return Err(ProxyError::HeaderTooLarge { limit });
    }
    Ok(())
}

/// Paths the proxy forwards: no `.`/`..` segments, no encoded `/` or `\`, no empty inner segment.
/// Otherwise the upstream might resolve a path to a CV route that the route table did not see.
fn path_is_sane(path: &str) -> bool {
    let encoded = |w: &[u8]| {
        w[0] == b'%'
            && (w[1..].eq_ignore_ascii_case(b"2f")
                || w[1..].eq_ignore_ascii_case(b"5c")
                || w[1..].eq_ignore_ascii_case(b"2e"))
    };
    if path.as_bytes().windows(3).any(encoded) || path.contains('\\') {
        return false;
    }
    let inner = path.trim_start_matches('/').trim_end_matches('/');
    inner.is_empty() || inner.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_paths_are_refused() {
        assert!(path_is_sane("/api/v1/cvs"));
        assert!(path_is_sane("/api/v1/cvs/"));
        assert!(path_is_sane("/"));
        assert!(!path_is_sane("/api/v1/vacancies/../cvs"));
        assert!(!path_is_sane("/api/v1//cvs"));
        assert!(!path_is_sane("/api/v1/vacancies%2F..%2Fcvs"));
        assert!(!path_is_sane("/api/v1/%2e%2e/cvs"));
        assert!(!path_is_sane("/api/v1/%2E%2E/cvs"));
        assert!(!path_is_sane("/api/v1/vacancies%5cx"));
        assert!(!path_is_sane("/api\\v1"));
        assert!(path_is_sane("/api/v1/cvs/%41"));
    }
}
