//! Sandbox benchmarks: compile (cold) and artifact-cache load of every example
//! component, and instantiate + run of a trivial task — through Cairn's
//! sandbox and, as the baseline, through a minimal raw wasmtime embedding.
//!
//! Needs the guests built first:
//!   cargo build --release --target wasm32-wasip2 --manifest-path guest-examples/Cargo.toml
//! Run: cargo bench -p cairn-engine --bench sandbox

use std::path::PathBuf;
use std::sync::Arc;

use cairn::sandbox::{Grants, Limits, RunRequest, Sandbox, SandboxConfig};
use cairn::store::{ArtifactStore, DirArtifactStore};
use criterion::{Criterion, criterion_group, criterion_main};

const EXAMPLES: &[&str] = &[
    "echo",
    "csv_parse",
    "aggregate",
    "word_count",
    "json_transform",
    "clock_random",
    "hostile",
    "shout",
];

fn guest(name: &str) -> Vec<u8> {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "guest-examples",
        "target",
        "wasm32-wasip2",
        "release",
    ]
    .iter()
    .collect::<PathBuf>()
    .join(format!("{name}.wasm"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; build the guest examples first", path.display()))
}

/// An artifact store that never has anything: every load compiles.
struct NoArtifacts;

impl ArtifactStore for NoArtifacts {
    fn get(
        &self,
        _: &cairn::store::ArtifactKey,
    ) -> Result<Option<Vec<u8>>, cairn::store::StoreError> {
        Ok(None)
    }
    fn put(&self, _: &cairn::store::ArtifactKey, _: &[u8]) -> Result<(), cairn::store::StoreError> {
        Ok(())
    }
    fn remove(&self, _: &cairn::store::ArtifactKey) -> Result<(), cairn::store::StoreError> {
        Ok(())
    }
}

fn compile_and_load(c: &mut Criterion) {
    let mut group = c.benchmark_group("component");
    group.sample_size(10);
    let dir = tempfile::tempdir().unwrap();
    for name in EXAMPLES {
        let wasm = guest(name);
        group.bench_function(format!("compile-cold/{name}"), |b| {
            b.iter(|| {
                // A fresh sandbox each time: nothing in memory, nothing on disk.
                let sandbox = Sandbox::new(
                    SandboxConfig {
                        max_instances: 8,
                        ..SandboxConfig::for_this_machine()
                    },
                    Arc::new(NoArtifacts),
                )
                .unwrap();
                sandbox.load(&wasm).unwrap()
            })
        });
        let artifacts = Arc::new(DirArtifactStore::open(dir.path()).unwrap());
        Sandbox::new(
            SandboxConfig {
                max_instances: 8,
                ..SandboxConfig::for_this_machine()
            },
            artifacts.clone(),
        )
        .unwrap()
        .load(&wasm)
        .unwrap();
        group.bench_function(format!("load-from-artifact-cache/{name}"), |b| {
            b.iter(|| {
                let sandbox = Sandbox::new(
                    SandboxConfig {
                        max_instances: 8,
                        ..SandboxConfig::for_this_machine()
                    },
                    artifacts.clone(),
                )
                .unwrap();
                let loaded = sandbox.load(&wasm).unwrap();
                assert_eq!(loaded.source, cairn::sandbox::CodeSource::ArtifactCache);
                loaded
            })
        });
    }
    group.finish();
}

fn instantiate_and_run(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let wasm = guest("echo");
    let input = br#"{"hello":"world"}"#;

    let sandbox = Sandbox::new(SandboxConfig::for_this_machine(), Arc::new(NoArtifacts)).unwrap();
    let loaded = sandbox.load(&wasm).unwrap();
    let grants = Grants::default();
    let mut group = c.benchmark_group("run");
    group.bench_function("cairn-sandbox/echo", |b| {
        b.to_async(&runtime).iter(|| async {
            let request = RunRequest {
                input,
                args: &[],
                limits: Limits::default(),
                grants: &grants,
                observer: None,
            };
            let attempt = sandbox.run(&loaded, request).await.unwrap();
            assert_eq!(attempt.result.as_deref().unwrap(), input);
        })
    });

    let raw = raw::Raw::new(&wasm);
    group.bench_function("raw-wasmtime/echo", |b| {
        b.to_async(&runtime).iter(|| async {
            let output = raw.run(input).await;
            assert_eq!(output, input);
        })
    });
    group.finish();
}

/// The baseline: what a minimal embedding of wasmtime does to run the same
/// component — default config plus async, an empty WASI context, no limits,
/// no pooling, no bookkeeping.
mod raw {
    use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
    use wasmtime::{Config, Engine, Store};
    use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

    wasmtime::component::bindgen!({
        path: "../wit",
        world: "cairn-task",
        exports: { default: async },
    });

    pub struct State {
        wasi: WasiCtx,
        table: ResourceTable,
    }

    impl WasiView for State {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }

    impl self::cairn::task::types::Host for State {}
    impl self::cairn::task::host::Host for State {
        fn log(&mut self, _: self::cairn::task::types::LogLevel, _: String) {}
        fn progress(&mut self, _: u64, _: u64, _: String) {}
    }

    pub struct Raw {
        engine: Engine,
        pre: CairnTaskPre<State>,
    }

    impl Raw {
        pub fn new(wasm: &[u8]) -> Self {
            let engine = Engine::new(&Config::new()).unwrap();
            let component = Component::new(&engine, wasm).unwrap();
            let mut linker = Linker::new(&engine);
            wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
            CairnTask::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s).unwrap();
            let pre = CairnTaskPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
            Self { engine, pre }
        }

        pub async fn run(&self, input: &[u8]) -> Vec<u8> {
            let state = State {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
            };
            let mut store = Store::new(&self.engine, state);
            let task = self.pre.instantiate_async(&mut store).await.unwrap();
            task.cairn_task_task()
                .call_run(&mut store, input)
                .await
                .unwrap()
                .unwrap()
        }
    }
}

criterion_group!(benches, compile_and_load, instantiate_and_run);
criterion_main!(benches);
