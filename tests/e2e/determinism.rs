//! The same task on the same input gives byte-identical output, even when the
//! task reads the clock and random numbers — because the sandbox virtualises
//! them. The controls show that it is the sandbox doing it.

use crate::support::{Cairn, guest};

fn sample(cairn: &Cairn, input: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "task",
        "run",
        guest("clock_random").to_str().unwrap().to_owned().leak() as &str,
        "--input",
        input,
    ];
    args.extend_from_slice(extra);
    let run = cairn.run(&args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.stdout
}

#[test]
fn clock_and_random_are_identical_across_runs() {
    let (a, b) = (Cairn::new(), Cairn::new());
    let first = sample(&a, r#"{"salt": 1}"#, &[]);
    let second = sample(&b, r#"{"salt": 1}"#, &[]);
    assert_eq!(first, second, "two runs in two fresh stores differ");
    let value: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(
        value["unix_nanos"], 946_684_800_000_000_000u64,
        "the virtual clock starts at 2000-01-01"
    );
}

#[test]
fn a_different_input_gives_a_different_random_stream() {
    let cairn = Cairn::new();
    let one: serde_json::Value =
        serde_json::from_str(&sample(&cairn, r#"{"salt": 1}"#, &[])).unwrap();
    let two: serde_json::Value =
        serde_json::from_str(&sample(&cairn, r#"{"salt": 2}"#, &[])).unwrap();
    assert_ne!(one["random_hex"], two["random_hex"]);
}

#[test]
fn equal_json_documents_are_equal_inputs() {
    let cairn = Cairn::new();
    let spaced = sample(&cairn, r#"{ "salt" : { "b": 1, "a": 2 } }"#, &[]);
    let compact = sample(&cairn, r#"{"salt":{"a":2,"b":1}}"#, &[]);
    assert_eq!(
        spaced, compact,
        "inputs are canonicalised before they seed the run"
    );
}

#[test]
fn granting_the_real_clock_and_random_makes_runs_differ() {
    let cairn = Cairn::new();
    let grants = ["--allow-clock", "--allow-random"];
    let first: serde_json::Value = serde_json::from_str(&sample(&cairn, "{}", &grants)).unwrap();
    let second: serde_json::Value = serde_json::from_str(&sample(&cairn, "{}", &grants)).unwrap();
    assert_ne!(first["random_hex"], second["random_hex"]);
    assert!(
        first["unix_nanos"].as_u64().unwrap() > 1_700_000_000_000_000_000,
        "real clock is after 2023"
    );
}
