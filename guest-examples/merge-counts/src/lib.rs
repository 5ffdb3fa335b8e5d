//! `merge-counts`: merge per-document word counts into one top-k list.

use std::collections::HashMap;

use cairn_sdk::{JsonSchema, TaskError, task};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct WordCount {
    pub word: String,
    pub count: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Counts {
    pub total_words: u64,
    pub top: Vec<WordCount>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// `word-count` outputs, one per document.
    pub counts: Vec<Counts>,
    #[serde(default = "default_top")]
    pub top: usize,
}

fn default_top() -> usize {
    10
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Output {
    pub documents: usize,
    pub total_words: u64,
    pub top: Vec<WordCount>,
}

pub fn merge(input: Input) -> Result<Output, TaskError> {
    let mut merged: HashMap<String, u64> = HashMap::new();
    for counts in &input.counts {
        for wc in &counts.top {
            *merged.entry(wc.word.clone()).or_default() += wc.count;
        }
    }
    let mut top: Vec<WordCount> = merged.into_iter().map(|(word, count)| WordCount { word, count }).collect();
    top.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.word.cmp(&b.word)));
    top.truncate(input.top);
    Ok(Output {
        documents: input.counts.len(),
        total_words: input.counts.iter().map(|c| c.total_words).sum(),
        top,
    })
}

task! {
    name: "merge-counts",
    description: "Merges per-document word counts into one top-k list.",
    run: merge,
}
