//! The sandbox: loads WebAssembly components and runs them under limits, with
//! nothing reachable that was not granted.
//!
//! Owns the process's one [`wasmtime::Engine`] (pooling allocator, fuel,
//! epoch interruption, deterministic floats), the linker that offers WASI plus
//! `cairn:task/host`, the precompiled-artifact cache, and a map of loaded
//! components with their `InstancePre` so a repeat run only instantiates.
//!
//! Invariants:
//! - Guest code never makes the host panic, hang or grow without bound: every
//!   run has fuel, a deadline (epoch callback inside wasm, host timer around
//!   host calls), a memory cap, an output cap and a log cap.
//! - Every failure of an attempt comes back as a classified [`Failure`];
//!   [`SandboxError`] is reserved for problems of the host (a grant that
//!   cannot be opened, a pool that is full).
//! - A run sees virtual clocks and seeded randomness derived from the
//!   component hash and the input, unless it is granted the real ones.
//! - Precompiled artifacts are verified against their checksum before
//!   `Component::deserialize`; a bad one is discarded and recompiled.
//!
//! This module knows nothing of pipelines, manifests or the CLI.

pub mod determinism;
pub mod failure;
pub mod grants;
pub mod host;
pub mod http;
pub mod http_grant;
pub mod limits;
pub mod pipe;
pub mod scratch;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::store::{ArtifactKey, ArtifactStore, StoreError};
pub use failure::{Failure, FailureClass, TaskErrorKind};
pub use grants::{EngineEnv, GrantError, Grants, Redactor, Resolved, SecretSource};
use grants::{MANAGED_SCRATCH, Scratch};
use host::{CairnTaskPre, MemoryCap, RunState};
pub use host::{Descriptor, Level, LogLine, Observer, Progress, TaskLog};
pub use limits::{ByteSize, Limits};
use pipe::{CappedPipe, WhenFull};
use scratch::ScratchFull;
pub use scratch::ScratchQuota;

/// How often the epoch advances; the granularity of timeouts and of yields
/// back to the async runtime while a task computes.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);
/// A task's own stdout and stderr are logs, capped at this many bytes each.
pub const STDIO_LOG_CAP: usize = 64 << 10;
/// The `cairn:task` interface a task component must export.
pub const TASK_EXPORT: &str = "cairn:task/task@0.1.0";
/// Limits for `describe`, which must be cheap.
const DESCRIBE_LIMITS: Limits = Limits {
    fuel: 1_000_000_000,
    timeout: Duration::from_secs(5),
    memory: ByteSize(64 << 20),
    output: ByteSize(1 << 20),
};

/// What kind of component was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ComponentKind {
    /// Exports `cairn:task/task`: JSON in, JSON out.
    Task,
    /// Exports `wasi:cli/run`: stdin in, stdout out.
    Command,
}

/// Where a loaded component's machine code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CodeSource {
    /// Compiled with Cranelift in this process.
    Compiled,
    /// Loaded from a verified precompiled artifact.
    ArtifactCache,
}

/// A component ready to run: compiled, type-checked against its world and
/// linked (`InstancePre`).
pub struct LoadedComponent {
    pub hash: blake3::Hash,
    pub size: usize,
    pub kind: ComponentKind,
    pub source: CodeSource,
    component: Component,
    entry: Entry,
}

enum Entry {
    Task(CairnTaskPre<RunState>),
    Command(CommandPre<RunState>),
}

impl fmt::Debug for LoadedComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedComponent")
            .field("hash", &self.hash.to_hex())
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a WebAssembly file: it does not start with the `\\0asm` magic bytes")]
    NotWasm,
    #[error(
        "this is a core WebAssembly module, not a component; build it with `cargo build --target wasm32-wasip2`, or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    #[error("not a valid WebAssembly component: {reason}")]
    Invalid { reason: String },
    #[error(
        "the component exports neither `{TASK_EXPORT}` (a Cairn task) nor `wasi:cli/run` (a command); it exports: {exports}. Build tasks with cairn-sdk's `task!` macro"
    )]
    WrongWorld { exports: String },
    #[error(
        "the component's `{TASK_EXPORT}` export does not match the contract this engine speaks: {reason}"
    )]
    ContractMismatch { reason: String },
    #[error("the component imports something Cairn does not provide: {reason}")]
    UnsupportedImport { reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A problem of the host, not of the task.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot set up the sandbox: {0}")]
    Setup(String),
    #[error("cannot create the wasmtime engine: {0}")]
    Engine(String),
}

/// How big to make the pooling allocator.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Component instances that may be alive at once.
    pub max_instances: u32,
    /// Where managed scratch directories are made, one per attempt that
    /// asks for one (`cairn` uses `scratch/` in its store).
    pub scratch_root: PathBuf,
    /// How much one managed scratch directory may hold.
    pub scratch_quota: ScratchQuota,
    /// Resolves the host names of tasks' HTTP requests.
    pub resolver: Arc<dyn http::Resolve>,
}

