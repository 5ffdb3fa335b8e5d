//! Bad input never panics: each case is one clear `error:` line, exit code 1.

use crate::support::{Cairn, Run, guest};

fn run_file(cairn: &Cairn, bytes: &[u8]) -> crate::support::Run {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.wasm");
    std::fs::write(&path, bytes).unwrap();
    cairn.run(&["task", "run", path.to_str().unwrap()])
}

#[test]
fn a_text_file_is_not_webassembly() {
    let run = run_file(&Cairn::new(), b"#!/bin/sh\necho hello\n");
    run.assert_clean_error(1, "not a WebAssembly file");
}

#[test]
fn an_empty_file_is_not_webassembly() {
    run_file(&Cairn::new(), b"").assert_clean_error(1, "not a WebAssembly file");
}

#[test]
fn a_core_module_is_not_a_component() {
    // The smallest valid core module: magic + version 1.
    let run = run_file(&Cairn::new(), b"\0asm\x01\0\0\0");
    run.assert_clean_error(1, "core WebAssembly module, not a component");
    assert!(
        run.stderr.contains("wasm32-wasip2"),
        "says how to fix it: {}",
        run.stderr
    );
}

#[test]
fn a_truncated_component_is_invalid() {
    let bytes = std::fs::read(guest("echo")).unwrap();
    let run = run_file(&Cairn::new(), &bytes[..bytes.len() / 2]);
    run.assert_clean_error(1, "not a valid WebAssembly component");
}

#[test]
fn a_component_of_another_world_is_refused_naming_its_exports() {
    let cairn = Cairn::new();
    let run = cairn.run(&["task", "run", guest("wrong_world").to_str().unwrap()]);
    run.assert_clean_error(1, "exports neither `cairn:task/task@0.1.0`");
    assert!(
        run.stderr.contains("example:greeter/greet@1.0.0"),
        "{}",
        run.stderr
    );
}

#[test]
fn invalid_json_input_is_refused_before_running() {
    let cairn = Cairn::new();
    let run = cairn.run(&[
        "task",
        "run",
        guest("echo").to_str().unwrap(),
        "--input",
        "{not json",
    ]);
    run.assert_clean_error(
        1,
        "the input is not valid JSON (--input: key must be a string at line 1 column 2)",
    );
}

#[test]
fn a_missing_component_file_is_named() {
    let run = Cairn::new().run(&["task", "run", "/nonexistent/task.wasm"]);
    run.assert_clean_error(1, "/nonexistent/task.wasm");
}

#[test]
fn bad_limits_are_usage_errors_that_teach() {
    let cairn = Cairn::new();
    let echo = guest("echo");
    let run = cairn.run(&["task", "run", echo.to_str().unwrap(), "--memory", "lots"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("64MiB"), "{}", run.stderr);
    let run = cairn.run(&["task", "run", echo.to_str().unwrap(), "--timeout", "soon"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("5s"), "{}", run.stderr);
    let run = cairn.run(&["task", "run", echo.to_str().unwrap(), "--memory", "8GiB"]);
    run.assert_clean_error(1, "--memory");
}

#[test]
fn help_lists_the_exit_codes() {
    let run = Cairn::new().run(&["--help"]);
    assert_eq!(run.code, 0);
    for line in [
        "12   the task ran out of fuel",
        "13   the task ran past its deadline",
        "16   the task was denied",
    ] {
        assert!(
            run.stdout.contains(line),
            "missing {line:?} in:\n{}",
            run.stdout
        );
    }
}

#[test]
fn an_input_of_the_wrong_shape_names_the_field_not_a_json_position() {
    let cairn = Cairn::new();
    let (run, report) = cairn.task_json(&guest("word_count"), r#"{"text": 5}"#, &[]);
    assert_eq!(run.code, 10, "{}", run.stderr);
    let message = report["failure"]["message"].as_str().unwrap();
    assert!(
        message.contains("input.text: invalid type: integer `5`, expected a string"),
        "{message}"
    );
    assert!(!message.contains("line 1 column"), "{message}");
}

#[test]
fn a_bare_file_name_as_input_hints_at_the_at_sign() {
    let cairn = Cairn::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("request.json"), r#"{"text": "hi"}"#).unwrap();
    let out = Run::from(
        cairn
            .command()
            .current_dir(dir.path())
            .args([
                "task",
                "run",
                guest("word_count").to_str().unwrap(),
                "--input",
                "request.json",
            ])
            .output()
            .unwrap(),
    );
    out.assert_clean_error(
        1,
        "to read the file request.json, write --input @request.json",
    );
}
