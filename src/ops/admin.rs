//! The admin API (127.0.0.1:9091 by default): what the security team operates the proxy with.
//!
//! Every request needs `Authorization: Bearer <admin token>`: `admin.token` (or the variable
//! named by `admin.token_env`), the token named `admin`, or one of the named `admin.tokens`
//! (`crate::config::admin`), compared in constant time. The token's name travels with the request
//! ([`TokenName`]) into the admin log line and the actions that record who did them. JSON in and
//! out; errors are problem+json. Endpoints (documented in README "Admin API"):
//!
//! | method + path                          | does                                              |
//! |----------------------------------------|---------------------------------------------------|
//! | `GET /v1/quota?account=&org=&ip=`      | bucket state (remaining, reset) for that subject  |
//! | `POST /v1/quota/reset`                 | `{account?, org?, ip?, scope?, horizon?}` → refill |
//! | `GET /v1/explain?account=&org=&ip=`    | everything that decides the subject's next request |
//! | `GET /v1/top?scope=&horizon=&n=`       | the heaviest subjects, from the store's own state |
//! | `GET /v1/blocks`                       | active blocks                                     |
//! | `POST /v1/blocks`                      | `{scope, key, reason, duration?}` → block         |
//! | `DELETE /v1/blocks/{scope}/{key}`      | unblock (`key` of an ip block: CIDR, `/` as `_`)  |
//! | `GET /v1/pauses`                       | paused route groups                               |
//! | `POST /v1/pauses/{group}`              | pause a route group (503 `paused`)                |
//! | `DELETE /v1/pauses/{group}`            | resume it                                         |
//! | `GET /v1/masks`                        | route groups masked by an operator                |
//! | `POST /v1/masks/{group}`               | mask every CV of the group (contact data removed) |
//! | `DELETE /v1/masks/{group}`             | lift it (the config's own mask triggers stay)     |
//! | `GET /v1/version`                      | version, running config's SHA-256, start time     |
//! | `GET /v1/guard`                        | the population guard's rules: step, sum, threshold |
//! | `POST /v1/guard/{rule}/acknowledge`    | hold the current step (no further escalation)     |
//! | `POST /v1/guard/{rule}/release`        | back to normal now (no re-trip for the cool-down) |
//! | `POST /v1/guard/{rule}/trip?step=`     | force a step: `alert`, `mask` or `pause`          |
//! | `POST /v1/reload`                      | reload config.yaml; 422 with every error if bad   |
//! | `GET /v1/config`                       | the effective config, secrets redacted            |

use std::convert::Infallible;
use std::sync::Arc;

use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::ops::subject::{self, Asked, Fault};
use crate::policy::blocks::{Block, BlockScope};
use crate::problem::{full, ProxyBody};
use crate::state::Shared;

/// The name of the admin token a request came with (in its extensions once authorised).
#[derive(Debug, Clone)]
pub struct TokenName(pub Arc<str>);

fn reply(status: StatusCode, v: Value) -> Response<ProxyBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(full(v.to_string()))
        .expect("response")
}

/// An admin problem, through the one problem+json builder (`urn:cvgate:problem:admin-<slug>`,
/// with an `instance` like every other answer).
fn problem(status: StatusCode, slug: &str, detail: impl Into<String>) -> Response<ProxyBody> {
    let title = status.canonical_reason().unwrap_or("Error");
    let id = uuid::Uuid::new_v4().to_string();
    crate::problem::answer(status, &format!("admin-{slug}"), title, detail.into(), serde_json::Map::new(), &id)
}

/// The name of the token the request presents, if it is one of the admin tokens.
fn authorised(shared: &Shared, req: &Request<Incoming>) -> Option<Arc<str>> {
    let got = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))?;
    shared.runtime().config.admin.check(got)
}

/// A subject question's answer, or its problem.
fn answer(r: Result<Value, Fault>) -> Response<ProxyBody> {
    match r {
        Ok(v) => reply(StatusCode::OK, v),
        Err(f) => fault(f),
    }
}

/// A subject question's problem (its slug is `admin-` prefixed already).
fn fault(f: Fault) -> Response<ProxyBody> {
    let title = f.status.canonical_reason().unwrap_or("Error");
    let id = uuid::Uuid::new_v4().to_string();
    crate::problem::answer(f.status, &f.slug, title, f.detail, serde_json::Map::new(), &id)
}

fn param<'a>(q: &'a str, name: &str) -> Option<&'a str> {
    q.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v).filter(|v| !v.is_empty())
}

async fn json_body(req: Request<Incoming>) -> Result<Value, Response<ProxyBody>> {
    let bytes = Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|_| problem(StatusCode::BAD_REQUEST, "bad-body", "unreadable or larger than 64 KiB"))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| problem(StatusCode::BAD_REQUEST, "bad-json", e.to_string()))
}

