//! The CLI as a client of a Cairn server (`cairn serve`): `cairn run`,
//! `resume`, `replay`, `cancel`, `runs list|show|logs`, `lineage`,
//! `audit` and `bundle push` with `--server URL` (or `CAIRN_SERVER`) and a
//! token in `CAIRN_TOKEN`. Each shows what the local command shows, with
//! the same exit codes; a run is followed through its event stream.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, IsTerminal};
use std::path::Path;
use std::time::Duration;

use clap::Args;
use indicatif::{MultiProgress, ProgressBar};
use serde_json::{Value, json};

use super::pipeline::{SummaryRow, format_duration, step_spinner, summary_table, total_bar};
use super::runs::{
    RunRow, ShowHeader, StatusFilter, print_attempt, print_audit, print_runs, print_show,
    report_verification, say_no_attempts, steps_json,
};
use super::{EXIT_ERROR, EXIT_INTERRUPTED, EXIT_PIPELINE_FAILED};
use crate::runner::Verification;
use crate::runner::describe::StepView;
use crate::store::audit::AuditEntry;
use crate::store::{JournalEvent, StepSource};

/// `--server URL` and its token, for every command that can ask a server.
#[derive(Debug, Clone, Args)]
pub struct RemoteArgs {
    /// Ask a Cairn server (`cairn serve`) instead of the local store,
    /// e.g. http://127.0.0.1:8650.
    #[arg(long, value_name = "URL", env = "CAIRN_SERVER")]
    pub server: Option<String>,
    /// The token for --server (`cairn token create`): a viewer's reads,
    /// an operator's also runs, resumes, replays and cancels.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "CAIRN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

impl RemoteArgs {
    /// The server to ask, if one was named; an error (already reported)
    /// when it was named without a token.
    pub fn connect(&self) -> Result<Option<Remote>, u8> {
        let Some(url) = &self.server else {
            return Ok(None);
        };
        let Some(token) = &self.token else {
            return Err(super::report_error(
                "--server needs a token: set CAIRN_TOKEN (or --token) to a token of your tenant \
                 (an admin makes one with `cairn token create --tenant T --role viewer|operator`)",
            ));
        };
        Ok(Some(Remote {
            url: url.clone(),
            token: token.clone(),
        }))
    }
}

/// A server and the token to call it with.
pub struct Remote {
    pub url: String,
    pub token: String,
}

/// What went wrong talking to the server, said for a person.
type Failed = String;

/// Run `work` (blocking HTTP) off the async runtime's worker, and turn a
/// failure into one line on stderr and exit code 1.
fn blocking(work: impl FnOnce() -> Result<u8, Failed>) -> u8 {
    match tokio::task::block_in_place(work) {
        Ok(code) => code,
        Err(e) => {
            super::print_error(&e);
            EXIT_ERROR
        }
    }
}

/// Is `text` a whole run id (16 hex digits)?
fn whole_run_id(text: &str) -> bool {
    text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Remote {
    fn agent(timeout: Option<Duration>) -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(timeout)
            .build()
            .into()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url.trim_end_matches('/'))
    }

    fn unreachable(&self, e: ureq::Error) -> Failed {
        format!(
            "cannot reach the server at {}: {e}; is `cairn serve` running there? (--server URL or CAIRN_SERVER)",
            self.url
        )
    }

    /// Send a request; its JSON answer, or the server's error said plainly.
    pub fn call(&self, method: &str, path: &str, body: Vec<u8>) -> Result<Value, Failed> {
        self.call_with(method, path, &[], body)
    }

    fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, Failed> {
        self.call_with("GET", path, query, Vec::new())
    }

    fn post(&self, path: &str, body: Value) -> Result<Value, Failed> {
        self.call_with("POST", path, &[], body.to_string().into_bytes())
    }

