//! Commands over recorded runs and the result cache: `cairn resume`,
//! `cairn replay`, `cairn runs list|show|logs`, `cairn cache
//! stats|gc|clear`, `cairn lineage`.

use std::path::Path;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::pipeline::{EventsArg, PolicyArgs, Shown, report_run_error, start};
use super::{open_sandbox, report_error};
use crate::manifest::Manifest;
use crate::model::RunStatus;
use crate::plan::Plan;
use crate::runner::describe::step_views;
use crate::runner::{
    self, Continuation, Continued, Launch, Resumption, RunError, Runner, short, store_exists,
};
use crate::sandbox::limits::{parse_age, parse_duration};
use crate::store::history::{History, JournalHistory};
use crate::store::{CacheKey, JournalEvent, RunId, RunRecord, SledStore, Store, StoreError};

/// Exit code: `cairn replay --verify` found steps whose output changed.
pub const EXIT_NONDETERMINISTIC: u8 = 4;

#[derive(Debug, Args)]
pub struct ResumeArgs {
    #[command(flatten)]
    policy: PolicyArgs,
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
    },
    /// Show one run: its steps in dependency order with status and duration.
    Show {
        run: String,
        /// Print the run record and every step's status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the log lines tasks wrote, per attempt.
    Logs {
        run: String,
        /// Only this step.
        #[arg(long, value_name = "STEP")]
        step: Option<String>,
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
        /// Print one JSON object: the removed run ids, the interrupted runs
        /// kept, the bytes freed.
        #[arg(long)]
        json: bool,
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
    /// Remove cached results older than a duration (e.g. 30d).
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

pub async fn resume(args: ResumeArgs, store: &Path) -> u8 {
    if args.json {
        super::json_errors::want();
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
    let launch = Launch {
        jobs: args.jobs,
        allow_changed: args.allow_changed,
        ..replay.continued.launch
    };
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
    if args.json {
        out!(
            "{}",
            json!({"verified": verification.compared, "nondeterministic": verification.mismatches})
        );
    } else {
        for m in &verification.mismatches {
            say!(
                "nondeterministic: step `{}` produced different output (run {original_id}: {}…, replay: {}…)",
                m.step,
                short(&m.original),
                short(&m.replay)
            );
        }
        if verification.mismatches.is_empty() {
            say!(
                "verified: all {} steps that succeeded in run {original_id} produced identical output",
                verification.compared
            );
        }
    }
    if !verification.mismatches.is_empty() {
        return EXIT_NONDETERMINISTIC;
    }
    code
}

fn time(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn span(record: &RunRecord) -> String {
    match record.finished_ms {
        Some(end) => format!(
            "{:.2}s",
            end.saturating_sub(record.started_ms) as f64 / 1000.0
        ),
        None => "-".into(),
    }
}

pub fn runs(command: RunsCommand, store: &Path) -> u8 {
    if let RunsCommand::Gc {
        older_than,
        include_interrupted,
        dry_run,
        json,
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
            if runs.is_empty() {
                let filtered = pipeline.is_some() || status.is_some();
                out!(
                    "no {}runs in {}",
                    if filtered { "matching " } else { "" },
                    store.display()
                );
                return 0;
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
            for r in runs {
                let status = shown_run_status(&r, db);
                let status = if r.replay_of.is_some() {
                    format!("{status} (replay)")
                } else {
                    status.to_owned()
                };
                out!(
                    "{:<16}  {:<16}  {:<10}  {:<20}  {:>8}  {:>5}",
                    r.id,
                    r.pipeline,
                    status,
                    time(r.started_ms),
                    span(&r),
                    r.steps
                );
            }
            0
        }
        RunsCommand::Show { run, json } => show(db, &run, json, store),
        RunsCommand::Logs { run, step } => {
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
                    let at = index.map(|i| format!("[{i}]")).unwrap_or_default();
                    let outcome = class.map(|c| format!(" ({c})")).unwrap_or_default();
                    out!("== {name}{at} attempt {attempt}{outcome}");
                    for line in logs {
                        out!("{}: {}", line.level, line.message);
                    }
                    printed = true;
                }
            }
            if !printed {
                say!(
                    "no attempts recorded{}",
                    step.map(|s| format!(" for step {s}")).unwrap_or_default()
                );
            }
            0
        }
    }
}

/// The plan of a recorded run, if its manifest still loads.
/// The plan of a recorded run (manifest, directory or bundle), if it still
/// loads; used only to draw dependencies.
async fn replan(record: &RunRecord, store: &Path) -> Option<Plan> {
    let sandbox = open_sandbox(store).ok()?;
    if runner::is_bundle(&record.manifest) {
        let bundle = crate::bundle::Bundle::open(&record.manifest).ok()?;
        let manifest = bundle.manifest().ok()?;
        let shown = record.manifest.join(crate::bundle::MANIFEST);
        let grants_base = record
            .manifest
            .parent()
            .map(Path::to_owned)
            .unwrap_or_default();
        let sources = crate::plan::Sources::Bundle {
            bundle: &bundle,
            grants_base: &grants_base,
            secrets: None,
        };
        return Plan::build_from(&shown, manifest, &sandbox, sources)
            .await
            .ok();
    }
    let (path, manifest) = Manifest::load(&record.manifest).ok()?;
    Plan::build(&path, manifest, &sandbox).await.ok()
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
    if json {
        let steps: Vec<Value> = views
            .iter()
            .map(|(name, v)| {
                let after: Vec<&str> = plan
                    .as_ref()
                    .and_then(|p| p.step(name))
                    .map(|s| s.deps.iter().map(|&d| plan.as_ref().map_or("", |p| p.steps[d].name.as_str())).collect())
                    .unwrap_or_default();
                json!({"name": name, "status": v.status, "detail": v.detail, "duration_ms": v.duration_ms, "wait_ms": v.wait_ms, "attempts": v.attempts, "after": after})
            })
            .collect();
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
    out!(
        "run {}  pipeline {}  {}",
        record.id,
        record.pipeline,
        status
    );
    out!(
        "started {}  duration {}  manifest {}",
        time(record.started_ms),
        span(&record),
        record.manifest.display()
    );
    let order: Vec<(String, Vec<String>)> = match &plan {
        Some(plan) => plan
            .order
            .iter()
            .map(|&id| {
                let step = &plan.steps[id];
                (
                    step.name.clone(),
                    step.deps
                        .iter()
                        .map(|&d| plan.steps[d].name.clone())
                        .collect(),
                )
            })
            .collect(),
        None => views.keys().map(|k| (k.clone(), Vec::new())).collect(),
    };
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
    if plan.is_none() {
        out!("(the manifest no longer loads, so dependencies are not shown)");
    }
    0
}

/// Can `cairn resume` still continue this run, as the CLI said it could when
/// it stopped? A run killed outright (still `running`, no process behind it)
/// and one cancelled by Ctrl-C or SIGTERM both can; `runs gc` keeps them
/// unless told otherwise.
fn resumable(run: &RunRecord) -> bool {
    matches!(run.status, RunStatus::Running | RunStatus::Cancelled)
}

/// Which runs `cairn runs gc` forgets.
struct Retention {
    now_ms: u64,
    older_than: Duration,
    include_interrupted: bool,
}

/// What [`Retention::select`] decided.
struct Selection<'r> {
    expired: Vec<&'r RunRecord>,
    /// Interrupted runs old enough to go, kept because they can be resumed.
    kept_interrupted: usize,
}

impl Retention {
    fn select<'r>(&self, runs: &'r [RunRecord]) -> Selection<'r> {
        let mut selection = Selection {
            expired: Vec::new(),
            kept_interrupted: 0,
        };
        let cutoff = self
            .now_ms
            .saturating_sub(u64::try_from(self.older_than.as_millis()).unwrap_or(u64::MAX));
        for run in runs {
            let interrupted = run.status == RunStatus::Running;
            let resumable = interrupted || resumable(run);
            let ended = if interrupted {
                run.started_ms
            } else {
                run.finished_ms.unwrap_or(run.started_ms)
            };
            if ended > cutoff {
                continue;
            }
            if resumable && !self.include_interrupted {
                selection.kept_interrupted += 1;
            } else {
                selection.expired.push(run);
            }
        }
        selection
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
    } = retention.select(runs);
    let ids: Vec<RunId> = expired.iter().map(|r| r.id.clone()).collect();
    let freed = if dry_run {
        0
    } else {
        match db.remove_runs(&ids) {
            Ok(freed) => freed,
            Err(e) => return report_error(&e.to_string()),
        }
    };
    if json {
        let report = json!({
            "dry_run": dry_run,
            "removed": ids,
            "kept_interrupted": kept_interrupted,
            "freed_bytes": freed,
        });
        out!("{report}");
        return 0;
    }
    let age = humantime::format_duration(retention.older_than);
    let runs = |n: usize| {
        if n == 1 {
            "1 run".to_owned()
        } else {
            format!("{n} runs")
        }
    };
    if dry_run {
        out!("would forget {} older than {age}:", runs(ids.len()));
        for run in &expired {
            out!("  {}  {}  {}", run.id, run.pipeline, time(run.started_ms));
        }
    } else {
        out!(
            "forgot {} older than {age}, freeing {} of journals",
            runs(ids.len()),
            crate::sandbox::ByteSize(freed)
        );
    }
    if kept_interrupted > 0 {
        out!(
            "resumable runs (interrupted or cancelled) of that age kept, as `cairn resume` can still continue them (--include-interrupted forgets them too): {kept_interrupted}"
        );
    }
    0
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
                    "on disk      {} (sled index, packs, blobs)",
                    crate::sandbox::ByteSize(stats.disk_bytes)
                );
                if let Some(oldest) = stats.oldest_ms {
                    out!("oldest       {}", time(oldest));
                }
            }
        }),
        CacheCommand::Gc { older_than } => db.cache_gc(Some(older_than)).map(|n| {
            out!(
                "removed {n} cached results older than {}",
                humantime::format_duration(older_than)
            );
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
    let mut out = Vec::new();
    // A resumed run journals again the steps it took from its own journal:
    // a step's lineage is its first success, the one that produced it.
    let mut seen = std::collections::HashSet::new();
    for event in &events {
        let JournalEvent::StepSucceeded {
            at_ms,
            step,
            keys,
            output_hash,
            ..
        } = event
        else {
            continue;
        };
        if !seen.insert(step.as_str()) {
            continue;
        }
        let mut inputs = Vec::new();
        let mut components = Vec::new();
        for key in keys {
            let meta = CacheKey::from_hex(key)
                .and_then(|k| db.result(&k, None).ok().flatten())
                .map(|(m, _)| m);
            match meta {
                Some(meta) => {
                    inputs.push(json!({"namespace": "cairn", "name": format!("blake3:{}", meta.input_hash), "facets": {"cacheKey": key}}));
                    if !components.contains(&meta.component) {
                        components.push(meta.component);
                    }
                }
                None => inputs.push(json!({"namespace": "cairn", "name": format!("cache-key:{key}"), "facets": {"note": "result no longer cached"}})),
            }
        }
        out.push(json!({
            "eventType": "COMPLETE",
            "eventTime": time(*at_ms),
            "producer": "https://github.com/cairn-dev/cairn",
            "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
            "run": {"runId": record.id.0, "facets": {"cairn": {"replayOf": record.replay_of}}},
            "job": {"namespace": format!("cairn/{}", record.pipeline), "name": step, "facets": {"cairn": {"components": components.iter().map(|c| format!("blake3:{c}")).collect::<Vec<_>>()}}},
            "inputs": inputs,
            "outputs": [{"namespace": "cairn", "name": format!("blake3:{output_hash}")}],
        }));
    }
    out!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
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
}

/// `cairn audit`: every grant and denial, oldest first.
pub fn audit(mut args: AuditArgs, store: &Path) -> u8 {
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
    if args.json {
        out!("{}", serde_json::to_string(&entries).unwrap_or_default());
    } else {
        for e in &entries {
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
    if bad > 0 {
        say!("warning: {bad} damaged line(s) in the audit log were skipped");
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, status: &str, started_ms: u64, finished_ms: Option<u64>) -> RunRecord {
        let status = serde_json::from_value(json!(status)).expect("a run status word");
        RunRecord {
            id: RunId(id.into()),
            pipeline: "p".into(),
            manifest: "m".into(),
            manifest_hash: "h".into(),
            started_ms,
            finished_ms,
            status,
            steps: 1,
            replay_of: None,
            admission: None,
            tenant: None,
            bundle: None,
        }
    }

    fn selected(retention: &Retention, runs: &[RunRecord]) -> (Vec<String>, usize) {
        let selection = retention.select(runs);
        let ids = selection.expired.iter().map(|r| r.id.0.clone()).collect();
        (ids, selection.kept_interrupted)
    }

    #[test]
    fn retention_counts_age_from_the_end_and_keeps_resumable_runs() {
        let day = 86_400_000;
        let runs = [
            // Started 40 days ago but ended 10 days ago: young.
            record("long", "succeeded", 60 * day, Some(90 * day)),
            record("old", "failed", 10 * day, Some(10 * day + 5)),
            record("cancelled", "cancelled", 20 * day, Some(20 * day)),
            record("interrupted", "running", 5 * day, None),
            record("fresh", "running", 99 * day, None),
        ];
        let mut retention = Retention {
            now_ms: 100 * day,
            older_than: Duration::from_millis(30 * day),
            include_interrupted: false,
        };
        // Cancelled (Ctrl-C, SIGTERM) and interrupted runs can be resumed.
        assert_eq!(selected(&retention, &runs), (vec!["old".to_owned()], 2));
        retention.include_interrupted = true;
        assert_eq!(
            selected(&retention, &runs),
            (
                vec![
                    "old".to_owned(),
                    "cancelled".to_owned(),
                    "interrupted".to_owned()
                ],
                0
            )
        );
        // A retention longer than the epoch selects nothing, without overflow.
        retention.older_than = Duration::MAX;
        assert_eq!(selected(&retention, &runs), (vec![], 0));
    }
}
