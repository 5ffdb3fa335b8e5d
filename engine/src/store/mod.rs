//! Durable state under the store directory (default `.cairn/`).
//!
//! This module owns everything Cairn keeps between processes. It is the
//! bottom of the data flow (manifest → plan → schedule → sandbox → store): it
//! never imports a higher module. Two narrow traits: [`ArtifactStore`] for
//! precompiled components (files), and [`Store`] for the result cache, the run
//! journal and run records (sled as the index with append-only files beside
//! it by default, see [`db`]), so a shared
//! PostgreSQL backend can replace the embedded one without touching callers.
//!
//! Invariant: every value read back is verified against a blake3 checksum
//! written with it; a value that fails the check is reported as corrupt and is
//! never handed to a caller.

pub mod artifacts;
pub mod audit;
pub mod db;
pub mod history;
mod journal;
mod log;
mod pack;
pub mod records;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use artifacts::{ArtifactKey, ArtifactStore, DirArtifactStore};
pub use db::SledStore;
pub use journal::JournalMark;
pub use records::{
    Admission, CacheKey, JournalEvent, LoggedLine, ResultMeta, RunId, RunRecord, StepSource,
};

/// Results, journal and runs. Every method is durable-or-error except where
/// noted; implementations verify what they read.
pub trait Store: Send + Sync {
    /// A stored result and its bytes, if present, intact and younger than `max_age`.
    fn result(
        &self,
        key: &CacheKey,
        max_age: Option<Duration>,
    ) -> Result<Option<(ResultMeta, Vec<u8>)>, StoreError>;
    /// Record a run's progress: first the new results, then the journal
    /// events (in order) that may report them. With [`Durability::Machine`]
    /// the results are on disk before the events are written, and both are
    /// before this returns.
    fn record(
        &self,
        run: &RunId,
        results: &[NewResult],
        events: &[JournalEvent],
        durability: Durability,
    ) -> Result<(), StoreError>;
    /// Append one event to a run's journal.
    fn append(&self, run: &RunId, event: &JournalEvent) -> Result<(), StoreError> {
        self.record(run, &[], std::slice::from_ref(event), Durability::Process)
    }
    /// A run's journal, in order.
    fn journal(&self, run: &RunId) -> Result<Vec<JournalEvent>, StoreError>;
    /// The events of a run's journal after `mark` ([`JournalMark::START`]
    /// for all of them), and the mark to go on from: how a follower of a
    /// live run reads each event once.
    fn journal_after(
        &self,
        run: &RunId,
        mark: JournalMark,
    ) -> Result<(Vec<JournalEvent>, JournalMark), StoreError>;
    fn put_run(&self, run: &RunRecord) -> Result<(), StoreError>;
    /// A run by id or unique id prefix.
    fn run(&self, id: &RunId) -> Result<Option<RunRecord>, StoreError>;
    fn runs(&self) -> Result<Vec<RunRecord>, StoreError>;
    /// Forget runs: first their records (durably), then their journals,
    /// with the task logs in them; the results they produced stay in the
    /// cache. Journals that no record points to (left by a removal that was
    /// cut short) go too. Returns the journal bytes freed.
    fn remove_runs(&self, ids: &[RunId]) -> Result<u64, StoreError>;
    fn cache_stats(&self) -> Result<CacheStats, StoreError>;
    /// Remove results older than `older_than` (all results if `None`) and
    /// reclaim their space; returns how many were removed.
    fn cache_gc(&self, older_than: Option<Duration>) -> Result<u64, StoreError>;
    /// Make everything written so far durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// Keep a recorded HTTP response, durably, by its blake3 hash (which
    /// is returned). Kept apart from cached results: `cache gc` leaves it.
    fn put_recording(&self, bytes: &[u8]) -> Result<blake3::Hash, StoreError> {
        let _ = bytes;
        Err(StoreError::Unencodable {
            what: "a recorded HTTP response".into(),
            reason: "this store keeps no recordings".into(),
        })
    }
    /// A recorded response by hash, if kept and intact.
    fn recording(&self, hash: &blake3::Hash) -> Result<Option<Vec<u8>>, StoreError> {
        let _ = hash;
        Ok(None)
    }
    /// A run has ended: make its journal durable and release what the
    /// store holds open for it (a later append opens it again).
    fn close_run(&self, _run: &RunId) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A fresh result to store.
#[derive(Debug, Clone)]
pub struct NewResult {
    pub key: CacheKey,
    pub meta: ResultMeta,
    pub output: Vec<u8>,
}

/// What a write must survive before [`Store::record`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A crash of this process (the bytes are with the operating system).
    Process,
    /// A crash of the machine (the bytes are on disk: fsync).
    Machine,
}

/// What `cairn cache stats` shows.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CacheStats {
    pub entries: u64,
    /// Sum of the stored outputs' sizes.
    pub output_bytes: u64,
    /// Entries whose output lives in a blob file.
    pub blobs: u64,
    /// Bytes of keys and values in the index.
    pub index_bytes: u64,
    /// Bytes on disk: the sled directory, the packs and the blobs (not the journals).
    pub disk_bytes: u64,
    /// Of the packs and blobs, the bytes the index still points at.
    pub live_bytes: u64,
    /// Of the packs and blobs, the bytes nothing points at any more
    /// (results replaced or dropped): what `cairn cache gc` reclaims.
    pub dead_bytes: u64,
    pub oldest_ms: Option<u64>,
}

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
    #[error(
        "the store at {path} is in use by another cairn process; wait for it to finish, or use another store with --store DIR"
    )]
    Locked { path: PathBuf },
    #[error(
        "the store at {path} cannot be read ({reason}). Move it aside to start afresh: `mv {path} {path}.broken`. Cached results are recomputable; the journals of past runs (resume, replay, lineage) would be lost"
    )]
    Unreadable { path: PathBuf, reason: String },
    /// A record that JSON cannot hold (a path that is not valid UTF-8).
    #[error("cannot record {what}: {reason}")]
    Unencodable { what: String, reason: String },
    #[error("run id prefix {prefix:?} matches {count} runs; give more digits")]
    Ambiguous { prefix: String, count: usize },
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}
