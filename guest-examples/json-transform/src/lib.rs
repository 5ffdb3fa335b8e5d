//! `json-transform`: a small, deterministic query language over JSON records.
//!
//! Operations run in order: `select` keeps fields, `rename` renames them,
//! `filter` keeps records whose field compares true, `sort` orders records by
//! a field (stable; nulls and missing fields first), `limit` keeps the first n.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use cairn_sdk::{JsonSchema, TaskError, task};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub records: Vec<Map<String, Value>>,
    pub ops: Vec<Op>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Select(Vec<String>),
    Rename(BTreeMap<String, String>),
    Filter { field: String, op: Cmp, value: Value },
    Sort { field: String, #[serde(default)] descending: bool },
    Limit(usize),
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Lte,
    Gt,
    Gte,
    Contains,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Output {
    pub records: Vec<Map<String, Value>>,
}

pub fn transform(input: Input) -> Result<Output, TaskError> {
    let mut records = input.records;
    for op in &input.ops {
        match op {
            Op::Select(fields) => {
                for r in &mut records {
                    r.retain(|k, _| fields.contains(k));
                }
            }
            Op::Rename(names) => {
                for r in &mut records {
                    for (from, to) in names {
                        if let Some(v) = r.remove(from) {
                            r.insert(to.clone(), v);
                        }
                    }
                }
            }
            Op::Filter { field, op, value } => {
                records.retain(|r| r.get(field).is_some_and(|v| holds(v, *op, value)));
            }
            Op::Sort { field, descending } => {
                records.sort_by(|a, b| {
                    let ord = compare(a.get(field).unwrap_or(&Value::Null), b.get(field).unwrap_or(&Value::Null));
                    if *descending { ord.reverse() } else { ord }
                });
            }
            Op::Limit(n) => records.truncate(*n),
        }
    }
    Ok(Output { records })
}

fn holds(left: &Value, op: Cmp, right: &Value) -> bool {
    match op {
        Cmp::Eq => left == right,
        Cmp::Ne => left != right,
        Cmp::Lt => compare(left, right) == Ordering::Less,
        Cmp::Lte => compare(left, right) != Ordering::Greater,
        Cmp::Gt => compare(left, right) == Ordering::Greater,
        Cmp::Gte => compare(left, right) != Ordering::Less,
        Cmp::Contains => match (left, right) {
            (Value::String(l), Value::String(r)) => l.contains(r.as_str()),
            (Value::Array(items), r) => items.contains(r),
            _ => false,
        },
    }
}

/// A total order on JSON values: null < bool < number < string < other.
fn compare(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Number(_) => 2,
            Value::String(_) => 3,
            Value::Array(_) => 4,
            Value::Object(_) => 5,
        }
    }
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Number(x), Value::Number(y)) => {
            x.as_f64().unwrap_or(0.0).total_cmp(&y.as_f64().unwrap_or(0.0))
        }
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)).then_with(|| a.to_string().cmp(&b.to_string())),
    }
}

task! {
    name: "json-transform",
    description: "Selects, renames, filters, sorts and limits JSON records.",
    run: transform,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pipeline_of_ops_runs_in_order() {
        let input: Input = serde_json::from_value(json!({
            "records": [
                {"name": "b", "age": 31, "city": "Oslo"},
                {"name": "a", "age": 17, "city": "Rome"},
                {"name": "c", "age": 45, "city": "Oslo"},
            ],
            "ops": [
                {"filter": {"field": "age", "op": "gte", "value": 18}},
                {"sort": {"field": "age", "descending": true}},
                {"select": ["name", "age"]},
                {"rename": {"name": "who"}},
                {"limit": 5},
            ]
        }))
        .unwrap();
        let out = transform(input).unwrap();
        assert_eq!(serde_json::to_value(out.records).unwrap(), json!([{"who": "c", "age": 45}, {"who": "b", "age": 31}]));
    }

    #[test]
    fn unknown_ops_are_rejected_by_the_schema() {
        let err = serde_json::from_value::<Input>(json!({"records": [], "ops": [{"explode": 1}]})).unwrap_err();
        assert!(err.to_string().contains("unknown variant"), "{err}");
    }
}
