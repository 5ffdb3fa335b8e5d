//! The scheduler, driven through the library with an executor that
//! misbehaves: a unit of work that panics fails its step and the run; it
//! never leaves the run "succeeded".

use std::sync::Arc;

use cairn::manifest::Manifest;
use cairn::plan::{Plan, Step};
use cairn::sandbox::{Attempt, Observer, Sandbox, SandboxConfig, SandboxError, TaskLog};
use cairn::schedule::{self, Executor, RunOptions, RunStatus, Silent, StepStatus};
use cairn::store::DirArtifactStore;

use crate::support::Pipeline;

/// Panics on the step named `boom`, echoes every other input.
struct PanicsOnBoom;

impl Executor for PanicsOnBoom {
    async fn execute(
        &self,
        step: &Step,
        input: &[u8],
        _: Option<Arc<dyn Observer>>,
    ) -> Result<Attempt, SandboxError> {
        assert_ne!(step.name, "boom", "an engine bug in step boom");
        Ok(Attempt {
            result: Ok(input.to_vec()),
            fuel_used: 0,
            duration: std::time::Duration::ZERO,
            peak_memory: 0,
            log: TaskLog::default(),
        })
    }
}

#[tokio::test]
async fn a_unit_of_work_that_panics_fails_its_step_and_the_run() {
    let p = Pipeline::new(
        "name = \"faults\"\n[steps.boom]\ncomponent = \"{wasm:echo}\"\n\
         [steps.after]\ncomponent = \"{wasm:echo}\"\nafter = [\"boom\"]\n\
         [steps.beside]\ncomponent = \"{wasm:echo}\"\n",
    );
    let artifacts = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(
        SandboxConfig::for_this_machine(),
        Arc::new(DirArtifactStore::open(artifacts.path()).unwrap()),
    )
    .unwrap();
    let (path, manifest) = Manifest::load(&p.dir.path().join("pipeline.toml")).unwrap();
    let plan = Arc::new(Plan::build(&path, manifest, &sandbox).await.unwrap());
    let options = RunOptions {
        jobs: 2,
        fail_fast: false,
    };
    let report = schedule::run(
        plan,
        Arc::new(PanicsOnBoom),
        options,
        Arc::new(Silent),
        None,
        std::future::pending(),
    )
    .await;
    assert_eq!(report.status, RunStatus::Failed);
    let status = |name: &str| {
        &report
            .steps
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no step {name}"))
            .status
    };
    match status("boom") {
        StepStatus::Failed(f) => assert!(
            f.message.contains("a bug in Cairn") && f.message.contains("an engine bug in step boom"),
            "{}",
            f.message
        ),
        other => panic!("boom: {other:?}"),
    }
    assert_eq!(*status("beside"), StepStatus::Succeeded);
    assert!(
        !matches!(status("after"), StepStatus::Succeeded),
        "a dependent of a failed step does not run"
    );
}
