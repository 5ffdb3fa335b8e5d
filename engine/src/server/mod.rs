//! `cairn serve`: the run service over HTTP, for many tenants at once.
//!
//! One process, one wasmtime engine and sandbox (a process-wide cap on
//! sandboxes in flight), and per tenant: its own store directory under
//! `DATA/tenants/<name>/` (runs, journals, result cache, bundles, audit
//! log), its policy, its quotas. A handler reaches a tenant's data only
//! through the [`Tenant`] its caller's token names, so it cannot serve
//! another tenant's runs, bundles, results or audit entries by mistake: they
//! are in another store. Unknown and foreign ids answer the same 404.
//!
//! Must never: answer a route without a valid token (but `/healthz`, which
//! says only that the server is up), panic or answer 500 on a client's
//! bytes, buffer an upload past its tenant's cap, or let one tenant's queue
//! hold up another's runs.
//!
//! Layout of the data directory: `admin-token` (0600, the first server-wide
//! admin token, written once), `token-key` and `tokens.json` (0600; keyed
//! hashes only), `policy.toml` (written when the config names no policy),
//! `artifacts/` (compiled components, shared), `audit.jsonl` (server-wide
//! actions), `tenants/<name>/` (a Cairn store, plus `bundles/`).

pub mod api;
pub mod auth;
pub mod config;
pub mod session;
pub mod ui;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, Semaphore, watch};

use crate::policy::Policy;
use crate::runner::describe::{StepFold, StepView};
use crate::runner::retention::Retention;
use crate::runner::{Launch, Resumption, RunError, Runner};
use crate::sandbox::Sandbox;
use crate::schedule::{Event, RunObserver, Silent};
use crate::store::audit::{AuditEntry, AuditLog};
use crate::store::records::now_ms;
use crate::store::{JournalMark, RunId, SledStore, Store, StoreError};

