//! The ledger: a run's edge to durable state. The scheduler queues journal
//! events and fresh results here; a [`JournalWriter`] — one thread per
//! store, shared by every run on it — writes them to the [`Store`] in the
//! order they were queued.
//!
//! Why a thread: a group commit (pack write, fsync, index, journal write,
//! fsync) takes a millisecond or more, and the scheduler must not stop
//! scheduling while it waits. Why one for all runs: a host runs many runs
//! at once, and an OS thread per run is a resource a tenant could multiply. It hands the batch over with
//! [`Ledger::commit`] and announces the steps in it only when the returned
//! receiver fires, so no step is reported done (or releases its dependents)
//! before its result and journal record are on disk. While one commit is in
//! flight, more finished steps gather for the next: the slower the disk,
//! the larger the groups.
//!
//! Invariants: a run's batches reach the store in the order they were taken
//! (one writer thread, fed under the run's queue lock); what is queued when
//! the ledger is dropped is still written, after everything queued before
//! it ([`Ledger::flush`] waits for it). Once a write fails (a full disk, no
//! file descriptors left), nothing more is written for the run and every
//! later commit reports the failure: the journal then ends at the last
//! batch that was durable, and a resume picks up from there. A failure of
//! one run's writes does not stop another's.

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
    /// Kept so the writer outlives every ledger that sends to it.
    _writer: Arc<JournalWriter>,
}

/// Events and results waiting to be handed to the writer.
struct Queue {
    run: RunId,
    pending: Batch,
    to_writer: mpsc::Sender<Job>,
    /// The first write of this run that failed, shared with the writer.
    broken: Arc<Mutex<Option<LedgerError>>>,
}

/// The thread that writes every run's batches to one store, in the order
/// each run queued them.
pub struct JournalWriter {
    store: Arc<dyn Store>,
    /// `None` once the writer is being dropped.
    to_writer: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Option<JoinHandle<()>>,
}

impl JournalWriter {
    /// Start the writer thread for `store`. Without a thread (the process
    /// is out of them) every commit reports that nothing could be written.
    pub fn start(store: Arc<dyn Store>) -> Arc<Self> {
        let (to_writer, jobs) = mpsc::channel::<Job>();
        let thread = {
            let store = store.clone();
            std::thread::Builder::new()
                .name("cairn-journal".into())
                .spawn(move || write_jobs(&*store, jobs))
                .ok()
        };
        if thread.is_none() {
            tracing::warn!("cannot start the journal writer; runs will not be journalled");
        }
        Arc::new(Self {
            store,
            to_writer: Mutex::new(thread.is_some().then_some(to_writer)),
            thread,
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn sender(&self) -> mpsc::Sender<Job> {
        match &*self.to_writer.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(to_writer) => to_writer.clone(),
            // A sender whose receiver is gone: every job is dropped, which
            // wakes a waiting commit with "the writer stopped".
            None => mpsc::channel().0,
        }
    }
}

impl Drop for JournalWriter {
    fn drop(&mut self) {
        // Every ledger (each holding an `Arc` of this) is gone; the thread
        // drains what they queued, then ends.
        self.to_writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the journal writer panicked");
        }
    }
}

#[derive(Default)]
struct Batch {
    events: Vec<JournalEvent>,
    results: Vec<NewResult>,
    result_bytes: usize,
}

struct Job {
    run: RunId,
    broken: Arc<Mutex<Option<LedgerError>>>,
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
    /// A run's ledger, written by `writer` (shared with the store's other runs).
    pub fn new(
        writer: &Arc<JournalWriter>,
        run: RunId,
        refresh: bool,
        resumed: HashSet<CacheKey>,
    ) -> Self {
        Self {
            store: writer.store.clone(),
            queue: Mutex::new(Queue {
                run: run.clone(),
                pending: Batch::default(),
                to_writer: writer.sender(),
                broken: Arc::new(Mutex::new(None)),
            }),
            run,
            refresh,
            resumed,
            _writer: writer.clone(),
        }
    }

    /// Queue an event and wait until it, and everything queued before it,
    /// is durable.
    pub async fn finish_with(&self, event: JournalEvent) -> Result<(), LedgerError> {
        self.append(event);
        self.flush().await
    }

    /// Queue an event; queued events are written (in order) at the next
    /// commit, or sooner when the queue grows long.
    pub fn append(&self, event: JournalEvent) {
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
    pub async fn flush(&self) -> Result<(), LedgerError> {
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
            run: self.run.clone(),
            broken: self.broken.clone(),
            batch: std::mem::take(&mut self.pending),
            durability,
            done,
        };
        // If the writer is gone, the job (and its `done`) is dropped, which
        // wakes a waiting commit rather than leaving it hanging.
        let _ = self.to_writer.send(job);
    }
}

fn write_jobs(store: &dyn Store, jobs: mpsc::Receiver<Job>) {
    for job in jobs {
        let Job {
            run,
            broken,
            batch,
            durability,
            done,
        } = job;
        let mut broken = broken.lock().unwrap_or_else(|e| e.into_inner());
        let nothing = batch.events.is_empty() && batch.results.is_empty();
        if broken.is_none()
            && !(nothing && durability == Durability::Process)
            && let Err(e) = store.record(&run, &batch.results, &batch.events, durability)
        {
            tracing::error!("cannot write the journal of run {run}: {e}");
            *broken = Some(LedgerError {
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
        // Still written, in order, by the shared writer; `flush` is how a
        // caller waits for it.
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if !queue.pending.events.is_empty() || !queue.pending.results.is_empty() {
            queue.send(Durability::Process, None);
        }
    }
}
