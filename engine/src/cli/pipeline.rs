//! `cairn run`, `cairn check` and `cairn graph`: pipelines from a manifest.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use super::events::{EventStream, Tee};
use super::{EXIT_ERROR, EXIT_INTERRUPTED, EXIT_PIPELINE_FAILED, Interrupt, open_sandbox};
use crate::plan::{Plan, Source};
use crate::policy::Policy;
use crate::runner::{self, Continuation, Finished, Launch, RunError, Runner, Warning};
use crate::schedule::{self, Event, RunObserver, RunReport, RunStatus, StepReport, StepStatus};
use crate::store::StepSource;
use crate::store::audit::AuditLog;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pipeline manifest, or a directory holding `pipeline.toml`.
    manifest: PathBuf,

    /// Most steps running at once (default: the number of CPU cores).
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    jobs: Option<u32>,

    /// Stop at the first failure of a required step instead of running the
    /// rest of the DAG.
    #[arg(long)]
    fail_fast: bool,

    /// Print one JSON report on stdout (status, every step, the output).
    #[arg(long)]
    json: bool,

    /// Print only the output and errors: no progress, no task logs, no summary.
    #[arg(short, long)]
    quiet: bool,

    /// Run every step even if its result is cached (results are stored anew).
    #[arg(long)]
    refresh: bool,

    #[command(flatten)]
    events: EventsArg,

    #[command(flatten)]
    policy: PolicyArgs,

    /// Run it on a Cairn server instead (`cairn serve`): the pipeline is
    /// packed, uploaded and run there, its progress and output shown here.
    #[arg(long, value_name = "URL", env = "CAIRN_SERVER",
          conflicts_with_all = ["policy", "path", "jobs", "fail_fast"])]
    server: Option<String>,

    /// The token for --server (an operator's of the tenant).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "CAIRN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
}

/// `--events FILE`, shared by run, resume and replay.
#[derive(Debug, Args)]
pub(super) struct EventsArg {
    /// Write the run's events to FILE as they happen, one JSON object per
    /// line (step started, task log, attempt failed, step finished, ...),
    /// for tools that follow a run live. Task text in them is masked like logs.
    #[arg(long = "events", value_name = "FILE")]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The pipeline manifest, or a directory holding `pipeline.toml`.
    manifest: PathBuf,

    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    policy: PolicyArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    /// A Mermaid flowchart (renders on GitHub and in many editors).
    Mermaid,
    /// Graphviz DOT (`cairn graph p.toml --format dot | dot -Tsvg > p.svg`).
    Dot,
}

#[derive(Debug, Args)]
pub struct GraphArgs {
    /// The pipeline manifest, or a directory holding `pipeline.toml`.
    manifest: PathBuf,

    /// Output format.
    #[arg(long, value_enum, default_value = "mermaid")]
    format: GraphFormat,
}

/// Where a host's policy comes from (shared by run, check, resume, replay).
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Host policy capping what pipelines may ask for (see the README).
    #[arg(long, value_name = "FILE", env = "CAIRN_POLICY")]
    pub policy: Option<PathBuf>,
    /// The tenant whose [tenants.NAME] section of the policy applies.
    #[arg(long, value_name = "NAME", env = "CAIRN_TENANT", requires = "policy")]
    pub tenant: Option<String>,
}

impl PolicyArgs {
    /// Was a policy named on the command line?
    pub fn given(&self) -> bool {
        self.policy.is_some() || self.tenant.is_some()
    }

    pub fn load(&self) -> Result<Option<Policy>, u8> {
        match &self.policy {
            None => Ok(None),
            Some(file) => Policy::load(file, self.tenant.as_deref())
                .map(Some)
                .map_err(|e| super::report_error(&e)),
        }
    }
}

/// Print a run that could not start: every plan problem or policy denial on
/// its own line, then the reason. Returns the exit code.
pub(super) fn report_run_error(error: &RunError) -> u8 {
    match error {
        RunError::Invalid { errors, .. } => {
            for problem in &errors.0 {
                super::print_error(problem);
            }
            say!("error: {error}");
            EXIT_ERROR
        }
        RunError::Refused { denials, .. } => {
            for d in denials {
                match &d.step {
                    Some(step) => super::print_error(format_args!("step `{step}`: {}", d.message)),
                    None => super::print_error(&d.message),
                }
            }
            super::report_error(&error.to_string())
        }
        other => super::report_error(&other.to_string()),
    }
}

