//! Scheduling: runs a [`Plan`] — a ready-queue over the DAG on tokio, at most
//! `jobs` sandboxes at once, retries as each step asks, fan-out for `map`,
//! skips for `when`, cancellation on request.
//!
//! Rules:
//! - A step starts when all its dependencies have finished. If one of them
//!   did not succeed, the step is *skipped* (not failed) and so, in turn, are
//!   its dependents; the rest of the DAG goes on unless `fail_fast` is set.
//! - A failure of a step with `allow_failure` does not fail the run.
//! - An attempt is retried only if the step's policy lists its failure class
//!   and attempts remain; the wait (backoff with full jitter) does not hold a
//!   job slot.
//! - Cancelling drops every running sandbox (wasmtime stops the guest at its
//!   next yield) and marks unfinished steps cancelled.
//!
//! The edge to execution is the narrow [`Executor`] trait ("run this step on
//! these input bytes"), so a benchmark can measure the scheduler alone and a
//! shared backend can later claim work from elsewhere. The edge to durable
//! state is a [`Ledger`]: before running a unit of work the scheduler looks
//! its [`cache_key`] up (cache hit, or a result the resumed run already
//! has); after a success it commits the result together with its journal
//! event; every scheduling decision is appended to the run's journal.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::model::{EngineFailure, StepFailureClass};
use crate::plan::template::{Reference, Resolve, Source, lookup, truthy};
use crate::plan::{Plan, Step, StepId};
use crate::sandbox::ByteSize;
use crate::sandbox::grants::Scratch;
use crate::sandbox::http::Exchange;
use crate::sandbox::{
    Attempt, ComponentKind, EngineEnv, FailureClass, LogLine, Observer, Progress, Resolved,
    RunRequest, Sandbox, SandboxError, SandboxSlot, SecretSource,
};
use crate::store::records::HttpRecord;
use crate::store::records::now_ms;
use crate::store::{CacheKey, JournalEvent, LoggedLine, NewResult, ResultMeta, StepSource};

mod ledger;
pub use ledger::{JournalWriter, Ledger};

/// The cache key of one unit of work: blake3 over the key-format version,
/// the component, the canonical input bytes, the grants (with env and secret values),
/// the limits that change what a run can produce (fuel, memory, output cap;
/// not the wall-clock timeout) and the step's arguments.
pub fn cache_key(step: &Step, input: &[u8], secrets: &Resolved) -> CacheKey {
    let mut hasher = blake3::Hasher::new_derive_key("cairn result cache key v2");
    let mut field = |bytes: &[u8]| {
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(step.component.hash.as_bytes());
    field(input);
    let grants = &step.grants;
    field(&(grants.read_dirs.len() as u64).to_le_bytes());
    for dir in &grants.read_dirs {
        field(dir.as_os_str().as_encoded_bytes());
    }
    field(match &grants.scratch {
        None => &b""[..],
        // Not a path: no host directory can be named like this.
        Some(Scratch::Managed) => b"\0managed",
        Some(Scratch::Dir(d)) => d.as_os_str().as_encoded_bytes(),
    });
    field(&(grants.env.len() as u64).to_le_bytes());
    for (name, value) in &grants.env {
        field(name.as_bytes());
        field(value.as_bytes());
    }
    field(&[
        u8::from(grants.scratch.is_some()),
        u8::from(grants.wall_clock),
        u8::from(grants.random),
    ]);
    field(&step.limits.fuel.to_le_bytes());
    field(&step.limits.memory.bytes().to_le_bytes());
    field(&step.limits.output.bytes().to_le_bytes());
    field(&(step.args.len() as u64).to_le_bytes());
    for arg in &step.args {
        field(arg.as_bytes());
    }
    // A secret's value changes what a task can produce, so it is part of
    // the key (a hash: the value itself is never stored). Last, and only
    // when there are secrets, so keys without them are unchanged.
    if !secrets.0.is_empty() {
        field(&(secrets.0.len() as u64).to_le_bytes());
        for (name, value) in &secrets.0 {
            field(name.as_bytes());
            field(value.as_bytes());
        }
    }
    // The working directory decides what a relative path reaches. Last,
    // and only when the task gets one, so other keys are unchanged.
    if let Some(cwd) = grants.guest_cwd() {
        field(b"\0cwd");
        field(cwd.as_os_str().as_encoded_bytes());
    }
    // Which hosts a step may reach, and what it may spend there, decide
    // what it can produce (a step with http is cached only when it opts
    // in). Last, and only when granted, so other keys are unchanged.
    if !grants.http.is_empty() {
        field(b"\0http");
        field(&(grants.http.len() as u64).to_le_bytes());
        for grant in &grants.http {
            field(grant.to_string().as_bytes());
        }
        let l = &grants.http_limits;
        field(&u64::from(l.requests).to_le_bytes());
        field(&l.received.bytes().to_le_bytes());
        field(&l.sent.bytes().to_le_bytes());
        for wait in [
            l.connect_timeout,
            l.first_byte_timeout,
            l.between_bytes_timeout,
        ] {
            field(&wait.as_nanos().to_le_bytes());
        }
    }
    CacheKey(hasher.finalize())
}

/// Runs one attempt of one step. The scheduler's only way to execute work.
pub trait Executor: Send + Sync + 'static {
    /// What an attempt must hold before it starts, beyond one of the run's
    /// job slots: a tenant's share of the sandbox, one of the sandbox's
    /// instance slots. The scheduler waits for it where a draining run can
    /// stop the wait, and says the attempt started only once it has it.
    fn admit(&self) -> impl Future<Output = Admission> + Send {
        std::future::ready(Admission::default())
    }

    /// One attempt of `step` (of its element `index`, if mapped) on
    /// `input`, with the values of its secrets taken for this attempt,
    /// holding what [`Self::admit`] gave it until it ends.
    fn execute(
        &self,
        admission: Admission,
        step: &Step,
        index: Option<usize>,
        input: &[u8],
        secrets: &Resolved,
        observer: Option<Arc<dyn Observer>>,
    ) -> impl Future<Output = Result<Attempt, SandboxError>> + Send;

    /// Where the run's secrets come from (default: the engine's
    /// environment); read when each unit of work starts.
    fn secrets(&self) -> &dyn SecretSource {
        &EngineEnv
    }
}

/// What [`Executor::admit`] gave an attempt: held until it ends.
#[derive(Default)]
pub struct Admission {
    share: Option<tokio::sync::OwnedSemaphorePermit>,
    slot: Option<SandboxSlot>,
}

/// Executes steps in the process's sandbox.
pub struct SandboxExecutor {
    pub sandbox: Arc<Sandbox>,
    /// A share of the sandbox this run's attempts draw on (a tenant's
    /// sandboxes-in-flight quota); `None`: only the sandbox's own cap.
    pub share: Option<Arc<Semaphore>>,
    /// Where the run's secrets come from.
    pub secrets: Arc<dyn SecretSource>,
    /// In a replay: each unit of work's recorded HTTP exchanges, served
    /// instead of the network. `None`: requests go out.
    pub tapes: Option<Arc<Tapes>>,
    /// Told of every HTTP request the host refused (step name, one line
    /// each): the run's audit log.
    pub on_refused: Option<Arc<RefusalSink>>,
}

/// Where refused HTTP requests are reported: step name, lines.
pub type RefusalSink = dyn Fn(&str, &[String]) + Send + Sync;

