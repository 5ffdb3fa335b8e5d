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

/// `code_source` of one task run with the shared artifact cache at `cache`.
fn code_source_with_cache(cairn: &Cairn, cache: &std::path::Path) -> (String, String) {
    let out = crate::support::Run::from(
        cairn
            .command()
            .env("CAIRN_ARTIFACT_CACHE", cache)
            .args([
                "task",
                "run",
                guest("word_count").to_str().unwrap(),
                "--input",
                r#"{"text": "a"}"#,
                "--json",
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let source = out.json()["component"]["code_source"]
        .as_str()
        .unwrap()
        .to_owned();
    (source, out.stderr)
}

#[test]
fn a_fresh_store_loads_what_another_store_compiled_from_the_shared_cache() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("artifacts");
    let (first, second) = (Cairn::new(), Cairn::new());
    assert_eq!(code_source_with_cache(&first, &dir).0, "compiled");
    assert_eq!(
        code_source_with_cache(&second, &dir).0,
        "artifact-cache",
        "a new store does not compile again"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700,
        "the shared cache is private"
    );
    // A damaged shared artifact is caught by its checksum, not run.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }
    assert_eq!(code_source_with_cache(&Cairn::new(), &dir).0, "compiled");
}

#[test]
fn a_shared_cache_others_may_write_to_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("artifacts");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (first, second) = (Cairn::new(), Cairn::new());
    let (source, stderr) = code_source_with_cache(&first, &dir);
    assert_eq!(source, "compiled");
    assert!(
        stderr.contains("not using the shared artifact cache"),
        "{stderr}"
    );
    assert_eq!(
        code_source_with_cache(&second, &dir).0,
        "compiled",
        "nothing is taken from a directory anyone could have written"
    );
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "and nothing is put there"
    );
}