fn warn(warnings: &[Warning]) {
    for w in warnings {
        say!("warning: {w}");
    }
}

pub async fn check(args: CheckArgs, store: &Path) -> u8 {
    if args.json {
        super::json_errors::want();
    }
    let policy = match args.policy.load() {
        Ok(p) => p,
        Err(code) => return code,
    };
    let sandbox = match open_sandbox(store) {
        Ok(s) => s,
        Err(e) => return super::report_error(&e),
    };
    let audit = AuditLog::new(store);
    let planned = match runner::plan(&args.manifest, &sandbox, policy.as_ref(), &audit, None).await
    {
        Ok(planned) => planned,
        Err(e) => return report_run_error(&e),
    };
    if let Err(e) = runner::check(&planned, policy.as_ref(), &audit) {
        return report_run_error(&e);
    }
    let plan = planned.plan;
    if args.json {
        let steps: Vec<_> = plan
            .order
            .iter()
            .map(|&id| {
                let s = &plan.steps[id];
                json!({
                    "name": s.name,
                    "component": &*s.component_path,
                    "kind": s.component.kind,
                    "after": s.deps.iter().map(|&d| plan.steps[d].name.as_str()).collect::<Vec<_>>(),
                    "map": s.map.as_ref().map(|r| r.to_string()),
                    "when": s.when.as_ref().map(|c| c.reference.to_string()),
                })
            })
            .collect();
        out!(
            "{}",
            json!({"ok": true, "pipeline": plan.name, "steps": steps})
        );
    } else {
        let edges: usize = plan.steps.iter().map(|s| s.deps.len()).sum();
        out!(
            "ok: {} is valid: {} steps, {} dependencies",
            plan.name,
            plan.steps.len(),
            edges
        );
        if plan.steps.len() <= 50 {
            let order: Vec<&str> = plan
                .order
                .iter()
                .map(|&id| plan.steps[id].name.as_str())
                .collect();
            out!("order: {}", order.join(" → "));
        }
    }
    0
}

pub async fn graph(args: GraphArgs, store: &Path) -> u8 {
    let sandbox = match open_sandbox(store) {
        Ok(s) => s,
        Err(e) => return super::report_error(&e),
    };
    let audit = AuditLog::new(store);
    let plan = match runner::plan(&args.manifest, &sandbox, None, &audit, None).await {
        Ok(planned) => planned.plan,
        Err(e) => return report_run_error(&e),
    };
    out_part!(
        "{}",
        match args.format {
            GraphFormat::Mermaid => mermaid(&plan),
            GraphFormat::Dot => dot(&plan),
        }
    );
    0
}

/// A step's label: its name, its component file, and map/when notes.
fn label(plan: &Plan, id: usize, newline: &str) -> String {
    let step = &plan.steps[id];
    let file = step
        .component_path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut label = format!("{}{newline}{file}", step.name);
    if let Some(map) = &step.map {
        label.push_str(&format!("{newline}map over {map}"));
    }
    if let Some(when) = &step.when {
        label.push_str(&format!(
            "{newline}when {}{}",
            if when.negate { "!" } else { "" },
            when.reference
        ));
    }
    label
}

/// Dependencies that carry data (references), as opposed to `after` order.
fn data_deps(plan: &Plan, id: usize) -> Vec<usize> {
    let step = &plan.steps[id];
    let mut refs = step.input.references();
    refs.extend(step.map.iter());
    refs.extend(step.when.iter().map(|c| &c.reference));
    refs.iter()
        .filter_map(|r| match &r.source {
            Source::Step(name) => plan.id(name),
            _ => None,
        })
        .collect()
}

fn mermaid(plan: &Plan) -> String {
    let mut out = format!("---\ntitle: {}\n---\nflowchart TD\n", plan.name);
    for &id in &plan.order {
        let text = label(plan, id, "<br/>").replace('"', "#quot;");
        let shape = if plan.steps[id].map.is_some() {
            ("[[", "]]")
        } else {
            ("[", "]")
        };
        out.push_str(&format!("    s{id}{}\"{text}\"{}\n", shape.0, shape.1));
    }
    for &id in &plan.order {
        let data = data_deps(plan, id);
        for &dep in &plan.steps[id].deps {
            let arrow = if data.contains(&dep) { "-->" } else { "-.->" };
            out.push_str(&format!("    s{dep} {arrow} s{id}\n"));
        }
    }
    out
}