/// The HTTP exchanges of a recorded run's successful attempts, by step and
/// element.
pub type Tapes = HashMap<(String, Option<usize>), Arc<[Exchange]>>;

impl SandboxExecutor {
    /// A permit of the run's share of the sandbox, if it has one.
    async fn share(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match &self.share {
            Some(share) => share.clone().acquire_owned().await.ok(),
            None => None,
        }
    }
}

impl Executor for SandboxExecutor {
    async fn admit(&self) -> Admission {
        // The tenant's share first: an attempt waiting for it holds none of
        // the sandbox's slots, which every tenant draws on.
        let share = self.share().await;
        Admission {
            share,
            slot: Some(self.sandbox.slot().await),
        }
    }

    async fn execute(
        &self,
        admission: Admission,
        step: &Step,
        index: Option<usize>,
        input: &[u8],
        secrets: &Resolved,
        observer: Option<Arc<dyn Observer>>,
    ) -> Result<Attempt, SandboxError> {
        let (_share, slot) = match admission {
            Admission {
                share,
                slot: Some(slot),
            } => (share, slot),
            // Not admitted (called directly): wait here, as the scheduler would.
            _ => (self.share().await, self.sandbox.slot().await),
        };
        let request = RunRequest {
            input,
            args: &step.args,
            limits: step.limits,
            grants: &step.grants,
            secrets,
            observer,
            // A unit the recorded run made no request in gets an empty
            // tape: in a replay nothing goes out.
            tape: self.tapes.as_ref().map(|tapes| {
                tapes
                    .get(&(step.name.clone(), index))
                    .cloned()
                    .unwrap_or_else(|| Arc::from(Vec::new()))
            }),
        };
        let attempt = self
            .sandbox
            .run_in_slot(slot, &step.component, request)
            .await?;
        if let Some(sink) = &self.on_refused
            && !attempt.http_refused.is_empty()
        {
            sink(&step.name, &attempt.http_refused);
        }
        Ok(attempt)
    }

    fn secrets(&self) -> &dyn SecretSource {
        &*self.secrets
    }
}

/// How to run a plan.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Most attempts running at once.
    pub jobs: usize,
    /// Stop everything at the first failure of a required step.
    pub fail_fast: bool,
    /// Most bytes of rendered input the steps started and not yet finished
    /// may hold together (each step alone is capped at [`MAX_STEP_INPUT`]).
    /// A step that would pass it fails before running.
    pub max_input_in_flight: u64,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
            fail_fast: false,
            max_input_in_flight: 1 << 30,
        }
    }
}

/// Why a step did not succeed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepFailure {
    /// The sandbox's class, or why no attempt could finish: an input that
    /// could not be built from upstream outputs, or a failure of Cairn's own.
    pub class: StepFailureClass,
    pub message: String,
}

/// Where a step ended up.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum StepStatus {
    Pending,
    Running,
    Succeeded,
    Failed(StepFailure),
    Skipped { reason: String },
    Cancelled,
}

impl StepStatus {
    pub fn label(&self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed(_) => "failed",
            StepStatus::Skipped { .. } => "skipped",
            StepStatus::Cancelled => "cancelled",
        }
    }
    fn is_finished(&self) -> bool {
        !matches!(self, StepStatus::Pending | StepStatus::Running)
    }
}

/// What happened to one step.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub name: String,
    #[serde(flatten)]
    pub status: StepStatus,
    /// Attempts that ran in the sandbox, summed over mapped elements (a
    /// unit answered from the cache or the journal makes none).
    pub attempts: u32,
    /// Wall time from the step's first attempt starting to run (holding a
    /// job slot) to the step's end; for a step that never ran, from being
    /// queued to its end.
    #[serde(serialize_with = "micros", rename = "duration_us")]
    pub duration: Duration,
    /// Wall time the step waited, queued with its inputs ready, for a job
    /// slot before its first attempt ran (not part of `duration`).
    #[serde(serialize_with = "micros", rename = "wait_us")]
    pub wait: Duration,
    pub fuel: u64,
    /// Number of mapped elements, for a `map` step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<usize>,
    /// Waits before each retry.
    #[serde(serialize_with = "micros_list", rename = "retry_delays_us")]
    pub retry_delays: Vec<Duration>,
    /// Where the output came from (for a succeeded step).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<StepSource>,
    /// Units of work answered from the cache or the resumed journal.
    pub reused: usize,
    /// blake3 of the output document (for a succeeded step).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_hash: Option<String>,
    #[serde(skip)]
    pub output: Option<Arc<Value>>,
    /// The output as compact JSON instead, for a step whose output only
    /// goes into the pipeline's default output (a sink, when the pipeline
    /// names no `output`): text is a fraction of a `Value`'s size.
    #[serde(skip)]
    pub output_text: Option<Box<str>>,
    #[serde(skip)]
    pub allow_failure: bool,
}

fn micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_micros() as u64)
}

fn micros_list<S: serde::Serializer>(ds: &[Duration], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ds.iter().map(|d| d.as_micros() as u64))
}

/// How the run as a whole ended (a report's status is never `running`).
pub use crate::model::RunStatus;

/// What happened to a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub pipeline: String,
    pub status: RunStatus,
    #[serde(serialize_with = "micros", rename = "duration_us")]
    pub duration: Duration,
    pub steps: Vec<StepReport>,
    /// Why the store could not make the run durable, if it could not: the
    /// run then failed, whatever its steps did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_error: Option<String>,
    /// The pipeline's output as compact JSON (absent if it could not be
    /// built). Kept as text: a pipeline of 100 000 sinks would otherwise
    /// hold every sink's output as a `Value` until the end.
    pub output: Option<Box<RawValue>>,
}

impl RunReport {
    /// The pipeline's output as a value (parsed from its text).
    pub fn output_value(&self) -> Option<Value> {
        self.output
            .as_deref()
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
    }

    /// blake3 (hex) of the output's JSON, as [`output_hash`] gives it.
    pub fn output_hash(&self) -> Option<String> {
        self.output
            .as_deref()
            .map(|raw| blake3::hash(raw.get().as_bytes()).to_hex().to_string())
    }
}

/// Something that happened during a run, for progress displays.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// The step's dependencies are done and its inputs are built: its
    /// units of work wait for job slots (or the cache answers them).
    StepQueued {
        step: &'a Step,
        items: usize,
    },
    /// The step's first attempt holds a job slot and runs, `wait` after
    /// the step was queued. Sent once per step, never for a step that is
    /// answered without running.
    StepStarted {
        step: &'a Step,
        items: usize,
        wait: Duration,
    },
    /// An attempt of one unit of work (a step, or an element) starts
    /// running in the sandbox.
    AttemptStarted {
        step: &'a Step,
        index: Option<usize>,
        attempt: u32,
    },
    AttemptFailed {
        step: &'a Step,
        index: Option<usize>,
        attempt: u32,
        failure: &'a StepFailure,
        retry_in: Option<Duration>,
    },
    ItemFinished {
        step: &'a Step,
        index: usize,
    },
    StepFinished {
        step: &'a Step,
        report: &'a StepReport,
    },
    TaskLog {
        step: &'a Step,
        index: Option<usize>,
        line: &'a LogLine,
    },
    TaskProgress {
        step: &'a Step,
        progress: &'a Progress,
    },
}

