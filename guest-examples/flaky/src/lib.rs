//! `flaky`: fails with a retryable error `failures` times, then succeeds.
//!
//! It stands in for a step that talks to an unreliable service. It keeps its
//! attempt count in a file in its scratch directory (granted by the step;
//! the engine says where in `CAIRN_SCRATCH`), and removes the file once it
//! succeeds so the next run starts over.

use cairn_sdk::{Capability, JsonSchema, TaskError, task};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// How many attempts fail before one succeeds.
    pub failures: u32,
    /// Names the counter file, so several flaky steps can share a scratch dir.
    pub key: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Output {
    /// The attempt that succeeded (1-based).
    pub succeeded_on_attempt: u32,
}

pub fn flaky(input: Input) -> Result<Output, TaskError> {
    let scratch = std::env::var("CAIRN_SCRATCH")
        .map_err(|_| TaskError::denied("flaky needs a scratch directory (grants.scratch)"))?;
    let counter = format!("{scratch}/{}.attempts", input.key);
    let attempt = std::fs::read_to_string(&counter).ok().and_then(|s| s.trim().parse::<u32>().ok()).unwrap_or(0) + 1;
    if attempt <= input.failures {
        std::fs::write(&counter, attempt.to_string())?;
        cairn_sdk::warn!("attempt {attempt}: the service is unavailable");
        return Err(TaskError::retryable(format!("attempt {attempt} of a flaky step failed on purpose")));
    }
    let _ = std::fs::remove_file(&counter);
    Ok(Output { succeeded_on_attempt: attempt })
}

task! {
    name: "flaky",
    description: "Fails with a retryable error a set number of times, then succeeds.",
    capabilities: [Capability::Scratch],
    run: flaky,
}
