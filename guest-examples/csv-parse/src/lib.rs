//! `csv-parse`: CSV text → typed rows.
//!
//! Each cell becomes the narrowest JSON type that holds it: integer, float,
//! boolean, null (empty cell) or string. Rows come out as objects keyed by the
//! header, so downstream steps can refer to columns by name.

use cairn_sdk::{JsonSchema, TaskError, task};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The CSV document; the first record is the header.
    pub csv: String,
    /// Field delimiter (one ASCII character); defaults to `,`.
    #[serde(default)]
    pub delimiter: Option<char>,
}

#[derive(Debug, Serialize, JsonSchema, PartialEq)]
pub struct Output {
    pub columns: Vec<String>,
    pub rows: Vec<Map<String, Value>>,
}

pub fn parse(input: Input) -> Result<Output, TaskError> {
    let delimiter = match input.delimiter {
        None => b',',
        Some(c) if c.is_ascii() => c as u8,
        Some(c) => return Err(TaskError::invalid_input(format!("delimiter {c:?} is not ASCII"))),
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .trim(csv::Trim::All)
        .from_reader(input.csv.as_bytes());
    let columns: Vec<String> = reader
        .headers()
        .map_err(|e| TaskError::invalid_input(format!("bad CSV header: {e}")))?
        .iter()
        .map(str::to_owned)
        .collect();
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| TaskError::invalid_input(format!("bad CSV record {}: {e}", i + 1)))?;
        let row = columns.iter().cloned().zip(record.iter().map(typed)).collect();
        rows.push(row);
    }
    cairn_sdk::info!("parsed {} rows with {} columns", rows.len(), columns.len());
    Ok(Output { columns, rows })
}

/// The narrowest JSON value for one cell.
fn typed(cell: &str) -> Value {
    if cell.is_empty() {
        return Value::Null;
    }
    if let Ok(i) = cell.parse::<i64>() {
        return Value::from(i);
    }
    if let Some(n) = cell.parse::<f64>().ok().and_then(Number::from_f64) {
        return Value::Number(n);
    }
    match cell {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(cell.to_owned()),
    }
}

task! {
    name: "csv-parse",
    description: "Parses CSV text into rows of typed values keyed by the header.",
    run: parse,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_each_cell() {
        let out = parse(Input { csv: "region,amount,ok,note\neu, 12 ,true,\nus,3.5,false,late\n".into(), delimiter: None }).unwrap();
        assert_eq!(out.columns, ["region", "amount", "ok", "note"]);
        assert_eq!(Value::Object(out.rows[0].clone()), json!({"region": "eu", "amount": 12, "ok": true, "note": null}));
        assert_eq!(Value::Object(out.rows[1].clone()), json!({"region": "us", "amount": 3.5, "ok": false, "note": "late"}));
    }

    #[test]
    fn ragged_rows_are_rejected_with_their_number() {
        let err = parse(Input { csv: "a,b\n1,2\n3\n".into(), delimiter: None }).unwrap_err();
        assert!(err.message().contains("record 2"), "{err}");
    }

    #[test]
    fn other_delimiters_work() {
        let out = parse(Input { csv: "a;b\n1;x\n".into(), delimiter: Some(';') }).unwrap();
        assert_eq!(Value::Object(out.rows[0].clone()), json!({"a": 1, "b": "x"}));
    }
}
