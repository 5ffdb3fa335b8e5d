//! The run service driven through the library, as `cairn serve` will drive
//! it: runs admitted, recorded and executed on one shared `Runner`, typed
//! records, resume and replay of what the store holds.

use std::sync::Arc;

use cairn::model::RunStatus;
use cairn::policy::Policy;
use cairn::runner::{Launch, Resumption, RunError, Runner};
use cairn::schedule::Silent;
use cairn::store::JournalEvent;
use cairn::store::audit::AuditLog;

use crate::support::Pipeline;

fn chain(name: &str) -> Pipeline {
    Pipeline::new(&format!(
        "name = \"{name}\"\n\
         [steps.a]\ncomponent = \"{{wasm:echo}}\"\ninput = {{ n = 1 }}\n\
         [steps.b]\ncomponent = \"{{wasm:echo}}\"\ninput = {{ from = \"${{a.n}}\" }}\n",
    ))
}

async fn run(runner: &Runner, launch: Launch) -> cairn::runner::Finished {
    let started = runner
        .admit(launch)
        .await
        .unwrap_or_else(|e| panic!("admit: {e}"))
        .record()
        .unwrap_or_else(|e| panic!("record: {e}"));
    started
        .execute(Arc::new(Silent), std::future::pending())
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_is_recorded_with_typed_status_and_its_end_is_journalled() {
    let store = tempfile::tempdir().unwrap();
    let runner = Runner::open(store.path(), 0).unwrap();
    let p = chain("typed");
    let finished = run(&runner, Launch::new(p.dir.path())).await;
    assert_eq!(finished.report.status, RunStatus::Succeeded);
    assert!(finished.warnings.is_empty(), "{:?}", finished.warnings);
    let stored = runner.store().run(&finished.record.id).unwrap().unwrap();
    assert_eq!(stored, finished.record);
    assert_eq!(stored.status, RunStatus::Succeeded);
    assert_eq!(
        (stored.tenant.as_deref(), stored.bundle.as_deref()),
        (None, None)
    );
    assert!(stored.finished_ms.is_some());
    let journal = runner.store().journal(&stored.id).unwrap();
    assert!(
        matches!(
            journal.first(),
            Some(JournalEvent::RunStarted { resumed: false, .. })
        ),
        "{journal:?}"
    );
    assert!(
        matches!(
            journal.last(),
            Some(JournalEvent::RunFinished {
                status: RunStatus::Succeeded,
                ..
            })
        ),
        "{journal:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_side_by_side_share_one_runner_and_one_store() {
    let store = tempfile::tempdir().unwrap();
    let runner = Runner::open(store.path(), 0).unwrap();
    let (p, q) = (chain("left"), chain("right"));
    let (left, right) = tokio::join!(
        run(&runner, Launch::new(p.dir.path())),
        run(&runner, Launch::new(q.dir.path()))
    );
    assert_eq!(left.report.status, RunStatus::Succeeded);
    assert_eq!(right.report.status, RunStatus::Succeeded);
    assert_ne!(left.record.id, right.record.id);
    let mut pipelines: Vec<String> = runner
        .store()
        .runs()
        .unwrap()
        .into_iter()
        .map(|r| r.pipeline)
        .collect();
    pipelines.sort();
    assert_eq!(pipelines, ["left", "right"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_of_a_succeeded_run_has_nothing_to_do_and_replay_verifies_every_step() {
    let store = tempfile::tempdir().unwrap();
    let runner = Runner::open(store.path(), 0).unwrap();
    let p = chain("again");
    let first = run(&runner, Launch::new(p.dir.path())).await;
    let id = first.record.id.0.clone();
    match runner.resume(&id, None).unwrap() {
        Resumption::AlreadySucceeded(record) => assert_eq!(record.id, first.record.id),
        Resumption::Ready(_) => panic!("a succeeded run was offered for resume"),
    }
    let replay = runner.replay(&id[..8], None).unwrap();
    let again = run(&runner, replay.continued.launch).await;
    assert_eq!(again.record.replay_of.as_ref(), Some(&first.record.id));
    let verification = replay.original.verify(&again.report);
    assert_eq!(verification.compared, 2, "both steps compared");
    assert!(verification.mismatches.is_empty(), "{verification:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_and_malformed_run_ids_are_typed_errors() {
    let store = tempfile::tempdir().unwrap();
    let runner = Runner::open(store.path(), 0).unwrap();
    assert!(matches!(runner.find("last"), Err(RunError::NoRuns { .. })));
    assert!(matches!(
        runner.resume("0123abcd", None),
        Err(RunError::UnknownRun { .. })
    ));
    assert!(matches!(
        runner.replay("not-an-id", None),
        Err(RunError::BadRunId(_))
    ));
    let missing = tempfile::tempdir().unwrap();
    assert!(matches!(
        Runner::open_existing(&missing.path().join("nowhere"), 0),
        Err(RunError::NoStore { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_names_the_runs_tenant_and_its_refusal_is_audited_before_anything_is_recorded() {
    let store = tempfile::tempdir().unwrap();
    let runner = Runner::open(store.path(), 0).unwrap();
    let policy_file = store.path().join("policy.toml");
    std::fs::write(
        &policy_file,
        "[default]\nmax_memory = \"1GiB\"\nmax_timeout = \"1m\"\n\
         [tenants.acme]\n[tenants.tiny]\nmax_fuel = 1_000\n",
    )
    .unwrap();
    let p = chain("tenanted");
    let acme = Policy::load(&policy_file, Some("acme")).unwrap();
    let finished = run(
        &runner,
        Launch {
            policy: Some(acme),
            ..Launch::new(p.dir.path())
        },
    )
    .await;
    assert_eq!(finished.record.tenant.as_deref(), Some("acme"));

    let tiny = Policy::load(&policy_file, Some("tiny")).unwrap();
    let refused = runner
        .admit(Launch {
            policy: Some(tiny),
            ..Launch::new(p.dir.path())
        })
        .await;
    match refused {
        Err(RunError::Refused { denials, .. }) => {
            assert!(
                denials.iter().any(|d| d.message.contains("max_fuel")),
                "{denials:?}"
            )
        }
        Err(e) => panic!("refused for the wrong reason: {e}"),
        Ok(_) => panic!("a pipeline over the tenant's fuel cap was admitted"),
    }
    assert_eq!(runner.store().runs().unwrap().len(), 1, "nothing recorded");
    let (entries, _) = AuditLog::new(store.path()).read().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e.event == "denied" && e.tenant == "tiny"),
        "{entries:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_run_records_the_bundle_by_its_hash() {
    let store = tempfile::tempdir().unwrap();
    let runner = Runner::open(store.path(), 0).unwrap();
    let p = chain("bundled");
    let bytes = cairn::bundle::pack(p.dir.path()).unwrap();
    let file = p.dir.path().join("bundled.cairn");
    std::fs::write(&file, &bytes).unwrap();
    let id = cairn::bundle::Bundle::open(&file)
        .unwrap()
        .id
        .to_hex()
        .to_string();
    let finished = run(&runner, Launch::new(&file)).await;
    assert_eq!(finished.report.status, RunStatus::Succeeded);
    assert_eq!(finished.record.bundle.as_deref(), Some(id.as_str()));
    assert_eq!(finished.record.manifest_hash, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sandbox_pool_makes_attempts_wait_for_a_slot_instead_of_failing() {
    use cairn::sandbox::{Grants, Limits, RunRequest, Sandbox, SandboxConfig};
    let artifacts = tempfile::tempdir().unwrap();
    let sandbox = Arc::new(
        Sandbox::new(
            SandboxConfig {
                max_instances: 1,
                ..SandboxConfig::for_this_machine()
            },
            Arc::new(cairn::store::DirArtifactStore::open(artifacts.path()).unwrap()),
        )
        .unwrap(),
    );
    let burn = sandbox
        .load(&std::fs::read(crate::support::guest("burn")).unwrap())
        .unwrap();
    let attempts: Vec<_> = (0..4)
        .map(|seed| {
            let (sandbox, burn) = (sandbox.clone(), burn.clone());
            tokio::spawn(async move {
                let input = format!("{{\"rounds\":20000000,\"seed\":{seed}}}");
                let grants = Grants::default();
                let request = RunRequest {
                    input: input.as_bytes(),
                    args: &[],
                    limits: Limits::default(),
                    grants: &grants,
                    secrets: &Default::default(),
                    observer: None,
                    tape: None,
                };
                let attempt = sandbox.run(&burn, request).await;
                (attempt.map(|a| a.result.map(|_| ())), sandbox.in_flight())
            })
        })
        .collect();
    for attempt in attempts {
        let (attempt, in_flight) = attempt.await.unwrap();
        assert!(
            matches!(attempt, Ok(Ok(()))),
            "an attempt over the pool's one slot failed instead of waiting: {attempt:?}"
        );
        assert!(in_flight <= 1, "{in_flight} attempts held the one slot");
    }
    assert_eq!(sandbox.in_flight(), 0, "every slot was given back");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finished_run_leaves_no_journal_open() {
    let store = tempfile::tempdir().unwrap();
    let db = Arc::new(cairn::store::SledStore::open(store.path()).unwrap());
    let sandbox = Arc::new(cairn::runner::open_sandbox(store.path(), 0).unwrap());
    let runner = Runner::new(store.path(), db.clone(), sandbox);
    let (p, q) = (chain("one"), chain("two"));
    let (one, two) = tokio::join!(
        run(&runner, Launch::new(p.dir.path())),
        run(&runner, Launch::new(q.dir.path()))
    );
    assert_eq!(
        (one.report.status, two.report.status),
        (RunStatus::Succeeded, RunStatus::Succeeded)
    );
    assert_eq!(db.open_journals(), 0, "journal files outlived their runs");
    // A resume opens the journal again and closes it at the end.
    assert!(runner.store().journal(&one.record.id).unwrap().len() > 2);
}

/// A secret source whose value changes after it is first read (planning
/// reads it once), or that loses the secret then.
#[derive(Debug)]
struct Rotating {
    reads: std::sync::atomic::AtomicUsize,
    later: Option<&'static str>,
}

impl cairn::sandbox::SecretSource for Rotating {
    fn secret(&self, name: &str) -> Option<String> {
        if name != "WAREHOUSE" {
            return None;
        }
        match self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 => Some("value-at-planning".into()),
            _ => self.later.map(str::to_owned),
        }
    }
    fn missing(&self, _: &str) -> String {
        "it is gone from the test's vault".into()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_are_read_when_the_attempt_starts_and_a_plan_holds_no_value() {
    let store = tempfile::tempdir().unwrap();
    let runner = Runner::open(store.path(), 0).unwrap();
    let p = Pipeline::new(
        "name = \"vault\"\n[steps.read]\ncomponent = \"{wasm:hostile}\"\n\
         input = { attack = \"read-env\", name = \"WAREHOUSE\" }\n\
         grants = { secrets = [\"WAREHOUSE\"] }\n",
    );
    let bundle = store.path().join("vault.cairn");
    std::fs::write(&bundle, cairn::bundle::pack(p.dir.path()).unwrap()).unwrap();
    let launch = |later| Launch {
        secrets: Some(Arc::new(Rotating {
            reads: Default::default(),
            later,
        })),
        ..Launch::new(&bundle)
    };

    let admitted = runner
        .admit(launch(Some("value-at-attempt")))
        .await
        .unwrap();
    let planned = format!("{:?}", admitted.plan());
    assert!(
        !planned.contains("value-at"),
        "a plan holds no secret value"
    );
    assert_eq!(admitted.plan().steps[0].grants.secrets, ["WAREHOUSE"]);
    let finished = admitted
        .record()
        .unwrap()
        .execute(Arc::new(Silent), std::future::pending())
        .await;
    assert_eq!(finished.report.status, RunStatus::Succeeded);
    let output = serde_json::to_string(&finished.report.output).unwrap();
    assert!(
        output.contains("value-at-attempt") && !output.contains("value-at-planning"),
        "the attempt reads the value it starts with: {output}"
    );

    // A pipeline directory is planned against the same source, not the
    // engine's environment (which has no WAREHOUSE).
    let from_dir = Launch {
        secrets: Some(Arc::new(Rotating {
            reads: Default::default(),
            later: Some("value-for-the-dir"),
        })),
        refresh: true,
        ..Launch::new(p.dir.path())
    };
    let finished = run(&runner, from_dir).await;
    assert_eq!(finished.report.status, RunStatus::Succeeded);
    let output = serde_json::to_string(&finished.report.output).unwrap();
    assert!(output.contains("value-for-the-dir"), "{output}");

    // Gone between planning and the attempt: the step is denied, named.
    let finished = run(
        &runner,
        Launch {
            refresh: true,
            ..launch(None)
        },
    )
    .await;
    assert_eq!(finished.report.status, RunStatus::Failed);
    let step = &finished.report.steps[0];
    match &step.status {
        cairn::schedule::StepStatus::Failed(f) => {
            assert_eq!(f.class, cairn::sandbox::FailureClass::Denied.into());
            assert!(
                f.message.contains("WAREHOUSE") && f.message.contains("gone from the test's vault"),
                "{}",
                f.message
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(step.attempts, 0, "nothing ran without its secret");
}