pub use auth::{Caller, Role, Scope, Tokens};
pub use config::{Quotas, ServerConfig};

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("cannot create or read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tokens(#[from] auth::TokenError),
    #[error("tenant {tenant}: {message}")]
    Tenant { tenant: String, message: String },
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// One tenant's corner of the server.
pub struct Tenant {
    pub name: String,
    pub dir: PathBuf,
    pub runner: Runner,
    pub policy: Policy,
    pub quotas: Quotas,
    pub audit: AuditLog,
    /// What the tenant's steps' secrets grants are given (never the
    /// server's environment).
    pub secrets: Arc<crate::runner::Secrets>,
    /// One permit per run executing; the rest wait in line for one.
    slots: Arc<Semaphore>,
    /// Runs waiting for a slot.
    waiting: Arc<AtomicU32>,
    /// Runs of this process not yet ended, by id.
    live: Arc<Mutex<HashMap<RunId, LiveRun>>>,
    /// Woken whenever a run of any tenant ends (shared by all tenants).
    ended: Arc<Notify>,
    /// Set when the server begins to stop: no run starts after it.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// Held while a bundle is checked against the storage quota and stored.
    pub(crate) storing: tokio::sync::Mutex<()>,
    /// One permit per bundle upload being received and checked.
    pub(crate) uploads: Arc<Semaphore>,
    /// Each bundle's steps in dependency order with what each runs after,
    /// by bundle id: bundles never change, so it is worked out once.
    pub(crate) graphs: Mutex<HashMap<String, Arc<Graph>>>,
    /// Recently shown runs' step states, each with how far into the run's
    /// journal it goes: showing a live run again reads only what is new.
    folds: Mutex<Folds>,
    /// Held (shared) while a run is admitted and made live, and
    /// (exclusively) while runs are forgotten: a resume cannot pick up a
    /// run whose journal is being deleted.
    forgetting: tokio::sync::RwLock<()>,
    /// Set once the tenant is being removed: no run starts after it.
    closed: std::sync::atomic::AtomicBool,
}

/// What [`Tenant::forget_runs`] did (or, in a dry run, would do).
#[derive(Debug)]
pub struct Forgotten {
    pub removed: Vec<crate::store::RunRecord>,
    /// Resumable runs old enough, kept.
    pub kept_interrupted: usize,
    /// Journal bytes freed.
    pub freed: u64,
}

/// How many runs' step states a tenant keeps folded (the oldest shown go).
const KEPT_FOLDS: usize = 64;

type Fold = Arc<Mutex<(JournalMark, StepFold)>>;

#[derive(Default)]
struct Folds {
    kept: HashMap<RunId, Fold>,
    /// Oldest first.
    order: std::collections::VecDeque<RunId>,
}

/// A pipeline's steps in dependency order, each with the steps it runs after.
pub type Graph = Vec<(String, Vec<String>)>;

impl Tenant {
    /// Each step's state in a run, from its journal. Blocks on reading it:
    /// call from a blocking thread. Each journal event is read once over
    /// every call for the same run (for the [`KEPT_FOLDS`] runs shown last).
    pub fn step_views(&self, run: &RunId) -> Result<BTreeMap<String, StepView>, StoreError> {
        let fold = {
            let mut folds = self.folds.lock().unwrap_or_else(|e| e.into_inner());
            match folds.kept.get(run) {
                Some(fold) => fold.clone(),
                None => {
                    if folds.order.len() >= KEPT_FOLDS
                        && let Some(oldest) = folds.order.pop_front()
                    {
                        folds.kept.remove(&oldest);
                    }
                    let fold: Fold = Arc::default();
                    folds.kept.insert(run.clone(), fold.clone());
                    folds.order.push_back(run.clone());
                    fold
                }
            }
        };
        let mut fold = fold.lock().unwrap_or_else(|e| e.into_inner());
        let (mark, views) = &mut *fold;
        let (fresh, next) = self.runner.store().journal_after(run, *mark)?;
        views.apply(&fresh);
        *mark = next;
        Ok(views.views().clone())
    }

    /// Forget the runs `retention` selects (never a live one): their
    /// records, journals, kept outputs and reports. The results they made
    /// stay in the cache. With `dry_run`, only say which.
    pub async fn forget_runs(
        self: &Arc<Self>,
        retention: Retention,
        dry_run: bool,
    ) -> Result<Forgotten, StoreError> {
        let _alone = self.forgetting.write().await;
        let tenant = self.clone();
        let forget = move || {
            let runs = tenant.runner.store().runs()?;
            let selection = retention.select(&runs, |run| tenant.is_live(&run.id));
            let removed: Vec<_> = selection.expired.into_iter().cloned().collect();
            let mut freed = 0;
            if !dry_run {
                let ids: Vec<RunId> = removed.iter().map(|r| r.id.clone()).collect();
                freed = tenant.runner.store().remove_runs(&ids)?;
                let mut folds = tenant.folds.lock().unwrap_or_else(|e| e.into_inner());
                for id in &ids {
                    for path in [tenant.output_path(id), tenant.report_path(id)] {
                        match std::fs::remove_file(&path) {
                            Ok(()) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => return Err(StoreError::io(&path, e)),
                        }
                    }
                    folds.kept.remove(id);
                }
                let Folds { kept, order } = &mut *folds;
                order.retain(|id| kept.contains_key(id));
            }
            Ok(Forgotten {
                removed,
                kept_interrupted: selection.kept_interrupted,
                freed,
            })
        };
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(forget)
            .await
            .unwrap_or_else(|e| {
                // Only when the runtime shuts down under it (or a bug panicked).
                Err(StoreError::io(&dir, std::io::Error::other(e.to_string())))
            })
    }

    pub fn bundles_dir(&self) -> PathBuf {
        self.dir.join("bundles")
    }

    /// Where a finished run's pipeline output is kept.
    pub fn output_path(&self, run: &RunId) -> PathBuf {
        self.dir.join("outputs").join(format!("{}.json", run.0))
    }

    /// Where the report of a run's last execution by this server is kept
    /// (without its output, which is kept beside it).
    pub fn report_path(&self, run: &RunId) -> PathBuf {
        self.dir.join("reports").join(format!("{}.json", run.0))
    }

    /// Keep what a run's execution ended with: its output, and its report
    /// (as `cairn run --json` prints it) without the output.
    fn keep_result(&self, run: &RunId, report: &crate::schedule::RunReport) -> std::io::Result<()> {
        match &report.output {
            Some(output) => keep_file(&self.output_path(run), output.get().as_bytes())?,
            // Not an earlier execution's output.
            None => match std::fs::remove_file(self.output_path(run)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            },
        }
        let mut summary = serde_json::to_value(report)?;
        if let Some(fields) = summary.as_object_mut() {
            fields.remove("output");
        }
        keep_file(&self.report_path(run), &serde_json::to_vec(&summary)?)
    }

    /// Is this run being run by this process now?
    pub fn is_live(&self, run: &RunId) -> bool {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(run)
    }

    /// Ask a live run to stop; `false` if it is not live.
    pub fn cancel(&self, run: &RunId) -> bool {
        match self.live.lock().unwrap_or_else(|e| e.into_inner()).get(run) {
            Some(live) => {
                let _ = live.stop.send(Halt::Now);
                true
            }
            None => false,
        }
    }

    /// What wakes when the run (if live) makes progress.
    pub fn changes(&self, run: &RunId) -> Option<Arc<Notify>> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(run)
            .map(|live| live.changed.clone())
    }

    /// Runs waiting for a slot, and runs executing.
    pub fn load(&self) -> (u32, u32) {
        let executing = self
            .quotas
            .runs_in_flight
            .max(1)
            .saturating_sub(self.slots.available_permits() as u32);
        (self.waiting.load(Ordering::Relaxed), executing)
    }

    /// Admit and record `launch`, then run it in the background once the
    /// tenant has a free slot. Returns the run's id as soon as it is
    /// recorded, or [`StartError::Queue`] when the tenant's queue is full.
    pub async fn start(self: &Arc<Self>, launch: Launch) -> Result<RunId, StartError> {
        // A request that was under way when the server began to stop
        // would start a run no drain asked to stop.
        if self.stopping.load(Ordering::Acquire) {
            return Err(StartError::Stopping);
        }
        // Counted before admission, so a burst cannot pass the cap
        // between the check and the increment.
        let waiting = self.waiting.fetch_add(1, Ordering::AcqRel);
        let queued = Queued(self.waiting.clone());
        if waiting >= self.quotas.queued_runs {
            return Err(StartError::Queue {
                limit: self.quotas.queued_runs,
            });
        }
        let _forgetting = self.forgetting.read().await;
        if self.closed.load(Ordering::Acquire) {
            return Err(StartError::Removed);
        }
        let launch = Launch {
            policy: Some(self.policy.clone()),
            tenant: Some(self.name.clone()),
            secrets: Some(self.secrets.clone()),
            ..launch
        };
        let started = self.runner.admit(launch).await?.record()?;
        let id = started.record().id.clone();
        let (stop, stopped) = watch::channel(Halt::Go);
        let changed = Arc::new(Notify::new());
        {
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            // Read under the lock a drain takes to halt the live runs: a
            // run added after that drain passed by is drained from birth.
            if self.stopping.load(Ordering::Acquire) {
                stop.send_replace(Halt::Drain);
            }
            live.insert(
                id.clone(),
                LiveRun {
                    stop,
                    changed: changed.clone(),
                },
            );
        }
        // Taken here when free, so the run has left the queue by the time
        // this answers: the next request sees an exact count.
        let free = self.slots.clone().try_acquire_owned().ok();
        let queued = free.is_none().then_some(queued);
        let tenant = self.clone();
        let run = id.clone();
        tokio::spawn(async move {
            // A queued run that is asked to stop in any way never starts.
            let slot = match free {
                Some(slot) => Some(slot),
                None => tokio::select! {
                    slot = tenant.slots.clone().acquire_owned() => slot.ok(),
                    () = halted(stopped.clone(), Halt::Drain) => None,
                },
            };
            drop(queued);
            let finished = match slot {
                Some(_slot) => {
                    started
                        .execute_draining(
                            Arc::new(Changes(changed.clone())),
                            halted(stopped.clone(), Halt::Drain),
                            halted(stopped, Halt::Now),
                        )
                        .await
                }
                // Cancelled while waiting: ends as cancelled, resumable.
                None => {
                    started
                        .execute(Arc::new(Silent), std::future::ready(()))
                        .await
                }
            };
            for w in &finished.warnings {
                tracing::warn!("tenant {}: run {run}: {w}", tenant.name);
            }
            if let Err(e) = tenant.keep_result(&run, &finished.report) {
                tracing::warn!(
                    "tenant {}: run {run}: cannot keep its output and report: {e}",
                    tenant.name
                );
            }
            tenant
                .live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&run);
            changed.notify_waiters();
            tenant.ended.notify_waiters();
        });
        Ok(id)
    }
}