fn dot(plan: &Plan) -> String {
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = format!(
        "digraph \"{}\" {{\n    rankdir=LR;\n    node [shape=box];\n",
        quote(&plan.name)
    );
    for &id in &plan.order {
        let shape = if plan.steps[id].map.is_some() {
            ", shape=box3d"
        } else {
            ""
        };
        out.push_str(&format!(
            "    \"{}\" [label=\"{}\"{shape}];\n",
            quote(&plan.steps[id].name),
            quote(&label(plan, id, "\n")).replace('\n', "\\n")
        ));
    }
    for &id in &plan.order {
        let data = data_deps(plan, id);
        for &dep in &plan.steps[id].deps {
            let style = if data.contains(&dep) {
                ""
            } else {
                " [style=dashed]"
            };
            out.push_str(&format!(
                "    \"{}\" -> \"{}\"{style};\n",
                quote(&plan.steps[dep].name),
                quote(&plan.steps[id].name)
            ));
        }
    }
    out.push_str("}\n");
    out
}

pub async fn run(args: RunArgs, store: &Path) -> u8 {
    if args.json {
        super::json_errors::want();
    }
    if let Some(url) = args.server {
        let Some(token) = args.token else {
            return super::report_error(
                "--server needs a token: set CAIRN_TOKEN (or --token) to an operator token of your tenant \
                 (`cairn token create --role operator`)",
            );
        };
        let remote = super::remote::Remote { url, token };
        return super::remote::run(&remote, &args.manifest, args.json, args.quiet, args.refresh);
    }
    let policy = match args.policy.load() {
        Ok(p) => p,
        Err(code) => return code,
    };
    let runner = match Runner::open(store, args.jobs.unwrap_or(0)) {
        Ok(runner) => runner,
        Err(e) => return report_run_error(&e),
    };
    let launch = Launch {
        policy,
        jobs: args.jobs,
        fail_fast: args.fail_fast,
        refresh: args.refresh,
        ..Launch::new(args.manifest)
    };
    let shown = Shown {
        json: args.json,
        quiet: args.quiet,
        events: args.events.path,
    };
    start(&runner, launch, &shown).await.1
}

/// How a run is shown: `--json`, `--quiet`, `--events FILE`.
pub(super) struct Shown {
    pub json: bool,
    pub quiet: bool,
    pub events: Option<PathBuf>,
}

