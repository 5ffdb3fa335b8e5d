//! Commands over recorded runs and the result cache: `cairn resume`,
//! `cairn replay`, `cairn runs list|show|logs`, `cairn cache
//! stats|gc|clear`, `cairn lineage`.

use std::path::Path;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::pipeline::{EventsArg, PolicyArgs, Shown, report_run_error, start};
use super::remote::{self, RemoteArgs};
use super::{open_sandbox, report_error};
use crate::model::RunStatus;
use crate::plan::Plan;
use crate::runner::describe::{StepView, step_views};
use crate::runner::retention::{Retention, RunsGcReport, Selection};
use crate::runner::{
    self, Continuation, Continued, Launch, Resumption, RunError, Runner, Verification, short,
    store_exists,
};
use crate::sandbox::limits::{parse_age, parse_duration};
use crate::store::history::{History, JournalHistory};
use crate::store::{JournalEvent, RunId, RunRecord, SledStore, Store, StoreError};

/// Exit code: `cairn replay --verify` found steps whose output changed.
pub const EXIT_NONDETERMINISTIC: u8 = 4;

#[derive(Debug, Args)]
pub struct ResumeArgs {
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    remote: RemoteArgs,
    /// The run to continue (an id or a unique prefix, from `cairn runs list`).
    run: String,
    /// Go on although the pipeline (manifest or bundle) is not the one the
    /// run started with; the changed pipeline is checked in full against
    /// the run's policy first. Without it such a run is refused.
    #[arg(long)]
    allow_changed: bool,
    /// Most steps running at once (default: the number of CPU cores).
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    jobs: Option<u32>,
    /// Print one JSON report on stdout (status, every step, the output).
    #[arg(long)]
    json: bool,
    /// Print only the output and errors: no progress, no task logs, no summary.
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    events: EventsArg,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    remote: RemoteArgs,
    /// The run to replay.
    run: String,
    /// Go on although the pipeline (manifest or bundle) is not the one the
    /// run started with; the changed pipeline is checked in full against
    /// the run's policy first. Without it such a run is refused.
    #[arg(long)]
    allow_changed: bool,
    /// Compare every step's output with the original run's and report each
    /// difference as nondeterminism (exit code 4).
    #[arg(long)]
    verify: bool,
    /// Send networked steps' HTTP requests to the network again. By
    /// default a replay serves each request the response the original run
    /// recorded, in order, and fails a step whose request differs (a
    /// replay mismatch naming the request), so it runs with the network
    /// unplugged.
    #[arg(long)]
    live: bool,
    /// Most steps running at once (default: the number of CPU cores).
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    jobs: Option<u32>,
    /// Print the run's JSON report on stdout; with --verify, then one more
    /// JSON line: how many steps were compared and which ones differ.
    #[arg(long)]
    json: bool,
    /// Print only the output and errors: no progress, no task logs, no summary.
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    events: EventsArg,
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// List recorded runs, newest first.
    List {
        /// Only runs of this pipeline.
        #[arg(long, value_name = "NAME")]
        pipeline: Option<String>,
        /// Only runs that ended so (`interrupted`: stopped with no end
        /// recorded, resumable).
        #[arg(long, value_enum)]
        status: Option<StatusFilter>,
        /// At most this many runs (the newest).
        #[arg(short = 'n', long, value_name = "N")]
        limit: Option<usize>,
        /// Print the run records as one JSON array.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Show one run: its steps in dependency order with status and duration.
    Show {
        run: String,
        /// Print the run record and every step's status as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Print the log lines tasks wrote, per attempt.
    Logs {
        run: String,
        /// Only this step.
        #[arg(long, value_name = "STEP")]
        step: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Forget runs that ended more than a duration ago: their records and
    /// journals, with the task logs in them. The results they produced stay
    /// in the cache (`cairn cache gc` trims those); the audit log is never
    /// trimmed. Runs that can still be resumed are kept — interrupted ones
    /// (killed) and cancelled ones (Ctrl-C, SIGTERM) — unless
    /// --include-interrupted is given.
    Gc {
        /// Age past which a run is forgotten, counted from its end (from its
        /// start, for an interrupted run), e.g. 30d, 12h, 0s.
        #[arg(long, value_name = "DURATION", value_parser = parse_age, default_value = "30d")]
        older_than: Duration,
        /// Forget resumable runs (interrupted or cancelled) of that age too;
        /// they can then no longer be resumed.
        #[arg(long)]
        include_interrupted: bool,
        /// Say what would be forgotten, and forget nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print one JSON object: the removed run ids (and the runs,
        /// described), the interrupted runs kept, the bytes freed.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

/// How a run stands, as `cairn runs list --status` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFilter {
    Succeeded,
    Failed,
    Cancelled,
    Interrupted,
    /// Being run now by another process.
    Running,
}

impl StatusFilter {
    fn of(record: &RunRecord, db: &dyn History) -> Self {
        match record.status {
            RunStatus::Succeeded => StatusFilter::Succeeded,
            RunStatus::Failed => StatusFilter::Failed,
            RunStatus::Cancelled => StatusFilter::Cancelled,
            RunStatus::Running if db.is_live(&record.id) => StatusFilter::Running,
            // No process is running it: the store's lock says so.
            RunStatus::Running => StatusFilter::Interrupted,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// How many results are cached and how much space they take.
    Stats {
        /// Print the figures as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Remove cached results older than a duration (e.g. 30d), and reclaim
    /// the space of results replaced or dropped (the "dead" bytes of
    /// `cairn cache stats`): the live results are copied into a fresh pack.
    Gc {
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30d")]
        older_than: Duration,
    },
    /// Remove every cached result (run journals are kept).
    Clear,
}

#[derive(Debug, Args)]
pub struct LineageArgs {
    /// The run whose outputs to trace.
    run: String,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Is there a store at `store` at all? Commands that only read must not
/// create one where the user merely mistyped a path or ran in the wrong
/// directory.
fn no_store(store: &Path) -> String {
    RunError::NoStore {
        store: store.to_owned(),
    }
    .to_string()
}

fn open(store: &Path) -> Result<SledStore, u8> {
    if !store_exists(store) {
        return Err(report_error(&no_store(store)));
    }
    SledStore::open(store).map_err(|e| report_error(&e.to_string()))
}

/// The run history for commands that only read it: the store itself, or,
/// while another process holds it (a run in progress), its journals.
fn history(store: &Path) -> Result<Box<dyn History>, u8> {
    if !store_exists(store) {
        return Err(report_error(&no_store(store)));
    }
    match SledStore::open_now(store) {
        Ok(db) => Ok(Box::new(db)),
        Err(StoreError::Locked { .. }) => {
            tracing::info!("the store is in use: reading the run journals");
            JournalHistory::open(store)
                .map(|h| Box::new(h) as Box<dyn History>)
                .map_err(|e| report_error(&e.to_string()))
        }
        Err(e) => Err(report_error(&e.to_string())),
    }
}

/// A run by id, unique id prefix, or `last` (the newest run).
fn find_run(db: &dyn History, text: &str, store: &Path) -> Result<RunRecord, u8> {
    runner::find_run(db, text, store).map_err(|e| report_run_error(&e))
}

fn journal(db: &dyn History, run: &RunId) -> Result<Vec<JournalEvent>, u8> {
    db.journal(run).map_err(|e| report_error(&e.to_string()))
}

/// Options of `resume` and `replay` that only a local run has, given with
/// --server: refused (the first one named), not ignored.
fn local_only(
    policy: &PolicyArgs,
    jobs: Option<u32>,
    allow_changed: bool,
    events: &EventsArg,
) -> Result<(), u8> {
    let given = [
        (policy.given(), "--policy"),
        (jobs.is_some(), "--jobs"),
        (allow_changed, "--allow-changed"),
        (events.path.is_some(), "--events"),
    ];
    match given.iter().find(|(given, _)| *given) {
        Some((_, option)) => Err(report_error(&format!(
            "{option} applies to runs in a local store; with --server the server decides it \
             (the tenant's policy, the server's concurrency)"
        ))),
        None => Ok(()),
    }
}

pub async fn resume(args: ResumeArgs, store: &Path) -> u8 {
    if args.json {
        super::json_errors::want();
    }
    match args.remote.connect() {
        Ok(None) => {}
        Ok(Some(server)) => {
            if let Err(code) = local_only(&args.policy, args.jobs, args.allow_changed, &args.events)
            {
                return code;
            }
            return remote::resume(&server, &args.run, args.json, args.quiet);
        }
        Err(code) => return code,
    }
    let given = match args.policy.load() {
        Ok(policy) => policy,
        Err(code) => return code,
    };
    let runner = match Runner::open_existing(store, args.jobs.unwrap_or(0)) {
        Ok(runner) => runner,
        Err(e) => return report_run_error(&e),
    };
    let Continued { launch, warnings } = match runner.resume(&args.run, given) {
        Ok(Resumption::Ready(continued)) => continued,
        Ok(Resumption::AlreadySucceeded(record)) => {
            say!("run {} already succeeded; nothing to resume", record.id);
            return 0;
        }
        Err(e) => return report_run_error(&e),
    };
    for w in &warnings {
        say!("warning: {w}");
    }
    let launch = Launch {
        jobs: args.jobs,
        allow_changed: args.allow_changed,
        ..launch
    };
    let shown = Shown {
        json: args.json,
        quiet: args.quiet,
        events: args.events.path,
    };
    start(&runner, launch, &shown).await.1
}

pub async fn replay(args: ReplayArgs, store: &Path) -> u8 {
    if args.json {
        super::json_errors::want();
    }
    match args.remote.connect() {
        Ok(None) => {}
        Ok(Some(server)) => {
            if let Err(code) = local_only(&args.policy, args.jobs, args.allow_changed, &args.events)
            {
                return code;
            }
            if args.live {
                return report_error(
                    "--live applies to replays in a local store; a server replays from its recordings",
                );
            }
            return remote::replay(&server, &args.run, args.verify, args.json, args.quiet);
        }
        Err(code) => return code,
    }
    let given = match args.policy.load() {
        Ok(policy) => policy,
        Err(code) => return code,
    };
    let runner = match Runner::open_existing(store, args.jobs.unwrap_or(0)) {
        Ok(runner) => runner,
        Err(e) => return report_run_error(&e),
    };
    let replay = match runner.replay(&args.run, given) {
        Ok(replay) => replay,
        Err(e) => return report_run_error(&e),
    };
    for w in &replay.continued.warnings {
        say!("warning: {w}");
    }
    let original_id = match &replay.continued.launch.continuation {
        Continuation::Replay { of } => of.id.clone(),
        _ => unreachable!("a replay's continuation is a replay"),
    };
    let mut launch = Launch {
        jobs: args.jobs,
        allow_changed: args.allow_changed,
        ..replay.continued.launch
    };
    if args.live {
        launch.tapes = None;
    }
    let shown = Shown {
        json: args.json,
        quiet: args.quiet || args.json,
        events: args.events.path,
    };
    let (finished, code) = start(&runner, launch, &shown).await;
    let Some(finished) = finished else {
        return code;
    };
    if !args.verify {
        return code;
    }
    let verification = replay.original.verify(&finished.report);
    report_verification(&verification, &original_id.0, args.json).unwrap_or(code)
}

/// Print how a replay compared with run `original`; `Some(exit code)` when
/// outputs differed.
pub(super) fn report_verification(
    verification: &Verification,
    original: &str,
    json: bool,
) -> Option<u8> {
    if json {
        out!(
            "{}",
            json!({"verified": verification.compared, "nondeterministic": verification.mismatches})
        );
    } else {
        for m in &verification.mismatches {
            match m.replay.strip_prefix("failed: ") {
                Some(why) => say!(
                    "mismatch: step `{}` succeeded in run {original} and failed in the replay: {why}",
                    m.step
                ),
                None => say!(
                    "nondeterministic: step `{}` produced different output (run {original}: {}…, replay: {}…)",
                    m.step,
                    short(&m.original),
                    short(&m.replay)
                ),
            }
        }
        if verification.mismatches.is_empty() {
            say!(
                "verified: all {} steps that succeeded in run {original} produced identical output",
                verification.compared
            );
        }
    }
    (!verification.mismatches.is_empty()).then_some(EXIT_NONDETERMINISTIC)
}

fn time(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn span(started_ms: u64, finished_ms: Option<u64>) -> String {
    match finished_ms {
        Some(end) => format!("{:.2}s", end.saturating_sub(started_ms) as f64 / 1000.0),
        None => "-".into(),
    }
}

pub fn runs(command: RunsCommand, store: &Path) -> u8 {
    let remote = match &command {
        RunsCommand::List { remote, .. }
        | RunsCommand::Show { remote, .. }
        | RunsCommand::Logs { remote, .. }
        | RunsCommand::Gc { remote, .. } => remote.connect(),
    };
    match remote {
        Ok(None) => {}
        Err(code) => return code,
        Ok(Some(server)) => {
            return match command {
                RunsCommand::List {
                    pipeline,
                    status,
                    limit,
                    json,
                    ..
                } => remote::list(&server, pipeline, status, limit, json),
                RunsCommand::Show { run, json, .. } => remote::show(&server, &run, json),
                RunsCommand::Logs { run, step, .. } => remote::logs(&server, &run, step),
                RunsCommand::Gc {
                    older_than,
                    include_interrupted,
                    dry_run,
                    json,
                    ..
                } => remote::gc(&server, older_than, include_interrupted, dry_run, json),
            };
        }
    }
    if let RunsCommand::Gc {
        older_than,
        include_interrupted,
        dry_run,
        json,
        ..
    } = command
    {
        let db = match open(store) {
            Ok(db) => db,
            Err(code) => return code,
        };
        let runs = match Store::runs(&db) {
            Ok(runs) => runs,
            Err(e) => return report_error(&e.to_string()),
        };
        let retention = Retention {
            now_ms: crate::store::records::now_ms(),
            older_than,
            include_interrupted,
        };
        return gc_runs(&db, &runs, &retention, dry_run, json);
    }
    if let RunsCommand::List { json, .. } = &command
        && !store_exists(store)
    {
        // Listing an empty place is not an error, but creating a store
        // there would be.
        say!("no runs: {}", no_store(store));
        if *json {
            out!("[]");
        }
        return 0;
    }
    let db = match history(store) {
        Ok(db) => db,
        Err(code) => return code,
    };
    let db = db.as_ref();
    match command {
        RunsCommand::Gc { .. } => unreachable!("handled above"),
        RunsCommand::List {
            pipeline,
            status,
            limit,
            json,
            ..
        } => {
            let mut runs = match db.runs() {
                Ok(runs) => runs,
                Err(e) => return report_error(&e.to_string()),
            };
            runs.retain(|r| {
                pipeline.as_ref().is_none_or(|p| &r.pipeline == p)
                    && status.is_none_or(|s| StatusFilter::of(r, db) == s)
            });
            runs.sort_by(|a, b| b.id.cmp(&a.id));
            runs.truncate(limit.unwrap_or(usize::MAX));
            if json {
                let runs: Vec<Value> = runs.iter().map(|r| record_json(r, db)).collect();
                out!("{}", Value::Array(runs));
                return 0;
            }
            let rows: Vec<RunRow> = runs
                .iter()
                .map(|r| RunRow {
                    id: r.id.0.clone(),
                    pipeline: r.pipeline.clone(),
                    status: shown_run_status(r, db).to_owned(),
                    started_ms: r.started_ms,
                    finished_ms: r.finished_ms,
                    steps: r.steps,
                    replay: r.replay_of.is_some(),
                })
                .collect();
            let filtered = pipeline.is_some() || status.is_some();
            print_runs(&rows, filtered, &store.display().to_string());
            0
        }
        RunsCommand::Show { run, json, .. } => show(db, &run, json, store),
        RunsCommand::Logs { run, step, .. } => {
            let record = match find_run(db, &run, store) {
                Ok(r) => r,
                Err(code) => return code,
            };
            let events = match journal(db, &record.id) {
                Ok(e) => e,
                Err(code) => return code,
            };
            let mut printed = false;
            for event in events {
                if let JournalEvent::AttemptFinished {
                    step: name,
                    index,
                    attempt,
                    logs,
                    class,
                    ..
                } = event
                {
                    if step.as_ref().is_some_and(|s| s != &name) {
                        continue;
                    }
                    let class = class.map(|c| c.to_string());
                    let lines = logs.iter().map(|l| (l.level.as_str(), l.message.as_str()));
                    print_attempt(&name, index, attempt, class.as_deref(), lines);
                    printed = true;
                }
            }
            if !printed {
                say_no_attempts(step.as_deref());
            }
            0
        }
    }
}

/// A run as `cairn runs list` shows it, from the local store or a server.
pub(super) struct RunRow {
    pub id: String,
    pub pipeline: String,
    /// As people read it: `running`, `interrupted`, `succeeded`, ...
    pub status: String,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    pub steps: usize,
    pub replay: bool,
}

/// The `cairn runs list` table; `place` names where the runs were looked for.
pub(super) fn print_runs(rows: &[RunRow], filtered: bool, place: &str) {
    if rows.is_empty() {
        out!(
            "no {}runs in {place}",
            if filtered { "matching " } else { "" },
        );
        return;
    }
    out!(
        "{:<16}  {:<16}  {:<10}  {:<20}  {:>8}  {:>5}",
        "run",
        "pipeline",
        "status",
        "started",
        "duration",
        "steps"
    );
    for r in rows {
        let status = if r.replay {
            format!("{} (replay)", r.status)
        } else {
            r.status.clone()
        };
        out!(
            "{:<16}  {:<16}  {:<10}  {:<20}  {:>8}  {:>5}",
            r.id,
            r.pipeline,
            status,
            time(r.started_ms),
            span(r.started_ms, r.finished_ms),
            r.steps
        );
    }
}

/// One attempt's log lines, as `cairn runs logs` prints them.
pub(super) fn print_attempt<'l>(
    step: &str,
    index: Option<usize>,
    attempt: u32,
    class: Option<&str>,
    lines: impl Iterator<Item = (&'l str, &'l str)>,
) {
    let at = index.map(|i| format!("[{i}]")).unwrap_or_default();
    let outcome = class.map(|c| format!(" ({c})")).unwrap_or_default();
    out!("== {step}{at} attempt {attempt}{outcome}");
    for (level, message) in lines {
        out!("{level}: {message}");
    }
}

pub(super) fn say_no_attempts(step: Option<&str>) {
    say!(
        "no attempts recorded{}",
        step.map(|s| format!(" for step {s}")).unwrap_or_default()
    );
}

/// The plan of a recorded run, if its source still loads; used only to
/// draw dependencies.
async fn replan(record: &RunRecord, store: &Path) -> Option<Plan> {
    let sandbox = open_sandbox(store).ok()?;
    runner::replan(record, &sandbox).await
}

/// A run's status as people read it: a record still `running` with no
/// process behind it was interrupted.
fn shown_run_status(record: &RunRecord, db: &dyn History) -> &'static str {
    match record.status {
        RunStatus::Running if db.is_live(&record.id) => "running",
        RunStatus::Running => "interrupted",
        other => other.as_str(),
    }
}

/// A run's record as `--json` prints it: as stored, except that a run being
/// run now by another process says `live` (a stored `running` with no
/// process behind it was interrupted).
fn record_json(record: &RunRecord, db: &dyn History) -> Value {
    let mut value = serde_json::to_value(record).unwrap_or_default();
    if record.status == RunStatus::Running && db.is_live(&record.id) {
        value["status"] = json!("live");
    }
    value
}

fn show(db: &dyn History, run: &str, json: bool, store: &Path) -> u8 {
    let record = match find_run(db, run, store) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let events = match journal(db, &record.id) {
        Ok(e) => e,
        Err(code) => return code,
    };
    let views = step_views(&events);
    let plan = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(replan(&record, store))
    });
    let order: Option<Vec<(String, Vec<String>)>> = plan.as_ref().map(|plan| {
        plan.order
            .iter()
            .map(|&id| {
                let step = &plan.steps[id];
                let deps = step.deps.iter().map(|&d| plan.steps[d].name.clone());
                (step.name.clone(), deps.collect())
            })
            .collect()
    });
    if json {
        let steps = steps_json(&views, order.as_deref());
        out!(
            "{}",
            json!({"run": record_json(&record, db), "steps": steps})
        );
        return 0;
    }
    let status = match record.status {
        RunStatus::Running if db.is_live(&record.id) => "running now, in another process",
        RunStatus::Running => "interrupted (resume with `cairn resume`)",
        other => other.as_str(),
    };
    let header = ShowHeader {
        id: &record.id.0,
        pipeline: &record.pipeline,
        status,
        started_ms: record.started_ms,
        finished_ms: record.finished_ms,
        source: format!("manifest {}", record.manifest.display()),
    };
    print_show(&header, &views, order);
    0
}

/// Each step as `cairn runs show --json` lists it.
pub(super) fn steps_json(
    views: &std::collections::BTreeMap<String, StepView>,
    order: Option<&[(String, Vec<String>)]>,
) -> Vec<Value> {
    views
        .iter()
        .map(|(name, v)| {
            let after = order
                .and_then(|o| o.iter().find(|(n, _)| n == name))
                .map(|(_, deps)| deps.clone())
                .unwrap_or_default();
            json!({"name": name, "status": v.status, "detail": v.detail, "duration_ms": v.duration_ms, "wait_ms": v.wait_ms, "attempts": v.attempts, "after": after})
        })
        .collect()
}

/// The first lines of `cairn runs show`.
pub(super) struct ShowHeader<'a> {
    pub id: &'a str,
    pub pipeline: &'a str,
    pub status: &'a str,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    /// Where the pipeline came from (`manifest PATH`, `bundle HASH`).
    pub source: String,
}

/// `cairn runs show`: the run, then its steps in dependency order (in name
/// order, without dependencies, when `order` is unknown).
pub(super) fn print_show(
    header: &ShowHeader<'_>,
    views: &std::collections::BTreeMap<String, StepView>,
    order: Option<Vec<(String, Vec<String>)>>,
) {
    out!(
        "run {}  pipeline {}  {}",
        header.id,
        header.pipeline,
        header.status
    );
    out!(
        "started {}  duration {}  {}",
        time(header.started_ms),
        span(header.started_ms, header.finished_ms),
        header.source
    );
    let known = order.is_some();
    let order = order.unwrap_or_else(|| views.keys().map(|k| (k.clone(), Vec::new())).collect());
    let width = order.iter().map(|(n, _)| n.len()).max().unwrap_or(4);
    for (name, deps) in order {
        let (mark, status, detail, duration, attempts) = match views.get(&name) {
            Some(v) => {
                let mark = match v.status.as_str() {
                    "succeeded" | "cached" | "resumed" => "✓",
                    "failed" => "✗",
                    "skipped" => "↷",
                    "cancelled" => "■",
                    "running" | "queued" => "…",
                    _ => "·",
                };
                let duration = v
                    .duration_ms
                    .map(|d| match v.wait_ms {
                        Some(w) if w > 0 => format!("{d}ms (queued {w}ms)"),
                        _ => format!("{d}ms"),
                    })
                    .unwrap_or_else(|| "-".into());
                (
                    mark,
                    v.status.clone(),
                    v.detail.clone(),
                    duration,
                    v.attempts,
                )
            }
            None => ("·", "pending".to_owned(), String::new(), "-".to_owned(), 0),
        };
        let deps = if deps.is_empty() {
            String::new()
        } else {
            format!("  ← {}", deps.join(", "))
        };
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!("  ({detail})")
        };
        out!(
            "  {mark} {name:<width$}  {status:<9} {duration:>8}  attempts {attempts}{deps}{detail}"
        );
    }
    if !known {
        out!("(the pipeline no longer loads, so dependencies are not shown)");
    }
}

fn gc_runs(
    db: &dyn Store,
    runs: &[RunRecord],
    retention: &Retention,
    dry_run: bool,
    json: bool,
) -> u8 {
    let Selection {
        expired,
        kept_interrupted,
    } = retention.select(runs, |_| false);
    let ids: Vec<RunId> = expired.iter().map(|r| r.id.clone()).collect();
    let freed = if dry_run {
        0
    } else {
        match db.remove_runs(&ids) {
            Ok(freed) => freed,
            Err(e) => return report_error(&e.to_string()),
        }
    };
    let expired: Vec<RunRecord> = expired.into_iter().cloned().collect();
    print_gc(
        &RunsGcReport::new(dry_run, &expired, kept_interrupted, freed),
        retention.older_than,
        json,
    );
    0
}

/// What `cairn runs gc` says, locally and against a server.
pub(crate) fn print_gc(report: &RunsGcReport, older_than: Duration, json: bool) {
    if json {
        out!("{}", serde_json::to_string(report).unwrap_or_default());
        return;
    }
    let age = humantime::format_duration(older_than);
    let runs = |n: usize| {
        if n == 1 {
            "1 run".to_owned()
        } else {
            format!("{n} runs")
        }
    };
    if report.dry_run {
        out!(
            "would forget {} older than {age}:",
            runs(report.removed.len())
        );
        for run in &report.removed_runs {
            out!("  {}  {}  {}", run.id, run.pipeline, time(run.started_ms));
        }
    } else {
        out!(
            "forgot {} older than {age}, freeing {} of journals",
            runs(report.removed.len()),
            crate::sandbox::ByteSize(report.freed_bytes)
        );
    }
    if report.kept_interrupted > 0 {
        out!(
            "resumable runs (interrupted or cancelled) of that age kept, as `cairn resume` can still continue them (--include-interrupted forgets them too): {}",
            report.kept_interrupted
        );
    }
}

pub fn cache(command: CacheCommand, store: &Path) -> u8 {
    let db = match open(store) {
        Ok(db) => db,
        Err(code) => return code,
    };
    let result = match command {
        CacheCommand::Stats { json } => db.cache_stats().map(|stats| {
            if json {
                out!("{}", serde_json::to_string(&stats).unwrap_or_default());
            } else {
                out!("results      {}", stats.entries);
                out!(
                    "output bytes {}",
                    crate::sandbox::ByteSize(stats.output_bytes)
                );
                out!("in blobs     {}", stats.blobs);
                out!(
                    "live         {} (stored results the index points at)",
                    crate::sandbox::ByteSize(stats.live_bytes)
                );
                out!(
                    "dead         {} (results replaced or dropped; `cairn cache gc` reclaims it)",
                    crate::sandbox::ByteSize(stats.dead_bytes)
                );
                out!(
                    "on disk      {} (sled index, packs, blobs)",
                    crate::sandbox::ByteSize(stats.disk_bytes)
                );
                if let Some(oldest) = stats.oldest_ms {
                    out!("oldest       {}", time(oldest));
                }
            }
        }),
        CacheCommand::Gc { older_than } => db.cache_stats().and_then(|before| {
            let removed = db.cache_gc(Some(older_than))?;
            let after = db.cache_stats()?;
            out!(
                "removed {removed} cached results older than {}; reclaimed {} ({} results kept, {} on disk)",
                humantime::format_duration(older_than),
                crate::sandbox::ByteSize(before.disk_bytes.saturating_sub(after.disk_bytes)),
                after.entries,
                crate::sandbox::ByteSize(after.disk_bytes)
            );
            Ok(())
        }),
        CacheCommand::Clear => db
            .cache_gc(None)
            .map(|n| out!("removed {n} cached results")),
    };
    match result {
        Ok(()) => 0,
        Err(e) => report_error(&e.to_string()),
    }
}

/// Lineage as OpenLineage-style run events: one COMPLETE event per
/// succeeded step, whose inputs and outputs are content hashes.
pub fn lineage(args: LineageArgs, store: &Path) -> u8 {
    match args.remote.connect() {
        Ok(None) => {}
        Ok(Some(server)) => return remote::lineage(&server, &args.run),
        Err(code) => return code,
    }
    let db = match open(store) {
        Ok(db) => db,
        Err(code) => return code,
    };
    let record = match find_run(&db, &args.run, store) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let events = match journal(&db, &record.id) {
        Ok(e) => e,
        Err(code) => return code,
    };
    let events = crate::runner::describe::lineage(&db, &record, &events);
    out!(
        "{}",
        serde_json::to_string_pretty(&events).unwrap_or_default()
    );
    0
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only entries of this run (an id, or `last` for the newest run).
    #[arg(long, value_name = "RUN")]
    run: Option<String>,
    /// Print the entries as one JSON array.
    #[arg(long)]
    json: bool,
    /// With --server: the tenant's audit log (an admin token of it), API
    /// actions included.
    #[command(flatten)]
    remote: RemoteArgs,
}

/// `cairn audit`: every grant and denial, oldest first.
pub fn audit(mut args: AuditArgs, store: &Path) -> u8 {
    match args.remote.connect() {
        Ok(None) => {}
        Ok(Some(server)) => return remote::audit(&server, args.run.as_deref(), args.json),
        Err(code) => return code,
    }
    if args.run.as_deref() == Some("last") {
        let last = history(store).and_then(|db| find_run(db.as_ref(), "last", store));
        match last {
            Ok(record) => args.run = Some(record.id.0),
            Err(code) => return code,
        }
    }
    let (entries, bad) = match crate::store::audit::AuditLog::new(store).read() {
        Ok(read) => read,
        Err(e) => return report_error(&e.to_string()),
    };
    let entries: Vec<_> = entries
        .into_iter()
        .filter(|e| {
            args.run
                .as_ref()
                .is_none_or(|r| e.run.as_ref().is_some_and(|x| x.starts_with(r.as_str())))
        })
        .collect();
    print_audit(&entries, args.json);
    if bad > 0 {
        say!("warning: {bad} damaged line(s) in the audit log were skipped");
    }
    0
}

/// Audit entries, oldest first, as `cairn audit` prints them.
pub(super) fn print_audit(entries: &[crate::store::audit::AuditEntry], json: bool) {
    if json {
        out!("{}", serde_json::to_string(entries).unwrap_or_default());
        return;
    }
    for e in entries {
        out!(
            "{}  {:<7}  tenant {:<10} run {:<16} step {:<16} {}  {}",
            time(e.at_ms),
            e.event,
            e.tenant,
            e.run.as_deref().unwrap_or("-"),
            e.step.as_deref().unwrap_or("-"),
            e.capability,
            e.detail
        );
    }
}

/// `cairn cancel RUN --server URL`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The run to stop (an id, a unique prefix, or `last`).
    run: String,
    /// Print the server's answer as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: RemoteArgs,
}

pub fn cancel(args: CancelArgs) -> u8 {
    match args.remote.connect() {
        Ok(Some(server)) => remote::cancel(&server, &args.run, args.json),
        Ok(None) => report_error(
            "cairn cancel stops a run on a server (--server URL or CAIRN_SERVER); \
             a local run is cancelled with Ctrl-C, or SIGTERM to its process, and stays resumable",
        ),
        Err(code) => code,
    }
}