/// Write `bytes` to `path` whole (through a temporary file and a rename).
fn keep_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// How far a live run has been asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Halt {
    Go,
    /// Start nothing more; let running attempts finish (a graceful stop).
    Drain,
    /// Stop now (cancel).
    Now,
}

/// Completes once the run has been asked to stop at least as far as `at`
/// (or its sender is gone).
async fn halted(mut stop: watch::Receiver<Halt>, at: Halt) {
    let _ = stop.wait_for(|halt| *halt >= at).await;
}

/// A run this process is running.
struct LiveRun {
    /// Raised to stop it.
    stop: watch::Sender<Halt>,
    /// Woken when a step of it has finished durably, and when it ends.
    changed: Arc<Notify>,
}

/// Wakes a run's event streams when a step finishes (steps are announced
/// only once durable, so the journal has it by then).
struct Changes(Arc<Notify>);

impl RunObserver for Changes {
    fn event(&self, event: Event<'_>) {
        if matches!(event, Event::StepFinished { .. }) {
            self.0.notify_waiters();
        }
    }
}

/// Decrements the waiting count when the run leaves the queue (or never
/// got in).
struct Queued(Arc<AtomicU32>);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a run was not started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the tenant's queue is full ({limit} runs waiting); try again when some have started")]
    Queue { limit: u32 },
    #[error("the server is stopping; try again once it is back")]
    Stopping,
    #[error("the tenant is being removed")]
    Removed,
    #[error(transparent)]
    Run(#[from] RunError),
}