    fn call_with(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Value, Failed> {
        let agent = Self::agent(Some(Duration::from_secs(600)));
        let auth = format!("Bearer {}", self.token);
        let sent = match method {
            "GET" => {
                let mut request = agent.get(&self.url(path)).header("Authorization", &auth);
                for (key, value) in query {
                    request = request.query(*key, value);
                }
                request.call()
            }
            "DELETE" => agent
                .delete(&self.url(path))
                .header("Authorization", &auth)
                .call(),
            _ => agent
                .post(&self.url(path))
                .header("Authorization", &auth)
                .send(body),
        };
        let mut response = sent.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let text = response
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .map_err(|e| format!("the server's answer cannot be read: {e}"))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|_| format!("the server answered {status} with something that is not JSON"))?;
        if status.is_success() {
            return Ok(value);
        }
        let message = value["message"].as_str().unwrap_or("no message").to_owned();
        Err(match status.as_u16() {
            401 => format!("{message} (the token was refused: check CAIRN_TOKEN)"),
            403 => format!("{message} (the token's role is too weak for this)"),
            _ => message,
        })
    }

    /// A run id from what the user typed: a whole id, a unique prefix of
    /// one of the tenant's runs, or `last` (the newest).
    fn resolve(&self, text: &str) -> Result<String, Failed> {
        if whole_run_id(text) {
            return Ok(text.to_ascii_lowercase());
        }
        if text != "last" && (text.is_empty() || !text.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(format!(
                "{text:?} is not a run id (16 hex digits, a prefix of one, or `last`)"
            ));
        }
        let mut found: Vec<String> = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let mut query = vec![("limit", "500".to_owned())];
            if let Some(b) = &before {
                query.push(("before", b.clone()));
            }
            let page = self.get("/v1/runs", &query)?;
            for run in page["runs"].as_array().into_iter().flatten() {
                let id = run["id"].as_str().unwrap_or_default();
                if text == "last" {
                    return Ok(id.to_owned());
                }
                if id.starts_with(&text.to_ascii_lowercase()) {
                    found.push(id.to_owned());
                }
            }
            match page["next"].as_str() {
                Some(next) => before = Some(next.to_owned()),
                None => break,
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 if text == "last" => Err(format!("the server at {} has no runs yet", self.url)),
            0 => Err(format!("no run {text} on the server at {}", self.url)),
            n => Err(format!(
                "run prefix {text} matches {n} runs; give more of the id"
            )),
        }
    }

    /// A run's event stream from event `from` on.
    fn events(&self, run: &str, from: usize) -> Result<impl BufRead, Failed> {
        let agent = Self::agent(None);
        let mut request = agent
            .get(&self.url(&format!("/v1/runs/{run}/events")))
            .header("Authorization", &format!("Bearer {}", self.token));
        if from > 0 {
            request = request.header("Last-Event-ID", &(from - 1).to_string());
        }
        let response = request.call().map_err(|e| self.unreachable(e))?;
        if !response.status().is_success() {
            return Err(format!(
                "the server refused the event stream ({})",
                response.status()
            ));
        }
        Ok(std::io::BufReader::new(response.into_body().into_reader()))
    }

    /// How many events an ended run's journal has (its stream ends at once).
    fn count_events(&self, run: &str) -> Result<usize, Failed> {
        let mut count = 0;
        for line in self.events(run, 0)?.lines() {
            let line = line.map_err(|e| format!("the event stream broke off: {e}"))?;
            count += usize::from(line.starts_with("data:"));
        }
        Ok(count)
    }

    /// Follow a run's events from event `from` until it ends, showing its
    /// progress as a local run does.
    fn follow(&self, run: &str, from: usize, quiet: bool) -> Result<(), Failed> {
        let mut shown = Follower::new(quiet);
        for line in self.events(run, from)?.lines() {
            let line = line.map_err(|e| format!("the event stream broke off: {e}"))?;
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            // An event this client does not know (a newer server) is skipped.
            if let Ok(event) = serde_json::from_str::<JournalEvent>(data.trim()) {
                shown.event(&event);
            }
        }
        Ok(())
    }

