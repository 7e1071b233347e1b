//! cvgate: a reverse proxy in front of a job site's CV API that stops mass downloading of job
//! seekers' CVs while employers with a real need keep working.
//!
//! # Layout, in the order a request meets it
//! - [`listener`]: accept TCP, terminate TLS ([`tls`]), HTTP/1.1 and HTTP/2, connection limits,
//!   graceful drain.
//! - [`proxy`]: the story of one request, top to bottom — read this first.
//! - [`route`]: which requests are CV requests and what each costs.
//! - [`identity`]: the employer account, organisation (KvK) and assurance level from a verified
//!   JWT or a trusted gateway; the client IP.
//! - [`geo`]: the client IP's country (trusted edge header or a MaxMind `.mmdb`), `ZZ` if unknown.
//! - [`blocks`]: blocked accounts, organisations and IP prefixes (manual and by rule, persisted).
//! - [`closure`]: closure windows (23:00–07:00 Europe/Amsterdam by default), DST-correct.
//! - [`quota`]: CV budgets per account, organisation, IP prefix, country and globally, over
//!   several horizons; GCRA maths, the engine and its stores.
//! - [`forward`]: the pooled upstream client and proxy header rules.
//! - [`integrity`]: what a charged route asks of the upstream (no ranges, no compression by
//!   default) and whether an answer's head lets its records be counted with certainty.
//! - [`codec`]: decodes a compressed upstream body to count it; compresses again for the client.
//! - [`count`]: counts records in a streaming response body and cuts it at a record boundary.
//! - [`problem`]: the one place errors become RFC 9457 problem+json answers.
//! - [`ctx`]: the facts of one request, gathered on the way and read once at its end.
//! - [`admin`]: the admin API (quota state, blocks, pauses, reload, effective config).
//! - [`audit`]: one JSON line per CV request and per rejection, written off the request path.
//! - [`metrics`]: Prometheus families; [`ops`]: `/metrics`, `/healthz`, `/readyz`, housekeeping.
//!
//! Beside the path: [`config`] (load, validate, report every error with key and line),
//! [`state`] (what outlives a reload, and the runtime one config file makes), [`server`] (the
//! composition root: start-up, signals, shutdown; nothing imports it), [`clock`] (the only reader
//! of time), [`duration`] (the one duration grammar),
//! [`mock_api`] (the stand-in CV API), [`demo`] (replays the 4 May 2024 incident and its
//! evasions through the real proxy), [`cli`].

//!
//! One policy for poisoned locks: a lock is held only for a map or field update, so a panic
//! while holding it cannot leave half a change behind; every lock is taken with
//! `unwrap_or_else(PoisonError::into_inner)` and the proxy keeps serving.

#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod blocks;
pub mod cli;
pub mod clock;
pub mod closure;
pub mod codec;
pub mod config;
pub mod count;
pub mod country;
pub mod ctx;
pub mod demo;
pub mod duration;
pub mod forward;
pub mod geo;
pub mod identity;
pub mod integrity;
pub mod listener;
pub mod metrics;
pub mod mock_api;
pub mod ops;
pub mod persist;
pub mod problem;
pub mod proxy;
pub mod quota;
pub mod route;
pub mod server;
pub mod share;
pub mod state;
pub mod tls;
