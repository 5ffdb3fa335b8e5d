//! Sandbox benchmarks: compile (cold) and artifact-cache load of every example
//! component, instantiate + run of a trivial task — through Cairn's sandbox
//! and, as the baseline, through a minimal raw wasmtime embedding — and the
//! compute group: `fibo(33)` under each code-generation setting Cairn turns
//! on, added one at a time, to show what each costs.
//!
//! The compute group measures generated code, which Cranelift emits the same
//! whatever profile the host is built with, so it may be run without a
//! release build: `cargo bench -p cairn-engine --bench sandbox --profile dev
//! -- compute`.
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
                secrets: &Default::default(),
                observer: None,
                tape: None,
            };
            let attempt = sandbox.run(&loaded, request).await.unwrap();
            assert_eq!(attempt.result.as_deref().unwrap(), input);
        })
    });

    let raw = raw::Raw::new(&wasm, raw::Codegen::WASMTIME_DEFAULT);
    group.bench_function("raw-wasmtime/echo", |b| {
        b.to_async(&runtime).iter(|| async {
            let output = raw.run(input).await;
            assert_eq!(output, input);
        })
    });
    group.finish();
}

/// `fibo(33)` (about 7 million calls) with integer and with float adds, under
/// wasmtime's defaults and then with each of Cairn's code-generation settings
/// added in turn, and finally through Cairn's sandbox itself.
fn compute(c: &mut Criterion) {
    use raw::Codegen;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let wasm = guest("fibo");
    let steps = [
        ("wasmtime-default", Codegen::WASMTIME_DEFAULT),
        (
            "+fuel",
            Codegen {
                fuel: true,
                ..Codegen::WASMTIME_DEFAULT
            },
        ),
        (
            "+fuel+epoch",
            Codegen {
                fuel: true,
                epoch: true,
                ..Codegen::WASMTIME_DEFAULT
            },
        ),
        (
            "+fuel+epoch+nan-canonical (Cairn's settings)",
            Codegen::CAIRN,
        ),
        (
            "Cairn's settings at opt-level none",
            Codegen {
                optimize: false,
                ..Codegen::CAIRN
            },
        ),
    ];
    let sandbox = Sandbox::new(SandboxConfig::for_this_machine(), Arc::new(NoArtifacts)).unwrap();
    let loaded = sandbox.load(&wasm).unwrap();
    let grants = Grants::default();

    let mut group = c.benchmark_group("compute");
    group.sample_size(10);
    for (kind, input, expected) in [
        ("u64", &br#"{"n":33}"#[..], &br#"{"value":3524578}"#[..]),
        ("f64", br#"{"n":33,"float":true}"#, br#"{"value":3524578}"#),
    ] {
        for (name, codegen) in steps {
            let raw = raw::Raw::new(&wasm, codegen);
            group.bench_function(format!("fibo-33-{kind}/raw {name}"), |b| {
                b.to_async(&runtime).iter(|| async {
                    assert_eq!(raw.run(input).await, expected);
                })
            });
        }
        group.bench_function(format!("fibo-33-{kind}/cairn-sandbox"), |b| {
            b.to_async(&runtime).iter(|| async {
                let request = RunRequest {
                    input,
                    args: &[],
                    limits: Limits::default(),
                    grants: &grants,
                    secrets: &Default::default(),
                    observer: None,
                    tape: None,
                };
                let attempt = sandbox.run(&loaded, request).await.unwrap();
                assert_eq!(attempt.result.as_deref().unwrap(), expected);
            })
        });
    }
    group.finish();
}

/// The baseline: what a minimal embedding of wasmtime does to run the same
/// component — default config plus async, an empty WASI context, no limits,
/// no pooling, no bookkeeping.
mod raw {
    use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
    use wasmtime::{Config, Engine, OptLevel, Store};
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

    /// The code-generation settings that change what a guest's code costs.
    #[derive(Clone, Copy)]
    pub struct Codegen {
        /// Count fuel at every call and loop back-edge.
        pub fuel: bool,
        /// Check the epoch deadline at every call and loop back-edge.
        pub epoch: bool,
        /// Canonicalize NaNs after float arithmetic (and make relaxed SIMD
        /// deterministic).
        pub nan_canonical: bool,
        /// Cranelift's `speed` optimization level (`none` when false).
        pub optimize: bool,
    }

    impl Codegen {
        pub const WASMTIME_DEFAULT: Self = Self {
            fuel: false,
            epoch: false,
            nan_canonical: false,
            optimize: true,
        };
        /// What `engine_config` in the sandbox turns on.
        pub const CAIRN: Self = Self {
            fuel: true,
            epoch: true,
            nan_canonical: true,
            optimize: true,
        };
    }

    pub struct Raw {
        engine: Engine,
        pre: CairnTaskPre<State>,
        codegen: Codegen,
    }

    impl Raw {
        pub fn new(wasm: &[u8], codegen: Codegen) -> Self {
            let mut config = Config::new();
            config.consume_fuel(codegen.fuel);
            config.epoch_interruption(codegen.epoch);
            config.cranelift_nan_canonicalization(codegen.nan_canonical);
            config.relaxed_simd_deterministic(codegen.nan_canonical);
            config.cranelift_opt_level(if codegen.optimize {
                OptLevel::Speed
            } else {
                OptLevel::None
            });
            let engine = Engine::new(&config).unwrap();
            let component = Component::new(&engine, wasm).unwrap();
            let mut linker = Linker::new(&engine);
            wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
            CairnTask::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s).unwrap();
            let pre = CairnTaskPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
            Self {
                engine,
                pre,
                codegen,
            }
        }

        pub async fn run(&self, input: &[u8]) -> Vec<u8> {
            let state = State {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
            };
            let mut store = Store::new(&self.engine, state);
            if self.codegen.fuel {
                store.set_fuel(u64::MAX).unwrap();
            }
            if self.codegen.epoch {
                // The engine's epoch is never incremented here.
                store.set_epoch_deadline(1);
            }
            let task = self.pre.instantiate_async(&mut store).await.unwrap();
            task.cairn_task_task()
                .call_run(&mut store, input)
                .await
                .unwrap()
                .unwrap()
        }
    }
}

criterion_group!(benches, compile_and_load, instantiate_and_run, compute);
criterion_main!(benches);
