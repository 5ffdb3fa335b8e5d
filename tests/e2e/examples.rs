//! The example tasks do their jobs through the real binary, and `inspect`
//! shows what they say about themselves.

use serde_json::json;

use crate::support::{Cairn, Pipeline, Run, guest};

fn output(component: &str, input: serde_json::Value) -> serde_json::Value {
    let (run, report) = Cairn::new().task_json(&guest(component), &input.to_string(), &[]);
    assert_eq!(run.code, 0, "{component}: {}", run.stderr);
    report["output"].clone()
}

#[test]
fn csv_parse_types_cells() {
    let out = output(
        "csv_parse",
        json!({"csv": "region,amount\neu,12\nus,3.5\n"}),
    );
    assert_eq!(
        out,
        json!({"columns": ["region", "amount"], "rows": [{"region": "eu", "amount": 12}, {"region": "us", "amount": 3.5}]})
    );
}

#[test]
fn aggregate_groups_and_sums() {
    let rows = json!([{"r": "eu", "x": 1}, {"r": "us", "x": 2}, {"r": "eu", "x": 3}]);
    let out = output(
        "aggregate",
        json!({"rows": rows, "group_by": "r", "sum": ["x"]}),
    );
    assert_eq!(
        out["groups"],
        json!([{"key": "eu", "count": 2, "sums": {"x": 4.0}}, {"key": "us", "count": 1, "sums": {"x": 2.0}}])
    );
}

#[test]
fn word_count_counts() {
    let out = output(
        "word_count",
        json!({"text": "to be or not to be", "top": 2}),
    );
    assert_eq!(
        out,
        json!({"total_words": 6, "unique_words": 4, "top": [{"word": "be", "count": 2}, {"word": "to", "count": 2}]})
    );
}

#[test]
fn json_transform_filters_and_sorts() {
    let input = json!({
        "records": [{"n": "a", "v": 3}, {"n": "b", "v": 1}, {"n": "c", "v": 2}],
        "ops": [{"filter": {"field": "v", "op": "gt", "value": 1}}, {"sort": {"field": "v"}}, {"select": ["n"]}]
    });
    assert_eq!(
        output("json_transform", input),
        json!({"records": [{"n": "c"}, {"n": "a"}]})
    );
}

#[test]
fn echo_returns_its_input() {
    assert_eq!(
        output("echo", json!({"a": [1, 2, {"b": null}]})),
        json!({"a": [1, 2, {"b": null}]})
    );
}

