//! `cairn run` on the example pipelines and on purpose-built ones: outputs,
//! parallel fan-out, retries, skips, fail-fast, and the DAG views.

use serde_json::json;

use crate::support::{Cairn, Pipeline, endless_pipeline, example, step};

#[test]
fn orders_pipeline_produces_the_report() {
    let run = Cairn::new().run(&["run", &example("orders"), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["status"], "succeeded");
    assert_eq!(report["output"]["grand_total"], 1437.74);
    let markdown = report["output"]["markdown"].as_str().unwrap();
    assert!(markdown.contains("| amer | 4 | 463.75 |"), "{markdown}");
    assert!(
        markdown.contains("## apac\n\n- gadget: 1 orders, amount 99.99"),
        "{markdown}"
    );
    assert_eq!(
        step(&report, "by_product")["items"],
        3,
        "one mapped run per region"
    );
    assert_eq!(step(&report, "by_product")["attempts"], 3);
}

#[test]
fn text_pipeline_merges_counts_and_skips_by_condition() {
    let run = Cairn::new().run(&["run", &example("text"), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["output"]["documents"], 4);
    assert_eq!(report["output"]["total_words"], 66);
    assert_eq!(
        report["output"]["top"][0],
        json!({"word": "the", "count": 12})
    );
    let note = step(&report, "long_corpus_note");
    assert_eq!(note["status"], "skipped");
    assert_eq!(note["reason"], "condition ${merge.top.99} is false");
}

#[test]
fn flaky_pipeline_retries_until_success_and_does_not_retry_traps() {
    let run = Cairn::new().run(&["run", &example("flaky"), "--json"]);
    assert_eq!(
        run.code, 0,
        "a failure with allow_failure does not fail the run: {}",
        run.stderr
    );
    let report = run.json();
    let unreliable = step(&report, "unreliable");
    assert_eq!(unreliable["status"], "succeeded");
    assert_eq!(
        unreliable["attempts"], 3,
        "fails twice, succeeds on the third"
    );
    let delays: Vec<u64> = unreliable["retry_delays_us"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap())
        .collect();
    assert_eq!(delays.len(), 2);
    assert!(
        delays[0] <= 20_000 && delays[1] <= 40_000,
        "full jitter stays under 20ms·2^n: {delays:?}"
    );
    assert_eq!(step(&report, "after_unreliable")["status"], "succeeded");
    let broken = step(&report, "broken");
    assert_eq!(broken["status"], "failed");
    assert_eq!(broken["class"], "trap");
    assert_eq!(
        broken["attempts"], 1,
        "a trap is not in `on`, so it is not retried"
    );
}

fn flaky_manifest(failures: u32, attempts: u32, on: &str) -> Pipeline {
    let p = Pipeline::new(&format!(
        r#"
        name = "retries"
        [steps.flaky]
        component = "{{wasm:flaky}}"
        input = {{ failures = {failures}, key = "k" }}
        grants = {{ scratch = "state" }}
        retry = {{ attempts = {attempts}, backoff = "fixed", delay = "30ms", jitter = false, on = [{on}] }}
        "#
    ));
    std::fs::create_dir(p.dir.path().join("state")).unwrap();
    p
}

#[test]
fn a_step_failing_k_times_succeeds_on_attempt_k_plus_1_after_its_backoff() {
    let p = flaky_manifest(3, 5, r#""task-retryable""#);
    let run = Cairn::new().run(&["run", p.path(), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    let flaky = step(&report, "flaky");
    assert_eq!(flaky["attempts"], 4);
    assert_eq!(report["output"]["flaky"]["succeeded_on_attempt"], 4);
    assert_eq!(
        flaky["retry_delays_us"],
        json!([30_000, 30_000, 30_000]),
        "fixed backoff without jitter"
    );
    assert!(
        flaky["duration_us"].as_u64().unwrap() >= 90_000,
        "the three waits really happened: {flaky}"
    );
}

#[test]
fn the_plain_event_log_keeps_the_order_of_events() {
    // Not a terminal: one line per event, whatever is buffered between
    // scheduler moves and task events.
    let p = flaky_manifest(2, 3, r#""task-retryable""#);
    let run = Cairn::new().run(&["run", p.path(), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let position = |prefix: &str| {
        run.stderr
            .lines()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{}", run.stderr))
    };
    let order = [
        position("start  flaky"),
        position("retry  flaky attempt 1 failed"),
        position("retry  flaky attempt 2 failed"),
        position("done   flaky"),
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "events out of order {order:?}:\n{}",
        run.stderr
    );
}

#[test]
fn retries_stop_when_attempts_run_out() {
    let p = flaky_manifest(5, 2, r#""task-retryable""#);
    let run = Cairn::new().run(&["run", p.path(), "--json"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    let flaky = step(&run.json(), "flaky").clone();
    assert_eq!(
        (flaky["status"].as_str(), flaky["attempts"].as_u64()),
        (Some("failed"), Some(2))
    );
    assert_eq!(flaky["class"], "task-retryable");
}

#[test]
fn a_class_not_listed_in_on_is_not_retried() {
    let p = flaky_manifest(1, 5, r#""timeout""#);
    let run = Cairn::new().run(&["run", p.path(), "--json"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert_eq!(step(&run.json(), "flaky")["attempts"], 1);
}

const FAILING_DAG: &str = r#"
    name = "failing"
    [steps.bad]
    component = "{wasm:hostile}"
    input = { attack = "panic" }
    [steps.downstream]
    component = "{wasm:echo}"
    input = { from = "${bad}" }
    [steps.slow]
    component = "{wasm:burn}"
    input = { rounds = 200_000_000 }
    fuel = 100_000_000_000
    [steps.independent]
    component = "{wasm:echo}"
    input = { burned = "${slow.value}" }
"#;

#[test]
fn a_failure_skips_its_dependents_and_the_rest_goes_on() {
    let p = Pipeline::new(FAILING_DAG);
    let run = Cairn::new().run(&["run", p.path(), "--json"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["status"], "failed");
    assert_eq!(step(&report, "bad")["status"], "failed");
    assert_eq!(step(&report, "downstream")["status"], "skipped");
    assert_eq!(
        step(&report, "downstream")["reason"],
        "upstream `bad` failed"
    );
    assert_eq!(step(&report, "independent")["status"], "succeeded");
}

#[test]
fn fail_fast_stops_everything_at_the_first_failure() {
    let p = Pipeline::new(FAILING_DAG);
    let run = Cairn::new().run(&["run", p.path(), "--json", "--fail-fast"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    let report = run.json();
    assert_eq!(step(&report, "independent")["status"], "cancelled");
    assert_eq!(step(&report, "independent")["attempts"], 0);
    assert_ne!(step(&report, "slow")["status"], "succeeded");
}

#[test]
fn mapping_over_an_empty_list_runs_nothing_and_yields_an_empty_list() {
    let p = Pipeline::new(
        r#"
        name = "empty"
        output = "${total}"
        [steps.source]
        component = "{wasm:echo}"
        input = { items = [] }
        [steps.each]
        component = "{wasm:echo}"
        map = "${source.items}"
        input = { x = "${item}" }
        [steps.total]
        component = "{wasm:echo}"
        input = { results = "${each}" }
        "#,
    );
    let run = Cairn::new().run(&["run", p.path(), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(step(&report, "each")["items"], 0);
    assert_eq!(step(&report, "each")["attempts"], 0);
    assert_eq!(report["output"], json!({"results": []}));
}

#[test]
fn mapping_over_ten_thousand_elements_keeps_their_order() {
    let numbers: Vec<u32> = (0..10_000).collect();
    let p = Pipeline::new(
        r#"
        name = "wide"
        output = "${each}"
        [steps.source]
        component = "{wasm:echo}"
        input = { "$json" = "numbers.json" }
        [steps.each]
        component = "{wasm:echo}"
        map = "${source}"
        input = { n = "${item}", i = "${index}" }
        "#,
    );
    p.file("numbers.json", &serde_json::to_string(&numbers).unwrap());
    let run = Cairn::new().run(&["run", p.path(), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    let out = report["output"].as_array().unwrap();
    assert_eq!(out.len(), 10_000);
    for i in [0usize, 1, 1234, 9_999] {
        assert_eq!(out[i], json!({"n": i, "i": i}));
    }
    assert_eq!(step(&report, "each")["attempts"], 10_000);
}

#[test]
fn when_runs_or_skips_by_an_upstream_value() {
    let p = Pipeline::new(
        r#"
        name = "branches"
        [steps.check]
        component = "{wasm:echo}"
        input = { ok = false, name = "x" }
        [steps.if_ok]
        component = "{wasm:echo}"
        when = "${check.ok}"
        [steps.if_not_ok]
        component = "{wasm:echo}"
        when = "!${check.ok}"
        [steps.after_skipped]
        component = "{wasm:echo}"
        after = ["if_ok"]
        "#,
    );
    let run = Cairn::new().run(&["run", p.path(), "--json"]);
    assert_eq!(
        run.code, 0,
        "a skipped branch is not a failure: {}",
        run.stderr
    );
    let report = run.json();
    assert_eq!(step(&report, "if_ok")["status"], "skipped");
    assert_eq!(step(&report, "if_not_ok")["status"], "succeeded");
    assert_eq!(step(&report, "after_skipped")["status"], "skipped");
}

#[test]
fn human_output_has_a_summary_table_and_prints_the_output() {
    let run = Cairn::new().run(&["run", &example("text")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("step              status     attempts"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("[split] info: split into 4 documents"),
        "task logs are labelled: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("pipeline text succeeded"),
        "{}",
        run.stderr
    );
    let output: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(output["documents"], 4);
}

#[test]
fn graph_prints_mermaid_and_dot() {
    let cairn = Cairn::new();
    let mermaid = cairn.run(&["graph", &example("orders")]);
    assert_eq!(mermaid.code, 0, "{}", mermaid.stderr);
    assert!(mermaid.stdout.contains("flowchart TD"));
    assert!(
        mermaid.stdout.contains("s0 --> s1"),
        "parse → clean: {}",
        mermaid.stdout
    );
    assert!(
        mermaid
            .stdout
            .contains("[[\"by_product<br/>aggregate.wasm<br/>map over ${regions.parts}\"]]")
    );
    let dot = cairn.run(&["graph", &example("orders"), "--format", "dot"]);
    assert!(
        dot.stdout.starts_with("digraph \"orders\" {"),
        "{}",
        dot.stdout
    );
    assert!(
        dot.stdout.contains("\"regions\" -> \"by_product\";"),
        "{}",
        dot.stdout
    );
}

#[test]
fn check_validates_without_running() {
    let run = Cairn::new().run(&["check", &example("orders")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("ok: orders is valid: 6 steps, 7 dependencies"),
        "{}",
        run.stdout
    );
}

/// Start a run whose first step would burn CPU for minutes, send `signal`
/// once it is running, and check the run ends cancelled with `code` and is
/// recorded so.
fn signal_cancels_the_run(signal: &str, code: i32) {
    use std::io::{BufRead, BufReader};
    let p = endless_pipeline(
        r#"
        [steps.after]
        component = "{wasm:echo}"
        input = { x = "${slow}" }
        "#,
    );
    let cairn = Cairn::new();
    let mut child = cairn
        .command()
        .args(["run", p.path(), "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the step is really running, then interrupt.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("start  slow") {
        line.clear();
        assert_ne!(
            stderr.read_line(&mut line).unwrap(),
            0,
            "cairn exited before starting the step"
        );
    }
    let started = std::time::Instant::now();
    let killed = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut stderr_text = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut stderr_text).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "cancellation did not stop the sandbox"
    );
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], "cancelled");
    assert_eq!(step(&report, "slow")["status"], "cancelled");
    assert_eq!(step(&report, "after")["status"], "cancelled");
    let listed = cairn.run(&["runs", "list", "--json"]);
    assert_eq!(listed.json()[0]["status"], "cancelled", "{}", listed.stdout);
    // The CLI said the run can be continued: `runs gc` must keep it, even
    // with no age limit, unless told to forget resumable runs too.
    let id = report["run_id"].as_str().unwrap();
    assert!(
        stderr_text.contains(&format!("cairn resume {id}")),
        "{stderr_text}"
    );
    let gc = cairn.run(&["runs", "gc", "--older-than", "0s", "--json"]);
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    assert_eq!(gc.json()["removed"], serde_json::json!([]), "{}", gc.stdout);
    assert_eq!(gc.json()["kept_interrupted"], 1);
    let shown = cairn.run(&["runs", "show", id]);
    assert_eq!(shown.code, 0, "the run is still there: {}", shown.stderr);
    let gc = cairn.run(&[
        "runs",
        "gc",
        "--older-than",
        "0s",
        "--include-interrupted",
        "--json",
    ]);
    assert_eq!(
        gc.json()["removed"],
        serde_json::json!([id]),
        "{}",
        gc.stdout
    );
}

#[test]
fn ctrl_c_cancels_the_run_and_stops_running_sandboxes() {
    signal_cancels_the_run("-INT", 130);
}

#[test]
fn sigterm_cancels_the_run_like_ctrl_c() {
    signal_cancels_the_run("-TERM", 143);
}

/// `cairn run --events FILE`, parsed: one JSON object per line.
fn events_of(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

#[test]
fn events_stream_every_step_attempt_and_log_as_json_lines() {
    let p = Pipeline::new(
        r#"
        name = "watched"
        [steps.flaky]
        component = "{wasm:flaky}"
        input = { failures = 2, key = "k" }
        grants = { scratch = "state" }
        retry = { attempts = 3, backoff = "fixed", delay = "10ms", jitter = false }
        [steps.broken]
        component = "{wasm:hostile}"
        input = { attack = "panic" }
        allow_failure = true
        [steps.after]
        component = "{wasm:echo}"
        input = { on = "${flaky.succeeded_on_attempt}" }
        "#,
    );
    std::fs::create_dir(p.dir.path().join("state")).unwrap();
    let events_file = p.dir.path().join("events.jsonl");
    let cairn = Cairn::new();
    let run = cairn.run(&[
        "run",
        p.path(),
        "--json",
        "--events",
        events_file.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    let events = events_of(&events_file);
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"run-started"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"run-finished"), "{kinds:?}");
    assert_eq!(events.last().unwrap()["status"], "succeeded");
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["run"], report["run_id"], "{event}");
        if i > 0 {
            assert!(
                event["at_ms"].as_u64() >= events[i - 1]["at_ms"].as_u64(),
                "{event}"
            );
        }
    }
    let of = |step: &str, kind: &str| -> Vec<(usize, &serde_json::Value)> {
        events
            .iter()
            .enumerate()
            .filter(|(_, e)| e["step"] == step && e["event"] == kind)
            .collect()
    };
    for name in ["flaky", "broken", "after"] {
        let (queued, started, finished) = (
            of(name, "step-queued"),
            of(name, "step-started"),
            of(name, "step-finished"),
        );
        assert_eq!(
            (queued.len(), started.len(), finished.len()),
            (1, 1, 1),
            "{name}: {kinds:?}"
        );
        assert!(
            queued[0].0 < started[0].0 && started[0].0 < finished[0].0,
            "{name} is queued, then starts, then finishes"
        );
        assert_eq!(finished[0].1["status"], step(&report, name)["status"]);
        // Run time and queue wait are reported apart.
        assert!(finished[0].1["wait_us"].is_u64(), "{}", finished[0].1);
        assert_eq!(
            finished[0].1["wait_us"],
            step(&report, name)["wait_us"],
            "{name}"
        );
    }
    // Started means running: one attempt-started per attempt that ran.
    assert_eq!(of("flaky", "attempt-started").len(), 3, "{kinds:?}");
    // `runs show` counts the same attempts as the report.
    let shown = cairn
        .run(&["runs", "show", report["run_id"].as_str().unwrap(), "--json"])
        .json();
    for name in ["flaky", "broken", "after"] {
        let view = shown["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap();
        assert_eq!(
            view["attempts"],
            step(&report, name)["attempts"],
            "{name}: {shown}"
        );
    }
    // A rerun answers `after` from the cache: it is queued and finished,
    // never started, and makes no attempt.
    let again = p.dir.path().join("again.jsonl");
    let rerun = cairn.run(&[
        "run",
        p.path(),
        "--json",
        "--events",
        again.to_str().unwrap(),
    ]);
    assert_eq!(rerun.code, 0, "{}", rerun.stderr);
    let events_again = events_of(&again);
    let count = |step: &str, kind: &str| {
        events_again
            .iter()
            .filter(|e| e["step"] == step && e["event"] == kind)
            .count()
    };
    assert_eq!(
        (
            count("after", "step-queued"),
            count("after", "step-started"),
            count("after", "attempt-started")
        ),
        (1, 0, 0),
        "{events_again:?}"
    );
    assert_eq!(step(&rerun.json(), "after")["attempts"], 0);
    let retries = of("flaky", "attempt-failed");
    assert_eq!(retries.len(), 2, "{retries:?}");
    for (_, retry) in &retries {
        assert_eq!(retry["class"], "task-retryable");
        assert_eq!(retry["retry_in_us"], 10_000);
    }
    assert_eq!(of("flaky", "step-finished")[0].1["attempts"], 3);
    assert_eq!(
        of("flaky", "task-log").len(),
        2,
        "one log line per failed attempt"
    );
    let trap = of("broken", "attempt-failed");
    assert_eq!(trap[0].1["class"], "trap");
    assert_eq!(
        trap[0].1["retry_in_us"],
        json!(null),
        "a trap is not retried"
    );
    assert_eq!(
        of("broken", "step-finished")[0].1["detail"]["class"],
        "trap"
    );
    // `after` starts once flaky's last attempt is over (its output in
    // memory; flaky's record may still be on its way to the disk), and
    // steps are reported done in dependency order.
    assert!(of("flaky", "attempt-started")[2].0 < of("after", "step-started")[0].0);
    assert!(of("flaky", "step-finished")[0].0 < of("after", "step-finished")[0].0);
}

#[test]
fn an_unwritable_events_file_stops_the_run_before_it_is_recorded() {
    let cairn = Cairn::new();
    let run = cairn.run(&[
        "run",
        &example("orders"),
        "--events",
        "/nonexistent-dir/events.jsonl",
    ]);
    run.assert_clean_error(1, "cannot write events to /nonexistent-dir/events.jsonl");
    let listed = cairn.run(&["runs", "list", "--json"]);
    assert_eq!(listed.json(), json!([]), "no run was recorded");
}

#[test]
fn a_full_disk_under_the_events_file_warns_once_and_the_run_goes_on() {
    let cairn = Cairn::new();
    let run = cairn.run(&["run", &example("orders"), "-q", "--events", "/dev/full"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("grand_total"), "{}", run.stdout);
    assert_eq!(
        run.stderr
            .matches("cannot write events to /dev/full")
            .count(),
        1,
        "one warning, not one per event: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("the run goes on without them"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_input_that_would_copy_a_large_output_too_often_is_refused_before_it_is_built() {
    // `big` returns 8 MiB; `fan` references it 40 times (320 MiB of input).
    let mut manifest = String::from(
        "name = \"amplify\"\n[steps.big]\ncomponent = \"{wasm:echo}\"\n\
         input = { \"$file\" = \"big.txt\" }\n\
         [steps.fan]\ncomponent = \"{wasm:echo}\"\n[steps.fan.input]\n",
    );
    for i in 0..40 {
        manifest.push_str(&format!("a{i} = \"${{big}}\"\n"));
    }
    let p = Pipeline::new(&manifest);
    p.file("big.txt", &"x".repeat(8 << 20));
    let run = Cairn::new().run(&["run", p.path(), "--json"]);
    assert_ne!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(
        step(&report, "big")["status"],
        "succeeded",
        "{}",
        run.stderr
    );
    let fan = step(&report, "fan");
    assert_eq!(fan["status"], "failed");
    assert_eq!(fan["attempts"], 0, "nothing ran: {fan}");
    let message = fan["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("the step's input would be more than 256.0 MiB"),
        "{message}"
    );
}