/// The tenants a server hosts: those its config declares and those its
/// admins added while it ran (kept in `DATA/tenants.toml`). A tenant added
/// over the API can be removed again (see [`Server::remove_tenant`]); a
/// request that still holds its `Arc<Tenant>` then finds its tokens gone
/// and its data directory removed.
#[derive(Default)]
pub struct Tenants(std::sync::RwLock<BTreeMap<String, Arc<Tenant>>>);

impl Tenants {
    pub fn get(&self, name: &str) -> Option<Arc<Tenant>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Every tenant, by name.
    pub fn all(&self) -> Vec<Arc<Tenant>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    fn remove(&self, name: &str) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    fn insert(&self, tenant: Arc<Tenant>) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenant.name.clone(), tenant);
    }
}

/// Why a tenant could not be added.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AddTenantError {
    #[error("{0:?} is not a tenant name: use 1 to 64 of a-z, 0-9, - and _")]
    Name(String),
    #[error("the server already hosts a tenant {0:?}")]
    Exists(String),
    #[error(
        "an earlier tenant {0:?} (taken out of server.toml) left its data in {1} or its tokens: a new tenant of that name would get them. Put it back in server.toml, or delete that directory and its tokens (`cairn token revoke`), or pick another name"
    )]
    Leftover(String, String),
    #[error(transparent)]
    Server(#[from] ServerError),
}

#[derive(Debug, thiserror::Error)]
pub enum RemoveTenantError {
    #[error("the server hosts no tenant {0:?}")]
    Unknown(String),
    #[error(
        "tenant {0:?} is declared in server.toml: take it out there and restart the server (only tenants added over the API are removed this way)"
    )]
    Configured(String),
    #[error(
        "tenant {0:?}'s runs did not stop within {1} s; it takes no new runs and its tokens are gone: ask again to finish removing it"
    )]
    Busy(String, u64),
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// How long a removal waits for the tenant's cancelled runs to end.
const REMOVAL_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// The file that keeps the tenants added while the server ran.
const ADDED_TENANTS: &str = "tenants.toml";