/// Start `launch` with the run service and show it as it goes; print the
/// outcome. Returns the finished run (if it started) and the exit code.
pub(super) async fn start(
    runner: &Runner,
    launch: Launch,
    shown: &Shown,
) -> (Option<Finished>, u8) {
    let replay_of = match &launch.continuation {
        Continuation::Replay { of } => Some(of.id.clone()),
        _ => None,
    };
    let admitted = match runner.admit(launch).await {
        Ok(admitted) => admitted,
        Err(e) => return (None, report_run_error(&e)),
    };
    warn(admitted.warnings());
    let resumed = admitted.resumed();
    // Opened before the run is recorded: a bad path stops nothing midway.
    let events = match &shown.events {
        Some(path) => match EventStream::create(path, &admitted.id().0) {
            Ok(stream) => Some(Arc::new(stream)),
            Err(e) => return (None, super::report_error(&e)),
        },
        None => None,
    };
    let started = match admitted.record() {
        Ok(started) => started,
        Err(e) => return (None, report_run_error(&e)),
    };
    let (id, plan) = (started.record().id.clone(), started.plan().clone());
    if !shown.quiet && !shown.json {
        say!(
            "run {id} of {} (resume it with `cairn resume {id}` if interrupted)",
            plan.name
        );
    }
    let live = std::io::stderr().is_terminal() && !shown.quiet && !shown.json;
    let mut observer: Arc<dyn RunObserver> = if shown.quiet {
        Arc::new(schedule::Silent)
    } else if live {
        Arc::new(LiveProgress::new(&plan))
    } else {
        Arc::new(EventLines::default())
    };
    if let Some(stream) = &events {
        stream.emit(
            "run-started",
            json!({
                "pipeline": plan.name,
                "steps": plan.steps.len(),
                "resumed": resumed,
                "replay_of": replay_of.as_ref().map(|r| &r.0),
            }),
        );
        stream.flush();
        observer = Arc::new(Tee(observer, stream.clone()));
    }
    // Which signal cancelled the run, for the exit code.
    let signal = std::sync::OnceLock::new();
    let interrupted = super::interrupted();
    let cancel = async {
        let _ = signal.set(interrupted.await);
    };
    let finished = started.execute(observer.clone(), cancel).await;
    // Work tasks may still hold the observer for a moment; write out
    // what it buffered before the summary.
    observer.idle();
    drop(observer);
    warn(&finished.warnings);
    let report = &finished.report;
    if let Some(stream) = &events {
        stream.emit(
            "run-finished",
            json!({
                "status": report.status,
                "duration_us": report.duration.as_micros() as u64,
                "output_hash": report.output_hash(),
            }),
        );
        stream.flush();
    }

    if shown.json {
        #[derive(serde::Serialize)]
        struct JsonReport<'a> {
            run_id: &'a str,
            #[serde(flatten)]
            report: &'a RunReport,
        }
        let json = JsonReport {
            run_id: &id.0,
            report,
        };
        // Straight to stdout through one large buffer: a report of ten
        // thousand steps is megabytes, and stdout is line-buffered.
        super::json_errors::stdout_used();
        let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
        let written = serde_json::to_writer(&mut out, &json)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
            .and_then(|()| out.flush());
        if let Err(e) = written {
            // The command then fails with one clear error (cli::main).
            super::note_stdout_failure(e);
        }
    } else {
        if !shown.quiet {
            say_part!("{}", summary(report));
        }
        if let Some(output) = &report.output
            && report.status == RunStatus::Succeeded
        {
            if std::io::stdout().is_terminal() {
                let pretty = report
                    .output_value()
                    .and_then(|value| serde_json::to_string_pretty(&value).ok());
                out!("{}", pretty.as_deref().unwrap_or(output.get()));
            } else {
                out!("{}", output.get());
            }
        }
    }
    if let Some(e) = &report.store_error {
        say!(
            "error: {e}. The run stopped; steps not yet recorded were not reported done. \
             Free the store, then continue with `cairn resume {id}`"
        );
    }
    let code = match report.status {
        RunStatus::Succeeded => 0,
        RunStatus::Failed | RunStatus::Running => {
            if !shown.json {
                say!(
                    "error: pipeline {} failed; see the failed steps above",
                    report.pipeline
                );
            }
            EXIT_PIPELINE_FAILED
        }
        RunStatus::Cancelled => {
            let signal: Option<&Interrupt> = signal.get();
            say!(
                "interrupted by {}: the run was cancelled; running steps were stopped. Continue it with `cairn resume {id}`",
                signal.map_or("a signal", |s| s.name()),
            );
            signal.map_or(EXIT_INTERRUPTED, |s| s.exit_code())
        }
    };
    (Some(finished), code)
}

/// How the summary and the live display name a step's end: a step answered
/// wholly from the cache says `cached`, one taken from a resumed run's
/// journal `resumed`, and a failure the step was allowed to have `failed*`.
fn shown_status(step: &StepReport) -> String {
    match (&step.status, step.source) {
        (StepStatus::Succeeded, Some(StepSource::Cached)) => "cached".into(),
        (StepStatus::Succeeded, Some(StepSource::Journal)) => "resumed".into(),
        (StepStatus::Failed(_), _) if step.allow_failure => "failed*".into(),
        (status, _) => status.label().into(),
    }
}

/// The final table of a local run (see [`summary_table`]).
fn summary(report: &RunReport) -> String {
    let rows: Vec<SummaryRow> = report
        .steps
        .iter()
        .map(|step| {
            let ran = !matches!(
                step.status,
                StepStatus::Pending | StepStatus::Skipped { .. }
            );
            SummaryRow {
                name: step.name.clone(),
                status: shown_status(step),
                attempts: step.attempts,
                elements: step.items,
                timing: ran.then_some((step.wait, step.duration)),
                fuel: step.fuel,
                note: match &step.status {
                    StepStatus::Failed(f) => Some(f.message.clone()),
                    StepStatus::Skipped { reason } => Some(reason.clone()),
                    _ => None,
                },
            }
        })
        .collect();
    summary_table(
        &rows,
        &report.pipeline,
        report.status.as_str(),
        report.duration,
    )
}

