//! What the operators see: the audit log (the legal record, one line per CV request) and the
//! Prometheus metrics.

pub mod audit;
pub mod metrics;