    /// Follow a started run to its end, then print its output (or, with
    /// `--json`, one report) as `cairn run` does; the exit code it has.
    fn conclude(&self, run: &str, from: usize, json_out: bool, quiet: bool) -> Result<u8, Failed> {
        self.follow(run, from, quiet || json_out)?;
        let shown = self.get(&format!("/v1/runs/{run}"), &[])?;
        let status = shown["run"]["status"].as_str().unwrap_or("?").to_owned();
        if !quiet && !json_out {
            say_part!("{}", summary(&shown));
        }
        if json_out {
            // The report the server kept, in the shape a local run prints.
            let report = self.get(&format!("/v1/runs/{run}/report"), &[])?;
            out!("{report}");
        } else if status == "succeeded" {
            let output = self.get(&format!("/v1/runs/{run}/output"), &[])?;
            let text = if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                serde_json::to_string_pretty(&output)
            } else {
                serde_json::to_string(&output)
            };
            out!("{}", text.unwrap_or_default());
        }
        Ok(match status.as_str() {
            "succeeded" => 0,
            "cancelled" => {
                say!(
                    "the run was cancelled on the server; go on with `cairn resume {run} --server {}`",
                    self.url
                );
                EXIT_INTERRUPTED
            }
            _ => {
                if !json_out {
                    say!(
                        "error: pipeline {} failed; see the failed steps above",
                        shown["run"]["pipeline"].as_str().unwrap_or("?")
                    );
                }
                EXIT_PIPELINE_FAILED
            }
        })
    }

    /// Upload a pipeline (packed here unless it is a bundle already).
    fn push(&self, pipeline: &Path) -> Result<Value, Failed> {
        let bytes = if crate::runner::is_bundle(pipeline) {
            std::fs::read(pipeline).map_err(|e| format!("{}: {e}", pipeline.display()))?
        } else {
            crate::bundle::pack(pipeline).map_err(|e| format!("{}: {e}", pipeline.display()))?
        };
        self.call("POST", "/v1/bundles", bytes)
    }
}

/// `cairn run PIPELINE --server URL`: pack, upload, start, follow.
pub fn run(remote: &Remote, pipeline: &Path, json_out: bool, quiet: bool, refresh: bool) -> u8 {
    blocking(|| {
        let bundle = remote.push(pipeline)?;
        let started = remote.post(
            "/v1/runs",
            json!({"bundle": bundle["id"], "refresh": refresh}),
        )?;
        let run = started["id"].as_str().unwrap_or_default().to_owned();
        if !quiet && !json_out {
            say!(
                "run {run} of {} on {} (resume it with `cairn resume {run} --server {}` if interrupted)",
                bundle["pipeline"].as_str().unwrap_or("?"),
                remote.url,
                remote.url
            );
        }
        remote.conclude(&run, 0, json_out, quiet)
    })
}

/// `cairn resume RUN --server URL`.
pub fn resume(remote: &Remote, run: &str, json_out: bool, quiet: bool) -> u8 {
    blocking(|| {
        let id = remote.resolve(run)?;
        // What the run journalled before: the resume's own events follow.
        let from = remote.count_events(&id)?;
        let resumed = remote.post(&format!("/v1/runs/{id}/resume"), json!({}))?;
        if !quiet && !json_out {
            say!(
                "resuming run {id} of {} on {}",
                resumed["pipeline"].as_str().unwrap_or("?"),
                remote.url
            );
        }
        remote.conclude(&id, from, json_out, quiet)
    })
}

/// `cairn replay RUN --server URL [--verify]`.
pub fn replay(remote: &Remote, run: &str, verify: bool, json_out: bool, quiet: bool) -> u8 {
    blocking(|| {
        let original = remote.resolve(run)?;
        let started = remote.post(&format!("/v1/runs/{original}/replay"), json!({}))?;
        let id = started["id"].as_str().unwrap_or_default().to_owned();
        if !quiet && !json_out {
            say!("replaying run {original} as run {id} on {}", remote.url);
        }
        let code = remote.conclude(&id, 0, json_out, quiet || json_out)?;
        if !verify {
            return Ok(code);
        }
        let answer = remote.get(&format!("/v1/runs/{id}/verification"), &[])?;
        let verification: Verification = serde_json::from_value(answer)
            .map_err(|e| format!("the server's verification cannot be read: {e}"))?;
        Ok(report_verification(&verification, &original, json_out).unwrap_or(code))
    })
}

