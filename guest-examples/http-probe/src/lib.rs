//! `http-probe`: send one HTTP request and report what came back.
//!
//! The engine's tests drive every grant check through it: a method, a URL,
//! headers and a body in; status, headers and body out. It describes itself
//! as wanting `https://api.example.com`, so a pipeline step that uses it
//! without granting that host is refused by the planner (a test checks so).

use cairn_sdk::{Capability, JsonSchema, TaskError, http, task};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    #[serde(default = "get")]
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body: Option<String>,
    /// Read the body chunk by chunk, reporting how much arrived.
    #[serde(default)]
    pub stream: bool,
}

fn get() -> String {
    "GET".into()
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Output {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
}

pub fn probe(input: Input) -> Result<Output, TaskError> {
    let mut request = http::request(&input.method, input.url.as_str());
    for (name, value) in &input.headers {
        request = request.header(name, value);
    }
    if let Some(body) = input.body {
        request = request.body(body);
    }
    let mut response = request.send()?;
    let status = response.status();
    let location = response.header("location").map(str::to_owned);
    let body = if input.stream {
        let mut all = Vec::new();
        while let Some(chunk) = response.reader().chunk()? {
            all.extend_from_slice(&chunk);
        }
        String::from_utf8_lossy(&all).into_owned()
    } else {
        response.text()?
    };
    Ok(Output { status, location, body })
}

task! {
    name: "http-probe",
    description: "Sends one HTTP request and returns its status, location and body.",
    capabilities: [Capability::Http("https://api.example.com".into())],
    run: probe,
}