impl SandboxConfig {
    /// Sized for this machine: four live instances per core, at least eight.
    /// Each slot reserves (but does not commit) 4 GiB of address space.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u32;
        Self {
            max_instances: (cores * 4).clamp(8, 256),
            scratch_root: std::env::temp_dir().join("cairn-scratch"),
            scratch_quota: ScratchQuota::default(),
            resolver: Arc::new(http::SystemResolver),
        }
    }
}

/// The largest component file read (wasmtime's own component size limits
/// apply after this).
pub const MAX_COMPONENT_BYTES: u64 = 512 << 20;

/// One request to run a loaded component.
pub struct RunRequest<'a> {
    /// A task's JSON input document, or a command's stdin.
    pub input: &'a [u8],
    /// A command's arguments (after the program name). Ignored for tasks.
    pub args: &'a [String],
    pub limits: Limits,
    pub grants: &'a Grants,
    /// The values of `grants.secrets`, taken for this attempt
    /// ([`Grants::resolve_secrets`]); a granted name without a value here
    /// is not set at all.
    pub secrets: &'a Resolved,
    /// Receives logs and progress live.
    pub observer: Option<Arc<dyn Observer>>,
    /// In a replay: the HTTP exchanges the recorded attempt had, served in
    /// order instead of the network. `None`: requests go out (if granted).
    pub tape: Option<Arc<[http::Exchange]>>,
}

/// What one attempt did, successful or not.
#[derive(Debug)]
pub struct Attempt<T = Vec<u8>> {
    /// The output bytes, or why there are none.
    pub result: Result<T, Failure>,
    pub fuel_used: u64,
    pub duration: Duration,
    /// Highest total linear memory, in bytes.
    pub peak_memory: u64,
    pub log: TaskLog,
    /// Every HTTP request that got a response, with that response, in the
    /// order sent: what a replay of this attempt serves back.
    pub http: Vec<http::Exchange>,
    /// Every HTTP request the host refused (also in `log`), for the audit log.
    pub http_refused: Vec<String>,
}

/// The error a deadline callback raises once the attempt's time is up.
#[derive(Debug)]
struct DeadlineExceeded;

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("wall-clock deadline exceeded")
    }
}

impl std::error::Error for DeadlineExceeded {}

/// The process's sandbox: one engine, one linker, one artifact cache.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<RunState>,
    artifacts: Arc<dyn ArtifactStore>,
    fingerprint: u64,
    loaded: Mutex<HashMap<blake3::Hash, Arc<LoadedComponent>>>,
    scratch_root: PathBuf,
    scratch_quota: ScratchQuota,
    /// One permit per instance slot of the pooling allocator: an attempt
    /// holds one from before it instantiates until it ends, so a full pool
    /// makes the next attempt wait for a slot instead of failing it.
    slots: Arc<tokio::sync::Semaphore>,
    max_slots: usize,
    resolver: Arc<dyn http::Resolve>,
}