/// What every tenant's corner is built from.
struct TenantSource {
    data: PathBuf,
    policy_file: PathBuf,
    secrets: BTreeMap<String, PathBuf>,
    sandbox: Arc<Sandbox>,
    ended: Arc<Notify>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

impl TenantSource {
    /// Open (or create) tenant `name`'s store and read its policy and
    /// secrets.
    fn open(&self, name: &str, quotas: Quotas) -> Result<Tenant, ServerError> {
        let fail = |message: String| ServerError::Tenant {
            tenant: name.to_owned(),
            message,
        };
        // Read each time: the policy may have gained a section for a tenant
        // added since the server started.
        let sections = tenant_sections(&self.policy_file)?;
        let selected = sections.iter().any(|s| s == name).then_some(name);
        let policy = Policy::load(&self.policy_file, selected).map_err(fail)?;
        let dir = self.data.join("tenants").join(name);
        std::fs::create_dir_all(dir.join("bundles")).map_err(io(&dir))?;
        let db: Arc<dyn Store> = Arc::new(SledStore::open(&dir).map_err(|e| fail(e.to_string()))?);
        let secrets = match self.secrets.get(name) {
            Some(file) => config::load_secrets(file).map_err(fail)?,
            None => Default::default(),
        };
        Ok(Tenant {
            secrets: Arc::new(crate::runner::Secrets {
                owner: format!("tenant {name}"),
                values: secrets,
            }),
            name: name.to_owned(),
            runner: Runner::new(&dir, db, self.sandbox.clone())
                .with_sandbox_share(quotas.sandboxes_in_flight as usize),
            audit: AuditLog::new(&dir),
            dir,
            policy,
            quotas,
            slots: Arc::new(Semaphore::new(quotas.runs_in_flight.max(1) as usize)),
            waiting: Arc::new(AtomicU32::new(0)),
            live: Arc::new(Mutex::new(HashMap::new())),
            ended: self.ended.clone(),
            stopping: self.stopping.clone(),
            storing: tokio::sync::Mutex::new(()),
            uploads: Arc::new(Semaphore::new(quotas.uploads_in_flight.max(1) as usize)),
            graphs: Mutex::new(HashMap::new()),
            folds: Mutex::new(Folds::default()),
            forgetting: tokio::sync::RwLock::new(()),
            closed: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

/// The server's state, shared by every request.
pub struct Server {
    pub data: PathBuf,
    pub tokens: Tokens,
    pub tenants: Tenants,
    /// Server-wide actions (token management by the server's admins).
    pub audit: AuditLog,
    pub sandbox: Arc<Sandbox>,
    /// The time, in ms since the epoch (a test may set it).
    pub clock: fn() -> u64,
    /// Woken whenever a run ends.
    ended: Arc<Notify>,
    /// Set once [`Server::drain_all`] is called: no run starts after it.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    source: TenantSource,
    /// The tenants added while the server ran (what `tenants.toml` holds);
    /// held while one is added, so two adds cannot race.
    added: Mutex<BTreeMap<String, Quotas>>,
    /// The tenants `server.toml` declares (they cannot be removed over the API).
    configured: std::collections::BTreeSet<String>,
    /// The dashboard's signed-in browsers.
    pub sessions: session::Sessions,
    /// One permit per uploaded bundle being unpacked and planned (its
    /// components compiled), over every tenant: that work is bounded by
    /// the machine, not by how many tenants upload at once.
    pub(crate) checking: Semaphore,
}

/// Bundles unpacked and planned at once, over every tenant.
const CHECKS_AT_ONCE: usize = 2;

/// A running server: its state and the address it listens on.
pub struct Started {
    pub server: Arc<Server>,
    /// The first admin token, when this start created the data directory.
    pub admin_token: Option<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The tenants added while an earlier start of the server ran.
fn read_added(path: &Path) -> Result<BTreeMap<String, Quotas>, ServerError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(io(path)(e)),
    };
    let added: BTreeMap<String, Quotas> =
        toml::from_str(&text).map_err(|e| ServerError::Tenant {
            tenant: "-".into(),
            message: format!(
                "{}: {} (it lists the tenants added over the API; fix or remove it)",
                path.display(),
                e.message()
            ),
        })?;
    if let Some(name) = added.keys().find(|n| !config::valid_tenant(n)) {
        return Err(ServerError::Tenant {
            tenant: name.clone(),
            message: format!("{}: not a tenant name", path.display()),
        });
    }
    Ok(added)
}

impl Server {
    /// Open (or create) the data directory and every tenant's store.
    pub fn open(config: &ServerConfig) -> Result<Started, ServerError> {
        use std::os::unix::fs::DirBuilderExt;
        let data = std::path::absolute(&config.data).map_err(io(&config.data))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&data)
            .map_err(io(&data))?;
        let clock: fn() -> u64 = now_ms;
        let (tokens, first) = Tokens::open(&data, clock())?;
        if let Some(token) = &first {
            auth::write_private(&data.join("admin-token"), format!("{token}\n").as_bytes())?;
        }
        let policy_file = match &config.policy {
            Some(file) => file.clone(),
            None => {
                let file = data.join("policy.toml");
                if !file.exists() {
                    std::fs::write(&file, config::DEFAULT_POLICY).map_err(io(&file))?;
                }
                file
            }
        };
        let sandbox = Arc::new(crate::runner::open_sandbox(&data, 0)?);
        let source = TenantSource {
            data: data.clone(),
            policy_file,
            secrets: config.secrets.clone(),
            sandbox: sandbox.clone(),
            ended: Arc::new(Notify::new()),
            stopping: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        let added = read_added(&data.join(ADDED_TENANTS))?;
        // What a removal cut short by a crash left to delete.
        if let Ok(entries) = std::fs::read_dir(data.join("tenants")) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(".removed-")
                    && let Err(e) = std::fs::remove_dir_all(entry.path())
                {
                    tracing::warn!("cannot delete {}: {e}", entry.path().display());
                }
            }
        }
        let tenants = Tenants::default();
        // The config's quotas win over an added tenant's of the same name.
        for (name, quotas) in added.iter().chain(&config.tenants) {
            tenants.insert(Arc::new(source.open(name, *quotas)?));
        }
        let sessions = session::Sessions::open(&data);
        let server = Arc::new(Server {
            ended: source.ended.clone(),
            stopping: source.stopping.clone(),
            audit: AuditLog::new(&data),
            data,
            tokens,
            tenants,
            sandbox,
            clock,
            source,
            added: Mutex::new(added),
            configured: config.tenants.keys().cloned().collect(),
            sessions,
            checking: Semaphore::new(CHECKS_AT_ONCE),
        });
        Ok(Started {
            server,
            admin_token: first,
        })
    }

    /// Host a new tenant from now on, and on every later start (it is kept
    /// in `DATA/tenants.toml`). Its policy is the policy file's
    /// `[tenants.NAME]` section if it has one, else `[default]`.
    pub fn add_tenant(&self, name: &str, quotas: Quotas) -> Result<Arc<Tenant>, AddTenantError> {
        if !config::valid_tenant(name) {
            // Cut: the name is the client's and goes into the audit log.
            let shown: String = name.chars().take(80).collect();
            return Err(AddTenantError::Name(shown));
        }
        let mut added = self.added.lock().unwrap_or_else(|e| e.into_inner());
        if self.tenants.get(name).is_some() {
            return Err(AddTenantError::Exists(name.to_owned()));
        }
        // A tenant no longer hosted (taken out of server.toml) may have
        // left its runs and tokens: they are not a new tenant's to inherit.
        let dir = self.data.join("tenants").join(name);
        let tokens = self.tokens.list(Some(name)).iter().any(|t| !t.revoked);
        if dir.exists() || tokens {
            return Err(AddTenantError::Leftover(
                name.to_owned(),
                dir.display().to_string(),
            ));
        }
        let tenant = Arc::new(self.source.open(name, quotas)?);
        let mut next = added.clone();
        next.insert(name.to_owned(), quotas);
        self.keep_added(name, &next)?;
        *added = next;
        self.tenants.insert(tenant.clone());
        Ok(tenant)
    }

    /// Write `DATA/tenants.toml` (called holding `added`).
    fn keep_added(&self, name: &str, added: &BTreeMap<String, Quotas>) -> Result<(), ServerError> {
        let path = self.data.join(ADDED_TENANTS);
        let text = format!(
            "# Tenants added over the API (POST /v1/tenants), with their quotas.\n\
             # Read on every start; a tenant of the same name in server.toml wins.\n\n{}",
            toml::to_string(added).map_err(|e| ServerError::Tenant {
                tenant: name.to_owned(),
                message: e.to_string(),
            })?
        );
        auth::write_private(&path, text.as_bytes()).map_err(ServerError::from)
    }

    /// Stop hosting a tenant added over the API, and delete all it had:
    /// its tokens go first (so its sessions die too), then its live and
    /// queued runs are cancelled and waited for, then it leaves
    /// `tenants.toml` and its data directory is deleted (runs, journals,
    /// results, bundles, outputs, its audit log). A tenant added again
    /// under the same name starts empty.
    pub async fn remove_tenant(&self, name: &str) -> Result<(), RemoveTenantError> {
        if self.configured.contains(name) {
            return Err(RemoveTenantError::Configured(name.to_owned()));
        }
        let Some(tenant) = self.tenants.get(name) else {
            return Err(RemoveTenantError::Unknown(name.to_owned()));
        };
        tenant.closed.store(true, Ordering::Release);
        self.tokens.remove_tenant(name).map_err(ServerError::from)?;
        // A run being admitted now finishes making itself live (and is
        // cancelled below); none starts after this.
        let _alone = tenant.forgetting.write().await;
        let deadline = tokio::time::Instant::now() + REMOVAL_PATIENCE;
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            {
                let live = tenant.live.lock().unwrap_or_else(|e| e.into_inner());
                if live.is_empty() {
                    break;
                }
                for run in live.values() {
                    run.stop.send_replace(Halt::Now);
                }
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err()
                && !tenant
                    .live
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty()
            {
                return Err(RemoveTenantError::Busy(
                    name.to_owned(),
                    REMOVAL_PATIENCE.as_secs(),
                ));
            }
        }
        {
            let mut added = self.added.lock().unwrap_or_else(|e| e.into_inner());
            let mut next = added.clone();
            next.remove(name);
            self.keep_added(name, &next)?;
            *added = next;
            self.tenants.remove(name);
        }
        // Out of the way at once (a tenant of the same name may be added
        // next), then deleted; what a crash leaves is deleted on start.
        let graveyard = self
            .data
            .join("tenants")
            .join(format!(".removed-{name}-{:016x}", rand::random::<u64>()));
        std::fs::rename(&tenant.dir, &graveyard).map_err(io(&tenant.dir))?;
        tokio::task::spawn_blocking(move || {
            if let Err(e) = std::fs::remove_dir_all(&graveyard) {
                tracing::warn!("cannot delete {}: {e}", graveyard.display());
            }
        });
        Ok(())
    }

    /// Forget each tenant's runs older than its `keep_runs` (resumable
    /// runs stay, as with `cairn runs gc`). Returns how many were forgotten.
    pub async fn apply_retention(&self) -> usize {
        let mut forgotten = 0;
        for tenant in self.tenants.all() {
            let Some(keep) = tenant.quotas.keep_runs else {
                continue;
            };
            let retention = Retention {
                now_ms: (self.clock)(),
                older_than: keep.0,
                include_interrupted: false,
            };
            match tenant.forget_runs(retention, false).await {
                Ok(gone) if !gone.removed.is_empty() => {
                    tracing::info!(
                        "tenant {}: forgot {} runs that ended over {keep} ago",
                        tenant.name,
                        gone.removed.len()
                    );
                    forgotten += gone.removed.len();
                }
                Ok(_) => {}
                Err(e) => tracing::error!("tenant {}: cannot forget old runs: {e}", tenant.name),
            }
        }
        forgotten
    }

    /// Go on with every run that was running when the server stopped (a
    /// crash, a kill): each resumes from its journal, re-running nothing
    /// that finished. Returns how many were resumed.
    pub async fn resume_interrupted(&self) -> usize {
        let mut resumed = 0;
        for tenant in self.tenants.all() {
            let runs = match tenant.runner.store().runs() {
                Ok(runs) => runs,
                Err(e) => {
                    tracing::error!("tenant {}: cannot list runs: {e}", tenant.name);
                    continue;
                }
            };
            for run in runs
                .iter()
                .filter(|r| r.status == crate::model::RunStatus::Running)
            {
                let launch = match tenant.runner.resume(&run.id.0, Some(tenant.policy.clone())) {
                    Ok(Resumption::Ready(continued)) => continued.launch,
                    Ok(Resumption::AlreadySucceeded(_)) => continue,
                    Err(e) => {
                        tracing::error!(
                            "tenant {}: cannot resume run {}: {e}",
                            tenant.name,
                            run.id
                        );
                        continue;
                    }
                };
                match tenant.start(launch).await {
                    Ok(_) => resumed += 1,
                    Err(e) => {
                        tracing::error!("tenant {}: cannot resume run {}: {e}", tenant.name, run.id)
                    }
                }
            }
        }
        resumed
    }

    /// Ask every live run to stop now (they end cancelled, resumable).
    pub fn cancel_all(&self) {
        self.halt_all(Halt::Now);
    }

    /// Ask every live run to start nothing more and let its running
    /// attempts finish; each then ends cancelled (resumable), unless it
    /// had nothing left to do.
    pub fn drain_all(&self) {
        self.stopping.store(true, Ordering::Release);
        self.halt_all(Halt::Drain);
    }

    fn halt_all(&self, halt: Halt) {
        for tenant in self.tenants.all() {
            for live in tenant
                .live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
            {
                // Never lowered: a drain does not undo a cancel.
                live.stop.send_if_modified(|now| {
                    let raise = halt > *now;
                    if raise {
                        *now = halt;
                    }
                    raise
                });
            }
        }
    }

    /// Wait until no run is live, or until `deadline`; `true` if none is.
    pub async fn wait_idle(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            // Armed before the count is read, so an end between the two
            // still wakes this.
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.live_runs() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return self.live_runs() == 0;
            }
        }
    }

