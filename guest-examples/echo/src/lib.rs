//! `echo`: returns its input document unchanged. The smallest useful task;
//! benchmarks use it to measure the engine's per-run overhead.

use cairn_sdk::{TaskError, task};

fn echo(input: serde_json::Value) -> Result<serde_json::Value, TaskError> {
    Ok(input)
}

task! {
    name: "echo",
    description: "Returns its input document unchanged.",
    run: echo,
}
