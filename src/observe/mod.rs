//! What the operators see: the audit log (the legal record, one line per CV request), the
//! Prometheus metrics, and the last refusals per subject (for the admin API's `explain`).

pub mod audit;
pub mod metrics;
pub mod refusals;
