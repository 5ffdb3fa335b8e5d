//! `aggregate`: group rows by one column and sum numeric columns.
//!
//! Groups come out sorted by key so the output is the same bytes for the same
//! rows in any order.

use std::collections::BTreeMap;

use cairn_sdk::{JsonSchema, TaskError, task};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub rows: Vec<Map<String, Value>>,
    /// The column to group by; its values are compared as JSON text.
    pub group_by: String,
    /// Numeric columns to sum within each group.
    #[serde(default)]
    pub sum: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema, PartialEq)]
pub struct Group {
    pub key: Value,
    pub count: u64,
    pub sums: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize, JsonSchema, PartialEq)]
pub struct Output {
    pub groups: Vec<Group>,
}

pub fn aggregate(input: Input) -> Result<Output, TaskError> {
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for (i, row) in input.rows.iter().enumerate() {
        let key = row.get(&input.group_by).ok_or_else(|| {
            TaskError::invalid_input(format!("row {i} has no column {:?}", input.group_by))
        })?;
        let group = groups.entry(key.to_string()).or_insert_with(|| Group {
            key: key.clone(),
            count: 0,
            sums: input.sum.iter().map(|c| (c.clone(), 0.0)).collect(),
        });
        group.count += 1;
        for column in &input.sum {
            let value = match row.get(column) {
                None | Some(Value::Null) => 0.0,
                Some(v) => v.as_f64().ok_or_else(|| {
                    TaskError::invalid_input(format!("row {i}, column {column:?}: {v} is not a number"))
                })?,
            };
            *group.sums.get_mut(column).expect("every group starts with every summed column") += value;
        }
    }
    Ok(Output { groups: groups.into_values().collect() })
}

task! {
    name: "aggregate",
    description: "Groups rows by a column and sums numeric columns per group.",
    run: aggregate,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rows(v: Value) -> Vec<Map<String, Value>> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn sums_per_group_sorted_by_key() {
        let out = aggregate(Input {
            rows: rows(json!([{"r": "us", "x": 1}, {"r": "eu", "x": 2.5}, {"r": "us", "x": 4}, {"r": "eu", "x": null}])),
            group_by: "r".into(),
            sum: vec!["x".into()],
        })
        .unwrap();
        assert_eq!(serde_json::to_value(out).unwrap(), json!({"groups": [
            {"key": "eu", "count": 2, "sums": {"x": 2.5}},
            {"key": "us", "count": 2, "sums": {"x": 5.0}},
        ]}));
    }

    #[test]
    fn non_numeric_sum_is_invalid_input() {
        let err = aggregate(Input { rows: rows(json!([{"r": 1, "x": "a"}])), group_by: "r".into(), sum: vec!["x".into()] }).unwrap_err();
        assert!(err.message().contains("not a number"), "{err}");
    }

    #[test]
    fn missing_group_column_is_named() {
        let err = aggregate(Input { rows: rows(json!([{"x": 1}])), group_by: "r".into(), sum: vec![] }).unwrap_err();
        assert!(err.message().contains("\"r\""), "{err}");
    }
}
