//! The ledger: a run's edge to durable state. The scheduler queues journal
//! events and fresh results here; one writer thread per run writes them to
//! the [`Store`] in the order they were queued.
//!
//! Why a thread: a group commit (pack write, fsync, index, journal write,
//! fsync) takes a millisecond or more, and the scheduler must not stop
//! scheduling while it waits. It hands the batch over with
//! [`Ledger::commit`] and announces the steps in it only when the returned
//! receiver fires, so no step is reported done (or releases its dependents)
//! before its result and journal record are on disk. While one commit is in
//! flight, more finished steps gather for the next: the slower the disk,
//! the larger the groups.
//!
//! Invariants: batches reach the store in the order they were taken (one
//! writer thread, fed under the queue's lock); dropping the ledger waits
//! for every queued batch to be written. Once a write fails (a full disk,
//! no file descriptors left), nothing more is written for the run and every
//! later commit reports the failure: the journal then ends at the last
//! batch that was durable, and a resume picks up from there.

use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::store::{CacheKey, Durability, JournalEvent, NewResult, RunId, Store};

/// Where a run's results and journal go.
pub struct Ledger {
    pub store: Arc<dyn Store>,
    pub run: RunId,
    /// Run every step even when a cached result exists (results are still stored).
    pub refresh: bool,
    /// Results the run being resumed already has, by key; used whatever the
    /// step's cache policy, because they belong to this very run.
    pub resumed: HashSet<CacheKey>,
    queue: Mutex<Queue>,
    writer: Option<JoinHandle<()>>,
}

/// Events and results waiting to be handed to the writer.
struct Queue {
    pending: Batch,
    /// `None` once the ledger is being dropped.
    to_writer: Option<mpsc::Sender<Job>>,
}

#[derive(Default)]
struct Batch {
    events: Vec<JournalEvent>,
    results: Vec<NewResult>,
    result_bytes: usize,
}

struct Job {
    batch: Batch,
    durability: Durability,
    done: Option<oneshot::Sender<Result<(), LedgerError>>>,
}

/// The store could not make a run's records durable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot write the journal of run {run}: {reason}")]
pub struct LedgerError {
    run: RunId,
    reason: String,
}

/// A batch goes to the writer without waiting for a commit once it holds this much.
const PENDING_EVENTS: usize = 256;
const PENDING_BYTES: usize = 4 << 20;

impl Ledger {
    pub fn new(
        store: Arc<dyn Store>,
        run: RunId,
        refresh: bool,
        resumed: HashSet<CacheKey>,
    ) -> Self {
        let (to_writer, jobs) = mpsc::channel::<Job>();
        let writer = {
            let (store, run) = (store.clone(), run.clone());
            std::thread::Builder::new()
                .name("cairn-ledger".into())
                .spawn(move || write_jobs(&*store, &run, jobs))
                .ok()
        };
        if writer.is_none() {
            tracing::warn!("cannot start the journal writer; run {run} will not be journalled");
        }
        Self {
            store,
            run,
            refresh,
            resumed,
            queue: Mutex::new(Queue {
                pending: Batch::default(),
                to_writer: Some(to_writer),
            }),
            writer,
        }
    }

    /// Queue an event; queued events are written (in order) at the next
    /// commit, or sooner when the queue grows long.
    pub(super) fn append(&self, event: JournalEvent) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.pending.events.push(event);
        if queue.pending.events.len() >= PENDING_EVENTS {
            queue.send(Durability::Process, None);
        }
    }

    /// Queue a fresh result with the event that reports it.
    pub(super) fn stage(&self, result: NewResult, event: JournalEvent) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.pending.result_bytes += result.output.len();
        queue.pending.results.push(result);
        queue.pending.events.push(event);
        if queue.pending.events.len() >= PENDING_EVENTS
            || queue.pending.result_bytes >= PENDING_BYTES
        {
            queue.send(Durability::Process, None);
        }
    }

    /// Hand everything queued to the writer, to be made durable; the
    /// receiver fires once it is, or with the error once writing it (or
    /// anything queued before it) has failed.
    pub(super) fn commit(&self) -> oneshot::Receiver<Result<(), LedgerError>> {
        let (done, durable) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Durability::Machine, Some(done));
        durable
    }

    /// Hand what is queued to the writer without making it durable, so that
    /// a reader of the journal (`cairn runs show` in another terminal) sees
    /// a long step start while it runs.
    pub(super) fn write_out(&self) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if !queue.pending.events.is_empty() || !queue.pending.results.is_empty() {
            queue.send(Durability::Process, None);
        }
    }

    /// Commit everything queued, wait for it, and flush the store.
    pub(super) async fn flush(&self) -> Result<(), LedgerError> {
        self.commit().await.map_err(|_| self.writer_gone())??;
        self.store.flush().map_err(|e| LedgerError {
            run: self.run.clone(),
            reason: e.to_string(),
        })
    }

    /// What a commit whose writer went away (or never started) means.
    pub(super) fn writer_gone(&self) -> LedgerError {
        LedgerError {
            run: self.run.clone(),
            reason: "the journal writer stopped".into(),
        }
    }
}

impl Queue {
    fn send(
        &mut self,
        durability: Durability,
        done: Option<oneshot::Sender<Result<(), LedgerError>>>,
    ) {
        let job = Job {
            batch: std::mem::take(&mut self.pending),
            durability,
            done,
        };
        // If the writer is gone, the job (and its `done`) is dropped, which
        // wakes a waiting commit rather than leaving it hanging.
        if let Some(to_writer) = &self.to_writer {
            let _ = to_writer.send(job);
        }
    }
}

fn write_jobs(store: &dyn Store, run: &RunId, jobs: mpsc::Receiver<Job>) {
    let mut broken: Option<LedgerError> = None;
    for job in jobs {
        let Job {
            batch,
            durability,
            done,
        } = job;
        let nothing = batch.events.is_empty() && batch.results.is_empty();
        if broken.is_none()
            && !(nothing && durability == Durability::Process)
            && let Err(e) = store.record(run, &batch.results, &batch.events, durability)
        {
            tracing::error!("cannot write the journal of run {run}: {e}");
            broken = Some(LedgerError {
                run: run.clone(),
                reason: e.to_string(),
            });
        }
        if let Some(done) = done {
            let _ = done.send(broken.clone().map_or(Ok(()), Err));
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if !queue.pending.events.is_empty() || !queue.pending.results.is_empty() {
            queue.send(Durability::Process, None);
        }
        queue.to_writer = None;
        drop(queue);
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("the journal writer of run {} panicked", self.run);
        }
    }
}
