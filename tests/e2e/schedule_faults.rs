//! The scheduler, driven through the library with an executor that
//! misbehaves: a unit of work that panics fails its step and the run; it
//! never leaves the run "succeeded".

use std::sync::Arc;

use cairn::manifest::Manifest;
use cairn::model::{EngineFailure, StepFailureClass};
use cairn::plan::{Plan, Step};
use cairn::sandbox::{
    Attempt, EngineEnv, Observer, Resolved, Sandbox, SandboxConfig, SandboxError, TaskLog,
};
use cairn::schedule::{self, Executor, RunOptions, RunStatus, Silent, StepStatus};
use cairn::store::DirArtifactStore;

use crate::support::Pipeline;

/// Panics on the step named `boom`, echoes every other input.
struct PanicsOnBoom;

impl Executor for PanicsOnBoom {
    async fn execute(
        &self,
        _: schedule::Admission,
        step: &Step,
        _: Option<usize>,
        input: &[u8],
        _: &Resolved,
        _: Option<Arc<dyn Observer>>,
    ) -> Result<Attempt, SandboxError> {
        assert_ne!(step.name, "boom", "an engine bug in step boom");
        Ok(Attempt {
            result: Ok(input.to_vec()),
            fuel_used: 0,
            duration: std::time::Duration::ZERO,
            peak_memory: 0,
            log: TaskLog::default(),
            http: Vec::new(),
            http_refused: Vec::new(),
        })
    }
}

/// The sandbox (with its artifact directory) and the plan of `p`.
async fn planned(p: &Pipeline, artifacts: &std::path::Path) -> (Sandbox, Arc<Plan>) {
    let sandbox = Sandbox::new(
        SandboxConfig::for_this_machine(),
        Arc::new(DirArtifactStore::open(artifacts).unwrap()),
    )
    .unwrap();
    let (path, manifest) = Manifest::load(&p.dir.path().join("pipeline.toml")).unwrap();
    let plan = Arc::new(Plan::build(&path, manifest, &sandbox).await.unwrap());
    (sandbox, plan)
}

#[tokio::test]
async fn a_unit_of_work_that_panics_fails_its_step_and_the_run() {
    let p = Pipeline::new(
        "name = \"faults\"\n[steps.boom]\ncomponent = \"{wasm:echo}\"\n\
         [steps.after]\ncomponent = \"{wasm:echo}\"\nafter = [\"boom\"]\n\
         [steps.beside]\ncomponent = \"{wasm:echo}\"\n",
    );
    let artifacts = tempfile::tempdir().unwrap();
    let (_sandbox, plan) = planned(&p, artifacts.path()).await;
    let options = RunOptions {
        jobs: 2,
        fail_fast: false,
        ..RunOptions::default()
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
        StepStatus::Failed(f) => {
            assert!(
                f.message.contains("a bug in Cairn")
                    && f.message.contains("an engine bug in step boom"),
                "{}",
                f.message
            );
            assert_eq!(
                f.class,
                StepFailureClass::Engine(EngineFailure::Engine),
                "a panic is Cairn's failure, not the task's or its input's"
            );
        }
        other => panic!("boom: {other:?}"),
    }
    assert_eq!(*status("beside"), StepStatus::Succeeded);
    assert!(
        !matches!(status("after"), StepStatus::Succeeded),
        "a dependent of a failed step does not run"
    );
}

/// A store whose disk fills up: `record` works `budget` times, then fails
/// as a full disk does. Everything else goes to a real sled store.
struct FillsUp {
    inner: cairn::store::SledStore,
    budget: std::sync::atomic::AtomicUsize,
    dir: std::path::PathBuf,
}

