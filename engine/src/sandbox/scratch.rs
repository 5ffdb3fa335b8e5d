//! Quotas on a managed scratch directory: how much disk and how many
//! entries one attempt may leave in it.
//!
//! wasmtime-wasi writes straight to the host filesystem, so the quota is
//! enforced by measuring: the attempt's epoch callback walks the directory
//! every [`CHECK_EVERY`] ticks, and once more when the attempt ends. A task
//! over its quota fails as `denied`. Between two checks a task can write
//! at most what it can hand the host in that time (one write is bounded by
//! its linear memory), so the overshoot is small and bounded; what is left
//! when the attempt ends is checked exactly.
//!
//! Never follows a symlink: a link a task made counts as one entry, and
//! what it points to is not measured (or reached).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::limits::ByteSize;

/// Walk the directory every this many epoch ticks (10 ms each).
pub const CHECK_EVERY: u64 = 5;

/// The quota of one managed scratch directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScratchQuota {
    /// Disk space in use (allocated blocks, so a sparse file counts what
    /// it really takes).
    pub bytes: ByteSize,
    /// Files, directories and links.
    pub entries: u64,
}

impl Default for ScratchQuota {
    fn default() -> Self {
        Self {
            bytes: ByteSize(1 << 30),
            entries: 10_000,
        }
    }
}

/// Why a scratch directory is over its quota.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScratchFull(pub String);

impl ScratchQuota {
    /// `Err` once `dir` holds more than the quota allows. Stops walking as
    /// soon as it knows, so a directory of a million entries costs no more
    /// than the quota's worth of them.
    pub fn check(&self, dir: &Path) -> Result<(), ScratchFull> {
        let (mut bytes, mut entries) = (0u64, 0u64);
        let mut pending: Vec<PathBuf> = vec![dir.to_owned()];
        while let Some(next) = pending.pop() {
            let Ok(listing) = std::fs::read_dir(&next) else {
                continue;
            };
            for entry in listing.flatten() {
                entries += 1;
                if entries > self.entries {
                    return Err(ScratchFull(format!(
                        "the task's scratch directory holds more than {} files and directories \
                         (the scratch quota)",
                        self.entries
                    )));
                }
                // `DirEntry::metadata` does not follow symlinks.
                let Ok(meta) = entry.metadata() else { continue };
                bytes = bytes.saturating_add(meta.blocks().saturating_mul(512));
                if bytes > self.bytes.bytes() {
                    return Err(ScratchFull(format!(
                        "the task's scratch directory takes more than {} of disk (the scratch quota)",
                        self.bytes
                    )));
                }
                if meta.is_dir() {
                    pending.push(entry.path());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_entries_are_counted_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let quota = ScratchQuota {
            bytes: ByteSize(1 << 20),
            entries: 5,
        };
        quota.check(dir.path()).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/small"), vec![1u8; 4096]).unwrap();
        // A link to something big outside is one entry, not its target's size.
        std::os::unix::fs::symlink("/usr", dir.path().join("d/link")).unwrap();
        quota.check(dir.path()).unwrap();
        std::fs::write(dir.path().join("big"), vec![1u8; 2 << 20]).unwrap();
        let err = quota.check(dir.path()).unwrap_err().to_string();
        assert!(err.contains("more than 1.0 MiB"), "{err}");
        std::fs::remove_file(dir.path().join("big")).unwrap();
        for i in 0..3 {
            std::fs::write(dir.path().join(format!("f{i}")), "").unwrap();
        }
        let err = quota.check(dir.path()).unwrap_err().to_string();
        assert!(err.contains("more than 5 files"), "{err}");
    }
}
