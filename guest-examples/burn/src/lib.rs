//! `burn`: a fixed amount of pure computation (xorshift rounds), with no host
//! calls — the workload of the parallelism benchmark.

use cairn_sdk::{JsonSchema, TaskError, task};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Input {
    /// Rounds of work; 10 000 000 is roughly 20 ms here.
    pub rounds: u64,
    #[serde(default)]
    pub seed: u64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Output {
    pub value: u64,
}

pub fn burn(input: Input) -> Result<Output, TaskError> {
    let mut x = input.seed | 1;
    for _ in 0..input.rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    Ok(Output { value: x })
}

task! {
    name: "burn",
    description: "Burns a fixed amount of CPU and returns a checksum.",
    run: burn,
}
