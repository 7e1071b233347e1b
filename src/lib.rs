//! cvgate: a reverse proxy in front of a job site's CV API that stops mass downloading of job
//! seekers' CVs while employers with a real need keep working.
//!
//! # Layout, in the order a request meets it
//! - [`net`]: accept TCP, terminate TLS ([`net::tls`]), HTTP/1.1 and HTTP/2, connection limits,
//!   graceful drain ([`net::listener`]).
//! - [`proxy`]: the story of one request in phases — read this first. Its facts gather in a
//!   [`ctx::Ctx`]. The policy's part of it, free of HTTP, is [`decide`] (blocks, pauses,
//!   closure, paging, guard, probation, quota, masking), which `simulate` replays too.
//! - [`policy`]: who may ask what, when: [`policy::route`] (which requests are CV requests and
//!   what each costs), [`policy::identity`] (account, organisation, assurance from a verified JWT
//!   or a trusted gateway; the client IP), [`policy::geo`] (the client's [`country`]),
//!   [`policy::blocks`] (blocked accounts, organisations and IP prefixes), [`policy::closure`]
//!   (closure windows, DST-correct).
//! - [`quota`]: CV budgets per account, organisation, IP prefix, country and globally, over
//!   several horizons; GCRA maths, the engine and its stores.
//! - [`forward`]: the pooled upstream client and proxy header rules.
//! - [`count`]: the response body's way back: [`count::integrity`] (what a charged route asks
//!   of the upstream, and whether an answer can be counted with certainty), [`count::codec`]
//!   (decode what the upstream compressed, compress again for the client), the record counter
//!   and the body that counts and cuts at a record boundary.
//! - [`problem`]: the one place errors become RFC 9457 problem+json answers.
//! - [`observe`]: [`observe::audit`] (one JSON line per CV request and per rejection, off the
//!   request path), [`observe::metrics`] (Prometheus) and [`observe::refusals`] (the last
//!   refusals per subject, for the admin API).
//! - [`ops`]: `/metrics`, `/healthz`, `/readyz`, housekeeping, and [`ops::admin`] (the admin API;
//!   [`ops::subject`] answers its questions about one subject: explain, top, quota reset).
//!
//! Beside the path: [`config`] (load, validate, report every error with key and line),
//! [`state`] (what outlives a reload, and the runtime one config file makes; [`share`] carries
//! blocks and pauses to the other replicas), [`server`] (the composition root: start-up,
//! signals, shutdown; nothing imports it), [`clock`] (the only reader of time), [`duration`]
//! (the one duration grammar), [`invalid`] (the one collector of config errors and their key
//! paths), [`persist`] (crash-safe file writes), [`simulate`] (`cvgate simulate`: a candidate
//! config replayed over recorded audit logs, through [`decide`]), [`cli`].
//!
//! Not part of the proxy: `devtools` (the stand-in CV API and the demo that replays the 4 May
//! 2024 incident through a real proxy), behind the default `devtools` feature; nothing above
//! imports it, and `cargo build --no-default-features` leaves it out.
//!
//! One policy for poisoned locks: a lock is held only for a map or field update, so a panic
//! while holding it cannot leave half a change behind; every lock is taken with
//! `unwrap_or_else(PoisonError::into_inner)` and the proxy keeps serving.

#![forbid(unsafe_code)]

pub mod cli;
pub mod clock;
pub mod config;
pub mod count;
pub mod country;
pub mod ctx;
pub mod decide;
#[cfg(feature = "devtools")]
pub mod devtools;
pub mod duration;
pub mod forward;
pub mod invalid;
pub mod net;
pub mod observe;
pub mod ops;
pub mod persist;
pub mod policy;
pub mod problem;
pub mod proxy;
pub mod quota;
pub mod server;
pub mod share;
pub mod simulate;
pub mod state;