/// One of a sandbox's instance slots, held by an attempt from before it
/// instantiates until it ends (see [`Sandbox::slot`]).
pub struct SandboxSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Sandbox {
    /// Create the engine (and its epoch ticker thread) and the linker.
    pub fn new(
        config: SandboxConfig,
        artifacts: Arc<dyn ArtifactStore>,
    ) -> Result<Self, SandboxError> {
        let (scratch_root, scratch_quota) = (config.scratch_root.clone(), config.scratch_quota);
        let resolver = config.resolver.clone();
        let config_slots = config.max_instances as usize;
        let slots = Arc::new(tokio::sync::Semaphore::new(config_slots));
        let engine = Engine::new(&engine_config(config))
            .map_err(|e| SandboxError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| SandboxError::Engine(format!("{e:#}")))?;
        // Every task may import wasi:http; each request is checked against
        // its step's grants when it is sent (none granted: all refused).
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| SandboxError::Engine(format!("{e:#}")))?;
        host::CairnTask::add_to_linker::<RunState, wasmtime::component::HasSelf<RunState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| SandboxError::Engine(format!("{e:#}")))?;
        let fingerprint = engine_fingerprint(&engine);
        start_epoch_ticker(&engine);
        Ok(Self {
            engine,
            linker,
            artifacts,
            fingerprint,
            loaded: Mutex::new(HashMap::new()),
            scratch_root,
            scratch_quota,
            slots,
            max_slots: config_slots,
            resolver,
        })
    }

    /// One of the sandbox's instance slots, once one is free: what
    /// [`Self::run_in_slot`] needs. A caller that must be able to stop
    /// waiting (a run that drains) waits for it before it says an attempt
    /// started.
    pub async fn slot(&self) -> SandboxSlot {
        SandboxSlot {
            _permit: self
                .slots
                .clone()
                .acquire_owned()
                .await
                .expect("the sandbox never closes its slot semaphore"),
        }
    }

    /// Attempts running in this sandbox now (each holds an instance slot).
    pub fn in_flight(&self) -> usize {
        self.max_slots - self.slots.available_permits()
    }

    /// Load a component from a file.
    pub fn load_file(&self, path: &Path) -> Result<Arc<LoadedComponent>, LoadError> {
        let bytes = crate::files::read_regular(path, MAX_COMPONENT_BYTES).map_err(|source| {
            LoadError::Read {
                path: path.to_owned(),
                source,
            }
        })?;
        self.load(&bytes)
    }

    /// Load a component: from this process's memory, else from a verified
    /// precompiled artifact, else by compiling (and storing the artifact).
    pub fn load(&self, wasm: &[u8]) -> Result<Arc<LoadedComponent>, LoadError> {
        check_header(wasm)?;
        let hash = blake3::hash(wasm);
        if let Some(loaded) = self.lock_loaded().get(&hash) {
            return Ok(loaded.clone());
        }
        let key = ArtifactKey {
            component: hash,
            engine: self.fingerprint,
        };
        let (component, source) = match self.load_artifact(&key) {
            Some(component) => (component, CodeSource::ArtifactCache),
            None => (self.compile(&key, wasm)?, CodeSource::Compiled),
        };
        let (kind, entry) = self.link(&component)?;
        let loaded = Arc::new(LoadedComponent {
            hash,
            size: wasm.len(),
            kind,
            source,
            component,
            entry,
        });
        self.lock_loaded().insert(hash, loaded.clone());
        Ok(loaded)
    }

    fn lock_loaded(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<blake3::Hash, Arc<LoadedComponent>>> {
        // The map holds only finished entries, so a panic elsewhere cannot
        // leave it half-updated.
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn load_artifact(&self, key: &ArtifactKey) -> Option<Component> {
        let payload = match self.artifacts.get(key) {
            Ok(Some(payload)) => payload,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!("discarding precompiled artifact {key}: {e}; recompiling");
                self.forget_artifact(key);
                return None;
            }
        };
        // SAFETY: `deserialize` runs the bytes as native code. They come from
        // our own store and passed their blake3 checksum, so they are exactly
        // what `Component::serialize` produced for this engine fingerprint.
        match unsafe { Component::deserialize(&self.engine, &payload) } {
            Ok(component) => {
                tracing::debug!("loaded precompiled artifact {key}");
                Some(component)
            }
            Err(e) => {
                tracing::warn!("precompiled artifact {key} does not load ({e:#}); recompiling");
                self.forget_artifact(key);
                None
            }
        }
    }

    fn forget_artifact(&self, key: &ArtifactKey) {
        if let Err(e) = self.artifacts.remove(key) {
            tracing::warn!("cannot remove precompiled artifact {key}: {e}");
        }
    }

    fn compile(&self, key: &ArtifactKey, wasm: &[u8]) -> Result<Component, LoadError> {
        let started = Instant::now();
        let component = Component::new(&self.engine, wasm).map_err(|e| LoadError::Invalid {
            reason: format!("{e:#}"),
        })?;
        tracing::info!(
            "compiled component {} in {:?}",
            key.component.to_hex(),
            started.elapsed()
        );
        match component.serialize() {
            Ok(payload) => {
                if let Err(e) = self.artifacts.put(key, &payload) {
                    tracing::warn!(
                        "cannot store precompiled artifact {key}: {e}; the next run compiles again"
                    );
                }
            }
            Err(e) => tracing::warn!("cannot serialize component {key}: {e:#}"),
        }
        Ok(component)
    }

    fn link(&self, component: &Component) -> Result<(ComponentKind, Entry), LoadError> {
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let kind = if exports.iter().any(|e| e.starts_with("cairn:task/task@")) {
            ComponentKind::Task
        } else if exports.iter().any(|e| e.starts_with("wasi:cli/run@0.2")) {
            ComponentKind::Command
        } else {
            let exports = if exports.is_empty() {
                "nothing".to_owned()
            } else {
                exports.join(", ")
            };
            return Err(LoadError::WrongWorld { exports });
        };
        let pre =
            self.linker
                .instantiate_pre(component)
                .map_err(|e| LoadError::UnsupportedImport {
                    reason: format!("{e:#}"),
                })?;
        let entry =
            match kind {
                ComponentKind::Task => Entry::Task(CairnTaskPre::new(pre).map_err(|e| {
                    LoadError::ContractMismatch {
                        reason: format!("{e:#}"),
                    }
                })?),
                ComponentKind::Command => Entry::Command(CommandPre::new(pre).map_err(|e| {
                    LoadError::ContractMismatch {
                        reason: format!("{e:#}"),
                    }
                })?),
            };
        Ok((kind, entry))
    }

    /// Names of the component's imports and exports, for `cairn task inspect`.
    pub fn interface(&self, loaded: &LoadedComponent) -> (Vec<String>, Vec<String>) {
        let ty = loaded.component.component_type();
        let imports = ty
            .imports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let exports = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        (imports, exports)
    }

    /// Ask a task component to describe itself (under small fixed limits).
    pub async fn describe(
        &self,
        loaded: &LoadedComponent,
    ) -> Result<Result<Descriptor, Failure>, SandboxError> {
        let Entry::Task(pre) = &loaded.entry else {
            return Err(SandboxError::Setup(
                "only task components can describe themselves".into(),
            ));
        };
        let grants = Grants::default();
        let request = RunRequest {
            input: b"",
            args: &[],
            limits: DESCRIBE_LIMITS,
            grants: &grants,
            secrets: &Resolved::default(),
            observer: None,
            tape: None,
        };
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("the sandbox never closes its slot semaphore");
        let mut run = self.prepare(loaded, &request, None)?;
        let call = async {
            let task = pre.instantiate_async(&mut run.store).await?;
            task.cairn_task_task().call_describe(&mut run.store).await
        };
        let result = tokio::time::timeout(DESCRIBE_LIMITS.timeout + EPOCH_TICK * 10, call).await;
        let attempt = run.finish(
            result.map(|r| r.map(|d| Ok(Ok(d)))),
            &DESCRIBE_LIMITS,
            loaded.kind,
        );
        Ok(attempt.result)
    }

    /// Run one attempt of a loaded component.
    pub async fn run(
        &self,
        loaded: &LoadedComponent,
        request: RunRequest<'_>,
    ) -> Result<Attempt, SandboxError> {
        // Waiting for a slot is not the task's time: its deadline starts
        // once it has one.
        let slot = self.slot().await;
        self.run_in_slot(slot, loaded, request).await
    }

    /// Run one attempt in a slot taken with [`Self::slot`] (given back when
    /// the attempt ends).
    pub async fn run_in_slot(
        &self,
        _slot: SandboxSlot,
        loaded: &LoadedComponent,
        request: RunRequest<'_>,
    ) -> Result<Attempt, SandboxError> {
        let stdout = match loaded.kind {
            ComponentKind::Task => log_pipe(request.secrets),
            ComponentKind::Command => {
                let cap = usize::try_from(request.limits.output.bytes()).unwrap_or(usize::MAX);
                CappedPipe::new(cap, WhenFull::Refuse)
            }
        };
        let mut run = self.prepare(loaded, &request, Some(stdout.clone()))?;
        // The epoch callback stops a task that computes past its deadline;
        // this outer timer stops one that waits in a host call (e.g. a WASI
        // sleep). A little grace lets the precise in-wasm check win the race.
        let grace = EPOCH_TICK * 10;
        let raw = match &loaded.entry {
            Entry::Task(pre) => {
                let call = async {
                    let task = pre.instantiate_async(&mut run.store).await?;
                    let result = task
                        .cairn_task_task()
                        .call_run(&mut run.store, request.input)
                        .await?;
                    CallResult::Ok(Ok(result))
                };
                tokio::time::timeout(request.limits.timeout + grace, call).await
            }
            Entry::Command(pre) => {
                let call = async {
                    let command = pre.instantiate_async(&mut run.store).await?;
                    let status = command.wasi_cli_run().call_run(&mut run.store).await;
                    CallResult::<Vec<u8>>::Ok(Err(status))
                };
                tokio::time::timeout(request.limits.timeout + grace, call).await
            }
        };
        Ok(run.finish(raw, &request.limits, loaded.kind))
    }

    /// Build the store for one attempt: WASI context with exactly the grants,
    /// virtual clocks and randomness, limits, and the deadline callback.
    fn prepare(
        &self,
        loaded: &LoadedComponent,
        request: &RunRequest<'_>,
        stdout: Option<CappedPipe>,
    ) -> Result<PreparedRun, SandboxError> {
        let stdout = stdout.unwrap_or_else(|| log_pipe(request.secrets));
        let stderr = log_pipe(request.secrets);
        let grants = request.grants;
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(stdout.clone()).stderr(stderr.clone());
        if loaded.kind == ComponentKind::Command {
            wasi.stdin(wasmtime_wasi::p2::pipe::MemoryInputPipe::new(
                request.input.to_vec(),
            ));
            let mut argv = vec![format!("{}.wasm", &loaded.hash.to_hex()[..12])];
            argv.extend(request.args.iter().cloned());
            wasi.args(&argv);
        }
        wasi.envs(&grants.env);
        for (name, value) in &request.secrets.0 {
            // A secret meant only for HTTP headers stays with the host.
            if !grants.header_secrets.contains(name) {
                wasi.env(name, value);
            }
        }
        // Each directory is opened once, checked to be the one the grant
        // (and the policy) named, and preopened through that handle, so a
        // symlink swapped in since planning cannot redirect the task.
        let managed = matches!(grants.scratch, Some(Scratch::Managed));
        for dir in &grants.read_dirs {
            preopen_granted(&mut wasi, dir, &dir.to_string_lossy(), FsPerms::ReadOnly)?;
            if let Some(alias) = relative_alias(grants.guest_cwd(), dir, managed) {
                preopen_granted(&mut wasi, dir, &alias, FsPerms::ReadOnly)?;
            }
        }
        let scratch = match &grants.scratch {
            None => None,
            Some(Scratch::Dir(dir)) => {
                let guest = dir.to_string_lossy();
                preopen_granted(&mut wasi, dir, &guest, FsPerms::ReadWrite)?;
                if let Some(alias) = relative_alias(grants.guest_cwd(), dir, false) {
                    preopen_granted(&mut wasi, dir, &alias, FsPerms::ReadWrite)?;
                }
                wasi.env("CAIRN_SCRATCH", guest.as_ref());
                None
            }
            Some(Scratch::Managed) => {
                let fresh = self.fresh_scratch()?;
                preopen_granted(&mut wasi, fresh.path(), MANAGED_SCRATCH, FsPerms::ReadWrite)?;
                wasi.env("CAIRN_SCRATCH", MANAGED_SCRATCH);
                Some(fresh)
            }
        };
        if let Some(cwd) = grants.guest_cwd() {
            wasi.initial_cwd(cwd.to_string_lossy());
        }
        let seed = run_seed(&loaded.hash, request.input);
        if !grants.wall_clock {
            wasi.wall_clock(determinism::VirtualWallClock::default());
            wasi.monotonic_clock(determinism::VirtualMonotonicClock::default());
        }
        if !grants.random {
            wasi.secure_random(determinism::SeededRng::new(&seed, "secure"));
            wasi.insecure_random(determinism::SeededRng::new(&seed, "insecure"));
            wasi.insecure_random_seed(determinism::insecure_seed(&seed));
        }
        let memory_cap = usize::try_from(request.limits.memory.bytes()).unwrap_or(usize::MAX);
        let started = Instant::now();
        let deadline = started + request.limits.timeout;
        let http_hooks = http::HttpHooks::new(
            &grants.http,
            request.secrets,
            grants.http_limits,
            self.resolver.clone(),
            deadline,
            request.tape.clone(),
        );
        let state = RunState {
            wasi: wasi.build(),
            table: resource_table(),
            memory: MemoryCap::new(memory_cap),
            log: TaskLog::default(),
            observer: request.observer.clone(),
            redactor: request.secrets.redactor(),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            http_hooks,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.memory);
        store
            .set_fuel(request.limits.fuel)
            .map_err(|e| SandboxError::Setup(format!("{e:#}")))?;
        store.set_epoch_deadline(1);
        let mut watched = scratch
            .as_ref()
            .map(|dir| (dir.path().to_owned(), self.scratch_quota, 0u64));
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                return Err(wasmtime::Error::new(DeadlineExceeded));
            }
            if let Some((dir, quota, ticks)) = watched.as_mut() {
                *ticks += 1;
                if *ticks % scratch::CHECK_EVERY == 0 {
                    quota.check(dir).map_err(wasmtime::Error::new)?;
                }
            }
            Ok(UpdateDeadline::Yield(1))
        });
        let scratch = scratch.map(|dir| (dir, self.scratch_quota));
        Ok(PreparedRun {
            store,
            stdout,
            stderr,
            started,
            scratch,
        })
    }

    /// A new, empty directory under the scratch root, private to the
    /// engine's user, removed when the returned value is dropped.
    fn fresh_scratch(&self) -> Result<tempfile::TempDir, SandboxError> {
        let fail = |e: std::io::Error| {
            SandboxError::Setup(format!(
                "cannot make a scratch directory under {}: {e}",
                self.scratch_root.display()
            ))
        };
        std::fs::create_dir_all(&self.scratch_root).map_err(fail)?;
        // Made under the root's real path, so the directory is opened by
        // the path it really has (see `grants::open_granted_dir`).
        let root = self.scratch_root.canonicalize().map_err(fail)?;
        tempfile::Builder::new()
            .prefix("attempt-")
            .tempdir_in(root)
            .map_err(fail)
    }
}

