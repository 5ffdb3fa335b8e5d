//! Every kind of manifest error is reported before anything runs, naming the
//! file, the step and what to do — and nothing is executed.

use crate::support::{Cairn, Pipeline};

/// Run `cairn check` and return stderr, asserting the failure contract.
fn check_fails(manifest: &str) -> String {
    let p = Pipeline::new(manifest);
    let run = Cairn::new().run(&["check", p.path()]);
    assert_eq!(
        run.code, 1,
        "expected a plan error; stdout {} stderr {}",
        run.stdout, run.stderr
    );
    assert!(
        run.stderr.contains("pipeline.toml"),
        "names the file: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("nothing was run") || run.stderr.lines().count() == 1,
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    run.stderr
}

const HEAD: &str = "name = \"p\"\n";

#[test]
fn unknown_step_reference_suggests_the_near_miss() {
    let err = check_fails(&format!(
        "{HEAD}[steps.parse]\ncomponent = \"{{wasm:echo}}\"\n[steps.clean]\ncomponent = \"{{wasm:echo}}\"\ninput = {{ rows = \"${{pars.rows}}\" }}\n"
    ));
    assert!(
        err.contains("step `clean`: input: ${pars.rows} names no step (did you mean `parse`?)"),
        "{err}"
    );
}

#[test]
fn unknown_after_is_reported() {
    let err = check_fails(&format!(
        "{HEAD}[steps.a]\ncomponent = \"{{wasm:echo}}\"\nafter = [\"ghost\"]\n"
    ));
    assert!(
        err.contains("step `a`: after: \"ghost\" names no step"),
        "{err}"
    );
}

#[test]
fn cycles_are_printed() {
    let err = check_fails(&format!(
        "{HEAD}[steps.a]\ncomponent = \"{{wasm:echo}}\"\ninput = {{ x = \"${{c}}\" }}\n[steps.b]\ncomponent = \"{{wasm:echo}}\"\ninput = {{ x = \"${{a}}\" }}\n[steps.c]\ncomponent = \"{{wasm:echo}}\"\nafter = [\"b\"]\n[steps.d]\ncomponent = \"{{wasm:echo}}\"\n"
    ));
    assert!(
        err.contains("the steps form a cycle: a → b → c → a"),
        "{err}"
    );
}

#[test]
fn self_reference_is_a_cycle_of_one() {
    let err = check_fails(&format!(
        "{HEAD}[steps.a]\ncomponent = \"{{wasm:echo}}\"\ninput = {{ x = \"${{a.y}}\" }}\n"
    ));
    assert!(err.contains("refers to the step itself"), "{err}");
}

#[test]
fn missing_component_is_named_with_the_fix() {
    let err = check_fails(&format!(
        "{HEAD}[steps.a]\ncomponent = \"nope/missing.wasm\"\n"
    ));
    assert!(
        err.contains("step `a`: component") && err.contains("missing.wasm does not exist"),
        "{err}"
    );
    assert!(err.contains("relative to the manifest"), "{err}");
}

#[test]
fn component_of_the_wrong_world_is_refused() {
    let err = check_fails(&format!(
        "{HEAD}[steps.a]\ncomponent = \"{{wasm:wrong_world}}\"\n"
    ));
    assert!(
        err.contains("step `a`") && err.contains("exports neither `cairn:task/task@0.1.0`"),
        "{err}"
    );
}

#[test]
fn duplicate_step_names_are_refused_with_their_line() {
    let err = check_fails(&format!(
        "{HEAD}[steps.a]\ncomponent = \"{{wasm:echo}}\"\n[steps.a]\ncomponent = \"{{wasm:echo}}\"\n"
    ));
    assert!(err.contains("line 4") && err.contains("duplicate"), "{err}");
}

#[test]
fn bad_durations_and_sizes_say_how_to_write_them() {
    let err = check_fails(&format!(
        "{HEAD}[defaults]\nmemory = \"lots\"\n[steps.a]\ncomponent = \"{{wasm:echo}}\"\ntimeout = \"soon\"\noutput_limit = \"-1\"\n"
    ));
    assert!(
        err.contains("step `a`: timeout: invalid duration \"soon\""),
        "{err}"
    );
    assert!(
        err.contains("step `a`: memory: invalid size \"lots\"") && err.contains("64MiB"),
        "{err}"
    );
    assert!(
        err.contains("step `a`: output_limit: invalid size \"-1\""),
        "{err}"
    );
}

#[test]
fn unknown_keys_are_refused_with_their_position() {
    let err = check_fails(&format!(
        "{HEAD}[steps.a]\ncomponent = \"{{wasm:echo}}\"\ntimout = \"1s\"\n"
    ));
    assert!(
        err.contains("line 4, column 1: unknown field `timout`"),
        "{err}"
    );
}

#[test]
fn reference_to_a_field_the_upstream_schema_lacks() {
    let err = check_fails(&format!(
        "{HEAD}[steps.parse]\ncomponent = \"{{wasm:csv_parse}}\"\ninput = {{ csv = \"a\\n1\\n\" }}\n[steps.sum]\ncomponent = \"{{wasm:aggregate}}\"\ninput = {{ rows = \"${{parse.rowz}}\", group_by = \"a\" }}\n"
    ));
    assert!(err.contains("step `sum`: input: ${parse.rowz}: the output of `parse` does not fit: the output has no field `rowz`"), "{err}");
    assert!(
        err.contains("its fields: columns, rows"),
        "lists what exists: {err}"
    );
}

#[test]
fn input_that_does_not_fit_the_downstream_schema() {
    let err = check_fails(&format!(
        "{HEAD}[steps.count]\ncomponent = \"{{wasm:word_count}}\"\ninput = {{ txt = \"hello\", top = \"ten\" }}\n"
    ));
    assert!(
        err.contains("step `count`: input is missing the required field `text`"),
        "{err}"
    );
    assert!(
        err.contains("input.top is a string but the task expects integer"),
        "{err}"
    );
    assert!(
        err.contains("has the field `txt`, which the task does not accept"),
        "{err}"
    );
}

#[test]
fn referenced_value_of_the_wrong_type() {
    let err = check_fails(&format!(
        "{HEAD}[steps.parse]\ncomponent = \"{{wasm:csv_parse}}\"\ninput = {{ csv = \"a\\n1\\n\" }}\n[steps.count]\ncomponent = \"{{wasm:word_count}}\"\ninput = {{ text = \"${{parse.rows}}\" }}\n"
    ));
    assert!(
        err.contains(
            "input.text comes from ${parse.rows}, which is array but the task expects string"
        ),
        "{err}"
    );
}

#[test]
fn data_files_may_not_leave_the_manifest_directory() {
    let err = check_fails(&format!(
        "{HEAD}[steps.a]\ncomponent = \"{{wasm:echo}}\"\ninput = {{ \"$file\" = \"../../etc/passwd\" }}\n"
    ));
    assert!(err.contains("inside the manifest's directory"), "{err}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let err = check_fails(&format!(
        "{HEAD}[steps.a]\ncomponent = \"{{wasm:echo}}\"\ntimeout = \"x\"\n[steps.b]\ncomponent = \"missing.wasm\"\n[steps.c]\ncomponent = \"{{wasm:echo}}\"\nafter = [\"zz\"]\n"
    ));
    assert!(err.contains("3 problems"), "{err}");
}

