//! One rule's state machine: Normal → the first step on trip → the next step after
//! `escalate_after` while still over → Normal after `cool_down` without being over. Pure: the
//! sum's verdict and `now` come in, the change (if any) goes out.

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use super::config::{Level, Rule};

/// Why a rule changed level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// The sum went over the threshold: Normal → the first step.
    Over,
    /// Still over `escalate_after` after the current step began.
    Escalated,
    /// Not over for `cool_down`: back to Normal.
    Cooled,
    /// An operator (admin API): trip or release.
    Manual,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Over => "over",
            Reason::Escalated => "escalated",
            Reason::Cooled => "cooled",
            Reason::Manual => "manual",
        }
    }
}

/// A change of level: (from, to, why).
pub type Change = (Level, Level, Reason);

/// Where one rule stands. Serialisable, so it can be saved and restored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub(super) level: Level,
    /// When `level` was entered.
    pub(super) since: Option<Timestamp>,
    /// The last evaluation at which the sum was over (cool-down counts from it).
    last_over: Option<Timestamp>,
    /// An operator saw it: stay at this step, no further escalation until back to Normal.
    pub(super) acknowledged: bool,
    /// A manual release: no re-trip until `cool_down` after it.
    released_at: Option<Timestamp>,
}

impl Machine {
    /// Evaluate at `now`, the sum being `over` the threshold or not.
    pub fn step(&mut self, rule: &Rule, over: bool, now: Timestamp) -> Option<Change> {
        let elapsed = |t: Option<Timestamp>| t.map_or(SignedDuration::MAX, |t| now.duration_since(t));
        if over {
            self.last_over = Some(now);
        }
        match self.level {
            Level::Normal => {
                if !over || elapsed(self.released_at) < rule.cool_down {
                    return None;
                }
                self.released_at = None;
                Some(self.enter(rule.next_step(Level::Normal)?, now, Reason::Over))
            }
            level if over => {
                let due = !self.acknowledged && elapsed(self.since) >= rule.escalate_after;
                let next = rule.next_step(level).filter(|_| due)?;
                Some(self.enter(next, now, Reason::Escalated))
            }
            _ if elapsed(self.last_over) >= rule.cool_down => Some(self.enter(Level::Normal, now, Reason::Cooled)),
            _ => None,
        }
    }

    /// Hold the current step: `false` when there is none (Normal).
    pub fn acknowledge(&mut self) -> bool {
        self.acknowledged = self.level != Level::Normal;
        self.acknowledged
    }

    /// Back to Normal now, and no re-trip for `cool_down` (also when already Normal).
    pub fn release(&mut self, now: Timestamp) -> Option<Change> {
        self.released_at = Some(now);
        (self.level != Level::Normal).then(|| self.enter(Level::Normal, now, Reason::Manual))
    }

    /// Force `level` (one of the rule's steps) now. It then behaves as if tripped there: it
    /// escalates if the sum is over for `escalate_after`, and cools down `cool_down` after the
    /// last time it was over (counting from now).
    pub fn trip(&mut self, level: Level, now: Timestamp) -> Change {
        self.released_at = None;
        self.last_over = Some(now);
        let change = self.enter(level, now, Reason::Manual);
        self.acknowledged = false;
        change
    }

    fn enter(&mut self, to: Level, now: Timestamp, reason: Reason) -> Change {
        let from = std::mem::replace(&mut self.level, to);
        self.since = Some(now);
        if to == Level::Normal {
            self.acknowledged = false;
        }
        (from, to, reason)
    }
}
