//! The operator's hand on the guard (acknowledge, release, trip) as a value: applied here by the
//! admin API and carried to the other replicas through Redis (`crate::share`), so an operator who
//! releases a rule on one replica releases it on all of them within a second.
//!
//! Each operation has a fresh id; a replica applies an id once, in the order the operations were
//! made. A replica that starts applies the operations of the last [`REPLAY`] (a rolling restart
//! during an incident keeps the operator's trip); older ones have long been overtaken by the
//! sums and cool-downs, and are dropped from Redis after [`KEEP`].

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use super::{GuardError, Level, PopulationGuard, Transition};

/// How far back a starting replica replays the operator's operations.
pub const REPLAY: SignedDuration = SignedDuration::from_mins(15);
/// How long an operation stays in Redis.
pub const KEEP: SignedDuration = SignedDuration::from_hours(24);

/// What the operator asked of one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "op", content = "step")]
pub enum OpKind {
    /// Hold the current step: no further escalation.
    Acknowledge,
    /// Back to normal now; no re-trip for the rule's cool-down.
    Release,
    /// Force a step (`alert`, `mask`, `pause`).
    Trip(Level),
}

/// One operation, as shared between replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorOp {
    pub id: String,
    pub rule: String,
    #[serde(flatten)]
    pub kind: OpKind,
    pub at: Timestamp,
    /// Who asked (the admin token's name), for the other replicas' log lines.
    #[serde(default)]
    pub by: String,
}

impl OperatorOp {
    pub fn new(rule: &str, kind: OpKind, at: Timestamp, by: &str) -> Self {
        OperatorOp { id: uuid::Uuid::new_v4().to_string(), rule: rule.into(), kind, at, by: by.into() }
    }

    /// `acknowledge`, `release` or `trip` with its step, as the admin API names them.
    pub fn parse_kind(op: &str, step: Option<&str>) -> Option<OpKind> {
        match (op, step) {
            ("acknowledge", _) => Some(OpKind::Acknowledge),
            ("release", _) => Some(OpKind::Release),
            ("trip", Some("alert")) => Some(OpKind::Trip(Level::Alert)),
            ("trip", Some("mask")) => Some(OpKind::Trip(Level::Mask)),
            ("trip", Some("pause")) => Some(OpKind::Trip(Level::Pause)),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self.kind {
            OpKind::Acknowledge => "acknowledge",
            OpKind::Release => "release",
            OpKind::Trip(_) => "trip",
        }
    }

    /// The shared member: its JSON (field order fixed by the struct).
    pub fn to_member(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_member(m: &str) -> Option<Self> {
        serde_json::from_str(m).ok()
    }
}

impl PopulationGuard {
    /// Apply an operator's operation; the transitions it caused (none for an acknowledge).
    ///
    /// # Errors
    /// No such rule, a step the rule does not have, or an acknowledge of a rule not tripped.
    pub fn apply(&self, op: &OperatorOp, now: Timestamp) -> Result<Vec<Transition>, GuardError> {
        match op.kind {
            OpKind::Acknowledge => self.acknowledge(&op.rule).map(|()| Vec::new()),
            OpKind::Release => self.release(&op.rule, now).map(|t| t.into_iter().collect()),
            OpKind::Trip(level) => self.trip(&op.rule, level, now).map(|t| vec![t]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_round_trips_as_a_member_and_parses_from_the_admin_names() {
        let at: Timestamp = "2026-12-02T10:00:00Z".parse().unwrap();
        let op = OperatorOp::new("harvest", OpKind::Trip(Level::Pause), at, "security");
        let m = op.to_member();
        assert!(m.contains(r#""op":"trip","step":"pause""#), "{m}");
        assert_eq!(OperatorOp::from_member(&m), Some(op));
        let rel = OperatorOp::new("harvest", OpKind::Release, at, "ops");
        assert_eq!(OperatorOp::from_member(&rel.to_member()).unwrap().kind, OpKind::Release);
        assert_eq!(OperatorOp::parse_kind("trip", Some("mask")), Some(OpKind::Trip(Level::Mask)));
        assert_eq!(OperatorOp::parse_kind("trip", Some("normal")), None);
        assert_eq!(OperatorOp::parse_kind("trip", None), None);
        assert_eq!(OperatorOp::parse_kind("acknowledge", None), Some(OpKind::Acknowledge));
        assert_eq!(OperatorOp::from_member("not json"), None);
    }
}