impl Event<'_> {
    /// Sent from a running unit of work rather than the scheduler's loop:
    /// the scheduler may be idle, waiting on that work, for as long as it
    /// runs, so an observer that buffers until [`RunObserver::idle`] must
    /// write these out at once.
    pub fn from_work(&self) -> bool {
        matches!(
            self,
            Event::StepStarted { .. }
                | Event::AttemptStarted { .. }
                | Event::AttemptFailed { .. }
                | Event::TaskLog { .. }
                | Event::TaskProgress { .. }
        )
    }
}

/// Receives [`Event`]s; called from many tasks at once.
pub trait RunObserver: Send + Sync {
    fn event(&self, event: Event<'_>);

    /// The scheduler has nothing to do until some work finishes: a good
    /// moment to write out anything the observer buffered.
    fn idle(&self) {}
}

/// An observer that ignores everything.
pub struct Silent;

impl RunObserver for Silent {
    fn event(&self, _: Event<'_>) {}
}

struct WorkDone {
    step: StepId,
    index: Option<usize>,
    result: Result<Value, StepFailure>,
    attempts: u32,
    fuel: u64,
    delays: Vec<Duration>,
    key: CacheKey,
    /// `None` if it ran, else where the stored result came from.
    reused: Option<StepSource>,
    /// The run began to drain before this unit's next attempt could start:
    /// it did not finish, and its step ends cancelled (resumable).
    stopped: bool,
}

struct StepState {
    waiting: usize,
    /// When the step was queued (its dependencies done).
    queued: Option<Instant>,
    /// When its first attempt ran, and how many have, as its units of work
    /// tell it (they may be aborted before they report back).
    clock: Arc<StepClock>,
    items_left: usize,
    items: Vec<Option<Value>>,
    keys: Vec<Option<CacheKey>>,
    executed: bool,
    from_journal: bool,
    first_failure: Option<StepFailure>,
    /// Bytes of rendered input the step holds while it runs.
    input_bytes: u64,
}

/// Run `plan` to completion (or until `cancel` resolves).
///
/// The scheduler itself runs as a task on the runtime, not in the caller's
/// future: work it spawns then lands on the same worker thread and its
/// completions wake it there, rather than every step of a chain crossing
/// between a `block_on` thread and a worker (two thread wake-ups per step).
pub async fn run<E: Executor>(
    plan: Arc<Plan>,
    executor: Arc<E>,
    options: RunOptions,
    observer: Arc<dyn RunObserver>,
    ledger: Option<Arc<Ledger>>,
    cancel: impl Future<Output = ()>,
) -> RunReport {
    run_draining(
        plan,
        executor,
        options,
        observer,
        ledger,
        std::future::pending(),
        cancel,
    )
    .await
}

/// [`run`], and once `drain` completes, start nothing more: no step, no
/// element, no retry; the attempts running then finish and are recorded,
/// and the run ends cancelled (resumable) unless every step had finished.
/// `cancel` still stops everything at once.
pub async fn run_draining<E: Executor>(
    plan: Arc<Plan>,
    executor: Arc<E>,
    options: RunOptions,
    observer: Arc<dyn RunObserver>,
    ledger: Option<Arc<Ledger>>,
    drain: impl Future<Output = ()> + Send + 'static,
    cancel: impl Future<Output = ()>,
) -> RunReport {
    // Dropping `stop` (the caller gave up on this future) cancels too.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut driver = tokio::spawn(drive(
        plan,
        executor,
        options,
        observer,
        ledger,
        drain,
        async {
            let _ = stopped.await;
        },
    ));
    tokio::pin!(cancel);
    let joined = tokio::select! {
        biased;
        joined = &mut driver => joined,
        () = &mut cancel => {
            let _ = stop.send(());
            driver.await
        }
    };
    match joined {
        Ok(report) => report,
        // The scheduler panicked: carry the panic to the caller as if the
        // loop had run in its future. (It is never aborted, and a runtime
        // shutting down drops this future too.)
        Err(e) => std::panic::resume_unwind(
            e.try_into_panic()
                .unwrap_or_else(|_| Box::new("the scheduler task was cancelled")),
        ),
    }
}

