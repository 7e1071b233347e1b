//! Files that must survive a crash whole: written to a temporary file beside them, fsync'd,
//! renamed over the old one, and the directory fsync'd. A leaf: blocks, pauses and the quota
//! snapshot use it.

use std::io::Write;
use std::path::Path;

/// Write `bytes` to `path` so that a crash leaves the old or the new content, never a mix: a
/// temporary file beside it, fsync, rename, fsync of the directory. Callers serialise writers of
/// one path (the temporary file's name is fixed).
///
/// # Errors
/// The directory cannot be made or the file cannot be written.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?; // the rename itself survives a crash
    }
    Ok(())
}
