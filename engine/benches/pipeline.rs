//! Pipeline benchmarks: planning a 100 000-step DAG, per-step engine overhead
//! (plan + schedule + bookkeeping, with a no-op executor), a 10 000-step
//! fan-out and a 1 000-step chain of a trivial task, and a diamond of two
//! CPU-bound tasks with one job versus two; the same fan-out through the
//! `cairn` binary, run again and rerun from the cache.
//!
//! Needs the guests built first:
//!   cargo build --release --target wasm32-wasip2 --manifest-path guest-examples/Cargo.toml
//! Run: cargo bench -p cairn-engine --bench pipeline
//! The generated manifests stay in target/bench-pipelines/ (for `/usr/bin/time -v cairn check`).

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::manifest::Manifest;
use cairn::plan::{Plan, Step};
use cairn::sandbox::{
    Attempt, EngineEnv, Observer, Resolved, Sandbox, SandboxConfig, SandboxError, TaskLog,
};
use cairn::schedule::{self, Executor, Ledger, RunOptions, RunStatus, SandboxExecutor, Silent};
use cairn::store::{
    CacheKey, DirArtifactStore, Durability, JournalEvent, NewResult, ResultMeta, RunId, SledStore,
    Store,
};
use criterion::{Criterion, criterion_group, criterion_main};

/// The same allocator as the `cairn` binary, so the figures are the shipped
/// engine's.
#[global_allocator]
static ALLOCATOR: cairn::allocator::Allocator = cairn::allocator::Allocator;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn component(name: &str) -> String {
    let path = root()
        .join("guest-examples/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{}: build the guest examples first",
        path.display()
    );
    path.to_str().unwrap().to_owned()
}