async fn drive<E: Executor>(
    plan: Arc<Plan>,
    executor: Arc<E>,
    options: RunOptions,
    observer: Arc<dyn RunObserver>,
    ledger: Option<Arc<Ledger>>,
    drain: impl Future<Output = ()>,
    cancel: impl Future<Output = ()>,
) -> RunReport {
    let started = Instant::now();
    let mut run = Run {
        reports: plan
            .steps
            .iter()
            .map(|s| StepReport {
                name: s.name.clone(),
                status: StepStatus::Pending,
                attempts: 0,
                duration: Duration::ZERO,
                wait: Duration::ZERO,
                fuel: 0,
                items: None,
                retry_delays: Vec::new(),
                source: None,
                reused: 0,
                output_hash: None,
                output: None,
                output_text: None,
                allow_failure: s.allow_failure,
            })
            .collect(),
        states: plan
            .steps
            .iter()
            .map(|s| StepState {
                waiting: s.deps.len(),
                queued: None,
                clock: Arc::default(),
                items_left: 0,
                items: Vec::new(),
                keys: Vec::new(),
                executed: false,
                from_journal: false,
                first_failure: None,
                input_bytes: 0,
            })
            .collect(),
        ready: plan
            .order
            .iter()
            .copied()
            .filter(|&id| plan.steps[id].deps.is_empty())
            .collect(),
        jobs: Arc::new(Semaphore::new(options.jobs.max(1))),
        work: JoinSet::new(),
        unstarted: VecDeque::new(),
        work_steps: HashMap::new(),
        input_in_flight: 0,
        stop: false,
        draining: false,
        drain: tokio::sync::watch::Sender::new(false),
        plan,
        executor,
        observer,
        options,
        ledger,
        unflushed: Vec::new(),
    };
    tokio::pin!(cancel);
    tokio::pin!(drain);
    let mut cancelled = false;
    // The group commit being made durable, and the steps it will release.
    let mut in_flight: Option<Commit> = None;
    // Set once the store has failed to make something durable.
    let mut store_error: Option<ledger::LedgerError> = None;
    // One timer for the whole run, not one per turn of the loop: a sleep
    // made in the `select!` below would be built (and, with a ledger,
    // registered and dropped) every time a unit of work completes.
    let mut write_out = tokio::time::interval(JOURNAL_LAG);
    write_out.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if run.draining {
            run.ready.clear();
        }
        while let Some(id) = run.ready.pop_front() {
            run.start(id);
        }
        if in_flight.is_none() {
            in_flight = run.commit();
        }
        if !run.ready.is_empty() {
            continue;
        }
        if run.stop || (run.work.is_empty() && in_flight.is_none()) {
            break;
        }
        run.observer.idle();
        tokio::select! {
            biased;
            () = &mut cancel => {
                cancelled = true;
                break;
            }
            () = &mut drain, if !run.draining => {
                // Units waiting for a slot (or to retry) return stopped;
                // those holding one finish their attempt.
                run.draining = true;
                run.drain.send_replace(true);
            }
            durable = async {
                match in_flight.as_mut() {
                    Some((durable, _)) => durable.await,
                    None => std::future::pending().await,
                }
            } => {
                let (_, steps) = in_flight.take().expect("only a commit in flight completes");
                let gone = || run.ledger.as_ref().expect("commits need a ledger").writer_gone();
                match durable.unwrap_or_else(|_| Err(gone())) {
                    Ok(()) => {
                        for finished in steps {
                            run.announce_durable(finished);
                        }
                    }
                    // Nothing that is not durable is reported done: the
                    // steps of this commit fail, the run stops, and its
                    // journal ends at the last durable batch (resumable
                    // once the store can write again).
                    Err(e) => {
                        for finished in steps {
                            // An element that is not durable is simply not
                            // reported; its step is cancelled with the run.
                            if let Finished::Step(id) = finished {
                                run.not_durable(id, &e);
                            }
                        }
                        run.stop = true;
                        run.ready.clear();
                        store_error.get_or_insert(e);
                    }
                }
            }
            // Every JOURNAL_LAG: what was queued for the journal since the
            // last commit (steps queued, attempts started) is written out,
            // not fsynced, for readers in other processes; a no-op when a
            // commit took it already.
            _ = write_out.tick(), if run.ledger.is_some() => {
                if let Some(ledger) = &run.ledger {
                    ledger.write_out();
                }
            }
            Some(joined) = run.work.join_next_with_id() => {
                run.joined(joined);
                // Take every completion that is already waiting: they join
                // the next group commit together.
                while let Some(joined) = run.work.try_join_next_with_id() {
                    run.joined(joined);
                }
                run.refill();
            }
        }
    }
    // A drained run that had started every step and seen them finish
    // simply ended; one that left steps undone was stopped.
    let drained = run.draining && run.reports.iter().any(|r| !r.status.is_finished());
    run.work.abort_all();
    // Wait for aborted work to stop: a unit of work running on another
    // worker when it was aborted could still queue a journal event, which
    // would then land after the run's last one.
    while run.work.join_next().await.is_some() {}
    for (id, report) in run.reports.iter_mut().enumerate() {
        if !report.status.is_finished() {
            report.status = StepStatus::Cancelled;
            if let Some(ledger) = &run.ledger {
                ledger.append(JournalEvent::StepCancelled {
                    at_ms: now_ms(),
                    step: report.name.clone(),
                });
            }
            // Observers hear the end of every step they heard start, so a
            // live display is left with nothing running.
            if let Some(queued) = run.states[id].queued {
                let clock = &run.states[id].clock;
                let running = clock.running.get().copied();
                report.wait = running
                    .unwrap_or_else(Instant::now)
                    .saturating_duration_since(queued);
                report.duration = running.map(|t| t.elapsed()).unwrap_or_default();
                report.attempts = clock.attempts.load(std::sync::atomic::Ordering::Relaxed);
                run.observer.event(Event::StepFinished {
                    step: &run.plan.steps[id],
                    report,
                });
            }
        }
    }
    // What finished but was not yet reported: the commit in flight when
    // the run stopped, and what waited for the next one. The final flush
    // makes it durable, and then it is reported; if it cannot, it failed.
    let mut unreported: Vec<Finished> = in_flight.take().map(|(_, f)| f).unwrap_or_default();
    unreported.append(&mut run.unflushed);
    if let Some(ledger) = &run.ledger {
        let flushed = match &store_error {
            // The writer stops at its first failure: nothing after it lands.
            Some(e) => Err(e.clone()),
            None => ledger.flush().await,
        };
        match flushed {
            Ok(()) => {
                for finished in unreported {
                    run.announce_durable(finished);
                }
            }
            Err(e) => {
                for finished in unreported {
                    if let Finished::Step(id) = finished {
                        run.not_durable(id, &e);
                    }
                }
                store_error.get_or_insert(e);
            }
        }
    }
    let failed = run
        .reports
        .iter()
        .any(|r| matches!(r.status, StepStatus::Failed(_)) && !r.allow_failure);
    let status = if cancelled || drained {
        RunStatus::Cancelled
    } else if failed || run.stop || store_error.is_some() {
        RunStatus::Failed
    } else {
        RunStatus::Succeeded
    };
    let output = run.pipeline_output();
    RunReport {
        pipeline: run.plan.name.clone(),
        status,
        duration: started.elapsed(),
        store_error: store_error.map(|e| e.to_string()),
        steps: run.reports,
        output,
    }
}

struct Run<E: Executor> {
    plan: Arc<Plan>,
    executor: Arc<E>,
    observer: Arc<dyn RunObserver>,
    options: RunOptions,
    reports: Vec<StepReport>,
    states: Vec<StepState>,
    ready: VecDeque<StepId>,
    jobs: Arc<Semaphore>,
    work: JoinSet<WorkDone>,
    /// Units of work ready to go once `work` has room (see [`UNITS_IN_FLIGHT`]).
    unstarted: VecDeque<(Unit, Vec<u8>)>,
    /// Which step each unit of work in `work` belongs to, so that one that
    /// panics fails its step instead of vanishing.
    work_steps: HashMap<tokio::task::Id, StepId>,
    /// Sum of the running steps' `input_bytes`.
    input_in_flight: u64,
    /// Set by fail-fast: start nothing more.
    stop: bool,
    /// Asked to drain: start nothing more, let running attempts finish.
    draining: bool,
    /// Tells units of work waiting for a slot or a retry that the run drains.
    drain: tokio::sync::watch::Sender<bool>,
    ledger: Option<Arc<Ledger>>,
    /// Finished steps and map elements whose journal records await the
    /// next group commit; they are announced (and steps release their
    /// dependents) only after it.
    unflushed: Vec<Finished>,
}

/// Something finished whose announcement waits for its journal record.
#[derive(Debug, Clone, Copy)]
enum Finished {
    Step(StepId),
    /// One element of a mapped step: a resume must not run it again once
    /// it was reported.
    Item(StepId, usize),
}

/// A group commit in flight, and what it will let be announced.
type Commit = (
    tokio::sync::oneshot::Receiver<Result<(), ledger::LedgerError>>,
    Vec<Finished>,
);

/// Units of work with a task of their own at once; the rest wait in a
/// queue, as their input bytes. A task costs about 1.3 KB while it waits
/// for a job slot, so a 100 000-step fan-out that spawned every unit held
/// ~130 MB of them. Enough to keep cache lookups (made before a slot is
/// taken) going on every worker thread.
const UNITS_IN_FLIGHT: usize = 512;

/// How long queued journal events may wait for a commit before they are
/// written out anyway (see [`Ledger::write_out`]).
const JOURNAL_LAG: Duration = Duration::from_millis(200);

/// The most bytes of input one step's references may render, over all its
/// elements: one large output referenced many times (or mapped over) must
/// not take the host's memory with it.
pub const MAX_STEP_INPUT: u64 = 256 << 20;

/// What the steps of a plan have produced so far, by id.
pub trait Produced {
    fn output(&self, id: StepId) -> Option<&Value>;
}

impl Produced for Vec<StepReport> {
    fn output(&self, id: StepId) -> Option<&Value> {
        self[id].output.as_deref()
    }
}

impl Produced for Vec<Option<Value>> {
    fn output(&self, id: StepId) -> Option<&Value> {
        self.get(id)?.as_ref()
    }
}

/// Resolves references against finished steps' outputs (and the mapped item).
struct Outputs<'a> {
    plan: &'a Plan,
    reports: &'a dyn Produced,
    item: Option<(&'a Value, usize)>,
    /// Encoded bytes resolved so far, checked against `MAX_STEP_INPUT`
    /// before a value is copied.
    spent: &'a std::cell::Cell<u64>,
}

