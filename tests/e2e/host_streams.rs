//! The host process around a run: it exits when an attempt times out in a
//! call that cannot be interrupted, it finishes a run whose reader went
//! away, and it fails clearly (never panics) when stdout cannot be written.

use std::io::Read;
use std::process::Stdio;

use crate::support::{Cairn, Pipeline, assert_failed, guest};

#[test]
fn a_task_blocked_opening_a_fifo_times_out_and_the_process_exits() {
    let cairn = Cairn::new();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let input = format!(r#"{{"attack":"read-file","path":"{}"}}"#, fifo.display());
    // `task_json` waits for the process to exit: a hang fails the test run.
    let (run, report) = cairn.task_json(
        &guest("hostile"),
        &input,
        &[
            "--allow-read",
            dir.path().to_str().unwrap(),
            "--timeout",
            "300ms",
        ],
    );
    assert_failed(&report, &run, "timeout", 13);
}

fn two_steps() -> Pipeline {
    Pipeline::new(
        "name = \"talkative\"\n[steps.a]\ncomponent = \"{wasm:echo}\"\ninput = { x = 1 }\n\
         [steps.b]\ncomponent = \"{wasm:echo}\"\ninput = { y = \"${a.x}\" }\n",
    )
}

#[test]
fn a_run_whose_stderr_reader_goes_away_still_finishes() {
    let cairn = Cairn::new();
    let p = two_steps();
    let mut child = cairn
        .command()
        .args(["run", p.path()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Like `| head -0`: the reader of stderr is gone before anything is said.
    drop(child.stderr.take());
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "stdout: {stdout}");
    assert!(stdout.contains("\"y\":1"), "{stdout}");
    let listed = cairn.run(&["runs", "list", "--json"]).json();
    assert_eq!(listed[0]["status"], "succeeded", "{listed}");
}

#[test]
fn output_that_cannot_be_written_is_a_clean_error() {
    let cairn = Cairn::new();
    let p = two_steps();
    // Plain output and the JSON report alike.
    for format in ["--quiet", "--json"] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = cairn
            .command()
            .args(["run", p.path(), format])
            .stdout(full)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{format}: {stderr}");
        assert!(
            stderr.contains("cannot write the output to stdout") && !stderr.contains("panicked"),
            "{format}: {stderr}"
        );
    }
}

#[test]
fn escape_sequences_a_task_writes_are_shown_escaped() {
    let cairn = Cairn::new();
    let hostile = "\u{1b}]0;pwned\u{7}\u{1b}[2J\r";
    let env = format!("PAYLOAD={hostile}");
    let p = Pipeline::new(
        "name = \"noisy\"\n[steps.spill]\ncomponent = \"{wasm:hostile}\"\n\
         input = { attack = \"spill-env\", name = \"PAYLOAD\" }\n\
         grants = { env = [\"PAYLOAD\"] }\n",
    );
    // Through `task run`, `run` (log lines, stderr, the failure) and `runs logs`.
    let task = cairn
        .command()
        .args([
            "task",
            "run",
            guest("hostile").to_str().unwrap(),
            "--input",
            r#"{"attack":"spill-env","name":"PAYLOAD"}"#,
            "--env",
            &env,
        ])
        .output()
        .unwrap();
    let run = cairn
        .command()
        .args(["run", p.path()])
        .env("PAYLOAD", hostile)
        .output()
        .unwrap();
    let id = cairn.run(&["runs", "list", "--json"]).json()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let logs = cairn.run(&["runs", "logs", &id]);
    assert_eq!(logs.code, 0, "{}", logs.stderr);
    assert!(logs.stdout.contains("pwned"), "{}", logs.stdout);
    for (what, bytes) in [
        ("task run stderr", &task.stderr),
        ("task run stdout", &task.stdout),
        ("run stderr", &run.stderr),
        ("run stdout", &run.stdout),
    ] {
        let text = String::from_utf8_lossy(bytes);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\r') && !text.contains('\u{7}'),
            "{what} passes control characters through: {text:?}"
        );
        if what.ends_with("stderr") {
            assert!(
                text.contains("\\u{1b}]0;pwned"),
                "{what} shows them escaped: {text:?}"
            );
        }
    }
    assert!(
        !logs.stdout.contains('\u{1b}') && !logs.stderr.contains('\u{1b}'),
        "runs logs: {:?} {:?}",
        logs.stdout,
        logs.stderr
    );
}
