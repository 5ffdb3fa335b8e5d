//! `word-count`: word frequencies of a text.
//!
//! Words are maximal runs of alphanumeric characters (plus `'`), lower-cased.
//! Ties in the top-k list are broken alphabetically so the output is stable.

use std::collections::HashMap;

use cairn_sdk::{JsonSchema, TaskError, task};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub text: String,
    /// How many of the most frequent words to return (default 10).
    #[serde(default = "default_top")]
    pub top: usize,
}

fn default_top() -> usize {
    10
}

#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct WordCount {
    pub word: String,
    pub count: u64,
}

#[derive(Debug, Serialize, JsonSchema, PartialEq)]
pub struct Output {
    pub total_words: u64,
    pub unique_words: u64,
    pub top: Vec<WordCount>,
}

pub fn count(input: Input) -> Result<Output, TaskError> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut total = 0;
    let words = input
        .text
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty());
    for word in words {
        total += 1;
        *counts.entry(word.to_lowercase()).or_default() += 1;
    }
    let unique = counts.len() as u64;
    let mut top: Vec<WordCount> = counts.into_iter().map(|(word, count)| WordCount { word, count }).collect();
    top.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.word.cmp(&b.word)));
    top.truncate(input.top);
    Ok(Output { total_words: total, unique_words: unique, top })
}

task! {
    name: "word-count",
    description: "Counts word frequencies and returns the most frequent words.",
    run: count,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_case_insensitively_with_stable_ties() {
        let out = count(Input { text: "The cat; the DOG. Dog's bowl, the end".into(), top: 3 }).unwrap();
        assert_eq!(out.total_words, 8);
        assert_eq!(out.unique_words, 6);
        let top: Vec<(&str, u64)> = out.top.iter().map(|w| (w.word.as_str(), w.count)).collect();
        assert_eq!(top, [("the", 3), ("bowl", 1), ("cat", 1)]);
    }

    #[test]
    fn empty_text_has_no_words() {
        let out = count(Input { text: " \n\t ".into(), top: 5 }).unwrap();
        assert_eq!((out.total_words, out.unique_words, out.top.len()), (0, 0, 0));
    }
}
