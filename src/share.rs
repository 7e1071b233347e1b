//! Blocks, pauses, masks and the operator's guard operations shared by the replicas through
//! Redis, without losing a change.
//!
//! Every local change (a block, an unblock, a pause, a guard operation) goes into one ordered queue and is written
//! to Redis from it, one at a time under a lock; a write that fails (Redis down) stays at the
//! head and is retried by the next flush. The once-a-second sync flushes first and takes
//! Redis's list only when nothing is left: Redis lacking our changes must never overwrite them
//! (a block made while Redis was down used to vanish on every replica when it came back). While
//! reading, changes still queued are laid over what Redis says.
//!
//! A flag member is the block's JSON, whatever characters its key holds (an account id may hold
//! `|`); unblocking removes the members whose parsed scope and key are exactly the ones named.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use crate::policy::blocks::{Block, BlockScope};
use crate::policy::switches::Switch;
use crate::quota::redis::SharedFlags;

/// Redis flag kind for shared blocks (switches name theirs: [`Switch::flag_kind`]).
pub const BLOCK_FLAGS: &str = "blocks";
/// Redis flag kind for the operator's guard operations ([`crate::policy::guard::OperatorOp`]
/// JSON; each replica applies an id once).
pub const GUARD_OPS: &str = "guard-ops";

/// One local change waiting to reach Redis.
#[derive(Debug, Clone)]
enum Change {
    Block(Block),
    Unblock(BlockScope, String),
    Switch(Switch, String, bool),
    /// A guard operation's member: added (`true`) or, once old, removed.
    GuardOp(String, bool),
}

/// The ordered queue of local changes and the lock that keeps one writer at a time.
#[derive(Default)]
pub struct Outbox {
    queue: Mutex<VecDeque<Change>>,
    writer: tokio::sync::Mutex<()>,
}

/// What Redis holds, with the changes still queued laid over it.
pub struct SharedState {
    pub blocks: Vec<Block>,
    pub paused: BTreeSet<String>,
    pub masked: BTreeSet<String>,
    /// The guard operations' members (those still queued here included).
    pub guard_ops: Vec<String>,
}

impl Outbox {
    pub fn block(&self, b: Block) {
        self.push(Change::Block(b));
    }

    pub fn unblock(&self, scope: BlockScope, key: String) {
        self.push(Change::Unblock(scope, key));
    }

    pub fn switch(&self, s: Switch, group: String, on: bool) {
        self.push(Change::Switch(s, group, on));
    }

    /// Add (`on`) or drop a guard operation's member.
    pub fn guard_op(&self, member: String, on: bool) {
        self.push(Change::GuardOp(member, on));
    }

    fn push(&self, c: Change) {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner).push_back(c);
    }

    fn head(&self) -> Option<Change> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner).front().cloned()
    }

    /// Write queued changes to Redis in order; `false` when one failed (it stays queued).
    pub async fn flush(&self, flags: &dyn SharedFlags) -> bool {
        let _one_writer = self.writer.lock().await;
        self.flush_locked(flags).await
    }

    async fn flush_locked(&self, flags: &dyn SharedFlags) -> bool {
        while let Some(change) = self.head() {
            let written = match &change {
                Change::Block(b) => flags.set(BLOCK_FLAGS, &flag(b), true).await.is_ok(),
                Change::Switch(s, g, on) => flags.set(s.flag_kind(), g, *on).await.is_ok(),
                Change::GuardOp(m, on) => flags.set(GUARD_OPS, m, *on).await.is_ok(),
                Change::Unblock(scope, key) => match flags.members(BLOCK_FLAGS).await {
                    Ok(members) => {
                        let mut ok = true;
                        let same = |m: &&String| parse(m).is_some_and(|b| b.scope == *scope && b.key == *key);
                        for m in members.iter().filter(same) {
                            ok &= flags.set(BLOCK_FLAGS, m, false).await.is_ok();
                        }
                        ok
                    }
                    Err(_) => false,
                },
            };
            if !written {
                return false;
            }
            self.queue.lock().unwrap_or_else(PoisonError::into_inner).pop_front();
        }
        true
    }

    /// Flush, then read what Redis holds with anything queued meanwhile laid over it; `None`
    /// when a change could not be written or Redis could not be read (keep the local state).
    pub async fn read(&self, flags: &dyn SharedFlags) -> Option<SharedState> {
        let _one_writer = self.writer.lock().await;
        if !self.flush_locked(flags).await {
            return None;
        }
        let mut blocks: Vec<Block> = flags.members(BLOCK_FLAGS).await.ok()?.iter().filter_map(|m| parse(m)).collect();
        let mut paused: BTreeSet<String> = flags.members(Switch::Pause.flag_kind()).await.ok()?.into_iter().collect();
        let mut masked: BTreeSet<String> = flags.members(Switch::Mask.flag_kind()).await.ok()?.into_iter().collect();
        let mut guard_ops = flags.members(GUARD_OPS).await.ok()?;
        // Changes made here since the flush: not in Redis yet, already in the local state.
        for c in self.queue.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            match c {
                Change::Block(b) => {
                    blocks.retain(|x| !(x.scope == b.scope && x.key == b.key));
                    blocks.push(b.clone());
                }
                Change::Unblock(scope, key) => blocks.retain(|x| !(x.scope == *scope && x.key == *key)),
                Change::Switch(s, g, on) => {
                    let set = if *s == Switch::Pause { &mut paused } else { &mut masked };
                    if *on {
                        set.insert(g.clone());
                    } else {
                        set.remove(g);
                    }
                }
                Change::GuardOp(m, on) => {
                    guard_ops.retain(|x| x != m);
                    if *on {
                        guard_ops.push(m.clone());
                    }
                }
            }
        }
        Some(SharedState { blocks, paused, masked, guard_ops })
    }
}

/// A block as a shared flag member: its JSON.
fn flag(b: &Block) -> String {
    serde_json::to_string(b).unwrap_or_default()
}

/// A member back as a block: JSON, or the `scope|key|json` members of earlier versions.
fn parse(m: &str) -> Option<Block> {
    serde_json::from_str(m).ok().or_else(|| serde_json::from_str(&m[m.find("|{")? + 1..]).ok())
}

/// Spawn a flush (the request or admin call that made the change does not wait on Redis).
pub fn flush_soon(outbox: &Arc<Outbox>, flags: &Arc<dyn SharedFlags>, errors: prometheus::IntCounterVec) {
    let (outbox, flags) = (outbox.clone(), flags.clone());
    tokio::spawn(async move {
        if !outbox.flush(&*flags).await {
            errors.with_label_values(&["flags"]).inc();
            tracing::warn!(
                "could not share a block, pause, mask or guard operation through Redis; kept, retried every second"
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_with_a_bar_round_trips_and_old_members_still_parse() {
        let b = Block {
            scope: BlockScope::Account,
            key: "acct-1|x".into(),
            reason: "r".into(),
            source: "manual".into(),
            created: "2026-11-24T10:00:00Z".parse().unwrap(),
            until: None,
        };
        assert_eq!(parse(&flag(&b)).unwrap().key, "acct-1|x");
        let old = format!("account|acct-1|x|{}", flag(&b));
        assert_eq!(parse(&old).unwrap().key, "acct-1|x");
    }
}
