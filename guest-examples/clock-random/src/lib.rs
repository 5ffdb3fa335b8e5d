//! `clock-random`: reads the wall clock, the monotonic clock and random bytes.
//!
//! Outside a sandbox this output changes on every run. Inside Cairn, clocks and
//! random are virtual and seeded from the task and its input, so two runs give
//! byte-identical output — the tests rely on exactly that.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use cairn_sdk::{JsonSchema, TaskError, task};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Input {
    /// Any value; it changes the seed the sandbox derives.
    #[serde(default)]
    pub salt: serde_json::Value,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Output {
    pub unix_nanos: u128,
    pub elapsed_nanos: u128,
    pub random_hex: String,
}

pub fn sample(_input: Input) -> Result<Output, TaskError> {
    let start = Instant::now();
    let unix_nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| TaskError::fatal(e.to_string()))?
        .as_nanos();
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| TaskError::fatal(e.to_string()))?;
    let random_hex = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(Output { unix_nanos, elapsed_nanos: start.elapsed().as_nanos(), random_hex })
}

task! {
    name: "clock-random",
    description: "Samples the wall clock, the monotonic clock and 16 random bytes.",
    run: sample,
}