/// One step in the final table.
pub(super) struct SummaryRow {
    pub name: String,
    /// As the table says it (`cached`, `failed*`, ...).
    pub status: String,
    pub attempts: u32,
    pub elements: Option<usize>,
    /// Queued and running time, for a step that ran.
    pub timing: Option<(Duration, Duration)>,
    pub fuel: u64,
    /// A failure's message or a skip's reason.
    pub note: Option<String>,
}

/// The final table. `attempts` counts the attempts that ran in the sandbox
/// (over all elements of a mapped step, whose element count has a column of
/// its own), as `cairn runs show` does; `wait` is the time the step was
/// queued for a job slot, `run` the time from its first attempt to its end.
pub(super) fn summary_table(
    rows: &[SummaryRow],
    pipeline: &str,
    status: &str,
    duration: Duration,
) -> String {
    let width = rows.iter().map(|s| s.name.len()).max().unwrap_or(4).max(4);
    let mut out = format!(
        "\n{:<width$}  {:<9}  {:>8}  {:>8}  {:>9}  {:>9}  {:>14}\n",
        "step", "status", "attempts", "elements", "wait", "run", "fuel"
    );
    let mut allowed_failures = false;
    for step in rows {
        allowed_failures |= step.status.ends_with('*');
        let elements = step.elements.map_or("-".to_owned(), |n| n.to_string());
        let (wait, run) = match step.timing {
            Some((wait, run)) => (format_duration(wait), format_duration(run)),
            None => ("-".to_owned(), "-".to_owned()),
        };
        out.push_str(&format!(
            "{:<width$}  {:<9}  {:>8}  {:>8}  {:>9}  {:>9}  {:>14}\n",
            step.name,
            step.status,
            step.attempts,
            elements,
            wait,
            run,
            group_digits(step.fuel)
        ));
        if let Some(note) = &step.note {
            out.push_str(&format!("{:width$}  └ {note}\n", ""));
        }
    }
    if allowed_failures {
        out.push_str(
            "* failed, but the step has allow_failure = true: the run does not fail for it\n",
        );
    }
    out.push_str(&format!(
        "pipeline {pipeline} {status} in {}\n",
        format_duration(duration)
    ));
    out
}