/// `cairn cancel RUN --server URL`.
pub fn cancel(remote: &Remote, run: &str, json_out: bool) -> u8 {
    blocking(|| {
        let id = remote.resolve(run)?;
        let answer = remote.post(&format!("/v1/runs/{id}/cancel"), json!({}))?;
        if json_out {
            out!("{answer}");
        } else {
            out!(
                "cancelling run {id}; it ends cancelled and can be resumed (`cairn resume {id} --server {}`)",
                remote.url
            );
        }
        Ok(0)
    })
}

/// `cairn runs gc --server URL`: the server forgets the tenant's old runs.
pub fn gc(
    remote: &Remote,
    older_than: std::time::Duration,
    include_interrupted: bool,
    dry_run: bool,
    json_out: bool,
) -> u8 {
    blocking(|| {
        let answer = remote.post(
            "/v1/runs/gc",
            json!({
                // Whole milliseconds: what the server parses back exactly.
                "older_than": format!("{}ms", older_than.as_millis()),
                "include_interrupted": include_interrupted,
                "dry_run": dry_run,
            }),
        )?;
        let report: crate::runner::retention::RunsGcReport = serde_json::from_value(answer)
            .map_err(|e| format!("the server's answer is not a gc report: {e}"))?;
        super::runs::print_gc(&report, older_than, json_out);
        Ok(0)
    })
}

/// `cairn bundle push PIPELINE --server URL`.
pub fn push(remote: &Remote, pipeline: &Path, json_out: bool) -> u8 {
    blocking(|| {
        let bundle = remote.push(pipeline)?;
        if json_out {
            out!("{bundle}");
        } else {
            out!(
                "pushed {} ({} steps, {} bytes): bundle {}",
                bundle["pipeline"].as_str().unwrap_or("?"),
                bundle["steps"],
                bundle["size"],
                bundle["id"].as_str().unwrap_or("?")
            );
        }
        Ok(0)
    })
}