fn write_manifest(name: &str, text: &str) -> PathBuf {
    let dir = root().join("target/bench-pipelines").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `n` independent steps after one source step.
fn fan_out(n: usize) -> String {
    let echo = component("echo");
    let mut m = format!("name = \"fan-out\"\n[steps.source]\ncomponent = \"{echo}\"\n");
    for i in 0..n {
        let _ = write!(
            m,
            "[steps.s{i}]\ncomponent = \"{echo}\"\nafter = [\"source\"]\ninput = {{ i = {i} }}\n"
        );
    }
    m
}

/// `n` steps, each taking a field of the previous one's output.
fn chain(n: usize) -> String {
    let echo = component("echo");
    let mut m =
        format!("name = \"chain\"\n[steps.s0]\ncomponent = \"{echo}\"\ninput = {{ i = 0 }}\n");
    for i in 1..n {
        let _ = write!(
            m,
            "[steps.s{i}]\ncomponent = \"{echo}\"\ninput = {{ i = {i}, prev = \"${{s{}.i}}\" }}\n",
            i - 1
        );
    }
    m
}

/// Two CPU-bound branches between a source and a sink.
fn diamond(rounds: u64) -> String {
    let (echo, burn) = (component("echo"), component("burn"));
    format!(
        "name = \"diamond\"\n[defaults]\nfuel = 100_000_000_000\n\
         [steps.top]\ncomponent = \"{echo}\"\n\
         [steps.left]\ncomponent = \"{burn}\"\nafter = [\"top\"]\ninput = {{ rounds = {rounds}, seed = 1 }}\n\
         [steps.right]\ncomponent = \"{burn}\"\nafter = [\"top\"]\ninput = {{ rounds = {rounds}, seed = 2 }}\n\
         [steps.bottom]\ncomponent = \"{echo}\"\ninput = {{ l = \"${{left.value}}\", r = \"${{right.value}}\" }}\n"
    )
}

fn sandbox(artifacts: &Path) -> Arc<Sandbox> {
    let store = Arc::new(DirArtifactStore::open(artifacts).unwrap());
    Arc::new(Sandbox::new(SandboxConfig::for_this_machine(), store).unwrap())
}

async fn plan(path: &Path, sandbox: &Sandbox) -> Plan {
    let (path, manifest) = Manifest::load(path).unwrap();
    Plan::build(&path, manifest, sandbox).await.unwrap()
}

/// Returns its input: measures everything but the sandbox.
struct Noop;

impl Executor for Noop {
    async fn execute(
        &self,
        _: schedule::Admission,
        _: &Step,
        _: Option<usize>,
        input: &[u8],
        _: &Resolved,
        _: Option<Arc<dyn Observer>>,
    ) -> Result<Attempt, SandboxError> {
        Ok(Attempt {
            result: Ok(input.to_vec()),
            fuel_used: 0,
            duration: Duration::ZERO,
            peak_memory: 0,
            log: TaskLog::default(),
            http: Vec::new(),
            http_refused: Vec::new(),
        })
    }
}

async fn run_with<E: Executor>(
    plan: Arc<Plan>,
    executor: Arc<E>,
    jobs: usize,
    ledger: Option<Arc<Ledger>>,
) {
    let options = RunOptions {
        jobs,
        fail_fast: false,
        ..RunOptions::default()
    };
    let report = schedule::run(
        plan,
        executor,
        options,
        Arc::new(Silent),
        ledger,
        std::future::pending(),
    )
    .await;
    assert_eq!(report.status, RunStatus::Succeeded);
}

fn ledger(store: &Arc<SledStore>, refresh: bool) -> Arc<Ledger> {
    Arc::new(Ledger::new(
        &cairn::schedule::JournalWriter::start(store.clone()),
        RunId::new(),
        refresh,
        Default::default(),
    ))
}

async fn run<E: Executor>(plan: Arc<Plan>, executor: Arc<E>, jobs: usize) {
    let options = RunOptions {
        jobs,
        fail_fast: false,
        ..RunOptions::default()
    };
    let report = schedule::run(
        plan,
        executor,
        options,
        Arc::new(Silent),
        None,
        std::future::pending(),
    )
    .await;
    assert_eq!(report.status, RunStatus::Succeeded);
}

fn pipelines(c: &mut Criterion) {
    // SAFETY: the benchmarks start their threads (the runtime) below.
    unsafe { cairn::allocator::tune() };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let artifacts = tempfile::tempdir().unwrap();
    let sandbox = sandbox(artifacts.path());
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(10);

    let big = write_manifest("chain-100k", &chain(100_000));
    group.bench_function("plan/100k-step-chain", |b| {
        // Planning ends when the plan is built: dropping it is not timed.
        b.iter_with_large_drop(|| runtime.block_on(plan(&big, &sandbox)))
    });

    let fan = write_manifest("fan-out-10k", &fan_out(10_000));
    group.bench_function("plan+schedule-noop/10k-fan-out", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let plan = Arc::new(plan(&fan, &sandbox).await);
                run(plan, Arc::new(Noop), 2).await;
            })
        })
    });

    let fan_plan = Arc::new(runtime.block_on(plan(&fan, &sandbox)));
    let executor = Arc::new(SandboxExecutor {
        sandbox: sandbox.clone(),
        share: None,
        secrets: Arc::new(EngineEnv),
        tapes: None,
        on_refused: None,
    });
    group.bench_function("run-echo/10k-fan-out", |b| {
        b.iter(|| runtime.block_on(run(fan_plan.clone(), executor.clone(), 2)))
    });

    let chain_path = write_manifest("chain-1k", &chain(1_000));
    let chain_plan = Arc::new(runtime.block_on(plan(&chain_path, &sandbox)));
    group.bench_function("run-echo/1k-chain", |b| {
        b.iter(|| runtime.block_on(run(chain_plan.clone(), executor.clone(), 2)))
    });

    let diamond_path = write_manifest("diamond", &diamond(50_000_000));
    let diamond_plan = Arc::new(runtime.block_on(plan(&diamond_path, &sandbox)));
    for jobs in [1, 2] {
        group.bench_function(format!("run-burn-diamond/jobs-{jobs}"), |b| {
            b.iter(|| runtime.block_on(run(diamond_plan.clone(), executor.clone(), jobs)))
        });
    }
    // The store: cache hits on a rerun, and the journal's cost per step.
    let db_dir = tempfile::tempdir().unwrap();
    let db = Arc::new(SledStore::open(db_dir.path()).unwrap());
    runtime.block_on(run_with(
        fan_plan.clone(),
        executor.clone(),
        2,
        Some(ledger(&db, false)),
    ));
    group.bench_function("store/rerun-all-cached/10k-fan-out", |b| {
        b.iter(|| {
            runtime.block_on(run_with(
                fan_plan.clone(),
                executor.clone(),
                2,
                Some(ledger(&db, false)),
            ))
        })
    });
    group.bench_function("store/journal+results-noop/10k-fan-out", |b| {
        b.iter(|| {
            runtime.block_on(run_with(
                fan_plan.clone(),
                Arc::new(Noop),
                2,
                Some(ledger(&db, true)),
            ))
        })
    });
    // What a user of a sequential pipeline waits for: each step of the
    // chain executed in the sandbox and made durable, with dependents
    // started on the output in memory (pipelined durability).
    group.bench_function("store/run-echo-durable/1k-chain", |b| {
        b.iter(|| {
            runtime.block_on(run_with(
                chain_plan.clone(),
                executor.clone(),
                2,
                Some(ledger(&db, true)),
            ))
        })
    });
    group.bench_function("store/no-ledger-noop/10k-fan-out", |b| {
        b.iter(|| runtime.block_on(run_with(fan_plan.clone(), Arc::new(Noop), 2, None)))
    });
    // What a user gets: the `cairn` binary (release build) on the same
    // manifest, its own store, every step run again (--refresh) or every
    // step a cache hit. Process start, planning, opening the store and
    // loading `echo` from the artifact cache are in these figures.
    let cli_store = tempfile::tempdir().unwrap();
    let cairn = |extra: &[&str]| {
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("run")
            .arg(fan.parent().unwrap())
            .arg("--store")
            .arg(cli_store.path())
            .arg("-q")
            .args(extra)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    };
    cairn(&[]);
    group.bench_function("cli/run-echo-refresh/10k-fan-out", |b| {
        b.iter(|| cairn(&["--refresh"]))
    });
    group.bench_function("cli/rerun-all-cached/10k-fan-out", |b| {
        b.iter(|| cairn(&[]))
    });
    group.finish();

    // Disk use of 100 000 results of 1 KiB each, against the raw bytes,
    // committed as the scheduler does: in groups, each made durable.
    let sizes = tempfile::tempdir().unwrap();
    {
        let db = SledStore::open(sizes.path()).unwrap();
        let run = RunId::new();
        for group in 0..1_000u64 {
            let results: Vec<NewResult> = (group * 100..group * 100 + 100)
                .map(|i| {
                    let output: Vec<u8> = (0..1024u64)
                        .map(|j| ((i * 31 + j * 7) % 251) as u8)
                        .collect();
                    NewResult {
                        key: CacheKey(blake3::hash(&i.to_le_bytes())),
                        meta: ResultMeta {
                            output_hash: blake3::hash(&output),
                            size: output.len() as u64,
                            component: blake3::hash(b"c"),
                            input_hash: blake3::hash(b"i"),
                            fuel: 1,
                            duration_us: 1,
                            created_ms: 1,
                        },
                        output,
                    }
                })
                .collect();
            let events: Vec<JournalEvent> = results
                .iter()
                .map(|r| JournalEvent::ItemSucceeded {
                    at_ms: 1,
                    step: "s".into(),
                    index: None,
                    key: r.key.to_hex(),
                    output_hash: r.meta.output_hash.to_hex().to_string(),
                    cached: false,
                })
                .collect();
            db.record(&run, &results, &events, Durability::Machine)
                .unwrap();
        }
        db.flush().unwrap();
        let stats = db.cache_stats().unwrap();
        println!(
            "store: {} results, {} output bytes, {} on disk ({:.2}x; journal not counted)",
            stats.entries,
            stats.output_bytes,
            stats.disk_bytes,
            stats.disk_bytes as f64 / stats.output_bytes as f64
        );
        let journal: u64 = std::fs::read_dir(sizes.path().join("journal"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        println!("store: the run's journal of 100 000 events takes {journal} bytes");
    }

    // Wall-clock ratio for the README, measured the same way a user would.
    let time = |jobs| {
        let started = Instant::now();
        runtime.block_on(run(diamond_plan.clone(), executor.clone(), jobs));
        started.elapsed()
    };
    let (one, two) = (time(1), time(2));
    println!(
        "diamond: jobs=1 {one:?}, jobs=2 {two:?}, ratio {:.2}",
        one.as_secs_f64() / two.as_secs_f64()
    );
}

criterion_group!(benches, pipelines);
criterion_main!(benches);
