//! Precompiled artifacts: a second run does not compile, and a corrupted
//! artifact is detected, discarded and rebuilt instead of being executed.

use crate::support::{Cairn, guest};

fn code_source(cairn: &Cairn) -> String {
    let (run, report) = cairn.task_json(&guest("word_count"), r#"{"text": "a b a"}"#, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(report["output"]["total_words"], 3);
    report["component"]["code_source"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn second_run_loads_the_artifact_instead_of_compiling() {
    let cairn = Cairn::new();
    assert_eq!(code_source(&cairn), "compiled");
    assert_eq!(code_source(&cairn), "artifact-cache");
    assert_eq!(code_source(&cairn), "artifact-cache");
}

fn artifact_files(cairn: &Cairn) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(cairn.store.path().join("artifacts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect()
}

#[test]
fn corrupted_artifact_is_recompiled_not_executed() {
    let cairn = Cairn::new();
    assert_eq!(code_source(&cairn), "compiled");
    let files = artifact_files(&cairn);
    assert_eq!(files.len(), 1);
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&files[0], &bytes).unwrap();

    let (run, report) = cairn.task_json(&guest("word_count"), r#"{"text": "a b a"}"#, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(report["component"]["code_source"], "compiled");
    assert!(
        run.stderr.contains("checksum"),
        "the corruption is reported: {}",
        run.stderr
    );
    assert_eq!(
        code_source(&cairn),
        "artifact-cache",
        "the rebuilt artifact is good"
    );
}

#[test]
fn truncated_artifact_is_recompiled() {
    let cairn = Cairn::new();
    code_source(&cairn);
    let file = &artifact_files(&cairn)[0];
    let bytes = std::fs::read(file).unwrap();
    std::fs::write(file, &bytes[..bytes.len() - 100]).unwrap();
    assert_eq!(code_source(&cairn), "compiled");
}
