//! Every shell command the README shows runs as written, the way rustdoc
//! runs the examples in doc comments: each ```sh block is run by bash, in
//! order, from a copy of the parts of the repository root the commands use,
//! with the `cairn` under test first on PATH (as the README's `export
//! PATH=…` puts it). The two set-up commands (`rustup …`) are what CI runs
//! itself, so they are the only blocks left out.

use std::path::Path;
use std::process::Command;

use crate::support::{guest, repo_root};

/// The ```sh blocks of a Markdown text, with the line each starts on.
fn sh_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        let fence = line.trim_start();
        match &mut current {
            None if fence == "```sh" => current = Some((i + 1, String::new())),
            Some(_) if fence == "```" => blocks.extend(current.take()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    assert!(current.is_none(), "an unclosed ```sh block in the README");
    blocks
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn every_command_in_the_readme_runs_as_written() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let blocks = sh_blocks(&readme);
    assert!(
        blocks.len() >= 6,
        "the README's command blocks were not found"
    );

    // The repository root as the first set-up command leaves it: the
    // example data, pipelines and policy, and the built components.
    let components = guest("echo").parent().unwrap().to_owned();
    let work = tempfile::tempdir().unwrap();
    let examples = work.path().join("guest-examples");
    for part in ["data", "pipelines"] {
        copy_dir(
            &root.join("guest-examples").join(part),
            &examples.join(part),
        );
    }
    std::fs::copy(
        root.join("guest-examples/policy.toml"),
        examples.join("policy.toml"),
    )
    .unwrap();
    let built = examples.join("target/wasm32-wasip2/release");
    std::fs::create_dir_all(&built).unwrap();
    for entry in std::fs::read_dir(&components).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wasm") {
            std::fs::copy(&path, built.join(path.file_name().unwrap())).unwrap();
        }
    }

    let bin = Path::new(env!("CARGO_BIN_EXE_cairn")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let store = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut ran = 0;
    for (line, block) in &blocks {
        if block.trim_start().starts_with("rustup ") {
            continue;
        }
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("set -euo pipefail\n{block}"))
            .current_dir(work.path())
            .env("PATH", &path)
            .env("CAIRN_HOME", store.path())
            .env("TMPDIR", scratch.path())
            .env(
                "CAIRN_ARTIFACT_CACHE",
                scratch.path().join("artifact-cache"),
            )
            .env_remove("CAIRN_LOG")
            .env_remove("CAIRN_POLICY")
            .env_remove("CAIRN_TENANT")
            .output()
            .expect("bash runs");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success(),
            "the README's commands at line {line} failed ({}):\n{block}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
        assert!(
            !stderr.contains("panicked"),
            "README line {line}:\n{stderr}"
        );
        ran += 1;
    }
    assert!(ran >= 5, "only {ran} blocks ran");
}

#[test]
fn the_readme_blocks_are_found() {
    let blocks = sh_blocks("text\n```sh\na\nb\n```\n```toml\nx\n```\n  ```sh\nc\n  ```\n");
    assert_eq!(
        blocks,
        vec![(2, "a\nb\n".to_owned()), (9, "c\n".to_owned())]
    );
}
