//! Prometheus metrics: every family cvgate exports, in one registry.
//!
//! Names follow `cvgate_<noun>_<unit>`, counters end in `_total`. Cardinality is bounded by
//! construction: labels take values from config (route names and groups, scope and horizon
//! names, window names) or small fixed sets (status class, decision, reason); there is no
//! per-account, per-IP or per-organisation label (the port has no authentication: who uses the
//! most is the admin API's `GET /v1/top`, from the quota store). Every family, with its type,
//! labels and meaning, is listed in docs/metrics.md (`tests/docs_honesty.rs` fails when a family
//! here is not there, or the other way round); `process_*` come from the prometheus crate's
//! process collector (Linux).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All metric families.
pub struct Metrics {
    pub registry: Registry,
    /// Requests by route, route group, status code class and decision.
    pub requests: IntCounterVec,
    /// CVs delivered by route and tier.
    pub cvs_delivered: IntCounterVec,
    /// Quota rejections by scope and horizon.
    pub quota_rejections: IntCounterVec,
    /// Shadow-mode "would reject" by scope and horizon.
    pub quota_would_reject: IntCounterVec,
    /// Authentication/authorisation failures by reason.
    pub auth_failures: IntCounterVec,
    /// Export streams cut at a record boundary, by reason (quota, closed).
    pub streams_truncated: IntCounterVec,
    /// Charged responses whose records could not be counted with certainty (charged their
    /// full reservation), by route and reason.
    pub count_uncertain: IntCounterVec,
    /// 1 while a closure window is active, by window.
    pub closed: IntGaugeVec,
    /// 1 while a route group is paused, by group.
    pub paused: IntGaugeVec,
    /// 1 while an operator has masked a route group's CVs, by group.
    pub masked: IntGaugeVec,
    /// CVs delivered without contact data, by route and reason (`shadow:` reasons in shadow
    /// mode: counted, not masked).
    pub cvs_masked: IntCounterVec,
    /// Records dropped whole by the masker (too large or not a JSON object), by route.
    pub mask_dropped: IntCounterVec,
    /// The population guard's step per rule and cohort: 0 normal, 1 alert, 2 mask, 3 pause.
    pub guard_state: IntGaugeVec,
    /// Steps the population guard took up, by rule and step (`alert`, `mask`, `pause`).
    pub guard_trips: IntCounterVec,
    /// Active blocks by scope.
    pub blocks_active: IntGaugeVec,
    /// Blocks made by this replica, by scope and source (`manual`, or `rule:<name>`).
    pub blocks_created: IntCounterVec,
    /// Upstream response-header latency by route (answers only; failures count in
    /// `upstream_errors`).
    pub upstream_latency: HistogramVec,
    /// Upstream failures by kind: the problem slug (`upstream-unreachable`, `upstream-timeout`,
    /// `upstream-failed`).
    pub upstream_errors: IntCounterVec,
    pub connections_active: IntGauge,
    pub connections_refused: IntCounter,
    pub tls_handshake_failures: IntCounter,
    /// Config reloads by result (ok, failed).
    pub config_reloads: IntCounterVec,
    pub audit_dropped: IntCounter,
    /// Quota store errors by operation (`reserve`, `settle`, `peek`, `flags`).
    pub store_errors: IntCounterVec,
    /// Whole-request duration (first byte in to last byte out) by route and status class.
    pub request_duration: HistogramVec,
    /// Response body bytes delivered to clients by route, as the upstream sent them (decoded when
    /// cvgate decoded them; before any compression toward the client).
    pub response_bytes: IntCounterVec,
    /// Request body bytes received by route, as declared by `Content-Length` (a body that does
    /// not match it is refused by the HTTP layer).
    pub request_bytes: IntCounterVec,
    /// Requests received and not finished yet (an export counts until its last byte).
    pub in_flight: IntGauge,
    /// 1, labelled with the version.
    pub build_info: IntGaugeVec,
    /// 1, labelled with the SHA-256 of the running config as parsed (`state::config_hash`:
    /// comments and layout do not change it).
    pub config_info: IntGaugeVec,
    /// When the running config was loaded (start or last good reload), Unix seconds.
    pub config_last_reload_success: IntGauge,
    /// 1 when the last reload attempt succeeded, 0 when it was refused.
    pub config_last_reload_successful: IntGauge,
    /// 1 while the running config file differs from the started one in settings read only at
    /// start (they apply at the next restart).
    pub config_restart_pending: IntGauge,
    /// 1 while the running config has `dev_mode: true` (dev tokens accepted).
    pub dev_mode: IntGauge,
    /// Tracked quota keys in the local store.
    pub quota_tracked_keys: IntGauge,
    /// 1 while the shared quota store's circuit breaker is open (requests take the failure policy).
    pub quota_store_breaker_open: IntGauge,
    /// Requests decided without the shared store, by decision (closed, local) and reason
    /// (error, timeout, breaker_open).
    pub quota_store_fallback: IntCounterVec,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric definition");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("metric definition");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("metric definition");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let connections_refused = counter(
            "cvgate_connections_refused_total",
            "Connections closed at once because the connection cap was reached.",
        );
        let tls_handshake_failures =
            counter("cvgate_tls_handshake_failures_total", "Failed or timed-out TLS handshakes.");
        let audit_dropped =
            counter("cvgate_audit_dropped_total", "Audit lines dropped because the writer could not keep up.");
        let connections_active =
            IntGauge::new("cvgate_connections_active", "Open client connections.").expect("metric");
        r.register(Box::new(connections_active.clone())).expect("unique metric");
        let quota_tracked_keys = IntGauge::new(
            "cvgate_quota_tracked_keys",
            "Quota subjects (scope keys, all their horizons in one cell) tracked in the local store.",
        )
        .expect("metric");
        r.register(Box::new(quota_tracked_keys.clone())).expect("unique metric");
        let quota_store_breaker_open = IntGauge::new(
            "cvgate_quota_store_breaker_open",
            "1 while the shared quota store's circuit breaker is open.",
        )
        .expect("metric");
        r.register(Box::new(quota_store_breaker_open.clone())).expect("unique metric");
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("metric definition");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let in_flight =
            gauge("cvgate_requests_in_flight", "Requests received and not finished (an export until its last byte).");
        let config_last_reload_success = gauge(
            "cvgate_config_last_reload_success_timestamp_seconds",
            "When the running config was loaded (start or last good reload).",
        );
        let config_last_reload_successful =
            gauge("cvgate_config_last_reload_successful", "1 when the last reload attempt succeeded, else 0.");
        let config_restart_pending = gauge(
            "cvgate_config_restart_pending",
            "1 while the config file changes settings read only at start; they apply at the next restart.",
        );
        let dev_mode = gauge(
            "cvgate_dev_mode",
            "1 while dev_mode is on: tokens signed with the config's dev HS256 key are accepted.",
        );
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "cvgate_request_duration_seconds",
                "Whole-request duration, first byte in to last byte out, by route and status class.",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0]),
            &["route", "status"],
        )
        .expect("metric definition");
        r.register(Box::new(request_duration.clone())).expect("unique metric");
        #[cfg(target_os = "linux")]
        r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())).expect("unique metric");
        let build_info = gauge_vec(&r, "cvgate_build_info", "1, labelled with the running version.", &["version"]);
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let upstream_latency = HistogramVec::new(
            HistogramOpts::new(
                "cvgate_upstream_response_seconds",
                "Time from forwarding to upstream response headers.",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["route"],
        )
        .expect("metric definition");
        r.register(Box::new(upstream_latency.clone())).expect("unique metric");
        Self {
            requests: counter_vec(
                &r,
                "cvgate_requests_total",
                "Requests by route, group, status class and decision.",
                &["route", "group", "status", "decision"],
            ),
            cvs_delivered: counter_vec(
                &r,
                "cvgate_cvs_delivered_total",
                "CVs delivered to clients, by route and tier.",
                &["route", "tier"],
            ),
            quota_rejections: counter_vec(
                &r,
                "cvgate_quota_rejections_total",
                "Requests rejected by a quota bucket, by scope and horizon.",
                &["scope", "horizon"],
            ),
            quota_would_reject: counter_vec(
                &r,
                "cvgate_quota_would_reject_total",
                "Shadow-mode buckets that would have rejected, by scope and horizon.",
                &["scope", "horizon"],
            ),
            auth_failures: counter_vec(&r, "cvgate_auth_failures_total", "Identity failures by reason.", &["reason"]),
            streams_truncated: counter_vec(
                &r,
                "cvgate_streams_truncated_total",
                "Export streams ended at a record boundary, by reason.",
                &["reason"],
            ),
            count_uncertain: counter_vec(
                &r,
                "cvgate_count_uncertain_total",
                "Charged responses whose records could not be counted with certainty, charged their full reservation, by route and reason.",
                &["route", "reason"],
            ),
            closed: gauge_vec(&r, "cvgate_closed", "1 while the closure window is active.", &["window"]),
            paused: gauge_vec(&r, "cvgate_paused", "1 while the route group is paused.", &["group"]),
            masked: gauge_vec(&r, "cvgate_masked", "1 while an operator has masked the route group's CVs.", &["group"]),
            cvs_masked: counter_vec(
                &r,
                "cvgate_cvs_masked_total",
                "CVs delivered without contact data, by route and reason (shadow:<reason> when only counted).",
                &["route", "reason"],
            ),
            guard_state: gauge_vec(
                &r,
                "cvgate_guard_state",
                "The population guard's step per rule and cohort: 0 normal, 1 alert, 2 mask, 3 pause.",
                &["guard", "cohort"],
            ),
            guard_trips: counter_vec(
                &r,
                "cvgate_guard_trips_total",
                "Steps up taken by the population guard, by rule and step.",
                &["guard", "step"],
            ),
            mask_dropped: counter_vec(
                &r,
                "cvgate_mask_dropped_total",
                "Records dropped whole by the masker (too large, or not a JSON object), by route.",
                &["route"],
            ),
            blocks_active: gauge_vec(&r, "cvgate_blocks_active", "Active blocks by scope.", &["scope"]),
            blocks_created: counter_vec(
                &r,
                "cvgate_blocks_created_total",
                "Blocks made by this replica, by scope and source (manual or rule:<name>).",
                &["scope", "source"],
            ),
            upstream_errors: counter_vec(&r, "cvgate_upstream_errors_total", "Upstream failures by kind.", &["kind"]),
            config_reloads: counter_vec(&r, "cvgate_config_reloads_total", "Config reloads by result.", &["result"]),
            store_errors: counter_vec(
                &r,
                "cvgate_quota_store_errors_total",
                "Quota store errors by operation.",
                &["op"],
            ),
            quota_store_fallback: counter_vec(
                &r,
                "cvgate_quota_store_fallback_total",
                "Requests decided without the shared quota store, by decision and reason.",
                &["decision", "reason"],
            ),
            config_info: gauge_vec(
                &r,
                "cvgate_config_info",
                "1, labelled with the SHA-256 of the running config as parsed (comments and layout do not change it).",
                &["sha256"],
            ),
            response_bytes: counter_vec(
                &r,
                "cvgate_response_body_bytes_total",
                "Response body bytes delivered to clients (decoded, before compression toward the client), by route.",
                &["route"],
            ),
            request_bytes: counter_vec(
                &r,
                "cvgate_request_body_bytes_total",
                "Request body bytes received (as declared by Content-Length), by route.",
                &["route"],
            ),
            request_duration,
            in_flight,
            build_info,
            config_last_reload_success,
            config_last_reload_successful,
            config_restart_pending,
            dev_mode,
            quota_store_breaker_open,
            upstream_latency,
            connections_active,
            connections_refused,
            tls_handshake_failures,
            audit_dropped,
            quota_tracked_keys,
            registry: r,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("encode metrics");
        String::from_utf8(buf).expect("metrics are utf-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