impl Outputs<'_> {
    /// A copy of `value`, if the step's input budget still allows it.
    fn take(&self, reference: &Reference, value: &Value) -> Result<Value, String> {
        struct Count(u64);
        impl std::io::Write for Count {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len() as u64;
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut size = Count(0);
        serde_json::to_writer(&mut size, value).expect("a JSON value always encodes");
        let spent = self.spent.get().saturating_add(size.0);
        if spent > MAX_STEP_INPUT {
            return Err(format!(
                "{reference}: the step's input would be more than {} (references to large outputs \
                 are copied each time; pass a smaller part, or split the step)",
                ByteSize(MAX_STEP_INPUT)
            ));
        }
        self.spent.set(spent);
        Ok(value.clone())
    }
}

impl Resolve for Outputs<'_> {
    fn resolve(&self, reference: &Reference) -> Result<Value, String> {
        match &reference.source {
            Source::Step(name) => {
                let id = self
                    .plan
                    .id(name)
                    .ok_or_else(|| format!("{reference}: no step `{name}`"))?;
                let output = self
                    .reports
                    .output(id)
                    .ok_or_else(|| format!("{reference}: `{name}` has no output"))?;
                let value =
                    lookup(output, &reference.path).map_err(|e| format!("{reference}: {e}"))?;
                self.take(reference, value)
            }
            Source::Item => {
                let (item, _) = self
                    .item
                    .ok_or_else(|| format!("{reference}: not in a mapped step"))?;
                let value =
                    lookup(item, &reference.path).map_err(|e| format!("{reference}: {e}"))?;
                self.take(reference, value)
            }
            Source::Index => {
                let (_, index) = self
                    .item
                    .ok_or_else(|| format!("{reference}: not in a mapped step"))?;
                Ok(Value::from(index))
            }
        }
    }
}

impl<E: Executor> Run<E> {
    /// A resolver with a budget of its own (`spent`).
    fn outputs<'a>(&'a self, spent: &'a std::cell::Cell<u64>) -> Outputs<'a> {
        Outputs {
            plan: &self.plan,
            reports: &self.reports,
            item: None,
            spent,
        }
    }

    /// All dependencies are finished: skip, fail, or launch the step's work.
    fn start(&mut self, id: StepId) {
        let plan = self.plan.clone();
        let step = &plan.steps[id];
        if let Some(&dep) = step
            .deps
            .iter()
            .find(|&&d| self.reports[d].status != StepStatus::Succeeded)
        {
            let reason = format!(
                "`{}` {}",
                plan.steps[dep].name,
                self.reports[dep].status.label()
            );
            return self.finish(
                id,
                StepStatus::Skipped {
                    reason: format!("upstream {reason}"),
                },
            );
        }
        if let Some(condition) = &step.when {
            // A value that is not there is false: `when = "${x.items.9}"`
            // reads "when x has a tenth item".
            let value = self
                .outputs(&Default::default())
                .resolve(&condition.reference)
                .unwrap_or(Value::Null);
            if truthy(&value) == condition.negate {
                let shown = if condition.negate {
                    format!("!{}", condition.reference)
                } else {
                    condition.reference.to_string()
                };
                return self.finish(
                    id,
                    StepStatus::Skipped {
                        reason: format!("condition {shown} is false"),
                    },
                );
            }
        }
        let inputs = match unit_inputs(&plan, &self.reports, id) {
            Ok(inputs) => inputs,
            Err(message) => return self.fail_before_running(id, message),
        };
        let input_bytes: u64 = inputs.iter().map(|i| i.len() as u64).sum();
        if self.input_in_flight.saturating_add(input_bytes) > self.options.max_input_in_flight {
            return self.fail_before_running(
                id,
                format!(
                    "input: its {} of input, with the {} the running steps hold, would pass the \
                     run's limit of {}; pass smaller parts of large outputs",
                    ByteSize(input_bytes),
                    ByteSize(self.input_in_flight),
                    ByteSize(self.options.max_input_in_flight)
                ),
            );
        }
        self.input_in_flight += input_bytes;
        self.states[id].input_bytes = input_bytes;
        if let Some(ledger) = &self.ledger {
            ledger.append(JournalEvent::StepScheduled {
                at_ms: now_ms(),
                step: step.name.clone(),
                items: step.map.is_some().then_some(inputs.len()),
            });
        }
        let state = &mut self.states[id];
        let queued = Instant::now();
        state.queued = Some(queued);
        self.reports[id].status = StepStatus::Running;
        if step.map.is_some() {
            self.reports[id].items = Some(inputs.len());
            state.items = vec![None; inputs.len()];
        }
        state.items_left = inputs.len();
        state.keys = vec![None; inputs.len()];
        self.observer.event(Event::StepQueued {
            step,
            items: inputs.len(),
        });
        if inputs.is_empty() {
            self.reports[id].output = Some(Arc::new(Value::Array(Vec::new())));
            return self.finish(id, StepStatus::Succeeded);
        }
        let mapped = step.map.is_some();
        let items = inputs.len();
        for (i, input) in inputs.into_iter().enumerate() {
            let unit = Unit {
                id,
                index: mapped.then_some(i),
                items,
                queued,
                clock: self.states[id].clock.clone(),
            };
            if self.work.len() < UNITS_IN_FLIGHT {
                self.spawn(unit, input);
            } else {
                self.unstarted.push_back((unit, input));
            }
        }
    }

    /// Start a unit of work's task.
    fn spawn(&mut self, unit: Unit, input: Vec<u8>) {
        let id = unit.id;
        let handle = self.work.spawn(attempt_loop(
            self.plan.clone(),
            unit,
            input,
            self.executor.clone(),
            Slots {
                jobs: self.jobs.clone(),
                drain: self.drain.subscribe(),
            },
            self.observer.clone(),
            self.ledger.clone(),
        ));
        self.work_steps.insert(handle.id(), id);
    }

    /// Start waiting units of work while there is room.
    fn refill(&mut self) {
        while self.work.len() < UNITS_IN_FLIGHT {
            let Some((unit, input)) = self.unstarted.pop_front() else {
                break;
            };
            self.spawn(unit, input);
        }
    }

    fn fail_before_running(&mut self, id: StepId, message: String) {
        self.finish(
            id,
            StepStatus::Failed(StepFailure {
                class: StepFailureClass::Engine(EngineFailure::Input),
                message,
            }),
        );
    }

    fn complete(&mut self, done: WorkDone) {
        let id = done.step;
        if self.reports[id].status.is_finished() {
            return;
        }
        if done.stopped {
            // Attempts it made before (retried failures) are the step's.
            self.reports[id].attempts += done.attempts;
            return;
        }
        let report = &mut self.reports[id];
        report.attempts += done.attempts;
        report.fuel += done.fuel;
        report.retry_delays.extend(done.delays);
        let state = &mut self.states[id];
        state.items_left -= 1;
        state.keys[done.index.unwrap_or(0)] = Some(done.key);
        let executed = done.reused.is_none();
        match done.reused {
            None => state.executed = true,
            Some(source) => {
                report.reused += 1;
                state.from_journal |= source == StepSource::Journal;
            }
        }
        match (done.result, done.index) {
            (Ok(value), None) => report.output = Some(Arc::new(value)),
            (Ok(value), Some(i)) => {
                state.items[i] = Some(value);
                // An executed element is reported once its record is
                // durable, like a step: a resume then re-runs nothing that
                // was reported finished.
                if executed && self.ledger.is_some() {
                    self.unflushed.push(Finished::Item(id, i));
                } else {
                    self.observer.event(Event::ItemFinished {
                        step: &self.plan.steps[id],
                        index: i,
                    });
                }
            }
            (Err(failure), index) => {
                let failure = match index {
                    Some(i) => StepFailure {
                        message: format!("element {i}: {}", failure.message),
                        ..failure
                    },
                    None => failure,
                };
                state.first_failure.get_or_insert(failure);
            }
        }
        if state.items_left > 0 {
            return;
        }
        if let Some(failure) = state.first_failure.take() {
            return self.finish(id, StepStatus::Failed(failure));
        }
        if self.plan.steps[id].map.is_some() {
            let items = std::mem::take(&mut state.items)
                .into_iter()
                .map(|v| v.unwrap_or(Value::Null))
                .collect();
            self.reports[id].output = Some(Arc::new(Value::Array(items)));
        }
        self.finish(id, StepStatus::Succeeded);
    }