/// Most resources (open files and directories, streams, pollables) one
/// attempt may hold at once. Each open file is a host file descriptor, and
/// descriptors are shared by every attempt in the process: without a cap
/// one guest opening files in its read grant starves its neighbours.
pub const MAX_RESOURCES_PER_ATTEMPT: usize = 1024;

fn resource_table() -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_RESOURCES_PER_ATTEMPT);
    table
}

/// A task's stdout or stderr, kept as logs: [`STDIO_LOG_CAP`] bytes, plus
/// enough to see whole any secret that starts before the cap (see
/// [`grants::Redactor::redact_prefix`]).
fn log_pipe(secrets: &Resolved) -> CappedPipe {
    // The longest masked value is the longest secret (its lines, also
    // masked, are shorter); no need to build a redactor per pipe.
    let longest = secrets.0.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    let margin = longest.saturating_sub(1);
    CappedPipe::new(STDIO_LOG_CAP + margin, WhenFull::Discard)
}

/// Where else a granted `dir` is mounted so that relative paths reach it.
///
/// The task's working directory is the host's (`initial-cwd`), but
/// wasi-libc (what Rust's std and C programs on `wasm32-wasip2` use) starts
/// every program in `/` and resolves `data/notes.txt` as `/data/notes.txt`.
/// So a grant inside the working directory is also mounted at `/` + its
/// path relative to it: `--allow-read data -- data/notes.txt` works as it
/// would on the host. Nothing else becomes reachable: it is the same
/// directory, with the same permissions. A grant outside the working
/// directory, or one that would shadow the managed `/scratch`, gets none.
fn relative_alias(cwd: Option<&Path>, dir: &Path, managed_scratch: bool) -> Option<String> {
    let relative = dir.strip_prefix(cwd?).ok()?;
    let alias = format!("/{}", relative.to_str()?);
    let shadows = |name: &str| alias == name || alias.starts_with(&format!("{name}/"));
    if alias == dir.to_string_lossy() || (managed_scratch && shadows(MANAGED_SCRATCH)) {
        return None;
    }
    Some(alias)
}

