//! Each resource attack fails with its own class, inside its limit, and the
//! host comes out healthy (it exits normally and reports what was hit).

use crate::support::{Cairn, assert_failed, guest};

#[test]
fn infinite_loop_is_stopped_by_fuel() {
    let cairn = Cairn::new();
    let (run, report) = cairn.task_json(
        &guest("hostile"),
        r#"{"attack":"spin"}"#,
        &["--fuel", "50_000_000"],
    );
    assert_failed(&report, &run, "out-of-fuel", 12);
    assert_eq!(report["fuel_used"], 50_000_000, "used exactly its budget");
    assert!(
        report["failure"]["message"]
            .as_str()
            .unwrap()
            .contains("--fuel")
    );
}

#[test]
fn infinite_loop_with_unlimited_fuel_is_stopped_by_the_timeout() {
    let cairn = Cairn::new();
    let unlimited = u64::MAX.to_string();
    let (run, report) = cairn.task_json(
        &guest("hostile"),
        r#"{"attack":"spin"}"#,
        &["--fuel", &unlimited, "--timeout", "300ms"],
    );
    assert_failed(&report, &run, "timeout", 13);
    let micros = report["duration_us"].as_u64().unwrap();
    assert!(
        micros >= 300_000,
        "stopped before its deadline: {micros} µs"
    );
    // Generous bound: proves it did not run on to the 30 s default.
    assert!(micros < 10_000_000, "overran its deadline: {micros} µs");
}

#[test]
fn blocking_host_call_is_stopped_by_the_timeout() {
    let cairn = Cairn::new();
    let (run, report) = cairn.task_json(
        &guest("hostile"),
        r#"{"attack":"sleep"}"#,
        &["--timeout", "300ms"],
    );
    assert_failed(&report, &run, "timeout", 13);
    assert!(report["duration_us"].as_u64().unwrap() < 10_000_000);
}