/// `cairn runs list --server URL`: every page the filters select.
pub fn list(
    remote: &Remote,
    pipeline: Option<String>,
    status: Option<StatusFilter>,
    limit: Option<usize>,
    json_out: bool,
) -> u8 {
    blocking(|| {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(p) = &pipeline {
            query.push(("pipeline", p.clone()));
        }
        // The server filters by stored status; whether a `running` run is
        // being run now (or was interrupted) is its `live` flag.
        let (stored, live) = match status {
            None => (None, None),
            Some(StatusFilter::Succeeded) => (Some("succeeded"), None),
            Some(StatusFilter::Failed) => (Some("failed"), None),
            Some(StatusFilter::Cancelled) => (Some("cancelled"), None),
            Some(StatusFilter::Running) => (Some("running"), Some(true)),
            Some(StatusFilter::Interrupted) => (Some("running"), Some(false)),
        };
        if let Some(s) = stored {
            query.push(("status", s.to_owned()));
        }
        let want = limit.unwrap_or(usize::MAX);
        let mut runs: Vec<Value> = Vec::new();
        let mut before: Option<String> = None;
        while runs.len() < want {
            let mut page_query = query.clone();
            page_query.push((
                "limit",
                want.saturating_sub(runs.len()).min(500).to_string(),
            ));
            if let Some(b) = &before {
                page_query.push(("before", b.clone()));
            }
            let page = remote.get("/v1/runs", &page_query)?;
            runs.extend(
                page["runs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|r| live.is_none_or(|l| r["live"] == l))
                    .cloned(),
            );
            match page["next"].as_str() {
                Some(next) => before = Some(next.to_owned()),
                None => break,
            }
        }
        runs.truncate(want);
        if json_out {
            out!(
                "{}",
                Value::Array(runs.into_iter().map(local_record).collect())
            );
            return Ok(0);
        }
        let rows: Vec<RunRow> = runs.iter().map(row).collect();
        print_runs(&rows, pipeline.is_some() || status.is_some(), &remote.url);
        Ok(0)
    })
}

/// How a server's run reads in `cairn runs list`.
fn row(run: &Value) -> RunRow {
    RunRow {
        id: run["id"].as_str().unwrap_or("?").to_owned(),
        pipeline: run["pipeline"].as_str().unwrap_or("?").to_owned(),
        status: shown_status(run).to_owned(),
        started_ms: run["started_ms"].as_u64().unwrap_or(0),
        finished_ms: run["finished_ms"].as_u64(),
        steps: run["steps"].as_u64().unwrap_or(0) as usize,
        replay: !run["replay_of"].is_null(),
    }
}

/// A server's run (the API's `RunView`) in the shape `--json` gives a
/// local run's record: a `running` run that the server runs now says
/// `live`, as a local run that another process runs now does. The server's
/// own paths (`manifest`, `admission`) are not shown to clients.
fn local_record(mut run: Value) -> Value {
    if let Some(fields) = run.as_object_mut()
        && let Some(live) = fields.remove("live")
        && live == true
        && fields.get("status").is_some_and(|s| s == "running")
    {
        fields.insert("status".into(), json!("live"));
    }
    run
}

/// A server's run status as people read it: `running` that is not live
/// was interrupted (the server resumes it when it starts again).
fn shown_status(run: &Value) -> &str {
    match run["status"].as_str().unwrap_or("?") {
        "running" if run["live"] == false => "interrupted",
        other => other,
    }
}

/// `cairn runs show RUN --server URL`.
pub fn show(remote: &Remote, run: &str, json_out: bool) -> u8 {
    blocking(|| {
        let id = remote.resolve(run)?;
        let detail = remote.get(&format!("/v1/runs/{id}"), &[])?;
        let views: BTreeMap<String, StepView> = serde_json::from_value(detail["steps"].clone())
            .map_err(|e| format!("the server's steps cannot be read: {e}"))?;
        let order: Option<Vec<(String, Vec<String>)>> = detail["graph"].as_array().map(|nodes| {
            nodes
                .iter()
                .map(|n| {
                    let after = n["after"].as_array().into_iter().flatten();
                    (
                        n["name"].as_str().unwrap_or("?").to_owned(),
                        after
                            .filter_map(|a| a.as_str().map(str::to_owned))
                            .collect(),
                    )
                })
                .collect()
        });
        let run = &detail["run"];
        if json_out {
            let steps = steps_json(&views, order.as_deref());
            out!(
                "{}",
                json!({"run": local_record(run.clone()), "steps": steps})
            );
            return Ok(0);
        }
        let status = match shown_status(run) {
            "running" => "running now, on the server".to_owned(),
            "interrupted" => "interrupted (the server resumes it when it starts again)".to_owned(),
            other => other.to_owned(),
        };
        let header = ShowHeader {
            id: run["id"].as_str().unwrap_or("?"),
            pipeline: run["pipeline"].as_str().unwrap_or("?"),
            status: &status,
            started_ms: run["started_ms"].as_u64().unwrap_or(0),
            finished_ms: run["finished_ms"].as_u64(),
            source: format!("bundle {}", run["bundle"].as_str().unwrap_or("-")),
        };
        print_show(&header, &views, order);
        Ok(0)
    })
}

/// `cairn runs logs RUN --server URL`.
pub fn logs(remote: &Remote, run: &str, step: Option<String>) -> u8 {
    blocking(|| {
        let id = remote.resolve(run)?;
        let query: Vec<(&str, String)> = step.iter().map(|s| ("step", s.clone())).collect();
        let attempts = remote.get(&format!("/v1/runs/{id}/logs"), &query)?;
        let attempts = attempts.as_array().cloned().unwrap_or_default();
        for a in &attempts {
            let lines = a["lines"].as_array().into_iter().flatten().map(|l| {
                (
                    l["level"].as_str().unwrap_or("?"),
                    l["message"].as_str().unwrap_or_default(),
                )
            });
            print_attempt(
                a["step"].as_str().unwrap_or("?"),
                a["index"].as_u64().map(|i| i as usize),
                a["attempt"].as_u64().unwrap_or(0) as u32,
                a["class"].as_str(),
                lines,
            );
        }
        if attempts.is_empty() {
            say_no_attempts(step.as_deref());
        }
        Ok(0)
    })
}

/// `cairn lineage RUN --server URL`.
pub fn lineage(remote: &Remote, run: &str) -> u8 {
    blocking(|| {
        let id = remote.resolve(run)?;
        let events = remote.get(&format!("/v1/runs/{id}/lineage"), &[])?;
        out!(
            "{}",
            serde_json::to_string_pretty(&events).unwrap_or_default()
        );
        Ok(0)
    })
}

/// `cairn audit --server URL` (an admin token of the tenant).
pub fn audit(remote: &Remote, run: Option<&str>, json_out: bool) -> u8 {
    blocking(|| {
        let run = match run {
            Some("last") => Some(remote.resolve("last")?),
            other => other.map(str::to_owned),
        };
        let answer = remote.get("/v1/audit", &[])?;
        let entries: Vec<AuditEntry> = serde_json::from_value(answer)
            .map_err(|e| format!("the server's audit log cannot be read: {e}"))?;
        let entries: Vec<AuditEntry> = entries
            .into_iter()
            .filter(|e| {
                run.as_ref()
                    .is_none_or(|r| e.run.as_ref().is_some_and(|x| x.starts_with(r.as_str())))
            })
            .collect();
        print_audit(&entries, json_out);
        Ok(0)
    })
}

/// The final table of a run on a server, from its steps as the server
/// describes them (in dependency order when the server has the graph).
fn summary(shown: &Value) -> String {
    let views: BTreeMap<String, StepView> =
        serde_json::from_value(shown["steps"].clone()).unwrap_or_default();
    let order: Vec<String> = match shown["graph"].as_array() {
        Some(nodes) => nodes
            .iter()
            .filter_map(|n| n["name"].as_str().map(str::to_owned))
            .collect(),
        None => views.keys().cloned().collect(),
    };
    let rows: Vec<SummaryRow> = order
        .into_iter()
        .map(|name| {
            let view = views.get(&name);
            let status = view.map_or("pending", |v| v.status.as_str()).to_owned();
            let ran = !matches!(status.as_str(), "pending" | "skipped");
            let ms = |v: Option<u64>| Duration::from_millis(v.unwrap_or(0));
            SummaryRow {
                attempts: view.map_or(0, |v| v.attempts),
                elements: view.and_then(|v| v.elements),
                timing: view
                    .filter(|_| ran)
                    .map(|v| (ms(v.wait_ms), ms(v.duration_ms))),
                fuel: view.map_or(0, |v| v.fuel),
                note: view
                    .filter(|v| !v.detail.is_empty())
                    .map(|v| v.detail.clone()),
                name,
                status,
            }
        })
        .collect();
    let run = &shown["run"];
    let started = run["started_ms"].as_u64().unwrap_or(0);
    let took = run["finished_ms"]
        .as_u64()
        .unwrap_or(started)
        .saturating_sub(started);
    summary_table(
        &rows,
        run["pipeline"].as_str().unwrap_or("?"),
        run["status"].as_str().unwrap_or("?"),
        Duration::from_millis(took),
    )
}

/// Shows a followed run's events as `cairn run` shows its own: on a
/// terminal a total bar and a line per running step, logs and ends above
/// them; elsewhere one plain line per event.
struct Follower {
    quiet: bool,
    live: Option<Live>,
    /// When each step was queued and first ran, in this follow.
    scheduled: HashMap<String, u64>,
    first_attempt: HashMap<String, u64>,
    /// Mapped steps' element counts.
    items: HashMap<String, usize>,
}

/// The terminal display.
struct Live {
    multi: MultiProgress,
    total: ProgressBar,
    running: HashMap<String, ProgressBar>,
}

impl Follower {
    fn new(quiet: bool) -> Self {
        let live = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let (multi, total) = total_bar(0);
            Live {
                multi,
                total,
                running: HashMap::new(),
            }
        });
        Self {
            quiet,
            live,
            scheduled: HashMap::new(),
            first_attempt: HashMap::new(),
            items: HashMap::new(),
        }
    }

    fn say(&self, line: String) {
        match &self.live {
            Some(live) => {
                let _ = live.multi.println(line);
            }
            None => say!("{line}"),
        }
    }

    fn event(&mut self, event: &JournalEvent) {
        if self.quiet {
            return;
        }
        match event {
            JournalEvent::RunStarted {
                pipeline, steps, ..
            } => {
                if let Some(live) = &self.live {
                    live.total.set_prefix(pipeline.clone());
                    live.total.set_length(steps.unwrap_or(0) as u64);
                }
            }
            JournalEvent::StepScheduled { at_ms, step, items } => {
                self.scheduled.insert(step.clone(), *at_ms);
                self.first_attempt.remove(step);
                if let Some(items) = items {
                    self.items.insert(step.clone(), *items);
                }
            }
            JournalEvent::AttemptStarted { at_ms, step, .. } => {
                if self.first_attempt.contains_key(step) {
                    return;
                }
                self.first_attempt.insert(step.clone(), *at_ms);
                // As a local run says it.
                match self.items.get(step) {
                    Some(items) => self.say(format!("start  {step} ({items} elements)")),
                    None => self.say(format!("start  {step}")),
                }
                if let Some(live) = &mut self.live {
                    let bar = step_spinner();
                    bar.set_prefix(step.clone());
                    let bar = live.multi.insert_before(&live.total, bar);
                    bar.enable_steady_tick(Duration::from_millis(100));
                    live.running.insert(step.clone(), bar);
                }
            }
            JournalEvent::AttemptFinished {
                step,
                index,
                attempt,
                class,
                message,
                logs,
                retry_in_ms,
                ..
            } => {
                let at = index.map(|i| format!("[{i}]")).unwrap_or_default();
                for line in logs {
                    self.say(format!(
                        "[{step}{at}] {}: {}",
                        line.level.as_str(),
                        line.message
                    ));
                }
                let message = message.as_deref().unwrap_or_default();
                match (class, retry_in_ms) {
                    (Some(_), Some(ms)) => self.say(format!(
                        "retry  {step}{at} attempt {attempt} failed: {message}; retrying in {}",
                        super::pipeline::format_duration(Duration::from_millis(*ms))
                    )),
                    (Some(_), None) => {
                        self.say(format!("fail   {step}{at} attempt {attempt}: {message}"))
                    }
                    (None, _) => {}
                }
            }
            JournalEvent::StepSucceeded {
                at_ms,
                step,
                source,
                ..
            } => {
                let line = match source {
                    StepSource::Cached => format!("cached {step}"),
                    StepSource::Journal => format!("resumed {step} (from the journal)"),
                    StepSource::Executed => {
                        let ran = self.first_attempt.get(step).copied();
                        let queued = self.scheduled.get(step).copied();
                        let took =
                            Duration::from_millis(at_ms.saturating_sub(ran.unwrap_or(*at_ms)));
                        let wait = match (queued, ran) {
                            (Some(q), Some(r)) => Duration::from_millis(r.saturating_sub(q)),
                            _ => Duration::ZERO,
                        };
                        if wait >= Duration::from_millis(1) {
                            format!(
                                "done   {step} in {} (queued {} first)",
                                format_duration(took),
                                format_duration(wait)
                            )
                        } else {
                            format!("done   {step} in {}", format_duration(took))
                        }
                    }
                };
                self.end(step, line);
            }
            JournalEvent::StepFailed { step, .. } => self.end(step, format!("failed {step}")),
            JournalEvent::StepSkipped { step, reason, .. } => {
                self.end(step, format!("skip   {step} ({reason})"))
            }
            JournalEvent::StepCancelled { step, .. } => {
                self.end(step, format!("cancelled  {step}"))
            }
            _ => {}
        }
    }

    /// A step has ended: its line goes, the total moves, `line` is said.
    fn end(&mut self, step: &str, line: String) {
        if let Some(live) = &mut self.live {
            if let Some(bar) = live.running.remove(step) {
                bar.finish_and_clear();
                live.multi.remove(&bar);
            }
            live.total.inc(1);
        }
        self.say(line);
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some(live) = &mut self.live {
            for (_, bar) in live.running.drain() {
                bar.finish_and_clear();
                live.multi.remove(&bar);
            }
            live.total.finish_and_clear();
            let _ = live.multi.clear();
        }
    }
}