/// Open `dir` as [`grants::open_granted_dir`] does and preopen it at `guest`.
fn preopen_granted(
    wasi: &mut WasiCtxBuilder,
    dir: &Path,
    guest: &str,
    perms: FsPerms,
) -> Result<(), SandboxError> {
    let open = grants::open_granted_dir(dir).map_err(|e| SandboxError::Setup(e.to_string()))?;
    wasi.preopened_dir(open.handle_path(), guest, perms)
        .map_err(|e| {
            SandboxError::Setup(format!(
                "cannot open granted directory {}: {e:#}",
                dir.display()
            ))
        })?;
    Ok(())
}

/// What a call produced: for tasks the WIT result, for commands (`Err`) the
/// `wasi:cli/run` status.
type CallResult<T> =
    wasmtime::Result<Result<Result<T, host::TaskError>, wasmtime::Result<Result<(), ()>>>>;
/// A call result, or the host timer's verdict.
type RawResult<T> = Result<CallResult<T>, tokio::time::error::Elapsed>;

struct PreparedRun {
    store: Store<RunState>,
    stdout: CappedPipe,
    stderr: CappedPipe,
    started: Instant,
    /// A managed scratch directory and its quota; removed when the attempt
    /// is over.
    scratch: Option<(tempfile::TempDir, ScratchQuota)>,
}

