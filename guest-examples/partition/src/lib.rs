//! `partition`: split rows into groups by one column, keeping row order
//! within each group and ordering groups by key, so the output is stable.

use std::collections::BTreeMap;

use cairn_sdk::{JsonSchema, TaskError, task};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub rows: Vec<Map<String, Value>>,
    /// The column to partition by.
    pub by: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Part {
    pub key: Value,
    pub rows: Vec<Map<String, Value>>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Output {
    /// The distinct keys, in the order of `parts`.
    pub keys: Vec<Value>,
    pub parts: Vec<Part>,
}

pub fn partition(input: Input) -> Result<Output, TaskError> {
    let mut parts: BTreeMap<String, Part> = BTreeMap::new();
    for (i, row) in input.rows.into_iter().enumerate() {
        let key = row
            .get(&input.by)
            .cloned()
            .ok_or_else(|| TaskError::invalid_input(format!("row {i} has no column {:?}", input.by)))?;
        parts.entry(key.to_string()).or_insert_with(|| Part { key, rows: Vec::new() }).rows.push(row);
    }
    let parts: Vec<Part> = parts.into_values().collect();
    Ok(Output { keys: parts.iter().map(|p| p.key.clone()).collect(), parts })
}

task! {
    name: "partition",
    description: "Splits rows into groups by the value of one column.",
    run: partition,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn groups_by_key_in_key_order_keeping_row_order() {
        let rows = serde_json::from_value(json!([{"r": "us", "n": 1}, {"r": "eu", "n": 2}, {"r": "us", "n": 3}])).unwrap();
        let out = partition(Input { rows, by: "r".into() }).unwrap();
        assert_eq!(out.keys, [json!("eu"), json!("us")]);
        let us: Vec<&Value> = out.parts[1].rows.iter().map(|r| &r["n"]).collect();
        assert_eq!(us, [&json!(1), &json!(3)]);
    }
}
