//! Durable state under the store directory (default `.cairn/`).
//!
//! This module owns everything Cairn keeps between processes. It is the
//! bottom of the data flow (manifest → plan → schedule → sandbox → store): it
//! never imports a higher module. Today it holds the precompiled-artifact
//! cache; the result cache, run journal and run metadata (sled) join it later
//! behind the same kind of narrow trait, so a shared PostgreSQL backend can
//! replace the embedded one without touching callers.
//!
//! Invariant: every value read back is verified against a blake3 checksum
//! written with it; a value that fails the check is reported as corrupt and is
//! never handed to a caller.

pub mod artifacts;

use std::path::{Path, PathBuf};

pub use artifacts::{ArtifactKey, ArtifactStore, DirArtifactStore};

/// Where the store lives: `--store DIR`, else `$CAIRN_HOME`, else `./.cairn`.
pub fn default_dir() -> PathBuf {
    std::env::var_os("CAIRN_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".cairn"))
}

/// Errors from the store. Messages name the file and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot use the store at {path}: {source} (check the path and its permissions, or pick another with --store)"
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}