#[test]
fn schema_problems_are_reported_with_the_others_in_one_round() {
    // A missing component and a bad duration used to stop the check before
    // the schemas were looked at: three rounds of `cairn check` for three
    // problems. Now every problem the loaded steps show comes at once.
    let err = check_fails(&format!(
        "{HEAD}[steps.parse]\ncomponent = \"{{wasm:csv_parse}}\"\ninput = {{ csv = 5 }}\n\
         [steps.count]\ncomponent = \"{{wasm:word_count}}\"\ninput = {{ text = \"${{parse.rows}}\" }}\n\
         [steps.gone]\ncomponent = \"missing.wasm\"\n\
         [steps.slow]\ncomponent = \"{{wasm:echo}}\"\ntimeout = \"soon\"\n"
    ));
    for expected in [
        "step `parse`: input.csv is a number but the task expects string",
        "step `count`: input.text comes from ${parse.rows}, which is array but the task expects string",
        "step `gone`: component",
        "step `slow`: timeout: invalid duration \"soon\"",
        "4 problems",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn map_over_something_that_is_not_a_list_is_caught_before_running() {
    let err = check_fails(&format!(
        "{HEAD}[steps.count]\ncomponent = \"{{wasm:word_count}}\"\ninput = {{ text = \"a b\" }}\n\
         [steps.each]\ncomponent = \"{{wasm:echo}}\"\nmap = \"${{count.total_words}}\"\ninput = {{ x = \"${{item}}\" }}\n"
    ));
    assert!(
        err.contains("step `each`: map: ${count.total_words} is integer, not a list"),
        "{err}"
    );
}

#[test]
fn json_commands_print_a_json_error_object_when_planning_fails() {
    let p = Pipeline::new(&format!(
        "{HEAD}[steps.a]\ncomponent = \"{{wasm:echo}}\"\nafter = [\"ghost\"]\n[steps.b]\ncomponent = \"missing.wasm\"\n"
    ));
    for command in ["check", "run"] {
        let run = Cairn::new().run(&[command, p.path(), "--json"]);
        assert_eq!(run.code, 1, "{command}: {}", run.stderr);
        let object = run.json();
        assert_eq!(object["ok"], false, "{command}: {object}");
        assert_eq!(object["exit_code"], 1);
        let errors = object["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 2, "{command}: {object}");
        assert!(
            errors.iter().any(|e| e.as_str().unwrap().contains("ghost")),
            "{object}"
        );
    }
}

#[test]
fn run_refuses_an_invalid_plan_without_running_anything() {
    let p = Pipeline::new(&format!(
        "{HEAD}[steps.a]\ncomponent = \"{{wasm:echo}}\"\nafter = [\"ghost\"]\n"
    ));
    let run = Cairn::new().run(&["run", p.path()]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("nothing was run") && !run.stderr.contains("start"),
        "{}",
        run.stderr
    );
}

#[test]
fn durations_too_long_to_add_to_a_clock_are_refused_at_parse_time() {
    let err = check_fails(&format!(
        "{HEAD}[steps.a]\ncomponent = \"{{wasm:echo}}\"\ntimeout = \"9223372036854775807s\"\n"
    ));
    assert!(err.contains("at most 100 years"), "{err}");
    let run = Cairn::new().run(&[
        "task",
        "run",
        crate::support::guest("echo").to_str().unwrap(),
        "--timeout",
        "9223372036854775807s",
    ]);
    assert_eq!(run.code, 2, "a bad flag is a usage error: {}", run.stderr);
    assert!(
        run.stderr.contains("at most 100 years") && !run.stderr.contains("panicked"),
        "{}",
        run.stderr
    );
}

#[test]
fn special_files_named_by_a_manifest_or_a_flag_are_refused_not_read() {
    // A device as a component: `check` would read it without end.
    let err = check_fails(&format!("{HEAD}[steps.a]\ncomponent = \"/dev/zero\"\n"));
    assert!(err.contains("not a regular file (it is a device)"), "{err}");

    // A FIFO as a data file: opening it would wait for a writer forever.
    let p = Pipeline::new(&format!(
        "{HEAD}[steps.a]\ncomponent = \"{{wasm:echo}}\"\ninput = {{ \"$file\" = \"pipe\" }}\n"
    ));
    let made = std::process::Command::new("mkfifo")
        .arg(p.dir.path().join("pipe"))
        .status()
        .unwrap();
    assert!(made.success());
    let run = Cairn::new().run(&["check", p.path()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("it is a FIFO"), "{}", run.stderr);

    // A device as a task's input file.
    let run = Cairn::new().run(&[
        "task",
        "run",
        crate::support::guest("echo").to_str().unwrap(),
        "--input",
        "@/dev/zero",
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("a device"), "{}", run.stderr);

    // A device as a bundle.
    let run = Cairn::new().run(&["bundle", "inspect", "/dev/zero"]);
    assert_ne!(run.code, 0);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}

#[test]
fn an_error_quoting_a_huge_value_is_cut() {
    let long = "p".repeat(20 << 20);
    let p = Pipeline::new(&format!("{HEAD}[steps.a]\ncomponent = \"{long}.wasm\"\n"));
    let run = Cairn::new().run(&["check", p.path()]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.len() < 64 << 10,
        "{} bytes of stderr for one problem",
        run.stderr.len()
    );
    assert!(
        run.stderr.contains("bytes of this message cut"),
        "{}",
        &run.stderr[..200]
    );
}