    /// Runs of any tenant still live in this process.
    pub fn live_runs(&self) -> usize {
        self.tenants
            .all()
            .iter()
            .map(|t| t.live.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Record an API action in the tenant's audit log (the server's for
    /// server-wide actions).
    pub fn audit(
        &self,
        tenant: Option<&Tenant>,
        caller: &Caller,
        action: &str,
        target: &str,
        outcome: &str,
    ) {
        // An action on a run names it, so `cairn audit --run` finds it.
        let is_run = target.len() == 16 && target.bytes().all(|b| b.is_ascii_hexdigit());
        let entry = AuditEntry {
            at_ms: (self.clock)(),
            run: is_run.then(|| target.to_owned()),
            tenant: tenant.map_or("-".to_owned(), |t| t.name.clone()),
            step: None,
            event: "api".into(),
            capability: action.to_owned(),
            detail: format!(
                "token {} ({}) target {target}: {outcome}",
                caller.token_id,
                caller.role.as_str()
            ),
        };
        let log = tenant.map_or(&self.audit, |t| &t.audit);
        if let Err(e) = log.append(std::slice::from_ref(&entry)) {
            tracing::error!("cannot write the audit log: {e}");
        }
    }
}

/// The `[tenants.NAME]` sections a policy file has.
fn tenant_sections(file: &Path) -> Result<Vec<String>, ServerError> {
    let text = std::fs::read_to_string(file).map_err(io(file))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ServerError::Tenant {
            tenant: "-".into(),
            message: format!("{}: {}", file.display(), e.message()),
        })?;
    Ok(table
        .get("tenants")
        .and_then(|t| t.as_table())
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default())
}

/// How long runs that are still live when the grace period ends get to
/// record their end once cancelled.
const CANCEL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serve `server` on `listener` until `shutdown` completes; then stop
/// accepting and drain: live runs start nothing more and their running
/// attempts finish and are recorded, for up to `grace`. Runs still live
/// then are cancelled (their attempts stopped). Either way they end
/// cancelled and resumable, having lost no finished work.
pub async fn serve(
    server: Arc<Server>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: std::time::Duration,
) -> Result<(), std::io::Error> {
    use axum::serve::ListenerExt;
    let app = api::router(server.clone());
    // Small answers go out at once: with Nagle's algorithm against the
    // client's delayed ACK, each would wait ~40 ms.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
    });
    // Runs drain as soon as the signal comes, not once connections close:
    // a client following a live run's events holds its connection open
    // until the run ends, so the grace period is counted from the signal.
    let stopping = server.clone();
    let signalled = Arc::new(std::sync::OnceLock::new());
    let signal = signalled.clone();
    let shutdown = async move {
        shutdown.await;
        let deadline = *signal.get_or_init(|| tokio::time::Instant::now() + grace);
        stopping.drain_all();
        let draining = stopping.clone();
        tokio::spawn(async move {
            let drained = draining.wait_idle(deadline).await;
            if !drained {
                tracing::warn!(
                    "{} run(s) still running after the {} grace period: cancelling them",
                    draining.live_runs(),
                    humantime::format_duration(grace)
                );
                draining.cancel_all();
            }
        });
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    // Every connection has closed; runs may still be draining (no one
    // follows them), or be cancelled by now and recording their end.
    let deadline = *signalled.get_or_init(|| tokio::time::Instant::now() + grace);
    if !server.wait_idle(deadline).await {
        server.cancel_all();
    }
    server.wait_idle(deadline + CANCEL_WAIT).await;
    Ok(())
}
