//! Managed scratch through the library, with a small quota: a task that
//! fills its scratch past the quota fails as `denied`, during the attempt
//! or when it ends, and its directory is gone afterwards either way.

use std::sync::Arc;

use cairn::sandbox::grants::Grants;
use cairn::sandbox::limits::{ByteSize, Limits};
use cairn::sandbox::{FailureClass, RunRequest, Sandbox, SandboxConfig, ScratchQuota};
use cairn::store::DirArtifactStore;

use crate::support::guest;

struct Host {
    sandbox: Sandbox,
    root: tempfile::TempDir,
    _artifacts: tempfile::TempDir,
}

fn host() -> Host {
    let (root, artifacts) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut config = SandboxConfig::for_this_machine();
    config.scratch_root = root.path().to_owned();
    config.scratch_quota = ScratchQuota {
        bytes: ByteSize(4 << 20),
        entries: 50,
    };
    let sandbox = Sandbox::new(
        config,
        Arc::new(DirArtifactStore::open(artifacts.path()).unwrap()),
    )
    .unwrap();
    Host {
        sandbox,
        root,
        _artifacts: artifacts,
    }
}

/// Run the `fill-scratch` attack with a managed scratch: how many files it
/// says it wrote, and the output or the failure class and message.
async fn fill(
    host: &Host,
    files: usize,
    bytes: usize,
) -> (usize, Result<Vec<u8>, (FailureClass, String)>) {
    let loaded = host.sandbox.load_file(&guest("hostile")).unwrap();
    let mut grants = Grants::default();
    grants.allow_managed_scratch();
    let input = format!(r#"{{"attack":"fill-scratch","files":{files},"bytes":{bytes}}}"#);
    let attempt = host
        .sandbox
        .run(
            &loaded,
            RunRequest {
                input: input.as_bytes(),
                args: &[],
                limits: Limits::default(),
                grants: &grants,
                secrets: &Default::default(),
                observer: None,
                tape: None,
            },
        )
        .await
        .unwrap();
    let left: Vec<_> = std::fs::read_dir(host.root.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "the attempt's scratch is removed: {left:?}"
    );
    let written = attempt.log.lines.len();
    (
        written,
        attempt.result.map_err(|f| (f.class(), f.to_string())),
    )
}

#[tokio::test]
async fn scratch_within_its_quota_works() {
    let host = host();
    assert_eq!(fill(&host, 10, 64 << 10).await.1.unwrap(), b"10");
}

#[tokio::test]
async fn too_many_files_in_scratch_are_denied() {
    let host = host();
    let (class, message) = fill(&host, 200, 1).await.1.unwrap_err();
    assert_eq!(class, FailureClass::Denied, "{message}");
    assert!(message.contains("more than 50 files"), "{message}");
}

#[tokio::test]
async fn too_many_bytes_in_scratch_are_denied() {
    let host = host();
    let (class, message) = fill(&host, 8, 1 << 20).await.1.unwrap_err();
    assert_eq!(class, FailureClass::Denied, "{message}");
    assert!(message.contains("more than 4.0 MiB of disk"), "{message}");
}

#[tokio::test]
async fn a_task_that_fills_scratch_for_long_is_stopped_before_it_ends() {
    // 2 000 files of 1 MiB would be 2 GiB: the periodic check stops it long
    // before, far under the memory a single write could carry.
    let host = host();
    let (written, result) = fill(&host, 2_000, 1 << 20).await;
    let (class, message) = result.unwrap_err();
    assert_eq!(class, FailureClass::Denied, "{message}");
    assert!(
        written < 2_000,
        "stopped only at the end, after {written} files"
    );
}