impl PreparedRun {
    fn finish<T>(mut self, raw: RawResult<T>, limits: &Limits, kind: ComponentKind) -> Attempt<T>
    where
        T: DescribeOrBytes,
    {
        let duration = self.started.elapsed();
        let remaining = self.store.get_fuel().unwrap_or(0);
        let fuel_used = limits.fuel.saturating_sub(remaining);
        // Masked whole, before they are cut into lines: a secret may span lines.
        let redactor = &self.store.data().redactor;
        let text = |pipe: &CappedPipe| redactor.redact_prefix(&pipe.contents(), STDIO_LOG_CAP);
        let stderr_text = text(&self.stderr);
        let stdout_text = (kind == ComponentKind::Task).then(|| text(&self.stdout));
        for line in stdout_text.iter().flat_map(|t| t.lines()) {
            if !line.trim().is_empty() {
                self.store
                    .data_mut()
                    .record_log(Level::Info, format!("stdout: {line}"));
            }
        }
        for line in stderr_text.lines().filter(|l| !l.trim().is_empty()) {
            self.store
                .data_mut()
                .record_log(Level::Warn, format!("stderr: {line}"));
        }
        let result = match raw {
            Err(_elapsed) => Err(Failure::Timeout {
                limit: limits.timeout,
            }),
            Ok(Err(error)) => Err(self.classify_trap(&error, limits, kind, &stderr_text, duration)),
            Ok(Ok(Ok(Ok(value)))) => T::accept(value, limits),
            Ok(Ok(Ok(Err(task_error)))) => Err(task_failure(task_error)),
            Ok(Ok(Err(status))) => self
                .command_result(status, limits, &stderr_text)
                .and_then(T::from_stdout),
        };
        // What the task leaves in its scratch is checked exactly: a burst
        // after the last periodic check cannot pass the quota unseen.
        let result = match (&self.scratch, result) {
            (Some((dir, quota)), Ok(value)) => match quota.check(dir.path()) {
                Ok(()) => Ok(value),
                Err(full) => Err(Failure::Denied { message: full.0 }),
            },
            (_, result) => result,
        };
        // A refused request or an HTTP limit explains a task that then
        // failed, whatever the task made of the error it was handed.
        let http::HttpOutcome {
            fault,
            refused,
            exchanges,
        } = self.store.data().http_hooks.outcome();
        for line in &refused {
            self.store
                .data_mut()
                .record_log(Level::Warn, format!("http: refused {line}"));
        }
        let result = match (result, fault) {
            (
                Err(
                    Failure::Task { .. }
                    | Failure::Trap { .. }
                    | Failure::InvalidOutput { .. }
                    | Failure::Denied { .. },
                ),
                Some(fault),
            ) => Err(match fault {
                http::HttpFault::Denied(message) | http::HttpFault::Replay(message) => {
                    Failure::Denied { message }
                }
                http::HttpFault::Limit(message) => Failure::HttpLimit { message },
            }),
            (result, _) => result,
        };
        let state = self.store.data_mut();
        let result = match result {
            Err(failure) => Err(failure.redact(&state.redactor)),
            other => other,
        };
        Attempt {
            result,
            fuel_used,
            duration,
            peak_memory: state.memory.peak as u64,
            log: std::mem::take(&mut state.log),
            http: exchanges,
            http_refused: refused
                .into_iter()
                .map(|line| failure::printable(state.redactor.redact(line)))
                .collect(),
        }
    }