impl cairn::store::Store for FillsUp {
    fn result(
        &self,
        key: &cairn::store::CacheKey,
        max_age: Option<std::time::Duration>,
    ) -> Result<Option<(cairn::store::ResultMeta, Vec<u8>)>, cairn::store::StoreError> {
        self.inner.result(key, max_age)
    }
    fn record(
        &self,
        run: &cairn::store::RunId,
        results: &[cairn::store::NewResult],
        events: &[cairn::store::JournalEvent],
        durability: cairn::store::Durability,
    ) -> Result<(), cairn::store::StoreError> {
        use std::sync::atomic::Ordering;
        if self
            .budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_err()
        {
            return Err(cairn::store::StoreError::Io {
                path: self.dir.clone(),
                source: std::io::Error::from_raw_os_error(28), // ENOSPC
            });
        }
        self.inner.record(run, results, events, durability)
    }
    fn journal(
        &self,
        run: &cairn::store::RunId,
    ) -> Result<Vec<cairn::store::JournalEvent>, cairn::store::StoreError> {
        self.inner.journal(run)
    }
    fn journal_after(
        &self,
        run: &cairn::store::RunId,
        mark: cairn::store::JournalMark,
    ) -> Result<
        (Vec<cairn::store::JournalEvent>, cairn::store::JournalMark),
        cairn::store::StoreError,
    > {
        self.inner.journal_after(run, mark)
    }
    fn put_run(&self, run: &cairn::store::RunRecord) -> Result<(), cairn::store::StoreError> {
        self.inner.put_run(run)
    }
    fn run(
        &self,
        id: &cairn::store::RunId,
    ) -> Result<Option<cairn::store::RunRecord>, cairn::store::StoreError> {
        self.inner.run(id)
    }
    fn runs(&self) -> Result<Vec<cairn::store::RunRecord>, cairn::store::StoreError> {
        self.inner.runs()
    }
    fn remove_runs(&self, ids: &[cairn::store::RunId]) -> Result<u64, cairn::store::StoreError> {
        self.inner.remove_runs(ids)
    }
    fn cache_stats(&self) -> Result<cairn::store::CacheStats, cairn::store::StoreError> {
        self.inner.cache_stats()
    }
    fn cache_gc(
        &self,
        older_than: Option<std::time::Duration>,
    ) -> Result<u64, cairn::store::StoreError> {
        self.inner.cache_gc(older_than)
    }
    fn flush(&self) -> Result<(), cairn::store::StoreError> {
        self.inner.flush()
    }
}

#[tokio::test]
async fn a_store_that_cannot_write_fails_the_run_and_reports_nothing_done_that_is_not_durable() {
    // A chain. Its first commit holds s0 alone (it is made as s0 finishes,
    // while s1 starts on s0's output); the store then fills up, so every
    // later commit fails. With pipelined durability later commits group
    // several steps, so a budget of more than one commit could let the
    // whole chain through.
    let mut manifest = String::from("name = \"chain\"\n");
    for i in 0..8 {
        manifest.push_str(&format!(
            "[steps.s{i}]\ncomponent = \"{{wasm:echo}}\"\ninput = {{ i = {i}{} }}\n",
            if i == 0 {
                String::new()
            } else {
                format!(", prev = \"${{s{}.i}}\"", i - 1)
            }
        ));
    }
    let p = Pipeline::new(&manifest);
    let dir = tempfile::tempdir().unwrap();
    let (sandbox, plan) = planned(&p, &dir.path().join("artifacts")).await;
    let store = Arc::new(FillsUp {
        inner: cairn::store::SledStore::open(&dir.path().join("store")).unwrap(),
        budget: 1.into(),
        dir: dir.path().to_owned(),
    });
    let run_id = cairn::store::RunId::new();
    let ledger = Arc::new(schedule::Ledger::new(
        &schedule::JournalWriter::start(store.clone()),
        run_id.clone(),
        false,
        Default::default(),
    ));
    let report = schedule::run(
        plan,
        Arc::new(cairn::schedule::SandboxExecutor {
            sandbox: Arc::new(sandbox),
            share: None,
            secrets: Arc::new(EngineEnv),
            tapes: None,
            on_refused: None,
        }),
        RunOptions {
            jobs: 1,
            fail_fast: false,
            ..RunOptions::default()
        },
        Arc::new(Silent),
        Some(ledger),
        std::future::pending(),
    )
    .await;
    assert_eq!(report.status, RunStatus::Failed);
    let error = report
        .store_error
        .as_deref()
        .expect("the store error is reported");
    assert!(error.contains("No space left"), "{error}");
    // Every step reported succeeded has its record in the journal.
    let journal = cairn::store::Store::journal(&*store, &run_id).unwrap();
    let durable: Vec<String> = journal
        .iter()
        .filter_map(|e| match e {
            cairn::store::JournalEvent::StepSucceeded { step, .. } => Some(step.clone()),
            _ => None,
        })
        .collect();
    let reported: Vec<String> = report
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Succeeded)
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(reported, ["s0"], "only the first commit was durable");
    for name in &reported {
        assert!(
            durable.contains(name),
            "{name} was reported succeeded but is not in the journal ({durable:?})"
        );
    }
}

