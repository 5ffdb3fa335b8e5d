//! `cairn task new NAME`: a task crate that builds as it is.
//!
//! What a new author gets wrong first is all in the template: the `cdylib`
//! crate type (without it cargo builds an rlib and no `.wasm` appears, with
//! no error), the release profile that keeps components small, the SDK
//! dependency, and a test that runs the task natively with `cargo test`.

use std::path::{Path, PathBuf};

use clap::Args;

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The task's name: the crate and the component are named after it
    /// (letters, digits, `-` and `_`, starting with a letter).
    name: String,
    /// Where to create the crate (default: ./NAME). It must not exist yet.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The cairn-sdk to depend on: a path to its directory. By default, the
    /// SDK of the source tree this `cairn` was built from, if it is still
    /// there, else the git repository.
    #[arg(long, value_name = "PATH")]
    sdk: Option<PathBuf>,
}

/// Where cairn-sdk lives in the tree this binary was built from.
fn built_from_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk")
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.len() <= 64
}

/// The `cairn-sdk = …` line of the new crate's manifest.
fn sdk_dependency(given: Option<&Path>) -> Result<String, String> {
    let toml_path = |dir: &Path| -> Result<String, String> {
        let real = dir
            .canonicalize()
            .map_err(|e| format!("--sdk {}: {e}", dir.display()))?;
        if !real.join("Cargo.toml").is_file() {
            return Err(format!(
                "--sdk {}: no Cargo.toml there; give the sdk/ directory of a Cairn checkout",
                dir.display()
            ));
        }
        let text = real
            .to_str()
            .ok_or_else(|| format!("--sdk {}: the path is not UTF-8", dir.display()))?;
        Ok(format!(
            "cairn-sdk = {{ path = {} }}",
            toml::Value::String(text.to_owned())
        ))
    };
    match given {
        Some(dir) => toml_path(dir),
        None if built_from_sdk().join("Cargo.toml").is_file() => toml_path(&built_from_sdk()),
        None => Ok(format!(
            "cairn-sdk = {{ git = \"{}\" }}",
            env!("CARGO_PKG_REPOSITORY")
        )),
    }
}

pub fn new(args: NewArgs) -> Result<u8, String> {
    if !valid_name(&args.name) {
        return Err(format!(
            "{:?} is not a task name: use letters, digits, `-` and `_`, starting with a letter \
             (e.g. `cairn task new count-words`)",
            args.name
        ));
    }
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() {
        return Err(format!(
            "{} already exists; pick another name or --dir",
            dir.display()
        ));
    }
    let sdk = sdk_dependency(args.sdk.as_deref())?;
    let crate_name = args.name.replace('-', "_");
    let files = [
        ("Cargo.toml", cargo_toml(&args.name, &sdk)),
        ("src/lib.rs", lib_rs(&args.name)),
        (".gitignore", "/target\n".to_owned()),
        (".cargo/config.toml", CARGO_CONFIG.to_owned()),
    ];
    for (path, contents) in &files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, contents)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    say!("created task crate {} in {}", args.name, dir.display());
    say!(
        "  build it:  cd {} && cargo build --release --target wasm32-wasip2",
        dir.display()
    );
    say!("  test it:   cargo test");
    say!(
        "  run it:    cairn task run target/wasm32-wasip2/release/{crate_name}.wasm --input '{{\"text\": \"hello world\"}}'"
    );
    Ok(0)
}

/// The task's build settings for `wasm32-wasip2`.
pub const CARGO_CONFIG: &str = r#"# A 256 KiB stack instead of Rust's 1 MiB. A task's linear memory begins
# with its stack, and Cairn clears the memory a task used before the next
# attempt takes its slot: the smaller it is, the cheaper each step (a trivial
# step costs ~30 µs with a 1 MiB stack and ~21 µs with 256 KiB). Raise it if
# the task recurses deeply and traps with a stack overflow.
[target.wasm32-wasip2]
rustflags = ["-C", "link-arg=-zstack-size=262144"]
"#;

fn cargo_toml(name: &str, sdk: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# A component is a cdylib; without it cargo builds only an rlib and no .wasm
# appears. The rlib lets `cargo test` call the task natively.
crate-type = ["cdylib", "rlib"]

[dependencies]
{sdk}
serde = {{ version = "1", features = ["derive"] }}
schemars = "1"

# Small components (~100 KB instead of ~2.5 MB), faster for Cairn to compile.
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true
panic = "abort"

# A crate of its own, even when created inside another workspace.
[workspace]
"#
    )
}

fn lib_rs(name: &str) -> String {
    format!(
        r#"//! `{name}`: a Cairn task. It takes a JSON document shaped like `Input`
//! and returns one shaped like `Output`; both schemas are part of what
//! `cairn task inspect` shows and what `cairn check` checks a pipeline
//! against.
//!
//! Build: cargo build --release --target wasm32-wasip2
//! Run:   cairn task run target/wasm32-wasip2/release/{file}.wasm --input '{{"text": "hello world"}}'

use cairn_sdk::{{JsonSchema, TaskError, task}};
use serde::{{Deserialize, Serialize}};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {{
    pub text: String,
}}

#[derive(Debug, Serialize, JsonSchema, PartialEq)]
pub struct Output {{
    pub words: usize,
}}

pub fn run(input: Input) -> Result<Output, TaskError> {{
    cairn_sdk::info!("counting the words of {{}} bytes", input.text.len());
    if input.text.trim().is_empty() {{
        return Err(TaskError::invalid_input("`text` is empty"));
    }}
    Ok(Output {{
        words: input.text.split_whitespace().count(),
    }})
}}

task! {{
    name: "{name}",
    description: "Counts the words in a text.",
    run: run,
}}

#[cfg(test)]
mod tests {{
    use super::*;

    #[test]
    fn counts_words() {{
        let output = run(Input {{ text: "a rose is a rose".into() }}).unwrap();
        assert_eq!(output, Output {{ words: 5 }});
    }}

    #[test]
    fn refuses_empty_text() {{
        assert!(run(Input {{ text: "  ".into() }}).is_err());
    }}
}}
"#,
        file = name.replace('-', "_")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["count-words", "a", "t_1"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "1task", "-x", "a b", "../x", "a/b", "ä"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