    fn finish(&mut self, id: StepId, status: StepStatus) {
        let held = std::mem::take(&mut self.states[id].input_bytes);
        self.input_in_flight -= held;
        let step = &self.plan.steps[id];
        let report = &mut self.reports[id];
        let state = &self.states[id];
        if let Some(queued) = state.queued {
            let running = state.clock.running.get().copied();
            report.wait = running.map_or(Duration::ZERO, |r| r.saturating_duration_since(queued));
            report.duration = running.unwrap_or(queued).elapsed();
        }
        if status == StepStatus::Succeeded {
            let state = &self.states[id];
            report.source = Some(if state.executed {
                StepSource::Executed
            } else if state.from_journal {
                StepSource::Journal
            } else {
                StepSource::Cached
            });
            if let Some(value) = report.output.as_deref() {
                let text = value.to_string();
                report.output_hash = Some(blake3::hash(text.as_bytes()).to_hex().to_string());
                // Only the pipeline's default output reads a sink's output.
                if self.plan.output.is_none() && self.plan.dependents[id].is_empty() {
                    report.output = None;
                    report.output_text = Some(text.into_boxed_str());
                }
            }
        }
        report.status = status;
        if let Some(ledger) = &self.ledger {
            let at_ms = now_ms();
            let step_name = step.name.clone();
            let event = match &report.status {
                StepStatus::Succeeded => JournalEvent::StepSucceeded {
                    at_ms,
                    step: step_name,
                    keys: self.states[id]
                        .keys
                        .iter()
                        .flatten()
                        .map(CacheKey::to_hex)
                        .collect(),
                    output_hash: report.output_hash.clone().unwrap_or_default(),
                    source: report.source.unwrap_or(StepSource::Executed),
                },
                StepStatus::Failed(f) => JournalEvent::StepFailed {
                    at_ms,
                    step: step_name,
                    class: Some(f.class),
                    message: f.message.clone(),
                },
                StepStatus::Skipped { reason } => JournalEvent::StepSkipped {
                    at_ms,
                    step: step_name,
                    reason: reason.clone(),
                },
                _ => JournalEvent::StepCancelled {
                    at_ms,
                    step: step_name,
                },
            };
            ledger.append(event);
            // Durable before anyone hears the step is done, so a resume
            // after a crash re-runs nothing that was reported finished. A
            // step answered from the cache or the journal needs no fsync: if
            // its record is lost, resuming just looks it up again.
            //
            // Its dependents need not wait for that: they start now, on the
            // output in memory (pipelined durability). Their records follow
            // this one in the journal, which is written in order, so no
            // commit can make a dependent durable before its parent; and
            // they, too, are reported done only once durable. A crash loses
            // only work nobody was told of.
            let executed = report.source == Some(StepSource::Executed);
            if matches!(report.status, StepStatus::Failed(_))
                || (report.status == StepStatus::Succeeded && executed)
            {
                self.unflushed.push(Finished::Step(id));
                self.release(id);
                return;
            }
        }
        self.report(id);
        self.release(id);
    }

    /// Start a group commit of every finished step not yet durable; the
    /// caller announces them when the returned receiver fires. Without a
    /// ledger there is nothing to wait for: they are announced at once.
    fn commit(&mut self) -> Option<Commit> {
        if self.unflushed.is_empty() {
            return None;
        }
        let finished = std::mem::take(&mut self.unflushed);
        match &self.ledger {
            Some(ledger) => Some((ledger.commit(), finished)),
            None => {
                for f in finished {
                    self.announce_durable(f);
                }
                None
            }
        }
    }

    /// Announce what a group commit made durable.
    fn announce_durable(&mut self, finished: Finished) {
        match finished {
            Finished::Step(id) => self.report(id),
            Finished::Item(id, index) => self.observer.event(Event::ItemFinished {
                step: &self.plan.steps[id],
                index,
            }),
        }
    }

    fn joined(&mut self, joined: Result<(tokio::task::Id, WorkDone), tokio::task::JoinError>) {
        match joined {
            Ok((task, done)) => {
                self.work_steps.remove(&task);
                self.complete(done);
            }
            // A unit of work only panics through a bug in the engine; the
            // step it belonged to cannot be called done, so it fails (and
            // with it the run, unless the step may fail).
            Err(e) => {
                let step = self.work_steps.remove(&e.id());
                let why = if e.is_panic() {
                    let payload = e.into_panic();
                    let text = payload
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "no message".to_owned());
                    format!(
                        "the engine failed while running this step (a bug in Cairn, please report it): {text}"
                    )
                } else {
                    "the engine stopped this step's work before it finished".to_owned()
                };
                tracing::error!("{why}");
                if let Some(id) = step
                    && !self.reports[id].status.is_finished()
                {
                    self.finish(
                        id,
                        StepStatus::Failed(StepFailure {
                            class: StepFailureClass::Engine(EngineFailure::Engine),
                            message: why,
                        }),
                    );
                }
            }
        }
    }

    /// A finished step whose journal record could not be made durable: it
    /// is reported failed, and releases nothing.
    fn not_durable(&mut self, id: StepId, error: &ledger::LedgerError) {
        let report = &mut self.reports[id];
        report.status = StepStatus::Failed(StepFailure {
            class: StepFailureClass::Engine(EngineFailure::Engine),
            message: format!(
                "finished, but its result could not be made durable ({error}); \
                 free the store and resume the run"
            ),
        });
        let step = &self.plan.steps[id];
        self.observer.event(Event::StepFinished {
            step,
            report: &self.reports[id],
        });
    }

    /// Tell the observer a step is finished.
    fn report(&self, id: StepId) {
        let step = &self.plan.steps[id];
        self.observer.event(Event::StepFinished {
            step,
            report: &self.reports[id],
        });
    }

    /// Let the steps that wait for `id` go on (or, with fail-fast after a
    /// required failure, stop starting anything).
    fn release(&mut self, id: StepId) {
        let step = &self.plan.steps[id];
        let report = &self.reports[id];
        let required_failure =
            matches!(report.status, StepStatus::Failed(_)) && !step.allow_failure;
        if required_failure && self.options.fail_fast {
            self.stop = true;
            self.ready.clear();
            return;
        }
        for &next in &self.plan.dependents[id] {
            let state = &mut self.states[next];
            state.waiting -= 1;
            if state.waiting == 0 {
                self.ready.push_back(next);
            }
        }
    }

    /// The pipeline's output, at the run's end: its `output` template
    /// rendered, or every sink's output by name (written out from the
    /// sinks' texts, in the order a JSON object's keys are serialized).
    fn pipeline_output(&mut self) -> Option<Box<RawValue>> {
        match &self.plan.output {
            Some(template) => match template.render(&self.outputs(&Default::default())) {
                Ok(value) => serde_json::value::to_raw_value(&value).ok(),
                Err(e) => {
                    tracing::warn!("the pipeline output cannot be built: {e}");
                    None
                }
            },
            None => {
                let reports = &mut self.reports;
                let mut sinks: Vec<(&str, Box<str>)> = self
                    .plan
                    .sinks()
                    .filter_map(|s| Some((s.name.as_str(), reports[s.id].output_text.take()?)))
                    .collect();
                sinks.sort_unstable_by(|a, b| a.0.cmp(b.0));
                let size = sinks
                    .iter()
                    .map(|(n, t)| n.len() + t.len() + 4)
                    .sum::<usize>();
                let mut text = String::with_capacity(size + 2);
                text.push('{');
                for (i, (name, output)) in sinks.iter().enumerate() {
                    if i > 0 {
                        text.push(',');
                    }
                    text.push_str(&Value::from(*name).to_string());
                    text.push(':');
                    text.push_str(output);
                }
                text.push('}');
                RawValue::from_string(text).ok()
            }
        }
    }
}