#[test]
fn default_limits_stop_an_infinite_loop() {
    let cairn = Cairn::new();
    let (run, report) = cairn.task_json(&guest("hostile"), r#"{"attack":"spin"}"#, &[]);
    assert_failed(&report, &run, "out-of-fuel", 12);
    assert_eq!(report["fuel_used"], 5_000_000_000u64);
}

#[test]
fn memory_bomb_stops_at_the_cap() {
    let cairn = Cairn::new();
    let (run, report) = cairn.task_json(
        &guest("hostile"),
        r#"{"attack":"memory-bomb"}"#,
        &["--memory", "32MiB"],
    );
    assert_failed(&report, &run, "memory-limit", 14);
    let peak = report["peak_memory_bytes"].as_u64().unwrap();
    assert!(peak <= 32 << 20, "peak {peak} exceeds the cap");
    assert!(
        peak >= 16 << 20,
        "the bomb should have got close to the cap, peak {peak}"
    );
    let message = report["failure"]["message"].as_str().unwrap();
    assert!(
        message.contains("32.0 MiB") && message.contains("--memory"),
        "{message}"
    );
}

#[test]
fn deep_recursion_traps() {
    let cairn = Cairn::new();
    let (run, report) = cairn.task_json(&guest("hostile"), r#"{"attack":"deep-recursion"}"#, &[]);
    assert_failed(&report, &run, "trap", 15);
}

#[test]
fn panic_traps_with_the_panic_message() {
    let cairn = Cairn::new();
    let (run, report) = cairn.task_json(&guest("hostile"), r#"{"attack":"panic"}"#, &[]);
    assert_failed(&report, &run, "trap", 15);
    let message = report["failure"]["message"].as_str().unwrap();
    assert!(message.contains("panicked on purpose"), "{message}");
    // The guest's panic hook suggests RUST_BACKTRACE, which a sandboxed
    // task cannot use: the hint is dropped.
    assert!(!message.contains("RUST_BACKTRACE"), "{message}");
}

#[test]
fn oversized_output_is_refused() {
    let cairn = Cairn::new();
    let (run, report) = cairn.task_json(
        &guest("hostile"),
        r#"{"attack":"huge-output","bytes":3000000}"#,
        &["--output-limit", "1MiB"],
    );
    assert_failed(&report, &run, "output-too-large", 17);
    assert_eq!(report["output"], serde_json::Value::Null);
    let message = report["failure"]["message"].as_str().unwrap();
    assert!(
        message.contains("2.9 MiB") && message.contains("1.0 MiB"),
        "{message}"
    );
}

#[test]
fn output_that_is_not_json_is_refused() {
    let cairn = Cairn::new();
    let (run, report) = cairn.task_json(&guest("hostile"), r#"{"attack":"garbage"}"#, &[]);
    assert_failed(&report, &run, "invalid-output", 18);
}

#[test]
fn log_flood_is_capped_and_the_task_still_finishes() {
    let cairn = Cairn::new();
    let (run, report) = cairn.task_json(&guest("hostile"), r#"{"attack":"log-flood"}"#, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(report["output"], "still alive");
    let kept = kept_log_bytes(&report);
    assert!(kept <= (1 << 20) + (16 << 10) + 64, "kept {kept} log bytes");
    assert!(report["logs"]["dropped"].as_u64().unwrap() > 90_000);
}

#[test]
fn stdout_flood_is_bounded_and_ends_by_fuel() {
    let cairn = Cairn::new();
    let (run, report) = cairn.task_json(
        &guest("hostile"),
        r#"{"attack":"stdout-flood"}"#,
        &["--fuel", "100_000_000"],
    );
    assert_failed(&report, &run, "out-of-fuel", 12);
    let kept = kept_log_bytes(&report);
    assert!(
        kept <= 80 << 10,
        "stdout kept as logs must stay near its 64 KiB cap, kept {kept}"
    );
}

#[test]
fn task_errors_keep_their_kind() {
    let cairn = Cairn::new();
    let (run, report) = cairn.task_json(&guest("hostile"), r#"{"attack":"retryable"}"#, &[]);
    assert_failed(&report, &run, "task-retryable", 11);
    let (run, report) = cairn.task_json(&guest("hostile"), r#"{"attack":"no-such-attack"}"#, &[]);
    assert_failed(&report, &run, "task-fatal", 10);
    assert!(
        report["failure"]["message"]
            .as_str()
            .unwrap()
            .contains("rejected its input")
    );
}

/// Bytes of task log messages a `--json` report kept.
fn kept_log_bytes(report: &serde_json::Value) -> usize {
    report["logs"]["lines"]
        .as_array()
        .expect("the report has log lines")
        .iter()
        .map(|l| {
            l["message"]
                .as_str()
                .expect("each line has a message")
                .len()
        })
        .sum()
}

#[test]
fn a_signal_stops_a_task_blocked_in_a_host_call() {
    use std::io::{BufRead, BufReader, Read};
    for (signal, code) in [("-INT", 130), ("-TERM", 143)] {
        let cairn = Cairn::new();
        let mut child = cairn
            .command()
            .args([
                "task",
                "run",
                guest("hostile").to_str().unwrap(),
                "--input",
                r#"{"attack":"sleep"}"#,
                "--timeout",
                "10m",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("going to sleep") {
            line.clear();
            assert_ne!(
                stderr.read_line(&mut line).unwrap(),
                0,
                "ended before sleeping"
            );
        }
        let sent = std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = child.wait().unwrap();
        let mut rest = String::new();
        stderr.read_to_string(&mut rest).unwrap();
        assert_eq!(status.code(), Some(code), "{signal}: {rest}");
        assert!(rest.contains("interrupted: the task was stopped"), "{rest}");
    }
}

#[test]
fn a_task_cannot_hold_more_than_its_share_of_file_descriptors() {
    let cairn = Cairn::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.txt");
    std::fs::write(&file, "x").unwrap();
    let input = format!(
        r#"{{"attack":"hold-open","path":"{}","count":5000}}"#,
        file.display()
    );
    let (run, report) = cairn.task_json(
        &guest("hostile"),
        &input,
        &["--allow-read", dir.path().to_str().unwrap()],
    );
    // Past the cap the guest's open fails or the attempt traps; either way
    // it holds at most the cap, and the host carries on.
    match report["output"].as_u64() {
        Some(held) => {
            assert_eq!(run.code, 0, "{}", run.stderr);
            assert!(held < 1024, "held {held} descriptors");
        }
        None => {
            assert_failed(&report, &run, "trap", 15);
            let message = report["failure"]["message"].as_str().unwrap();
            assert!(message.contains("more than 1024 resources"), "{message}");
        }
    }
    let (again, _) = cairn.task_json(&guest("echo"), r#"{"still":"fine"}"#, &[]);
    assert_eq!(again.code, 0, "{}", again.stderr);
}
