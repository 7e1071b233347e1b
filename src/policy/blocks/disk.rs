//! Where the block list lives on disk: a snapshot (`blocks.json`, written whole and atomically)
//! and a journal beside it (`blocks.json.journal`, one JSON line per admin block or unblock).
//!
//! An admin call costs one appended line and one `fdatasync`, whatever the size of the list (a
//! rewrite of a 20,000-block file took 11.5 ms and held up other writers); the snapshot is
//! rewritten by housekeeping when the journal has grown or rule-made blocks are waiting, and the
//! journal is emptied after it. Every journal line carries a sequence number and the snapshot
//! records the last one it includes, so a crash between writing the snapshot and emptying the
//! journal replays nothing twice. A line cut short by a crash (its call never answered) is
//! ignored; any other unreadable line refuses the start, like an unreadable snapshot.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Block, BlockFile, BlockScope};

/// One admin change, as the journal holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Change {
    Add(Block),
    Remove { scope: BlockScope, key: String },
}

#[derive(Serialize, Deserialize)]
struct Line {
    seq: u64,
    change: Change,
}

/// Rewrite the snapshot once the journal holds this many lines (replay at start stays short).
const COMPACT_AFTER: usize = 1024;

/// The files of one block list; `path: None` keeps blocks in memory only.
#[derive(Debug, Default)]
pub(super) struct Disk {
    path: Option<PathBuf>,
    /// The last sequence number written, to the journal or into a snapshot.
    seq: u64,
    journal: Option<File>,
    /// Lines in the journal since the last snapshot.
    lines: usize,
    /// The journal's length without a line cut short by a crash: cut back to it before the
    /// next append, so the torn line never ends up between two good ones.
    torn: Option<u64>,
}

fn journal_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".journal");
    PathBuf::from(p)
}

impl Disk {
    /// Read the snapshot and the journal's changes newer than it (a missing file is empty).
    /// Writes nothing: reading the files of a running proxy is safe.
    ///
    /// # Errors
    /// A file exists but cannot be read or parsed.
    pub(super) fn open(path: Option<PathBuf>) -> anyhow::Result<(Self, BlockFile, Vec<Change>)> {
        let Some(p) = &path else { return Ok((Self::default(), BlockFile::default(), Vec::new())) };
        let saved: BlockFile = if p.exists() {
            let text = std::fs::read_to_string(p)?;
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not a block file: {e}", p.display()))?
        } else {
            BlockFile::default()
        };
        let mut seq = saved.journal_seq;
        let mut changes = Vec::new();
        let mut torn = None;
        let jp = journal_path(p);
        if jp.exists() {
            let text = std::fs::read_to_string(&jp)?;
            let complete = text.is_empty() || text.ends_with('\n');
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            for (i, l) in lines.iter().enumerate() {
                match serde_json::from_str::<Line>(l) {
                    Ok(line) if line.seq > seq => {
                        seq = line.seq;
                        changes.push(line.change);
                    }
                    Ok(_) => {} // already in the snapshot
                    Err(_) if i + 1 == lines.len() && !complete => {
                        tracing::warn!(file = %jp.display(), "ignoring a journal line cut short by a crash");
                        torn = Some(text.rfind('\n').map_or(0, |n| n as u64 + 1));
                    }
                    Err(e) => anyhow::bail!("{}: line {}: not a journal line: {e}", jp.display(), i + 1),
                }
            }
        }
        Ok((Self { path, seq, journal: None, lines: changes.len(), torn }, saved, changes))
    }

    pub(super) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The journal has grown enough to be folded into a new snapshot.
    pub(super) fn wants_snapshot(&self) -> bool {
        self.lines > 0 && (self.lines >= COMPACT_AFTER || self.journal.is_none())
    }