/// The input bytes of each unit of step `id` (one for a plain step, one
/// per element of a mapped one), rendered from what its dependencies
/// produced. The error says what could not be rendered, as the step's
/// failure would.
pub fn unit_inputs(
    plan: &Plan,
    produced: &dyn Produced,
    id: StepId,
) -> Result<Vec<Vec<u8>>, String> {
    let step = &plan.steps[id];
    // A task's literal input is already the bytes it encodes to.
    if let (None, Some(text), ComponentKind::Task) =
        (&step.map, step.input.literal_json(), step.component.kind)
    {
        return Ok(vec![text.as_bytes().to_vec()]);
    }
    let spent = std::cell::Cell::new(0);
    let outputs = Outputs {
        plan,
        reports: produced,
        item: None,
        spent: &spent,
    };
    let items: Vec<Option<(Value, usize)>> = match &step.map {
        None => vec![None],
        Some(list) => match outputs.resolve(list) {
            Ok(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| Some((v, i)))
                .collect(),
            Ok(other) => {
                let kind = crate::plan::template::json_type(&other);
                return Err(format!("map: {list} is {kind}, not a list"));
            }
            Err(e) => return Err(format!("map: {e}")),
        },
    };
    // The list itself is not part of the input budget; its elements are.
    spent.set(0);
    let mut inputs = Vec::with_capacity(items.len());
    for item in &items {
        let resolver = Outputs {
            item: item.as_ref().map(|(v, i)| (v, *i)),
            ..outputs
        };
        match step.input.render(&resolver) {
            Ok(value) => inputs.push(encode_input(step, value)),
            Err(e) => return Err(format!("input: {e}")),
        }
    }
    Ok(inputs)
}

/// A task takes JSON; a command takes its input string as raw stdin.
fn encode_input(step: &Step, value: Value) -> Vec<u8> {
    match (step.component.kind, value) {
        (ComponentKind::Command, Value::String(text)) => text.into_bytes(),
        (_, value) => serde_json::to_vec(&value).expect("a JSON value always encodes"),
    }
}

/// Forwards a sandboxed attempt's logs and progress to the run observer.
struct StepLogs {
    plan: Arc<Plan>,
    step: StepId,
    index: Option<usize>,
    observer: Arc<dyn RunObserver>,
}

impl Observer for StepLogs {
    fn log(&self, line: &LogLine) {
        self.observer.event(Event::TaskLog {
            step: &self.plan.steps[self.step],
            index: self.index,
            line,
        });
    }
    fn progress(&self, progress: &Progress) {
        self.observer.event(Event::TaskProgress {
            step: &self.plan.steps[self.step],
            progress,
        });
    }
}

/// Which unit of work an [`attempt_loop`] runs, and the step's clocks.
struct Unit {
    id: StepId,
    index: Option<usize>,
    /// The step's number of units.
    items: usize,
    queued: Instant,
    clock: Arc<StepClock>,
}

/// What a step's units of work record as they run.
#[derive(Default)]
struct StepClock {
    /// When the first attempt was admitted (a job slot and what the
    /// executor admits with).
    running: std::sync::OnceLock<Instant>,
    /// Attempts started, over all units.
    attempts: std::sync::atomic::AtomicU32,
}

/// What a unit of work needs before each attempt: one of the run's slots
/// and what the executor admits it with, unless the run is draining.
struct Slots {
    jobs: Arc<Semaphore>,
    drain: tokio::sync::watch::Receiver<bool>,
}

impl Slots {
    /// A slot and an admission, or `None` once the run drains (a wait for
    /// either ends there).
    async fn take<E: Executor>(
        &mut self,
        executor: &E,
    ) -> Option<(tokio::sync::SemaphorePermit<'_>, Admission)> {
        let Self { jobs, drain } = self;
        let admitted = async {
            let slot = jobs.acquire().await.ok()?;
            Some((slot, executor.admit().await))
        };
        tokio::select! {
            biased;
            _ = drain.wait_for(|d| *d) => None,
            admitted = admitted => admitted,
        }
    }

