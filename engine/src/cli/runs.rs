//! Commands over recorded runs and the result cache: `cairn resume`,
//! `cairn replay`, `cairn runs list|show|logs`, `cairn cache
//! stats|gc|clear`, `cairn lineage`.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::pipeline::{EventsArg, Launch, PolicyArgs};
use super::{open_sandbox, report_error};
use crate::manifest::Manifest;
use crate::plan::Plan;
use crate::policy::Policy;
use crate::sandbox::limits::{parse_age, parse_duration};
use crate::store::history::{History, JournalHistory, LIVE};
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
    fn of(record: &RunRecord) -> Option<Self> {
        match record.status.as_str() {
            "succeeded" => Some(StatusFilter::Succeeded),
            "failed" => Some(StatusFilter::Failed),
            "cancelled" => Some(StatusFilter::Cancelled),
            // No process is running it: the store's lock says so.
            "running" => Some(StatusFilter::Interrupted),
            LIVE => Some(StatusFilter::Running),
            _ => None,
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
fn exists(store: &Path) -> bool {
    store.join("db").is_dir() || store.join("journal").is_dir()
}

fn no_store(store: &Path) -> String {
    format!(
        "there is no Cairn store at {} (nothing has run with it yet); run a pipeline first, \
         or point --store or CAIRN_HOME at the store to read",
        store.display()
    )
}

fn open(store: &Path) -> Result<SledStore, u8> {
    if !exists(store) {
        return Err(report_error(&no_store(store)));
    }
    SledStore::open(store).map_err(|e| report_error(&e.to_string()))
}

/// The run history for commands that only read it: the store itself, or,
/// while another process holds it (a run in progress), its journals.
fn history(store: &Path) -> Result<Box<dyn History>, u8> {
    if !exists(store) {
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
    if text == "last" {
        let runs = db.runs().map_err(|e| report_error(&e.to_string()))?;
        return runs
            .into_iter()
            .max_by(|a, b| a.started_ms.cmp(&b.started_ms).then(a.id.cmp(&b.id)))
            .ok_or_else(|| {
                report_error(&format!("no runs yet in the store at {}", store.display()))
            });
    }
    let id = RunId::parse(text).map_err(|e| report_error(&e))?;
    match db.run(&id) {
        Ok(Some(record)) => Ok(record),
        Ok(None) => Err(report_error(&format!(
            "no run {text} in the store at {}; see `cairn runs list` (or give --store DIR)",
            store.display()
        ))),
        Err(e) => Err(report_error(&e.to_string())),
    }
}

fn journal(db: &dyn History, run: &RunId) -> Result<Vec<JournalEvent>, u8> {
    db.journal(run).map_err(|e| report_error(&e.to_string()))
}

/// A recorded run to go on with: the policy to run under, the open store
/// (handed on to [`Launch`]: sled has one opener at a time, and a store
/// closed and opened again at once can still be locked by this process),
/// the run's record and its journal.
struct Loaded {
    policy: Option<Policy>,
    db: Arc<dyn Store>,
    record: RunRecord,
    events: Vec<JournalEvent>,
}

fn load_run(store: &Path, text: &str, policy: &PolicyArgs) -> Result<Loaded, u8> {
    let given = policy.load()?;
    let db = open(store)?;
    let record = find_run(&db, text, store)?;
    let policy = readmission(&record, given)?;
    let events = journal(&db, &record.id)?;
    Ok(Loaded {
        policy,
        db: Arc::new(db),
        record,
        events,
    })
}

/// The policy a recorded run goes on under: the one it was admitted under.
/// A run admitted without a policy may be given one now (that only takes
/// away); a run admitted under one cannot lose it, or move to another
/// policy file or tenant, by how it is resumed.
fn readmission(record: &RunRecord, given: Option<Policy>) -> Result<Option<Policy>, u8> {
    let Some(admitted) = &record.admission else {
        return Ok(given);
    };
    let tenant = admitted.tenant.as_deref().unwrap_or("default");
    let policy = match given {
        Some(policy) => {
            if policy.file != admitted.policy || policy.selected != admitted.tenant {
                return Err(report_error(&format!(
                    "run {} was admitted under {} as tenant {tenant}; it goes on only under the same \
                     policy and tenant (leave out --policy and --tenant to use them)",
                    record.id,
                    admitted.policy.display()
                )));
            }
            policy
        }
        None => Policy::load(&admitted.policy, admitted.tenant.as_deref()).map_err(|e| {
            report_error(&format!(
                "run {} was admitted under {} as tenant {tenant}, which cannot be loaded now: {e}; \
                 nothing was run",
                record.id,
                admitted.policy.display()
            ))
        })?,
    };
    if policy.hash != admitted.policy_hash {
        say!(
            "warning: {} changed since run {} was admitted; checking it again under the current rules",
            admitted.policy.display(),
            record.id
        );
    }
    Ok(Some(policy))
}

pub async fn resume(args: ResumeArgs, store: &Path) -> u8 {
    if args.json {
        super::json_errors::want();
    }
    let Loaded {
        policy,
        db,
        record,
        events,
    } = match load_run(store, &args.run, &args.policy) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    if record.status == "succeeded" {
        say!("run {} already succeeded; nothing to resume", record.id);
        return 0;
    }
    // Results the run already has: each executed element's own event, and
    // every key a finished step lists (cache hits have no event of their own).
    let keys: HashSet<CacheKey> = events
        .iter()
        .flat_map(|e| match e {
            JournalEvent::ItemSucceeded { key, .. } => vec![key.as_str()],
            JournalEvent::StepSucceeded { keys, .. } => keys.iter().map(String::as_str).collect(),
            _ => Vec::new(),
        })
        .filter_map(CacheKey::from_hex)
        .collect();
    let manifest = record.manifest.clone();
    let launch = Launch {
        store,
        jobs: args.jobs,
        fail_fast: false,
        refresh: false,
        resume: Some((record, keys)),
        replay_of: None,
        allow_changed: args.allow_changed,
        json: args.json,
        quiet: args.quiet,
        policy,
        events: args.events.path,
        opened: Some(db),
    };
    launch.run(&manifest).await.1
}

pub async fn replay(args: ReplayArgs, store: &Path) -> u8 {
    if args.json {
        super::json_errors::want();
    }
    let Loaded {
        policy,
        db,
        record,
        events,
    } = match load_run(store, &args.run, &args.policy) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let original: BTreeMap<String, String> = events
        .into_iter()
        .filter_map(|e| match e {
            JournalEvent::StepSucceeded {
                step, output_hash, ..
            } => Some((step, output_hash)),
            _ => None,
        })
        .collect();
    let launch = Launch {
        store,
        jobs: args.jobs,
        fail_fast: false,
        refresh: true,
        resume: None,
        replay_of: Some(record.clone()),
        allow_changed: args.allow_changed,
        json: args.json,
        quiet: args.quiet || args.json,
        policy,
        events: args.events.path,
        opened: Some(db),
    };
    let (report, code) = launch.run(&record.manifest).await;
    let Some(report) = report else { return code };
    if !args.verify {
        return code;
    }
    // (step, original hash, replayed hash) for every step whose output changed.
    let mut mismatches: Vec<(&str, &str, &str)> = Vec::new();
    let mut compared = 0;
    for step in &report.steps {
        let (Some(before), Some(after)) = (original.get(&step.name), &step.output_hash) else {
            continue;
        };
        compared += 1;
        if before != after {
            mismatches.push((&step.name, before, after));
        }
    }
    if args.json {
        let list: Vec<Value> = mismatches
            .iter()
            .map(|(step, before, after)| json!({"step": step, "original": before, "replay": after}))
            .collect();
        out!(
            "{}",
            json!({"verified": compared, "nondeterministic": list})
        );
    } else {
        let short = |hash: &str| hash.chars().take(12).collect::<String>();
        for (step, before, after) in &mismatches {
            say!(
                "nondeterministic: step `{step}` produced different output (run {}: {}…, replay: {}…)",
                record.id,
                short(before),
                short(after)
            );
        }
        if mismatches.is_empty() {
            say!(
                "verified: all {compared} steps that succeeded in run {} produced identical output",
                record.id
            );
        }
    }
    if !mismatches.is_empty() {
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
        && !exists(store)
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
                    && status.is_none_or(|s| StatusFilter::of(r) == Some(s))
            });
            runs.sort_by(|a, b| b.id.cmp(&a.id));
            runs.truncate(limit.unwrap_or(usize::MAX));
            if json {
                out!("{}", serde_json::to_string(&runs).unwrap_or_default());
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
                let status = shown_run_status(&r.status);
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

/// Per-step status from the journal: the last word on each step.
///
/// `attempts` counts attempts that ran in the sandbox (over every element
/// and every resume), `duration_ms` runs from the step's first attempt
/// starting (or, for a step that never ran, from its being queued) to its
/// end, and `wait_ms` is the time between being queued and that first
/// attempt: the same figures `cairn run` prints in its summary.
struct StepView {
    status: String,
    detail: String,
    duration_ms: Option<u64>,
    wait_ms: Option<u64>,
    attempts: u32,
}

fn step_views(events: &[JournalEvent]) -> BTreeMap<String, StepView> {
    fn entry<'v>(views: &'v mut BTreeMap<String, StepView>, step: &str) -> &'v mut StepView {
        views.entry(step.to_owned()).or_insert(StepView {
            status: "pending".into(),
            detail: String::new(),
            duration_ms: None,
            wait_ms: None,
            attempts: 0,
        })
    }
    let mut views = BTreeMap::new();
    let mut scheduled: BTreeMap<String, u64> = BTreeMap::new();
    let mut first_attempt: BTreeMap<String, u64> = BTreeMap::new();
    // From the first attempt (or from being queued) to `end`; and the wait.
    let timing =
        |step: &str, end: u64, scheduled: &BTreeMap<String, u64>, first: &BTreeMap<String, u64>| {
            let queued = scheduled.get(step).copied();
            let ran = first.get(step).copied();
            let from = ran.or(queued);
            (
                from.map(|f| end.saturating_sub(f)),
                queued.map(|q| ran.map_or(0, |r| r.saturating_sub(q))),
            )
        };
    for event in events {
        match event {
            JournalEvent::StepScheduled { at_ms, step } => {
                scheduled.insert(step.clone(), *at_ms);
                // A resumed run schedules the step again: time this try.
                first_attempt.remove(step);
                let v = entry(&mut views, step);
                v.status = "queued".into();
            }
            JournalEvent::AttemptStarted { at_ms, step, .. } => {
                first_attempt.entry(step.clone()).or_insert(*at_ms);
                let v = entry(&mut views, step);
                v.attempts += 1;
                v.status = "running".into();
            }
            JournalEvent::StepSucceeded {
                at_ms,
                step,
                source,
                ..
            } => {
                let (duration, wait) = timing(step, *at_ms, &scheduled, &first_attempt);
                let v = entry(&mut views, step);
                v.status = match source {
                    crate::store::StepSource::Executed => "succeeded",
                    crate::store::StepSource::Cached => "cached",
                    crate::store::StepSource::Journal => "resumed",
                }
                .into();
                v.detail = String::new();
                (v.duration_ms, v.wait_ms) = (duration, wait);
            }
            JournalEvent::StepFailed {
                at_ms,
                step,
                message,
                ..
            } => {
                let (duration, wait) = timing(step, *at_ms, &scheduled, &first_attempt);
                let v = entry(&mut views, step);
                v.status = "failed".into();
                v.detail = message.clone();
                (v.duration_ms, v.wait_ms) = (duration, wait);
            }
            JournalEvent::StepSkipped { step, reason, .. } => {
                let v = entry(&mut views, step);
                v.status = "skipped".into();
                v.detail = reason.clone();
            }
            JournalEvent::StepCancelled { step, .. } => {
                entry(&mut views, step).status = "cancelled".into()
            }
            _ => {}
        }
    }
    views
}

/// The plan of a recorded run, if its manifest still loads.
/// The plan of a recorded run (manifest, directory or bundle), if it still
/// loads; used only to draw dependencies.
async fn replan(record: &RunRecord, store: &Path) -> Option<Plan> {
    let sandbox = open_sandbox(store).ok()?;
    if super::pipeline::is_bundle(&record.manifest) {
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
fn shown_run_status(status: &str) -> &str {
    match status {
        "running" => "interrupted",
        LIVE => "running",
        other => other,
    }
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
        out!("{}", json!({"run": record, "steps": steps}));
        return 0;
    }
    let status = match record.status.as_str() {
        "running" => "interrupted (resume with `cairn resume`)",
        LIVE => "running now, in another process",
        other => other,
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
    matches!(run.status.as_str(), "running" | "cancelled")
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
            let interrupted = run.status == "running";
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
        RunRecord {
            id: RunId(id.into()),
            pipeline: "p".into(),
            manifest: "m".into(),
            manifest_hash: "h".into(),
            started_ms,
            finished_ms,
            status: status.into(),
            steps: 1,
            replay_of: None,
            admission: None,
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
