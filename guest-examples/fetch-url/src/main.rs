//! `fetch_url URL`: a plain `wasi:cli` program (no Cairn contract) that
//! sends one GET through `wasi:http` and writes the response body to
//! stdout. Exits 1 with the reason on stderr if the request fails.

use std::io::Write;

fn main() {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: fetch_url URL");
        std::process::exit(2);
    };
    match cairn_sdk::http::get(url).send().and_then(|r| r.error_for_status()?.bytes()) {
        Ok(body) => {
            let _ = std::io::stdout().write_all(&body);
        }
        Err(e) => {
            eprintln!("fetch_url: {e}");
            std::process::exit(1);
        }
    }
}
