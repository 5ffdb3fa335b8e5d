//! `shout`: a plain `wasi:cli/command` program with no Cairn SDK.
//!
//! Upper-cases stdin, or the files named on the command line, to stdout.
//! `--lines` prefixes each line with its number. Shows that any program built
//! for `wasm32-wasip2` runs as a sandboxed step.

use std::io::{Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut numbered = false;
    let mut files = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--lines" => numbered = true,
            _ => files.push(arg),
        }
    }
    let mut text = String::new();
    if files.is_empty() {
        if let Err(e) = std::io::stdin().read_to_string(&mut text) {
            eprintln!("shout: cannot read stdin: {e}");
            return ExitCode::from(1);
        }
    }
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(t) => text.push_str(&t),
            Err(e) => {
                eprintln!("shout: cannot read {file}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let mut out = std::io::stdout().lock();
    for (i, line) in text.lines().enumerate() {
        let line = line.to_uppercase();
        let written = if numbered { writeln!(out, "{}: {line}", i + 1) } else { writeln!(out, "{line}") };
        if written.is_err() {
            return ExitCode::from(3);
        }
    }
    ExitCode::SUCCESS
}
