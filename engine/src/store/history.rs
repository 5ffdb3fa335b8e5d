//! Reading runs while another process holds the store.
//!
//! sled allows one process at a time, and a running `cairn run` holds it
//! for as long as the run lasts. The journals need no lock: they are
//! append-only files of checksummed frames, written one frame per batch,
//! so a reader sees whole frames and ignores a frame being written. So
//! `cairn runs list|show|logs` and `cairn lineage` fall back to a
//! [`JournalHistory`] when the store is in use, and work during a run.
//!
//! Which run is live is told by `<store>/active/<run>`, a marker the
//! running process writes (with its pid) when the run starts and removes
//! when it ends; a marker left by a killed process names a pid that is no
//! longer alive, and that run reads as interrupted.

use std::path::{Path, PathBuf};

use super::journal::Journals;
use super::records::{JournalEvent, RunId, RunRecord, RunStatus};
use super::{Store, StoreError};

/// What the read-only commands need of the run history.
pub trait History {
    /// A run by id or unique id prefix.
    fn run(&self, id: &RunId) -> Result<Option<RunRecord>, StoreError>;
    fn runs(&self) -> Result<Vec<RunRecord>, StoreError>;
    fn journal(&self, run: &RunId) -> Result<Vec<JournalEvent>, StoreError>;
    /// Is a run recorded as `running` being run now by a live process (as
    /// opposed to interrupted)? Only a reader beside a running process can
    /// tell; the store's own opener holds the lock, so nothing else runs.
    fn is_live(&self, _run: &RunId) -> bool {
        false
    }
}

impl<S: Store + ?Sized> History for S {
    fn run(&self, id: &RunId) -> Result<Option<RunRecord>, StoreError> {
        Store::run(self, id)
    }
    fn runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        Store::runs(self)
    }
    fn journal(&self, run: &RunId) -> Result<Vec<JournalEvent>, StoreError> {
        Store::journal(self, run)
    }
}

/// Marks a run as being run by this process, until dropped.
pub struct ActiveRun {
    path: PathBuf,
}

impl ActiveRun {
    /// Best effort: without the marker, readers call the run interrupted
    /// while it runs, which is all that is lost.
    pub fn mark(store: &Path, run: &RunId) -> Self {
        let dir = store.join("active");
        let path = dir.join(&run.0);
        let written = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&path, std::process::id().to_string()));
        if let Err(e) = written {
            tracing::warn!("cannot mark run {run} as active in {}: {e}", dir.display());
        }
        Self { path }
    }
}

impl Drop for ActiveRun {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Is the run marked active by a process that is still alive?
fn is_live(store: &Path, run: &RunId) -> bool {
    let Ok(text) = std::fs::read_to_string(store.join("active").join(&run.0)) else {
        return false;
    };
    let Ok(pid) = text.trim().parse::<libc::pid_t>() else {
        return false;
    };
    // SAFETY: signal 0 only asks whether the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// The run history as the journals tell it, without sled.
pub struct JournalHistory {
    store: PathBuf,
    journals: Journals,
}

impl JournalHistory {
    pub fn open(store: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            store: store.to_owned(),
            journals: Journals::open(&store.join("journal"))?,
        })
    }

    /// A run's record, rebuilt from its journal: what it ran and when it
    /// started come from its first `run-started`, how it ended from a
    /// `run-finished` after its last (re)start.
    fn record(&self, id: &RunId, events: &[JournalEvent]) -> Option<RunRecord> {
        let mut record: Option<RunRecord> = None;
        for event in events {
            match event {
                JournalEvent::RunStarted {
                    at_ms,
                    pipeline,
                    manifest,
                    manifest_hash,
                    steps,
                    replay_of,
                    ..
                } => {
                    let record = record.get_or_insert_with(|| RunRecord {
                        id: id.clone(),
                        pipeline: pipeline.clone(),
                        manifest: manifest.clone(),
                        manifest_hash: manifest_hash.clone(),
                        started_ms: *at_ms,
                        finished_ms: None,
                        status: RunStatus::Running,
                        steps: steps.unwrap_or(0),
                        replay_of: replay_of.clone(),
                        admission: None,
                        tenant: None,
                        bundle: None,
                        tally: None,
                    });
                    record.status = RunStatus::Running;
                    record.finished_ms = None;
                    record.manifest_hash = manifest_hash.clone();
                }
                JournalEvent::RunFinished { at_ms, status } => {
                    if let Some(record) = record.as_mut() {
                        record.status = *status;
                        record.finished_ms = Some(*at_ms);
                    }
                }
                _ => {}
            }
        }
        record
    }
}

impl History for JournalHistory {
    fn run(&self, id: &RunId) -> Result<Option<RunRecord>, StoreError> {
        let matches: Vec<RunId> = self
            .journals
            .runs()?
            .into_iter()
            .filter(|run| run.0.starts_with(&id.0))
            .collect();
        match matches.as_slice() {
            [] => Ok(None),
            [one] => {
                let events = self.journals.read(one)?;
                Ok(self.record(one, &events))
            }
            many => Err(StoreError::Ambiguous {
                prefix: id.0.clone(),
                count: many.len(),
            }),
        }
    }

    fn runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        let mut runs = Vec::new();
        for id in self.journals.runs()? {
            let events = self.journals.read(&id)?;
            runs.extend(self.record(&id, &events));
        }
        Ok(runs)
    }

    fn journal(&self, run: &RunId) -> Result<Vec<JournalEvent>, StoreError> {
        self.journals.read(run)
    }

    fn is_live(&self, run: &RunId) -> bool {
        is_live(&self.store, run)
    }
}