#[test]
fn task_logs_go_to_stderr_labelled_and_output_to_stdout() {
    let cairn = Cairn::new();
    let run = cairn.run(&[
        "task",
        "run",
        guest("csv_parse").to_str().unwrap(),
        "--input",
        r#"{"csv": "a\n1\n"}"#,
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout.trim(),
        r#"{"columns":["a"],"rows":[{"a":1}]}"#,
        "raw JSON when stdout is not a TTY"
    );
    assert!(
        run.stderr
            .contains("[csv_parse] info: parsed 1 rows with 1 columns"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("ok: csv_parse succeeded"),
        "{}",
        run.stderr
    );
}

#[test]
fn engine_diagnostics_are_opt_in_with_verbose() {
    let cairn = Cairn::new();
    let echo = guest("echo");
    let quiet = cairn.run(&["task", "run", echo.to_str().unwrap()]);
    assert!(
        !quiet.stderr.contains("compiled component"),
        "{}",
        quiet.stderr
    );
    let cairn = Cairn::new();
    let loud = cairn.run(&["-v", "task", "run", echo.to_str().unwrap()]);
    assert!(
        loud.stderr.contains("compiled component"),
        "{}",
        loud.stderr
    );
}

#[test]
fn command_component_reads_stdin_and_args() {
    let cairn = Cairn::new();
    let shout = guest("shout");
    let run = cairn.run(&[
        "task",
        "run",
        shout.to_str().unwrap(),
        "--input",
        "hello\nworld\n",
        "--",
        "--lines",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "1: HELLO\n2: WORLD\n");
}

#[test]
fn command_component_sees_granted_dirs_at_the_same_path() {
    let cairn = Cairn::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "quiet please\n").unwrap();
    let (shout, dir_s, file_s) = (
        guest("shout"),
        dir.path().to_str().unwrap().to_owned(),
        file.to_str().unwrap().to_owned(),
    );

    let run = cairn.run(&[
        "task",
        "run",
        shout.to_str().unwrap(),
        "--allow-read",
        &dir_s,
        "--",
        &file_s,
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "QUIET PLEASE\n");

    let run = cairn.run(&["task", "run", shout.to_str().unwrap(), "--", &file_s]);
    assert_eq!(
        run.code, 10,
        "without the grant the command fails: {}",
        run.stderr
    );
    // wasi:cli/exit in WASI 0.2 carries only success or failure, so any
    // non-zero exit of the program reads as status 1.
    assert!(
        run.stderr.contains("exited with status 1") && run.stderr.contains("cannot read"),
        "{}",
        run.stderr
    );
}

#[test]
fn command_stdout_is_capped() {
    let cairn = Cairn::new();
    let big = "x".repeat(5000);
    let run = cairn.run(&[
        "task",
        "run",
        guest("shout").to_str().unwrap(),
        "--input",
        &big,
        "--output-limit",
        "1KiB",
    ]);
    assert_eq!(run.code, 17, "{}", run.stderr);
    assert!(run.stdout.is_empty());
}

#[test]
fn inspect_shows_description_schemas_and_interface() {
    let run = Cairn::new().run(&[
        "task",
        "inspect",
        guest("csv_parse").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["kind"], "task");
    assert_eq!(report["descriptor"]["name"], "csv-parse");
    assert_eq!(
        report["descriptor"]["input_schema"]["properties"]["csv"]["type"],
        "string"
    );
    assert!(report["descriptor"]["output_schema"]["properties"]["rows"].is_object());
    let has = |list: &str, name: &str| report[list].as_array().unwrap().iter().any(|n| n == name);
    assert!(has("exports", "cairn:task/task@0.1.0"));
    assert!(has("imports", "cairn:task/host@0.1.0"));

    let text = Cairn::new().run(&["task", "inspect", guest("shout").to_str().unwrap()]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout.contains("kind       command"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("wasi:cli/run@0.2"), "{}", text.stdout);
}

#[test]
fn relative_paths_mean_what_they_mean_on_the_host() {
    let cairn = Cairn::new();
    let here = tempfile::tempdir().unwrap();
    std::fs::create_dir(here.path().join("data")).unwrap();
    std::fs::write(here.path().join("data/notes.txt"), "from here\n").unwrap();
    let shout = guest("shout");
    let run = |grant: &str, path: &str| {
        Run::from(
            cairn
                .command()
                .current_dir(here.path())
                .args([
                    "task",
                    "run",
                    shout.to_str().unwrap(),
                    "--allow-read",
                    grant,
                    "--",
                    path,
                ])
                .output()
                .unwrap(),
        )
    };
    // The README's and --help's example, from the directory that holds `data`.
    for (grant, path) in [
        ("data", "data/notes.txt"),
        ("./data", "data/notes.txt"),
        (".", "./data/notes.txt"),
    ] {
        let out = run(grant, path);
        assert_eq!(
            out.code, 0,
            "--allow-read {grant} -- {path}: {}",
            out.stderr
        );
        assert_eq!(out.stdout, "FROM HERE\n");
    }
    // A relative path reaches only what is granted: the working directory
    // itself is not.
    std::fs::write(here.path().join("secret.txt"), "no\n").unwrap();
    let out = run("data", "secret.txt");
    assert_eq!(out.code, 10, "{}", out.stderr);
    assert!(
        out.stderr.contains("cannot read secret.txt"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_pipeline_step_reads_relative_to_its_manifest() {
    let cairn = Cairn::new();
    let pipeline = Pipeline::new(
        r#"
name = "rel"
[steps.loud]
component = "{wasm:shout}"
args = ["data/notes.txt"]
input = ""
grants = { read = ["data"] }
"#,
    );
    std::fs::create_dir(pipeline.dir.path().join("data")).unwrap();
    pipeline.file("data/notes.txt", "beside the manifest\n");
    // Run from elsewhere: the manifest's directory decides, not the caller's.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Run::from(
        cairn
            .command()
            .current_dir(elsewhere.path())
            .args(["run", pipeline.path(), "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["output"]["loud"], "BESIDE THE MANIFEST\n");
}
