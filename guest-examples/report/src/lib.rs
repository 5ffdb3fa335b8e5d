//! `report`: render the orders pipeline's results as a Markdown report.

use std::collections::BTreeMap;
use std::fmt::Write;

use cairn_sdk::{JsonSchema, TaskError, task};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Group {
    pub key: Value,
    pub count: u64,
    pub sums: BTreeMap<String, f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Groups {
    pub groups: Vec<Group>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub title: String,
    /// Totals per region (an `aggregate` output).
    pub totals: Groups,
    /// The region keys, in the order of `breakdown`.
    pub regions: Vec<Value>,
    /// Per-region breakdowns (one `aggregate` output per region).
    pub breakdown: Vec<Groups>,
    /// The summed column to show.
    pub column: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Output {
    pub markdown: String,
    pub grand_total: f64,
}

fn key_text(key: &Value) -> String {
    key.as_str().map(str::to_owned).unwrap_or_else(|| key.to_string())
}

pub fn render(input: Input) -> Result<Output, TaskError> {
    if input.regions.len() != input.breakdown.len() {
        return Err(TaskError::invalid_input(format!(
            "{} regions but {} breakdowns",
            input.regions.len(),
            input.breakdown.len()
        )));
    }
    let column = &input.column;
    let mut md = format!("# {}\n\n| region | orders | {column} |\n| --- | ---: | ---: |\n", input.title);
    let mut grand_total = 0.0;
    for g in &input.totals.groups {
        let sum = g.sums.get(column).copied().unwrap_or(0.0);
        grand_total += sum;
        let _ = writeln!(md, "| {} | {} | {sum:.2} |", key_text(&g.key), g.count);
    }
    let _ = writeln!(md, "| **total** | | **{grand_total:.2}** |");
    for (region, groups) in input.regions.iter().zip(&input.breakdown) {
        let _ = write!(md, "\n## {}\n\n", key_text(region));
        for g in &groups.groups {
            let _ = writeln!(md, "- {}: {} orders, {column} {:.2}", key_text(&g.key), g.count, g.sums.get(column).copied().unwrap_or(0.0));
        }
    }
    Ok(Output { markdown: md, grand_total })
}

task! {
    name: "report",
    description: "Renders region totals and per-region breakdowns as Markdown.",
    run: render,
}
