//! `http-pages`: fetch every page of a JSON API and return all its items.
//!
//! Each page is a JSON object with an `items` list and a `next` field: the
//! URL of the next page, or `null` on the last. A relative `next` (`/items?page=2`)
//! is taken against the page's origin. The step must grant the API's host
//! (`grants = { http = ["api.example.com"] }`); nothing else is reachable.

use cairn_sdk::{JsonSchema, TaskError, http, task};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The first page's URL.
    pub url: String,
    /// Stop after this many pages (default 100) and fail: an API that never
    /// ends must not run the step forever.
    #[serde(default = "default_max_pages")]
    pub max_pages: u32,
    /// Sent as `Authorization: Bearer ...` when set (e.g. from a secret).
    #[serde(default)]
    pub token: Option<String>,
}

fn default_max_pages() -> u32 {
    100
}

#[derive(Debug, Deserialize)]
struct Page {
    items: Vec<Value>,
    #[serde(default)]
    next: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema, PartialEq)]
pub struct Output {
    pub items: Vec<Value>,
    pub pages: u32,
}

/// `next` as an absolute URL: as is, or against `current`'s origin.
fn absolute(current: &str, next: &str) -> String {
    if next.contains("://") {
        return next.to_owned();
    }
    let origin_end = current
        .find("://")
        .and_then(|i| current[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(current.len());
    format!("{}/{}", &current[..origin_end], next.trim_start_matches('/'))
}

pub fn fetch_all(input: Input) -> Result<Output, TaskError> {
    let mut items = Vec::new();
    let mut url = Some(input.url);
    let mut pages = 0;
    while let Some(current) = url.take() {
        if pages == input.max_pages {
            return Err(TaskError::fatal(format!(
                "gave up after {pages} pages (max_pages); the next was {current}"
            )));
        }
        let mut request = http::get(current.as_str()).header("accept", "application/json");
        if let Some(token) = &input.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let page: Page = request.send()?.error_for_status()?.json()?;
        pages += 1;
        cairn_sdk::progress(pages as u64, 0, &format!("page {pages}: {} items", page.items.len()));
        items.extend(page.items);
        url = page.next.map(|next| absolute(&current, &next));
    }
    cairn_sdk::info!("fetched {} items in {pages} pages", items.len());
    Ok(Output { items, pages })
}

task! {
    name: "http-pages",
    description: "Pages through a JSON HTTP API and returns every item.",
    run: fetch_all,
}

#[cfg(test)]
mod tests {
    use super::absolute;

    #[test]
    fn next_links_resolve_against_the_origin() {
        assert_eq!(absolute("http://h:1/a/b?page=1", "/a/b?page=2"), "http://h:1/a/b?page=2");
        assert_eq!(absolute("http://h:1", "x"), "http://h:1/x");
        assert_eq!(absolute("http://h:1/a", "https://o/p"), "https://o/p");
    }
}
