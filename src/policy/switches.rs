//! Run-time switches per route group, thrown by operators through the admin API: *pause* (every
//! request of the group gets 503 `paused`) and *mask* (every CV of the group comes without its
//! holder's contact data, whoever asks). A change is logged, kept in a file beside the block list
//! (`pauses.json`, `masks.json`) so a restart does not quietly undo it, and shared with the other
//! replicas through Redis (`crate::share`). Checking a group is a read lock and a set lookup.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Mutex, PoisonError, RwLock};

use prometheus::IntGaugeVec;

/// Which switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    Pause,
    Mask,
}

impl Switch {
    /// The Redis flag kind the replicas share it under.
    pub fn flag_kind(self) -> &'static str {
        match self {
            Switch::Pause => "pauses",
            Switch::Mask => "masks",
        }
    }

    /// The file beside the block list.
    pub fn file_name(self) -> &'static str {
        match self {
            Switch::Pause => "pauses.json",
            Switch::Mask => "masks.json",
        }
    }

    fn verb(self, on: bool) -> &'static str {
        match (self, on) {
            (Switch::Pause, true) => "route group paused",
            (Switch::Pause, false) => "route group resumed",
            (Switch::Mask, true) => "route group masked",
            (Switch::Mask, false) => "route group unmasked",
        }
    }
}

/// The groups one switch is thrown for.
pub struct Switches {
    kind: Switch,
    on: RwLock<BTreeSet<String>>,
    /// One writer of the file at a time, each writing the set as it is under this lock.
    writes: Mutex<()>,
    /// `1` per group while thrown (`cvgate_paused`, `cvgate_masked`).
    gauge: IntGaugeVec,
}

impl Switches {
    pub fn new(kind: Switch, gauge: IntGaugeVec) -> Self {
        Self { kind, on: RwLock::new(BTreeSet::new()), writes: Mutex::new(()), gauge }
    }

    pub fn kind(&self) -> Switch {
        self.kind
    }

    pub fn is_on(&self, group: &str) -> bool {
        self.on.read().unwrap_or_else(PoisonError::into_inner).contains(group)
    }

    /// Whether any group is thrown (a cheap test before looking a group up).
    pub fn any(&self) -> bool {
        !self.on.read().unwrap_or_else(PoisonError::into_inner).is_empty()
    }

    pub fn list(&self) -> BTreeSet<String> {
        self.on.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Throw or release the switch for `group`; a change is logged and written to `file`.
    /// Blocking I/O when it changes something.
    pub fn set(&self, group: &str, on: bool, file: Option<&Path>) {
        let _file = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        let (changed, list) = {
            let mut set = self.on.write().unwrap_or_else(PoisonError::into_inner);
            let changed = if on { set.insert(group.to_string()) } else { set.remove(group) };
            (changed, set.iter().cloned().collect::<Vec<_>>())
        };
        self.gauge.with_label_values(&[group]).set(i64::from(on));
        if !changed {
            return;
        }
        tracing::warn!(group = ?group, on, "{}", self.kind.verb(on));
        if let Some(path) = file {
            if let Err(e) = crate::persist::write_atomically(path, &serde_json::to_vec(&list).unwrap_or_default()) {
                tracing::error!(error = %e, file = %path.display(), "could not persist the {}", self.kind.file_name());
            }
        }
    }

    /// Make the set equal `want` (the replicas' shared state), one logged change at a time.
    pub fn replace(&self, want: &BTreeSet<String>, file: Option<&Path>) {
        let before = self.list();
        for g in before.difference(want) {
            self.set(g, false, file);
        }
        for g in want.difference(&before) {
            self.set(g, true, file);
        }
    }

    /// The groups saved in `file` when the process last ran (empty without one).
    pub fn saved(file: Option<&Path>) -> Vec<String> {
        let Some(path) = file else { return Vec::new() };
        std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_survives_a_restart_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let gauge = IntGaugeVec::new(prometheus::Opts::new("g", "h"), &["group"]).unwrap();
        let s = Switches::new(Switch::Mask, gauge.clone());
        let file = dir.path().join(s.kind().file_name());
        assert!(file.ends_with("masks.json"));
        s.set("cv", true, Some(&file));
        assert!(s.is_on("cv") && s.any() && gauge.with_label_values(&["cv"]).get() == 1);
        assert_eq!(Switches::saved(Some(&file)), ["cv"]);
        s.replace(&BTreeSet::from(["export".to_string()]), Some(&file));
        assert_eq!(Switches::saved(Some(&file)), ["export"]);
        assert!(!s.is_on("cv") && gauge.with_label_values(&["cv"]).get() == 0);
    }
}