    fn command_result(
        &self,
        status: wasmtime::Result<Result<(), ()>>,
        limits: &Limits,
        stderr: &str,
    ) -> Result<Vec<u8>, Failure> {
        if self.stdout.overflowed() {
            return Err(Failure::OutputTooLarge {
                limit: limits.output,
                size: ByteSize(limits.output.bytes() + 1),
            });
        }
        let code = match status {
            Ok(Ok(())) => 0,
            Ok(Err(())) => 1,
            Err(e) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                Some(exit) => exit.0,
                None => {
                    return Err(self.classify_trap(
                        &e,
                        limits,
                        ComponentKind::Command,
                        stderr,
                        Duration::ZERO,
                    ));
                }
            },
        };
        if code == 0 {
            return Ok(self.stdout.contents());
        }
        let mut message = format!("the command exited with status {code}");
        if let Some(tail) = tail(stderr) {
            message.push_str(": ");
            message.push_str(&tail);
        }
        Err(Failure::Task {
            kind: TaskErrorKind::Fatal,
            message,
        })
    }

    fn classify_trap(
        &self,
        error: &wasmtime::Error,
        limits: &Limits,
        kind: ComponentKind,
        stderr: &str,
        duration: Duration,
    ) -> Failure {
        let trap = error.downcast_ref::<wasmtime::Trap>();
        if trap == Some(&wasmtime::Trap::OutOfFuel) {
            return Failure::OutOfFuel { limit: limits.fuel };
        }
        if let Some(full) = error.downcast_ref::<ScratchFull>() {
            return Failure::Denied {
                message: full.0.clone(),
            };
        }
        if error.is::<DeadlineExceeded>() || duration >= limits.timeout {
            return Failure::Timeout {
                limit: limits.timeout,
            };
        }
        if let Some(requested) = self.store.data().memory.refused {
            return Failure::MemoryLimit {
                limit: limits.memory,
                requested: ByteSize(requested as u64),
            };
        }
        if kind == ComponentKind::Command && self.stdout.overflowed() {
            return Failure::OutputTooLarge {
                limit: limits.output,
                size: ByteSize(limits.output.bytes() + 1),
            };
        }
        let mut message = match trap {
            Some(wasmtime::Trap::StackOverflow) => {
                "stack overflow (the task recursed too deeply)".to_owned()
            }
            Some(trap) => trap.to_string(),
            None if error.chain().any(|e| {
                e.downcast_ref::<wasmtime::component::ResourceTableError>()
                    .is_some()
            }) =>
            {
                format!(
                    "the task held more than {MAX_RESOURCES_PER_ATTEMPT} resources at once \
                     (open files, directories, streams); close what it no longer needs"
                )
            }
            None => format!("{error:#}"),
        };
        if let Some(tail) = tail(stderr) {
            message.push_str("; the task's last words: ");
            message.push_str(&tail);
        }
        Failure::Trap { message }
    }
}

/// What a successful call returns, and how it is checked before acceptance.
trait DescribeOrBytes: Sized {
    fn accept(self, limits: &Limits) -> Result<Self, Failure>;
    fn from_stdout(stdout: Vec<u8>) -> Result<Self, Failure>;
}

impl DescribeOrBytes for Vec<u8> {
    fn accept(self, limits: &Limits) -> Result<Self, Failure> {
        if self.len() as u64 > limits.output.bytes() {
            return Err(Failure::OutputTooLarge {
                limit: limits.output,
                size: ByteSize(self.len() as u64),
            });
        }
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&self) {
            return Err(Failure::InvalidOutput {
                message: format!("the output is not valid JSON: {e}"),
            });
        }
        Ok(self)
    }
    fn from_stdout(stdout: Vec<u8>) -> Result<Self, Failure> {
        Ok(stdout)
    }
}