#[tokio::test]
async fn steps_in_flight_together_may_not_pass_the_runs_input_limit() {
    // `a` and `b` start together, with 120-odd bytes of input each: `b`
    // would pass the limit. `c` starts once `a` has released its input.
    let big = "x".repeat(100);
    let p = Pipeline::new(&format!(
        "name = \"budget\"\n\
         [steps.a]\ncomponent = \"{{wasm:echo}}\"\ninput = {{ pad = \"{big}\" }}\n\
         [steps.b]\ncomponent = \"{{wasm:echo}}\"\ninput = {{ pad = \"{big}\" }}\n\
         [steps.c]\ncomponent = \"{{wasm:echo}}\"\nafter = [\"a\"]\n\
         input = {{ pad = \"{big}\" }}\n"
    ));
    let artifacts = tempfile::tempdir().unwrap();
    let (sandbox, plan) = planned(&p, artifacts.path()).await;
    let report = schedule::run(
        plan,
        Arc::new(cairn::schedule::SandboxExecutor {
            sandbox: Arc::new(sandbox),
            share: None,
            secrets: Arc::new(EngineEnv),
            tapes: None,
            on_refused: None,
        }),
        RunOptions {
            jobs: 2,
            fail_fast: false,
            max_input_in_flight: 200,
        },
        Arc::new(Silent),
        None,
        std::future::pending(),
    )
    .await;
    let status = |name: &str| {
        report
            .steps
            .iter()
            .find(|s| s.name == name)
            .unwrap()
            .status
            .clone()
    };
    assert_eq!(status("a"), StepStatus::Succeeded);
    match status("b") {
        StepStatus::Failed(f) => {
            assert!(
                f.message.contains("would pass the run's limit of 200 B"),
                "{}",
                f.message
            );
            assert_eq!(f.class, StepFailureClass::Engine(EngineFailure::Input));
        }
        other => panic!("b: {other:?}"),
    }
    assert_eq!(status("c"), StepStatus::Succeeded, "a's input was released");
    assert_eq!(report.status, RunStatus::Failed);
}