    /// Append one change and wait until it is on disk.
    ///
    /// # Errors
    /// The journal cannot be opened or written.
    pub(super) fn append(&mut self, change: &Change) -> anyhow::Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        if self.journal.is_none() {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let f = OpenOptions::new().create(true).append(true).open(journal_path(path))?;
            if let Some(len) = self.torn.take() {
                f.set_len(len)?;
            }
            self.journal = Some(f);
        }
        let line = Line { seq: self.seq + 1, change: change.clone() };
        let mut bytes = serde_json::to_vec(&line)?;
        bytes.push(b'\n');
        let f = self.journal.as_mut().expect("opened above");
        // One write of the whole line: a crash leaves it whole or cut short, never interleaved.
        f.write_all(&bytes)?;
        f.sync_data()?;
        self.seq += 1;
        self.lines += 1;
        Ok(())
    }

    /// Write `file` as the new snapshot (stamped with the journal position it includes), then
    /// empty the journal.
    ///
    /// # Errors
    /// The snapshot or the journal cannot be written; the journal is kept then.
    pub(super) fn snapshot(&mut self, mut file: BlockFile) -> anyhow::Result<()> {
        let Some(path) = self.path.clone() else { return Ok(()) };
        file.journal_seq = self.seq;
        crate::persist::write_atomically(&path, &serde_json::to_vec_pretty(&file)?)?;
        self.empty_journal(&path)
    }

    fn empty_journal(&mut self, path: &Path) -> anyhow::Result<()> {
        match &self.journal {
            Some(f) => {
                f.set_len(0)?;
                f.sync_all()?;
            }
            None => {
                let jp = journal_path(path);
                if jp.exists() {
                    let f = OpenOptions::new().write(true).open(&jp)?;
                    f.set_len(0)?;
                    f.sync_all()?;
                }
            }
        }
        self.lines = 0;
        self.torn = None;
        Ok(())
    }

    /// Move to another file: `file` is written there as its snapshot first, and a stale journal
    /// there is emptied, so a failure leaves everything with the old file.
    ///
    /// # Errors
    /// The new file cannot be written.
    pub(super) fn move_to(&mut self, to: Option<PathBuf>, file: BlockFile) -> anyhow::Result<()> {
        let mut moved = Self { path: to, seq: self.seq, journal: None, lines: 0, torn: None };
        moved.snapshot(file)?;
        *self = moved;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(key: &str) -> Block {
        Block {
            scope: BlockScope::Account,
            key: key.into(),
            reason: "r".into(),
            source: "manual".into(),
            created: "2026-11-24T10:00:00Z".parse().unwrap(),
            until: None,
        }
    }

    #[test]
    fn journal_replays_after_the_snapshot_and_a_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blocks.json");
        let (mut d, _, _) = Disk::open(Some(path.clone())).unwrap();
        d.append(&Change::Add(block("a"))).unwrap();
        d.snapshot(BlockFile { blocks: vec![block("a")], ..BlockFile::default() }).unwrap();
        d.append(&Change::Add(block("b"))).unwrap();
        d.append(&Change::Remove { scope: BlockScope::Account, key: "a".into() }).unwrap();
        drop(d);
        // A crash in the middle of the next append: the line is cut short.
        let jp = journal_path(&path);
        let mut f = OpenOptions::new().append(true).open(&jp).unwrap();
        f.write_all(br#"{"seq":4,"change":{"add":{"sco"#).unwrap();
        let (d, saved, changes) = Disk::open(Some(path.clone())).unwrap();
        assert_eq!(saved.blocks, vec![block("a")]);
        assert_eq!(
            changes,
            vec![Change::Add(block("b")), Change::Remove { scope: BlockScope::Account, key: "a".into() }]
        );
        assert_eq!(d.seq, 3);
        // The next append cuts the torn line off first: the journal reads back whole.
        let mut d = d;
        d.append(&Change::Add(block("c"))).unwrap();
        let (_, _, changes) = Disk::open(Some(path.clone())).unwrap();
        assert_eq!(changes.len(), 3);

        // A snapshot written but the journal not emptied (crash between): nothing replays twice.
        let (mut d, _, _) = Disk::open(Some(path.clone())).unwrap();
        let seq = d.seq;
        crate::persist::write_atomically(
            &path,
            &serde_json::to_vec(&BlockFile { blocks: vec![block("b")], journal_seq: seq, ..BlockFile::default() })
                .unwrap(),
        )
        .unwrap();
        d.journal = None;
        let (_, saved, changes) = Disk::open(Some(path.clone())).unwrap();
        assert_eq!((saved.blocks.len(), changes.len()), (1, 0));

        // A damaged line that is not the last one refuses the start.
        std::fs::write(&jp, "garbage\n{\"seq\":9,\"change\":{\"remove\":{\"scope\":\"org\",\"key\":\"x\"}}}\n")
            .unwrap();
        let e = Disk::open(Some(path)).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}
