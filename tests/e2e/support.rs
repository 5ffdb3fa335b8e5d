//! Shared helpers: build the guests once, run `cairn` in a fresh store.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("engine/ has a parent")
        .to_owned()
}

/// Path of a built guest component, e.g. `guest("word_count")`.
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let root = repo_root().join("guest-examples");
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(root.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(root.join("target"))
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "building guest-examples failed (is the wasm32-wasip2 target installed?)"
        );
        root.join("target/wasm32-wasip2/release")
    });
    let path = dir.join(format!("{name}.wasm"));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A `cairn` invocation with its own store directory.
pub struct Cairn {
    pub store: tempfile::TempDir,
}

impl Cairn {
    pub fn new() -> Self {
        Self {
            store: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
        // Each test compiles into its own store: the per-user shared
        // artifact cache is off unless a test turns it on.
        cmd.env("CAIRN_HOME", self.store.path())
            .env("CAIRN_ARTIFACT_CACHE", "off")
            .env_remove("CAIRN_LOG")
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command().args(args).output().expect("cairn starts"))
    }

    /// `cairn task run <component> --input <input> --json <extra...>`, parsed.
    pub fn task_json(&self, component: &Path, input: &str, extra: &[&str]) -> (Run, Value) {
        let mut args = vec![
            "task",
            "run",
            component.to_str().expect("utf-8 path"),
            "--input",
            input,
            "--json",
        ];
        args.extend_from_slice(extra);
        let run = self.run(&args);
        let report = run.json();
        (run, report)
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Run {
            code: out
                .status
                .code()
                .expect("cairn exited normally, not by a signal"),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// The clean-failure contract: a one-line `error:` message, no panic, no backtrace.
    pub fn assert_clean_error(&self, code: i32, needle: &str) {
        assert_eq!(self.code, code, "exit code; stderr:\n{}", self.stderr);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one line on stderr, got:\n{}",
            self.stderr
        );
        assert!(lines[0].starts_with("error: "), "{}", lines[0]);
        assert!(
            lines[0].contains(needle),
            "expected {needle:?} in: {}",
            lines[0]
        );
        for bad in ["panicked", "backtrace", "RUST_BACKTRACE", "internal error"] {
            assert!(
                !self.stderr.contains(bad),
                "stderr mentions {bad}: {}",
                self.stderr
            );
        }
    }
}

/// The failure class and exit code a report carries, checked together.
pub fn assert_failed(report: &Value, run: &Run, class: &str, code: i32) {
    assert_eq!(report["status"], "failed", "{report}");
    assert_eq!(report["failure"]["class"], class, "{report}");
    assert_eq!(run.code, code, "exit code for {class}; report {report}");
    assert_eq!(report["exit_code"], code);
}

/// A pipeline written into a temporary directory.
pub struct Pipeline {
    pub dir: tempfile::TempDir,
}

impl Pipeline {
    /// Write `manifest` (with `{name}` placeholders replaced by the path of
    /// that guest component) as `pipeline.toml`.
    pub fn new(manifest: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut text = manifest.to_owned();
        while let Some(start) = text.find("{wasm:") {
            let end = start + text[start..].find('}').expect("closed placeholder");
            let name = &text[start + 6..end];
            text.replace_range(start..=end, guest(name).to_str().expect("utf-8 path"));
        }
        std::fs::write(dir.path().join("pipeline.toml"), text).expect("write manifest");
        Self { dir }
    }

    pub fn file(&self, name: &str, contents: &str) -> &Self {
        std::fs::write(self.dir.path().join(name), contents).expect("write file");
        self
    }

    pub fn path(&self) -> &str {
        self.dir.path().to_str().expect("utf-8 path")
    }
}

/// A pipeline whose step `slow` burns CPU for many minutes, followed by
/// `more` (TOML): for tests that stop a run while a step is running.
pub fn endless_pipeline(more: &str) -> Pipeline {
    Pipeline::new(&format!(
        r#"
        name = "long"
        [steps.slow]
        component = "{{wasm:burn}}"
        input = {{ rounds = 100_000_000_000 }}
        fuel = 10_000_000_000_000
        timeout = "10m"
        {more}
        "#
    ))
}

/// The report of one step in a `cairn run --json` report.
pub fn step<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {report}"))
}

/// Path of an example pipeline directory (its components built).
pub fn example(name: &str) -> String {
    guest("echo");
    repo_root()
        .join("guest-examples/pipelines")
        .join(name)
        .to_str()
        .expect("utf-8 path")
        .to_owned()
}

/// Start `cairn run` and read stderr until `line` appears; returns the run id.
pub fn start_until(cairn: &Cairn, path: &str, line: &str) -> (std::process::Child, String) {
    start_until_all(cairn, path, &[line])
}

/// Start `cairn run` and read stderr until every one of `lines` has
/// appeared (as the start of a line, in any order); returns the run id.
pub fn start_until_all(cairn: &Cairn, path: &str, lines: &[&str]) -> (std::process::Child, String) {
    let mut child = cairn
        .command()
        .args(["run", path])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut run_id = String::new();
    let mut text = String::new();
    let mut missing: Vec<&str> = lines.to_vec();
    while !missing.is_empty() {
        text.clear();
        assert_ne!(
            stderr.read_line(&mut text).unwrap(),
            0,
            "cairn ended before printing {missing:?}"
        );
        if let Some(rest) = text.strip_prefix("run ") {
            run_id = rest.split_whitespace().next().unwrap().to_owned();
        }
        missing.retain(|line| !text.starts_with(line));
    }
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (child, run_id)
}