/// Holds the first attempt it is given until released, then fails it
/// with a timeout (which the steps retry); every later attempt succeeds.
#[derive(Default)]
struct HoldsTheFirst {
    calls: std::sync::atomic::AtomicUsize,
    started: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

impl Executor for HoldsTheFirst {
    async fn execute(
        &self,
        _: schedule::Admission,
        _: &Step,
        _: Option<usize>,
        input: &[u8],
        _: &Resolved,
        _: Option<Arc<dyn Observer>>,
    ) -> Result<Attempt, SandboxError> {
        let call = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let result = if call == 0 {
            self.started.notify_one();
            self.release.notified().await;
            Err(cairn::sandbox::Failure::Timeout {
                limit: std::time::Duration::from_secs(1),
            })
        } else {
            Ok(input.to_vec())
        };
        Ok(Attempt {
            result,
            fuel_used: 0,
            duration: std::time::Duration::ZERO,
            peak_memory: 0,
            log: TaskLog::default(),
            http: Vec::new(),
            http_refused: Vec::new(),
        })
    }
}

#[tokio::test]
async fn a_draining_run_lets_the_running_attempt_finish_and_starts_nothing_more() {
    // A retry an hour later: the drain, not the clock, ends its wait.
    let retry = "retry = { attempts = 3, backoff = \"fixed\", delay = \"1h\", max_delay = \"1h\", jitter = false, on = [\"timeout\"] }";
    let p = Pipeline::new(&format!(
        "name = \"drain\"\n\
         [steps.a]\ncomponent = \"{{wasm:echo}}\"\n{retry}\n\
         [steps.b]\ncomponent = \"{{wasm:echo}}\"\n{retry}\n\
         [steps.c]\ncomponent = \"{{wasm:echo}}\"\nafter = [\"a\"]\n"
    ));
    let artifacts = tempfile::tempdir().unwrap();
    let (_sandbox, plan) = planned(&p, artifacts.path()).await;
    let executor = Arc::new(HoldsTheFirst::default());
    let (drain, drained) = tokio::sync::oneshot::channel::<()>();
    // One slot: while the first attempt holds it, the other root step waits.
    let options = RunOptions {
        jobs: 1,
        ..RunOptions::default()
    };
    let run = tokio::spawn(schedule::run_draining(
        plan,
        executor.clone(),
        options,
        Arc::new(Silent),
        None,
        async {
            let _ = drained.await;
        },
        std::future::pending(),
    ));
    executor.started.notified().await;
    drain.send(()).unwrap();
    executor.release.notify_one();
    let report = run.await.unwrap();

    assert_eq!(report.status, RunStatus::Cancelled, "{report:?}");
    assert_eq!(
        executor.calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the running attempt finished; no retry, no other step started"
    );
    let held = report.steps.iter().find(|s| s.attempts == 1);
    assert!(held.is_some(), "the held attempt is counted: {report:?}");
    for step in &report.steps {
        assert_eq!(
            step.status,
            StepStatus::Cancelled,
            "{}: {:?}",
            step.name,
            step.status
        );
    }
}

#[tokio::test]
async fn a_fan_out_wider_than_the_units_in_flight_runs_every_unit_once_with_its_own_input() {
    // 1 500 plain steps and a 1 200-element map after one source: more
    // units than the scheduler gives a task at once, so most wait their turn.
    let mut manifest =
        String::from("name = \"wide\"\n[steps.source]\ncomponent = \"{wasm:echo}\"\n");
    manifest.push_str(&format!(
        "[steps.source.input]\nlist = [{}]\n",
        (0..1200)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for i in 0..1500 {
        manifest.push_str(&format!(
            "[steps.s{i}]\ncomponent = \"{{wasm:echo}}\"\nafter = [\"source\"]\n\
             input = {{ i = {i}, tag = \"literal\", nested = {{ b = [1, 2], a = false }} }}\n"
        ));
    }
    manifest.push_str(
        "[steps.each]\ncomponent = \"{wasm:echo}\"\nmap = \"${source.list}\"\n\
         input = { v = \"${item}\" }\n",
    );
    let p = Pipeline::new(&manifest);
    let artifacts = tempfile::tempdir().unwrap();
    let (_sandbox, plan) = planned(&p, artifacts.path()).await;
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    struct Counting(Arc<std::sync::atomic::AtomicUsize>);
    impl Executor for Counting {
        async fn execute(
            &self,
            _: schedule::Admission,
            step: &Step,
            index: Option<usize>,
            input: &[u8],
            secrets: &Resolved,
            observer: Option<Arc<dyn Observer>>,
        ) -> Result<Attempt, SandboxError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            PanicsOnBoom
                .execute(Default::default(), step, index, input, secrets, observer)
                .await
        }
    }
    let report = schedule::run(
        plan,
        Arc::new(Counting(calls.clone())),
        RunOptions {
            jobs: 2,
            fail_fast: false,
            max_input_in_flight: u64::MAX,
        },
        Arc::new(Silent),
        None,
        std::future::pending(),
    )
    .await;
    assert_eq!(report.status, RunStatus::Succeeded);
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::Relaxed),
        1 + 1500 + 1200,
        "every unit ran once"
    );
    let output = report.output_value().unwrap();
    // The output's text is what serializing its value gives, byte for byte
    // (keys in order), so its hash is the same either way.
    assert_eq!(
        report.output.as_deref().unwrap().get(),
        serde_json::to_string(&output).unwrap()
    );
    assert_eq!(
        report.output_hash().unwrap(),
        cairn::schedule::output_hash(&output)
    );
    for i in [0, 511, 512, 513, 1499] {
        // A literal input reaches the task as the JSON it encodes to.
        assert_eq!(
            output[format!("s{i}")],
            serde_json::json!({"i": i, "tag": "literal", "nested": {"a": false, "b": [1, 2]}})
        );
    }
    let each = output["each"].as_array().unwrap();
    assert_eq!(each.len(), 1200);
    for (i, element) in each.iter().enumerate() {
        assert_eq!(element, &serde_json::json!({"v": i}), "element {i}");
    }
}