    /// Wait `delay` before a retry; `false` if the run began to drain.
    async fn back_off(&mut self, delay: Duration) -> bool {
        tokio::select! {
            biased;
            _ = self.drain.wait_for(|d| *d) => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

/// One unit of work (a step, or one element of a mapped step) through all
/// its attempts.
async fn attempt_loop<E: Executor>(
    plan: Arc<Plan>,
    unit: Unit,
    input: Vec<u8>,
    executor: Arc<E>,
    mut slots: Slots,
    observer: Arc<dyn RunObserver>,
    ledger: Option<Arc<Ledger>>,
) -> WorkDone {
    let (id, index) = (unit.id, unit.index);
    let step = &plan.steps[id];
    // Secrets are read now, not at planning: a plan holds no values, and a
    // rotated secret is the new one (and a new cache key).
    let secrets = step.grants.resolve_secrets(executor.secrets());
    let key = cache_key(
        step,
        &input,
        secrets.as_ref().unwrap_or(&Resolved::default()),
    );
    let mut done = WorkDone {
        step: id,
        index,
        result: Ok(Value::Null),
        attempts: 0,
        fuel: 0,
        delays: Vec::new(),
        key,
        reused: None,
        stopped: false,
    };
    let secrets = match secrets {
        Ok(secrets) => secrets,
        // Granted at planning, gone since: the grant cannot be given.
        Err(e) => {
            done.result = Err(StepFailure {
                class: FailureClass::Denied.into(),
                message: e.to_string(),
            });
            return done;
        }
    };
    if let Some(ledger) = &ledger
        && let Some((source, bytes)) = reuse(ledger, step, &key)
    {
        // No journal event of its own: the step's "succeeded" event lists
        // this key, and the result is already in the store.
        done.result = Ok(decode_output(step, &bytes));
        done.reused = Some(source);
        return done;
    }
    let logs: Arc<dyn Observer> = Arc::new(StepLogs {
        plan: plan.clone(),
        step: id,
        index,
        observer: observer.clone(),
    });
    loop {
        let attempt = {
            // No new attempt starts once the run drains.
            let Some((_slot, admission)) = slots.take(&*executor).await else {
                done.stopped = true;
                return done;
            };
            done.attempts += 1;
            // Started means running: only now, holding a slot.
            let now = Instant::now();
            unit.clock
                .attempts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if unit.clock.running.set(now).is_ok() {
                observer.event(Event::StepStarted {
                    step,
                    items: unit.items,
                    wait: now.saturating_duration_since(unit.queued),
                });
            }
            if let Some(ledger) = &ledger {
                ledger.append(JournalEvent::AttemptStarted {
                    at_ms: now_ms(),
                    step: step.name.clone(),
                    index,
                    attempt: done.attempts,
                });
            }
            observer.event(Event::AttemptStarted {
                step,
                index,
                attempt: done.attempts,
            });
            // Boxed: the sandbox's future is large, and inline it would make
            // every spawned unit of work that large, cache hits included.
            Box::pin(executor.execute(admission, step, index, &input, &secrets, Some(logs.clone())))
                .await
        };
        // Whether a failed attempt is tried again is decided before its
        // journal event, which says so.
        let attempt_retry = match &attempt {
            Ok(Attempt {
                result: Err(failure),
                ..
            }) => plan_retry(step, &failure.class().into(), done.attempts),
            _ => None,
        };
        // Recorded responses are durable before the journal points at them.
        let attempt = match (&ledger, attempt) {
            (Some(ledger), Ok(attempt)) => match keep_recordings(ledger, &secrets, &attempt) {
                Ok(http) => {
                    ledger.append(attempt_finished(
                        step,
                        index,
                        done.attempts,
                        &attempt,
                        http,
                        attempt_retry,
                    ));
                    Ok(attempt)
                }
                Err(e) => Err(e),
            },
            (_, attempt) => attempt,
        };
        let (failure, retry_in) = match attempt {
            Err(e) => {
                let class = StepFailureClass::Engine(EngineFailure::Engine);
                let retry_in = plan_retry(step, &class, done.attempts);
                let failure = StepFailure {
                    class,
                    message: e.to_string(),
                };
                (failure, retry_in)
            }
            Ok(attempt) => {
                done.fuel += attempt.fuel_used;
                match attempt.result {
                    Ok(bytes) => {
                        if let Some(ledger) = &ledger {
                            let (fuel, duration) = (attempt.fuel_used, attempt.duration);
                            record(ledger, step, index, &key, &input, &bytes, fuel, duration);
                        }
                        done.result = Ok(decode_output(step, &bytes));
                        return done;
                    }
                    Err(failure) => (
                        StepFailure {
                            class: failure.class().into(),
                            message: failure.to_string(),
                        },
                        attempt_retry,
                    ),
                }
            }
        };
        observer.event(Event::AttemptFailed {
            step,
            index,
            attempt: done.attempts,
            failure: &failure,
            retry_in,
        });
        match retry_in {
            Some(delay) => {
                done.delays.push(delay);
                if !slots.back_off(delay).await {
                    done.stopped = true;
                    return done;
                }
            }
            None => {
                done.result = Err(failure);
                return done;
            }
        }
    }
}

/// How long to wait before trying a step again after its `attempts`-th
/// attempt failed so; `None`: it is not tried again.
fn plan_retry(step: &Step, class: &StepFailureClass, attempts: u32) -> Option<Duration> {
    let retry = class
        .attempt()
        .is_some_and(|class| step.retry.retries(class, attempts));
    retry.then(|| step.retry.delay(attempts, rand::random::<f64>()))
}

/// A stored result this unit of work may use instead of running: one the
/// resumed run already produced, or a cache hit.
fn reuse(ledger: &Ledger, step: &Step, key: &CacheKey) -> Option<(StepSource, Vec<u8>)> {
    let (source, max_age) = if ledger.resumed.contains(key) {
        (StepSource::Journal, None)
    } else if step.cache && !ledger.refresh {
        (StepSource::Cached, step.cache_ttl)
    } else {
        return None;
    };
    match ledger.store.result(key, max_age) {
        Ok(Some((_, bytes))) => Some((source, bytes)),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(
                "cannot read the result cache ({e}); running step {}",
                step.name
            );
            None
        }
    }
}

/// Queue a fresh result with the journal event that reports it; both are
/// written, and made durable, before the step is reported done.
#[allow(clippy::too_many_arguments)]
fn record(
    ledger: &Ledger,
    step: &Step,
    index: Option<usize>,
    key: &CacheKey,
    input: &[u8],
    output: &[u8],
    fuel: u64,
    duration: Duration,
) {
    let output_hash = blake3::hash(output);
    let meta = ResultMeta {
        output_hash,
        size: output.len() as u64,
        component: step.component.hash,
        input_hash: blake3::hash(input),
        fuel,
        duration_us: duration.as_micros() as u64,
        created_ms: now_ms(),
    };
    let event = JournalEvent::ItemSucceeded {
        at_ms: meta.created_ms,
        step: step.name.clone(),
        index,
        key: key.to_hex(),
        output_hash: output_hash.to_hex().to_string(),
        cached: false,
    };
    let result = NewResult {
        key: *key,
        meta,
        output: output.to_vec(),
    };
    ledger.stage(result, event);
}

/// Keep each response the attempt received in the store; what its
/// journal event says of its requests.
fn keep_recordings(
    ledger: &Ledger,
    secrets: &Resolved,
    attempt: &Attempt,
) -> Result<Vec<HttpRecord>, SandboxError> {
    if attempt.http.is_empty() {
        return Ok(Vec::new());
    }
    let redactor = secrets.redactor();
    attempt
        .http
        .iter()
        .map(|exchange| {
            let hash = ledger
                .store
                .put_recording(&exchange.response.encode())
                .map_err(|e| {
                    SandboxError::Setup(format!("cannot keep a recorded HTTP response: {e}"))
                })?;
            Ok(HttpRecord {
                method: exchange.method.clone(),
                url: redactor.redact(exchange.url.clone()),
                request: exchange.request.to_hex().to_string(),
                status: exchange.response.status,
                response: hash.to_hex().to_string(),
            })
        })
        .collect()
}

fn attempt_finished(
    step: &Step,
    index: Option<usize>,
    attempt: u32,
    outcome: &Attempt,
    http: Vec<HttpRecord>,
    retry_in: Option<Duration>,
) -> JournalEvent {
    let (class, message) = match &outcome.result {
        Ok(_) => (None, None),
        Err(f) => (Some(f.class()), Some(f.to_string())),
    };
    JournalEvent::AttemptFinished {
        at_ms: now_ms(),
        step: step.name.clone(),
        index,
        attempt,
        class,
        message,
        fuel: outcome.fuel_used,
        duration_us: outcome.duration.as_micros() as u64,
        peak_memory: outcome.peak_memory,
        logs: outcome
            .log
            .lines
            .iter()
            .map(|l| LoggedLine {
                level: l.level,
                message: l.message.clone(),
            })
            .collect(),
        http,
        retry_in_ms: retry_in.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    }
}

/// blake3 of a document's canonical JSON.
pub fn output_hash(value: &Value) -> String {
    blake3::hash(&serde_json::to_vec(value).expect("a JSON value always encodes"))
        .to_hex()
        .to_string()
}

/// What a step's result bytes are as a value: a task's JSON document, a
/// command's text.
pub fn decode_output(step: &Step, bytes: &[u8]) -> Value {
    match step.component.kind {
        // The sandbox accepted the bytes only after checking they are JSON.
        ComponentKind::Task => serde_json::from_slice(bytes).unwrap_or(Value::Null),
        ComponentKind::Command => Value::String(String::from_utf8_lossy(bytes).into_owned()),
    }
}