pub(super) fn format_duration(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{}µs", d.as_micros())
    } else if d < Duration::from_secs(1) {
        format!("{:.1}ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn describe_event(event: &Event<'_>) -> Option<String> {
    Some(match event {
        Event::StepStarted { step, items, .. } if step.map.is_some() => {
            format!("start  {} ({items} elements)", step.name)
        }
        Event::StepStarted { step, .. } => format!("start  {}", step.name),
        Event::AttemptFailed {
            step,
            index,
            attempt,
            failure,
            retry_in,
        } => {
            let at = index.map(|i| format!("[{i}]")).unwrap_or_default();
            match retry_in {
                Some(delay) => format!(
                    "retry  {}{at} attempt {attempt} failed: {}; retrying in {}",
                    step.name,
                    failure.message,
                    format_duration(*delay)
                ),
                None => format!(
                    "fail   {}{at} attempt {attempt}: {}",
                    step.name, failure.message
                ),
            }
        }
        Event::StepFinished { step, report } => match &report.status {
            StepStatus::Succeeded if report.source == Some(StepSource::Cached) => {
                format!("cached {}", step.name)
            }
            StepStatus::Succeeded if report.source == Some(StepSource::Journal) => {
                format!("resumed {} (from the journal)", step.name)
            }
            StepStatus::Succeeded if report.wait >= Duration::from_millis(1) => format!(
                "done   {} in {} (queued {} first)",
                step.name,
                format_duration(report.duration),
                format_duration(report.wait)
            ),
            StepStatus::Succeeded => format!(
                "done   {} in {}",
                step.name,
                format_duration(report.duration)
            ),
            StepStatus::Failed(_) => format!("failed {}", step.name),
            StepStatus::Skipped { reason } => format!("skip   {} ({reason})", step.name),
            other => format!("{}  {}", other.label(), step.name),
        },
        Event::TaskLog { step, index, line } => {
            let at = index.map(|i| format!("[{i}]")).unwrap_or_default();
            format!(
                "[{}{at}] {}: {}",
                step.name,
                line.level.as_str(),
                line.message
            )
        }
        Event::TaskProgress { .. }
        | Event::ItemFinished { .. }
        | Event::StepQueued { .. }
        | Event::AttemptStarted { .. } => return None,
    })
}

/// Not a terminal: one plain line per event on stderr.
///
/// Lines about the scheduler's own moves (a step started, cached, finished)
/// are gathered and written when it goes idle, so a burst of ten thousand
/// cached steps costs a few writes rather than ten thousand. Lines from
/// running tasks (their logs, a failed attempt) go out at once, after what
/// was gathered, so stderr keeps the order of events.
#[derive(Default)]
struct EventLines {
    pending: Mutex<String>,
}

impl EventLines {
    /// Write out what is buffered. A closed stderr is not worth failing the
    /// run for, so write errors are dropped (as `eprintln!` would panic).
    fn write_out(pending: &mut String) {
        if !pending.is_empty() {
            let _ = std::io::stderr().lock().write_all(pending.as_bytes());
            pending.clear();
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, String> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Buffered event lines are written out at least at this size.
const EVENT_BUFFER: usize = 64 * 1024;

impl RunObserver for EventLines {
    fn event(&self, event: Event<'_>) {
        let Some(line) = describe_event(&event) else {
            return;
        };
        let mut pending = self.pending();
        pending.push_str(&line);
        pending.push('\n');
        if event.from_work() || pending.len() >= EVENT_BUFFER {
            Self::write_out(&mut pending);
        }
    }

    fn idle(&self) {
        Self::write_out(&mut self.pending());
    }
}

impl Drop for EventLines {
    fn drop(&mut self) {
        Self::write_out(self.pending.get_mut().unwrap_or_else(|e| e.into_inner()));
    }
}

/// A terminal: a total bar, one line per running step, logs above them.
///
/// A step gets its line when its first attempt runs, not when it is queued:
/// with `--jobs 2` at most two steps (or elements) are on screen with a
/// clock. Queued steps are counted on the total bar. Every line is cleared
/// when its step ends and whatever is left when the run ends, so the
/// summary follows a clean screen.
struct LiveProgress {
    multi: MultiProgress,
    total: ProgressBar,
    steps: Mutex<Steps>,
    _echo: QuietTerminal,
}

/// Turns the terminal's echo off while the live display is drawn, and back
/// on when dropped. The display redraws its lines by moving the cursor up
/// as many lines as it drew; a `^C` echoed after a full-width line wraps
/// onto a new one (so do keys typed during a run), the display then clears
/// the wrong lines, and stale progress lines stay on screen.
struct QuietTerminal {
    saved: Option<libc::termios>,
}

impl QuietTerminal {
    fn new() -> Self {
        let fd = libc::STDERR_FILENO;
        // SAFETY: `termios` is plain data, and tcgetattr/tcsetattr only read
        // and write the struct we own, on a descriptor we checked is a tty.
        unsafe {
            let mut term: libc::termios = std::mem::zeroed();
            if libc::isatty(fd) != 1 || libc::tcgetattr(fd, &mut term) != 0 {
                return Self { saved: None };
            }
            let saved = term;
            term.c_lflag &= !(libc::ECHO | libc::ECHOCTL);
            if libc::tcsetattr(fd, libc::TCSANOW, &term) != 0 {
                return Self { saved: None };
            }
            Self { saved: Some(saved) }
        }
    }
}

impl Drop for QuietTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: as in `new`; restores the settings read there.
            unsafe {
                libc::tcsetattr(libc::STDERR_FILENO, libc::TCSANOW, saved);
            }
        }
    }
}

#[derive(Default)]
struct Steps {
    /// Steps started and not finished, with their line.
    running: HashMap<usize, ProgressBar>,
    /// Elements of mapped steps finished before the step's line exists
    /// (answered from the cache while other elements wait for a slot).
    early: HashMap<usize, u64>,
    queued: usize,
}

impl LiveProgress {
    fn new(plan: &Plan) -> Self {
        let (multi, total) = total_bar(plan.steps.len());
        total.set_prefix(plan.name.clone());
        Self {
            multi,
            total,
            steps: Mutex::new(Steps::default()),
            _echo: QuietTerminal::new(),
        }
    }

    fn steps(&self) -> std::sync::MutexGuard<'_, Steps> {
        self.steps.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn show_counts(&self, steps: &Steps) {
        let mut parts = Vec::new();
        if !steps.running.is_empty() {
            parts.push(format!("{} running", steps.running.len()));
        }
        if steps.queued > 0 {
            parts.push(format!("{} queued", steps.queued));
        }
        self.total.set_message(parts.join(", "));
    }

    /// A step's line, not yet drawn anywhere: a bar made with the default
    /// target would draw itself on stderr as it is set up, outside the
    /// multi-bar's accounting, and leave a line behind.
    fn line_for(step: &crate::plan::Step, items: usize) -> ProgressBar {
        let bar = if step.map.is_some() {
            let bar =
                ProgressBar::with_draw_target(Some(items as u64), ProgressDrawTarget::hidden());
            bar.set_style(
                ProgressStyle::with_template("  {spinner} {prefix} {pos}/{len} {elapsed} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        } else {
            step_spinner()
        };
        bar.set_prefix(step.name.clone());
        bar
    }
}

/// The live display's bars on stderr, with its total bar of `steps`.
pub(super) fn total_bar(steps: usize) -> (MultiProgress, ProgressBar) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let total = multi.add(ProgressBar::new(steps as u64));
    total.set_style(
        ProgressStyle::with_template(
            "{prefix:.bold} [{bar:30.cyan/blue}] {pos}/{len} steps {elapsed} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    total.enable_steady_tick(Duration::from_millis(200));
    (multi, total)
}

/// A running plain step's line, not yet drawn anywhere (see `line_for`).
pub(super) fn step_spinner() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    bar.set_style(
        ProgressStyle::with_template("  {spinner} {prefix} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar
}

impl RunObserver for LiveProgress {
    fn event(&self, event: Event<'_>) {
        match &event {
            Event::StepQueued { .. } => {
                let mut steps = self.steps();
                steps.queued += 1;
                self.show_counts(&steps);
            }
            Event::StepStarted { step, items, .. } => {
                let bar = Self::line_for(step, *items);
                let mut steps = self.steps();
                steps.queued = steps.queued.saturating_sub(1);
                if let Some(done) = steps.early.remove(&step.id) {
                    bar.set_position(done);
                }
                let bar = self.multi.insert_before(&self.total, bar);
                bar.enable_steady_tick(Duration::from_millis(100));
                steps.running.insert(step.id, bar);
                self.show_counts(&steps);
            }
            Event::ItemFinished { step, .. } => {
                let mut steps = self.steps();
                match steps.running.get(&step.id) {
                    Some(bar) => bar.inc(1),
                    None => *steps.early.entry(step.id).or_default() += 1,
                }
            }
            Event::TaskProgress { step, progress } => {
                if let Some(bar) = self.steps().running.get(&step.id) {
                    bar.set_message(format!(
                        "{}/{} {}",
                        progress.done, progress.total, progress.message
                    ));
                }
            }
            Event::StepFinished { step, .. } => {
                let mut steps = self.steps();
                steps.early.remove(&step.id);
                match steps.running.remove(&step.id) {
                    Some(bar) => {
                        bar.finish_and_clear();
                        self.multi.remove(&bar);
                    }
                    // Finished without running: cached, skipped, failed
                    // before it ran, or cancelled while queued.
                    None => steps.queued = steps.queued.saturating_sub(1),
                }
                self.total.inc(1);
                self.show_counts(&steps);
                drop(steps);
                if let Some(line) = describe_event(&event) {
                    let _ = self.multi.println(line);
                }
            }
            _ => {
                if let Some(line) = describe_event(&event) {
                    let _ = self.multi.println(line);
                }
            }
        }
    }
}

impl Drop for LiveProgress {
    fn drop(&mut self) {
        let steps = std::mem::take(&mut *self.steps());
        for bar in steps.running.into_values() {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        self.total.finish_and_clear();
        let _ = self.multi.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_grouped() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(1234), "1,234");
        assert_eq!(group_digits(5_000_000_000), "5,000,000,000");
    }

    #[test]
    fn durations_pick_a_readable_unit() {
        assert_eq!(format_duration(Duration::from_micros(340)), "340µs");
        assert_eq!(format_duration(Duration::from_micros(12_340)), "12.3ms");
        assert_eq!(format_duration(Duration::from_millis(2_500)), "2.50s");
    }
}
