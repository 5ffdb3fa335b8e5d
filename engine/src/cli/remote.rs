//! `cairn run --server URL`: the same run on a Cairn server. The pipeline
//! is packed (unless it is a bundle already), uploaded, started, followed
//! through its event stream, and its output printed as `cairn run` prints
//! it, with the same exit codes.

use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::{EXIT_ERROR, EXIT_INTERRUPTED, EXIT_PIPELINE_FAILED};

/// A server and the token to call it with.
pub struct Remote {
    pub url: String,
    pub token: String,
}

/// What went wrong talking to the server, said for a person.
type Failed = String;

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
        let agent = Self::agent(Some(Duration::from_secs(600)));
        let auth = format!("Bearer {}", self.token);
        let sent = match method {
            "GET" => agent
                .get(&self.url(path))
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

    /// Follow a run's events until it ends, printing one line per step.
    fn follow(&self, run: &str, quiet: bool) -> Result<(), Failed> {
        let agent = Self::agent(None);
        let response = agent
            .get(&self.url(&format!("/v1/runs/{run}/events")))
            .header("Authorization", &format!("Bearer {}", self.token))
            .call()
            .map_err(|e| self.unreachable(e))?;
        if !response.status().is_success() {
            return Err(format!(
                "the server refused the event stream ({})",
                response.status()
            ));
        }
        let reader = std::io::BufReader::new(response.into_body().into_reader());
        for line in reader.lines() {
            let line = line.map_err(|e| format!("the event stream broke off: {e}"))?;
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let Ok(event) = serde_json::from_str::<Value>(data.trim()) else {
                continue;
            };
            if !quiet && let Some(text) = describe(&event) {
                say!("{text}");
            }
        }
        Ok(())
    }
}

/// One line for a journal event, as `cairn run` says it.
fn describe(event: &Value) -> Option<String> {
    let step = event["step"].as_str().unwrap_or("?");
    Some(match event["event"].as_str()? {
        "step-succeeded" => match event["source"].as_str() {
            Some("cached") => format!("cached {step}"),
            Some("journal") => format!("resumed {step} (from the journal)"),
            _ => format!("done   {step}"),
        },
        "step-failed" => format!(
            "failed {step}: {}",
            event["message"].as_str().unwrap_or_default()
        ),
        "step-skipped" => format!(
            "skip   {step} ({})",
            event["reason"].as_str().unwrap_or_default()
        ),
        "attempt-finished" if !event["class"].is_null() => format!(
            "fail   {step} attempt {}: {}",
            event["attempt"],
            event["message"].as_str().unwrap_or_default()
        ),
        _ => return None,
    })
}

/// `cairn run PIPELINE --server URL`.
pub fn run(remote: &Remote, pipeline: &Path, json_out: bool, quiet: bool, refresh: bool) -> u8 {
    match run_remote(remote, pipeline, json_out, quiet, refresh) {
        Ok(code) => code,
        Err(e) => {
            super::print_error(&e);
            EXIT_ERROR
        }
    }
}

fn run_remote(
    remote: &Remote,
    pipeline: &Path,
    json_out: bool,
    quiet: bool,
    refresh: bool,
) -> Result<u8, Failed> {
    let bytes = if crate::runner::is_bundle(pipeline) {
        std::fs::read(pipeline).map_err(|e| format!("{}: {e}", pipeline.display()))?
    } else {
        crate::bundle::pack(pipeline).map_err(|e| format!("{}: {e}", pipeline.display()))?
    };
    let bundle = remote.call("POST", "/v1/bundles", bytes)?;
    let started = remote.call(
        "POST",
        "/v1/runs",
        json!({"bundle": bundle["id"], "refresh": refresh})
            .to_string()
            .into_bytes(),
    )?;
    let run = started["id"].as_str().unwrap_or_default().to_owned();
    if !quiet && !json_out {
        say!(
            "run {run} of {} on {} (follow it with GET /v1/runs/{run}/events)",
            bundle["pipeline"].as_str().unwrap_or("?"),
            remote.url
        );
    }
    remote.follow(&run, quiet || json_out)?;
    let shown = remote.call("GET", &format!("/v1/runs/{run}"), Vec::new())?;
    let status = shown["run"]["status"].as_str().unwrap_or("?").to_owned();
    let output = if status == "succeeded" {
        Some(remote.call("GET", &format!("/v1/runs/{run}/output"), Vec::new())?)
    } else {
        None
    };
    if json_out {
        out!(
            "{}",
            json!({"run_id": run, "status": status, "steps": shown["steps"], "output": output})
        );
    } else if let Some(output) = &output {
        let text = if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            serde_json::to_string_pretty(output)
        } else {
            serde_json::to_string(output)
        };
        out!("{}", text.unwrap_or_default());
    }
    Ok(match status.as_str() {
        "succeeded" => 0,
        "cancelled" => {
            say!("the run was cancelled on the server; resume it with POST /v1/runs/{run}/resume");
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
