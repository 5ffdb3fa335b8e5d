//! `split-text`: split a corpus into documents at a separator line.

use cairn_sdk::{JsonSchema, TaskError, task};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub text: String,
    /// A line that separates documents (default `---`).
    #[serde(default = "default_separator")]
    pub separator: String,
}

fn default_separator() -> String {
    "---".into()
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Output {
    /// The non-empty documents, trimmed, in order.
    pub documents: Vec<String>,
}

pub fn split(input: Input) -> Result<Output, TaskError> {
    let mut documents = vec![String::new()];
    for line in input.text.lines() {
        if line.trim() == input.separator {
            documents.push(String::new());
        } else {
            let doc = documents.last_mut().expect("starts with one document");
            doc.push_str(line);
            doc.push('\n');
        }
    }
    let documents: Vec<String> = documents.into_iter().map(|d| d.trim().to_owned()).filter(|d| !d.is_empty()).collect();
    cairn_sdk::info!("split into {} documents", documents.len());
    Ok(Output { documents })
}

task! {
    name: "split-text",
    description: "Splits a corpus into documents at separator lines.",
    run: split,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_separator_lines_and_drops_empty_documents() {
        let out = split(Input { text: "a b\n---\n\n---\nc\n d \n".into(), separator: "---".into() }).unwrap();
        assert_eq!(out.documents, ["a b", "c\n d"]);
    }
}