impl DescribeOrBytes for Descriptor {
    fn accept(self, _limits: &Limits) -> Result<Self, Failure> {
        Ok(self)
    }
    fn from_stdout(_stdout: Vec<u8>) -> Result<Self, Failure> {
        Err(Failure::InvalidOutput {
            message: "a command component has no description".into(),
        })
    }
}

fn task_failure(error: host::TaskError) -> Failure {
    let kind = match error.kind {
        host::ErrorKind::Denied => {
            return Failure::Denied {
                message: error.message,
            };
        }
        host::ErrorKind::Retryable => TaskErrorKind::Retryable,
        host::ErrorKind::Fatal => TaskErrorKind::Fatal,
        host::ErrorKind::InvalidInput => TaskErrorKind::InvalidInput,
    };
    Failure::Task {
        kind,
        message: error.message,
    }
}

/// The last few lines of a task's stderr (where a Rust panic message lands).
fn tail(stderr: &str) -> Option<String> {
    // Rust's panic hook adds a hint to set RUST_BACKTRACE; a sandboxed task
    // sees no such variable and has no symbols to print, so it only misleads.
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE=1`"))
        .collect();
    if lines.is_empty() {
        return None;
    }
    let mut tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    tail.truncate(tail.floor_char_boundary(512));
    Some(tail)
}

/// The seed of a run's virtual clocks and randomness.
pub fn run_seed(component: &blake3::Hash, input: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key("cairn run seed v1");
    hasher.update(component.as_bytes());
    hasher.update(input);
    *hasher.finalize().as_bytes()
}

fn check_header(wasm: &[u8]) -> Result<(), LoadError> {
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return Err(LoadError::NotWasm);
    }
    // Bytes 4..8: version (2 bytes) and layer (2 bytes); layer 0 is a core
    // module, layer 1 a component.
    match wasm[6..8] {
        [0, 0] => Err(LoadError::CoreModule),
        [1, 0] => Ok(()),
        _ => Err(LoadError::Invalid {
            reason: "unknown binary layer in the header".into(),
        }),
    }
}

fn engine_config(sandbox: SandboxConfig) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.consume_fuel(true);
    config.epoch_interruption(true);
    // Same bits on every machine: canonical NaNs, deterministic relaxed SIMD.
    config.cranelift_nan_canonicalization(true);
    config.relaxed_simd_deterministic(true);
    config.max_wasm_stack(1 << 20);
    config.parallel_compilation(true);

    let slots = sandbox.max_instances;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(slots);
    pool.total_core_instances(slots * 8);
    pool.total_memories(slots * 2);
    pool.total_tables(slots * 8);
    pool.total_stacks(slots);
    pool.max_memories_per_component(2);
    pool.max_core_instances_per_component(16);
    pool.max_tables_per_component(16);
    pool.max_memory_size(Limits::MAX_MEMORY.bytes() as usize);
    pool.table_elements(host::MAX_TABLE_ELEMENTS);
    // A slot handed back is reset with `memset` up to these sizes instead
    // of `madvise` (page faults and cross-CPU TLB flushes on every reuse),
    // and what is still decommitted goes in batches. Measured on the
    // 10 000-step fan-out of `echo` (benches/pipeline.rs): 547 ms as it
    // was, 426 ms with batching alone, 272 ms with keep-resident alone,
    // 257 ms with both. Memory is still zeroed between attempts; the cost is
    // up to 3 MiB per slot that stays resident.
    pool.linear_memory_keep_resident(2 << 20);
    pool.table_keep_resident(1 << 20);
    pool.decommit_batch_size(16);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// A stable u64 of the engine's precompile compatibility hash.
fn engine_fingerprint(engine: &Engine) -> u64 {
    use std::hash::{Hash, Hasher};
    struct Blake3Hasher(blake3::Hasher);
    impl Hasher for Blake3Hasher {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            let hash = self.0.finalize();
            u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 of 32 bytes"))
        }
    }
    let mut hasher = Blake3Hasher(blake3::Hasher::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.finish()
}

/// Advance the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("cairn-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        });
    if let Err(e) = spawned {
        // Without the ticker the deadline callback never runs; the host
        // timer around each call still bounds every attempt.
        tracing::warn!("cannot start the epoch thread ({e}); timeouts fall back to the host timer");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_classified_before_any_parsing() {
        assert!(matches!(
            check_header(b"hello world"),
            Err(LoadError::NotWasm)
        ));
        assert!(matches!(check_header(b"\0asm"), Err(LoadError::NotWasm)));
        assert!(matches!(
            check_header(b"\0asm\x01\0\0\0"),
            Err(LoadError::CoreModule)
        ));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn seeds_depend_on_component_and_input() {
        let (a, b) = (blake3::hash(b"a"), blake3::hash(b"b"));
        assert_eq!(run_seed(&a, b"{}"), run_seed(&a, b"{}"));
        assert_ne!(run_seed(&a, b"{}"), run_seed(&b, b"{}"));
        assert_ne!(run_seed(&a, b"{}"), run_seed(&a, b"[]"));
    }
}