async fn quota_state(shared: &Shared, q: &str) -> Response<ProxyBody> {
    match Asked::from_query(q) {
        Ok(asked) => answer(subject::quota(shared, &asked).await),
        Err(f) => fault(f),
    }
}

async fn add_block(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<ProxyBody> {
    let v = match json_body(req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(scope) = v["scope"].as_str().and_then(BlockScope::parse) else {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, "bad-scope", "scope must be account, org or ip");
    };
    let Some(key) = v["key"].as_str().filter(|k| !k.is_empty()) else {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, "bad-key", "key is required");
    };
    let now = shared.clock.now();
    let until = match v["duration"].as_str() {
        None => None,
        Some(d) => match crate::duration::parse_positive(d) {
            Ok(ns) => now.checked_add(jiff::SignedDuration::from_nanos(ns.get() as i64)).ok(),
            Err(e) => return problem(StatusCode::UNPROCESSABLE_ENTITY, "bad-duration", e),
        },
    };
    let b = Block {
        scope,
        key: key.to_string(),
        reason: v["reason"].as_str().unwrap_or("manual block").to_string(),
        source: "manual".into(),
        created: now,
        until,
    };
    let s = Arc::clone(shared);
    match blocking(move || s.block(b)).await {
        Ok(b) => reply(StatusCode::CREATED, json!(b)),
        Err(e) => problem(StatusCode::UNPROCESSABLE_ENTITY, "block", e.to_string()),
    }
}

fn redacted_config(shared: &Shared) -> Value {
    let mut v = serde_json::to_value(&shared.runtime().config.raw).unwrap_or(Value::Null);
    if let Some(s) = v.pointer_mut("/identity/dev_hs256/secret") {
        *s = json!("<redacted>");
    }
    if let Some(s) = v.pointer_mut("/admin/token").filter(|s| !s.is_null()) {
        *s = json!("<redacted>");
    }
    for t in v.pointer_mut("/admin/tokens").and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(s) = t.get_mut("token").filter(|s| !s.is_null()) {
            *s = json!("<redacted>");
        }
    }
    v
}

/// The operator's hand on the population guard: `acknowledge` (hold the current step, no
/// further escalation), `release` (back to normal now; no re-trip for the rule's cool-down),
/// `trip?step=mask` (force a step). Applied here and, with the Redis store, on every replica
/// within a second (`crate::share`); each is logged and audited.
fn guard_op(shared: &Shared, rule: &str, op: &str, q: &str, by: &str) -> Response<ProxyBody> {
    use crate::policy::guard::{GuardError, OperatorOp};
    let kind = match (op, OperatorOp::parse_kind(op, param(q, "step"))) {
        (_, Some(kind)) => kind,
        ("trip", None) => {
            return problem(StatusCode::UNPROCESSABLE_ENTITY, "bad-step", "step must be alert, mask or pause")
        }
        _ => return problem(StatusCode::NOT_FOUND, "not-found", "guard operations: acknowledge, release, trip"),
    };
    match shared.guard_operate(OperatorOp::new(rule, kind, shared.clock.now(), by)) {
        Ok(()) => reply(StatusCode::OK, json!({ "rules": shared.guard.states() })),
        Err(e @ GuardError::UnknownRule(_)) => problem(StatusCode::NOT_FOUND, "no-guard", e.to_string()),
        Err(e) => problem(StatusCode::CONFLICT, "guard-state", e.to_string()),
    }
}

/// Every admin call that changes something (any method but GET) is logged once with its
/// answer: who (the caller's address and the token's name), what, and how it went. Values are
/// quoted by the log format, so a key cannot forge fields.
async fn audited(shared: Arc<Shared>, req: Request<Incoming>) -> Response<ProxyBody> {
    if req.method() == Method::GET {
        return route(shared, req).await;
    }
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let peer = req.extensions().get::<crate::ops::Peer>().map(|p| p.0.to_string()).unwrap_or_default();
    let token = authorised(&shared, &req).map_or_else(|| "-".to_string(), |n| n.to_string());
    let resp = route(shared, req).await;
    let status = resp.status().as_u16();
    tracing::warn!(target: "cvgate::admin", method = %method, path = ?path, peer = ?peer, token = ?token, status, "admin action");
    resp
}

/// Run an admin change that writes to disk (fsync) off the runtime's threads, so proxied
/// requests on them do not wait for the disk.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| anyhow::anyhow!("admin task failed: {e}"))?
}

async fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Response<ProxyBody> {
    let Some(token) = authorised(&shared, &req) else {
        let mut r = problem(StatusCode::UNAUTHORIZED, "unauthorized", "admin bearer token required");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return r;
    };
    let mut req = req;
    req.extensions_mut().insert(TokenName(token.clone()));
    let path = req.uri().path().trim_end_matches('/').to_string();
    let q = req.uri().query().unwrap_or("").to_string();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let now = shared.clock.now();
    match (req.method().clone(), segs.as_slice()) {
        (Method::GET, ["v1", "quota"]) => quota_state(&shared, &q).await,
        (Method::POST, ["v1", "quota", "reset"]) => match json_body(req).await {
            Ok(v) => answer(subject::reset(&shared, &v, &token).await),
            Err(r) => r,
        },
        (Method::GET, ["v1", "explain"]) => match Asked::from_query(&q) {
            Ok(asked) => answer(subject::explain(&shared, &asked).await),
            Err(f) => fault(f),
        },
        (Method::GET, ["v1", "top"]) => answer(subject::top(&shared, &q).await),
        (Method::GET, ["v1", "blocks"]) => reply(StatusCode::OK, json!({ "blocks": shared.blocks.list(now) })),
        (Method::POST, ["v1", "blocks"]) => add_block(&shared, req).await,
        (Method::DELETE, ["v1", "blocks", scope, key]) => {
            let Some(scope) = BlockScope::parse(scope) else {
                return problem(StatusCode::NOT_FOUND, "bad-scope", "scope must be account, org or ip");
            };
            let key = if scope == BlockScope::Ip { key.replace('_', "/") } else { key.to_string() };
            let s = Arc::clone(&shared);
            match blocking(move || s.unblock(scope, &key)).await {
                Ok(true) => reply(StatusCode::OK, json!({"removed": true})),
                Ok(false) => problem(StatusCode::NOT_FOUND, "no-block", "no such block"),
                Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, "persist", e.to_string()),
            }
        }
        (Method::GET, ["v1", kind @ ("pauses" | "masks")]) => {
            let (switch, key) = if *kind == "pauses" { (&shared.pauses, "paused") } else { (&shared.masks, "masked") };
            reply(StatusCode::OK, json!({ key: switch.list() }))
        }
        (m @ (Method::POST | Method::DELETE), ["v1", kind @ ("pauses" | "masks"), group]) => {
            if !shared.runtime().config.routes.groups().iter().any(|g| &**g == *group) {
                return problem(StatusCode::NOT_FOUND, "no-group", format!("no route has group {group:?}"));
            }
            let (s, g, on, pause) = (Arc::clone(&shared), group.to_string(), m == Method::POST, *kind == "pauses");
            let _ = blocking(move || {
                if pause {
                    s.pause(&g, on);
                } else {
                    s.mask(&g, on);
                }
                Ok(())
            })
            .await;
            let key = if pause { "paused" } else { "masked" };
            reply(StatusCode::OK, json!({"group": group, key: on}))
        }
        (Method::GET, ["v1", "version"]) => {
            let rt = shared.runtime();
            reply(
                StatusCode::OK,
                json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "config_sha256": crate::state::config_hash(&rt.config),
                    "started": shared.started_at.to_string(),
                    "process": shared.process_id,
                    "dev_mode": rt.config.raw.dev_mode,
                }),
            )
        }
        (Method::GET, ["v1", "guard"]) => reply(StatusCode::OK, json!({ "rules": shared.guard.states() })),
        (Method::POST, ["v1", "guard", rule, op]) => guard_op(&shared, rule, op, &q, &token),
        (Method::POST, ["v1", "reload"]) => match shared.reload() {
            Ok(r) => reply(StatusCode::OK, json!({"reloaded": true, "restart_pending": r.restart_pending})),
            Err(errs) => {
                let list: Vec<Value> =
                    errs.errors.iter().map(|e| json!({"path": e.path, "line": e.line, "message": e.message})).collect();
                let mut extra = serde_json::Map::new();
                extra.insert("file".into(), json!(errs.file));
                extra.insert("errors".into(), Value::Array(list));
                let detail = "config rejected; the running config stays".to_string();
                let id = uuid::Uuid::new_v4().to_string();
                let status = StatusCode::UNPROCESSABLE_ENTITY;
                crate::problem::answer(status, "admin-reload-rejected", "Reload rejected", detail, extra, &id)
            }
        },
        (Method::GET, ["v1", "config"]) => reply(StatusCode::OK, redacted_config(&shared)),
        _ => problem(StatusCode::NOT_FOUND, "not-found", "no such admin endpoint"),
    }
}

/// Serve the admin API until `stop`.
pub async fn serve(l: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    if shared.runtime().config.admin.is_empty() {
        tracing::warn!(
            "admin API has no token (admin.token, admin.token_env, admin.tokens): every admin request is refused"
        );
    }
    crate::ops::serve_local(l, stop, move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(audited(shared, req).await) }
    })
    .await;
}
