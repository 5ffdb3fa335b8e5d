//! The run service: planning a pipeline under a policy, admitting it,
//! recording it, running it and finishing it — and going on with a recorded
//! run (resume, replay with verification).
//!
//! This is the one copy of a run's lifecycle; `cairn run`, `cairn resume`
//! and `cairn replay` (and later `cairn serve`) call it and only render what
//! it returns. It owns no terminal: it never prints, and everything a caller
//! may want to show comes back as a typed value — an [`RunError`] that says
//! what was wrong and what to do, or [`Warning`]s beside a result.
//!
//! A run goes through three stages, each a type, so a caller cannot skip
//! one: [`Runner::admit`] plans the source and checks it against the policy
//! (nothing is written but audit entries for refusals) and gives an
//! [`Admitted`] run; [`Admitted::record`] writes its record and the journal's
//! `run-started` event durably and gives a [`Started`] run;
//! [`Started::execute`] schedules it and records its end, giving a
//! [`Finished`] run. Invariant: a run whose record says `running` either has
//! a process behind it (its active marker) or was interrupted, and can be
//! resumed from its journal.

pub mod describe;
pub mod detail;
pub mod retention;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::bundle::{Bundle, BundleError};
use crate::manifest::{Manifest, ManifestError};
use crate::model::RunStatus;
use crate::plan::{Plan, PlanErrors, Sources};
use crate::policy::{Denial, Policy};
use crate::sandbox::grants::Scratch;
use crate::sandbox::http::{Exchange, Recorded};
use crate::sandbox::{FailureClass, Sandbox, SandboxConfig, SandboxError, SecretSource};
use crate::schedule::Tapes;
use crate::schedule::{
    self, JournalWriter, Ledger, RunObserver, RunOptions, RunReport, SandboxExecutor, StepStatus,
};
use crate::store::audit::{AuditEntry, AuditLog};
use crate::store::history::{ActiveRun, History};
use crate::store::records::now_ms;
use crate::store::{
    CacheKey, DirArtifactStore, JournalEvent, RunId, RunRecord, SledStore, Store, StoreError,
};

/// The first bytes of a zstd frame, which every bundle starts with.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Why a run could not be started, or a recorded run not found or gone on
/// with. Each message says what was wrong and what to do; none means that
/// anything ran.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    #[error(
        "the path {} is not valid UTF-8, and a run records where its pipeline came from; \
         rename it (or a directory above it) and run it again. Nothing was run",
        path.display()
    )]
    UnencodablePath { path: PathBuf },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{}: {source}", path.display())]
    Bundle { path: PathBuf, source: BundleError },
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The pipeline does not plan; `errors` holds every problem.
    #[error(
        "{} problem{} in {}; nothing was run",
        errors.0.len(),
        if errors.0.len() == 1 { "" } else { "s" },
        path.display()
    )]
    Invalid { path: PathBuf, errors: PlanErrors },
    /// The policy refuses the pipeline; `denials` holds every reason (each
    /// also in the audit log).
    #[error(
        "the policy refuses {pipeline} ({} problem{}); nothing was run",
        denials.len(),
        if denials.len() == 1 { "" } else { "s" }
    )]
    Refused {
        pipeline: String,
        denials: Vec<Denial>,
    },
    /// A resume or replay was given a pipeline other than the run's.
    #[error(transparent)]
    Changed(Box<Changed>),
    #[error(
        "run {run} was admitted under {} as tenant {tenant}; it goes on only under the same \
         policy and tenant (leave out --policy and --tenant to use them)",
        policy.display()
    )]
    PolicyMismatch {
        run: RunId,
        policy: PathBuf,
        tenant: String,
    },
    #[error(
        "run {run} was admitted under {} as tenant {tenant}, which cannot be loaded now: {reason}; \
         nothing was run",
        policy.display()
    )]
    PolicyUnavailable {
        run: RunId,
        policy: PathBuf,
        tenant: String,
        reason: String,
    },
    #[error(
        "there is no Cairn store at {} (nothing has run with it yet); run a pipeline first, \
         or point --store or CAIRN_HOME at the store to read",
        store.display()
    )]
    NoStore { store: PathBuf },
    #[error("no runs yet in the store at {}", store.display())]
    NoRuns { store: PathBuf },
    #[error(
        "no run {run} in the store at {}; see `cairn runs list` (or give --store DIR)",
        store.display()
    )]
    UnknownRun { run: String, store: PathBuf },
    #[error("{0}")]
    BadRunId(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

/// A resume or replay was given a pipeline other than the run's.
#[derive(Debug, thiserror::Error)]
#[error(
    "{what} {} is not the one run {run} started with ({} then, {} now); nothing was run. \
     To run it anyway, pass --allow-changed: the changed pipeline is checked in full \
     against the run's policy (`cairn {verb} {run} --allow-changed`)",
    path.display(), short(then), short(now)
)]
pub struct Changed {
    pub what: &'static str,
    pub verb: &'static str,
    pub path: PathBuf,
    pub run: RunId,
    pub then: String,
    pub now: String,
}

/// Something a caller should show beside a result: nothing failed, but a
/// person would want to know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Warning {
    #[error(
        "{what} {} changed since run {run} started (--allow-changed); steps whose inputs changed will run again",
        path.display()
    )]
    PipelineChanged {
        what: &'static str,
        path: PathBuf,
        run: RunId,
    },
    #[error(
        "{} changed since run {run} was admitted; checking it again under the current rules",
        policy.display()
    )]
    PolicyChanged { policy: PathBuf, run: RunId },
    #[error("cannot write the audit log: {0}")]
    Audit(String),
    #[error("cannot record the end of run {run}: {reason}")]
    EndNotRecorded { run: RunId, reason: String },
}

/// Is `path` a bundle file (rather than a manifest or a directory)?
pub fn is_bundle(path: &Path) -> bool {
    path.is_file()
        && (path.extension().is_some_and(|e| e == "cairn")
            || std::fs::File::open(path)
                .and_then(|mut f| {
                    let mut magic = [0u8; 4];
                    std::io::Read::read_exact(&mut f, &mut magic).map(|()| magic == ZSTD_MAGIC)
                })
                .unwrap_or(false))
}

/// Does `store` hold a Cairn store (anything has run with it)?
pub fn store_exists(store: &Path) -> bool {
    store.join("db").is_dir() || store.join("journal").is_dir()
}

/// The sandbox for a store: its artifact directory layered over the
/// per-user shared artifact cache, its scratch root, and room for at least
/// `jobs` live instances.
pub fn open_sandbox(store: &Path, jobs: u32) -> Result<Sandbox, RunError> {
    let local = DirArtifactStore::open(store.join("artifacts"))?;
    let artifacts: Arc<dyn crate::store::ArtifactStore> =
        match crate::store::artifacts::shared_cache_dir().map(DirArtifactStore::open) {
            Some(Ok(shared)) => Arc::new(crate::store::artifacts::LayeredArtifacts::new(
                local, shared,
            )),
            Some(Err(e)) => {
                tracing::warn!("not using the shared artifact cache: {e}");
                Arc::new(local)
            }
            None => Arc::new(local),
        };
    let mut config = SandboxConfig::for_this_machine();
    config.max_instances = config.max_instances.max(jobs);
    config.scratch_root =
        std::path::absolute(store.join("scratch")).map_err(|source| RunError::Read {
            path: store.to_owned(),
            source,
        })?;
    Ok(Sandbox::new(config, artifacts)?)
}

/// A validated plan and what it came from.
pub struct Planned {
    pub plan: Plan,
    /// The manifest file's blake3 or the bundle id, hex.
    pub source_hash: String,
    /// A bundle's valid signatures; `None` for a manifest or directory.
    pub signatures: Option<Vec<crate::bundle::Signature>>,
}

impl Planned {
    /// `the bundle` or `the manifest`, for messages.
    fn what(&self) -> &'static str {
        if self.signatures.is_some() {
            "the bundle"
        } else {
            "the manifest"
        }
    }
}

/// Load and validate a manifest, a pipeline directory or a bundle. Under a
/// policy, the environment variables and secrets the manifest names are
/// checked before planning reads any of them (a refusal is audited in
/// `audit`); [`check`] then checks the plan in full.
pub async fn plan(
    source: &Path,
    sandbox: &Sandbox,
    policy: Option<&Policy>,
    audit: &AuditLog,
    secrets: Option<&dyn SecretSource>,
) -> Result<Planned, RunError> {
    let screen = |manifest: &Manifest| match policy {
        Some(policy) => refuse(
            policy.check_requests(manifest),
            policy,
            &manifest.name,
            audit,
        ),
        None => Ok(()),
    };
    let planned = if is_bundle(source) {
        let bundle_error = |source_error| RunError::Bundle {
            path: source.to_owned(),
            source: source_error,
        };
        let bundle = Bundle::open(source).map_err(bundle_error)?;
        let manifest = bundle.manifest().map_err(bundle_error)?;
        screen(&manifest)?;
        let shown = source.join(crate::bundle::MANIFEST);
        let grants_base = source.parent().map(Path::to_owned).unwrap_or_default();
        let sources = Sources::Bundle {
            bundle: &bundle,
            grants_base: &grants_base,
            secrets,
        };
        let plan = Plan::build_from(&shown, manifest, sandbox, sources)
            .await
            .map_err(|errors| RunError::Invalid {
                path: source.to_owned(),
                errors,
            })?;
        Planned {
            plan,
            source_hash: bundle.id.to_hex().to_string(),
            signatures: Some(bundle.signatures.clone()),
        }
    } else {
        let (path, manifest) = Manifest::load(source)?;
        screen(&manifest)?;
        // Hashed before planning, so the text is not held beside a big plan.
        let source_hash = crate::files::read_regular(&path, crate::manifest::MAX_MANIFEST_BYTES)
            .map(|bytes| blake3::hash(&bytes).to_hex().to_string())
            .map_err(|source| RunError::Read {
                path: path.clone(),
                source,
            })?;
        let plan = Plan::build_with(&path, manifest, sandbox, secrets)
            .await
            .map_err(|errors| RunError::Invalid {
                path: path.clone(),
                errors,
            })?;
        Planned {
            plan,
            source_hash,
            signatures: None,
        }
    };
    Ok(planned)
}

/// Check a plan in full against the policy (limits, grants, signatures);
/// every refusal is audited in `audit`.
pub fn check(planned: &Planned, policy: Option<&Policy>, audit: &AuditLog) -> Result<(), RunError> {
    match policy {
        Some(policy) => refuse(
            policy.check(&planned.plan, planned.signatures.as_deref()),
            policy,
            &planned.plan.name,
            audit,
        ),
        None => Ok(()),
    }
}

/// Audit what the policy refuses, if anything, and fail.
fn refuse(
    denials: Vec<Denial>,
    policy: &Policy,
    pipeline: &str,
    audit: &AuditLog,
) -> Result<(), RunError> {
    if denials.is_empty() {
        return Ok(());
    }
    let entries: Vec<AuditEntry> = denials
        .iter()
        .map(|d| AuditEntry {
            at_ms: now_ms(),
            run: None,
            tenant: policy.tenant.clone(),
            step: d.step.clone(),
            event: "denied".into(),
            capability: d.capability.clone(),
            detail: format!("{} (pipeline {pipeline})", d.message),
        })
        .collect();
    // A refusal that cannot be audited is still a refusal.
    if let Err(e) = audit.append(&entries) {
        tracing::warn!("cannot write the audit log: {e}");
    }
    Err(RunError::Refused {
        pipeline: pipeline.to_owned(),
        denials,
    })
}

/// A tenant's secrets: what its steps' `secrets` grants are given, instead
/// of the engine's environment.
#[derive(Clone, Default)]
pub struct Secrets {
    /// Whose they are, for messages.
    pub owner: String,
    pub values: BTreeMap<String, String>,
}

impl SecretSource for Secrets {
    fn secret(&self, name: &str) -> Option<String> {
        self.values.get(name).cloned()
    }
    fn missing(&self, _: &str) -> String {
        format!(
            "it is not one of {}'s secrets; the host gives a tenant's secrets to the server",
            self.owner
        )
    }
    fn owner(&self) -> Option<&str> {
        Some(&self.owner)
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: a value never reaches a log line.
        f.debug_struct("Secrets")
            .field("owner", &self.owner)
            .field("names", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What kind of run a [`Launch`] starts.
#[derive(Debug, Clone)]
pub enum Continuation {
    /// A new run.
    Fresh,
    /// Go on with a recorded run, reusing the results its journal has.
    Resume {
        record: RunRecord,
        done: HashSet<CacheKey>,
    },
    /// A new run that executes a recorded one again, every step anew.
    Replay { of: RunRecord },
}

impl Continuation {
    fn earlier(&self) -> Option<&RunRecord> {
        match self {
            Continuation::Fresh => None,
            Continuation::Resume { record, .. } => Some(record),
            Continuation::Replay { of } => Some(of),
        }
    }
}

/// Everything that decides how a run goes: what it runs, under which
/// policy, and how.
#[derive(Debug)]
pub struct Launch {
    /// A manifest, a directory holding `pipeline.toml`, or a bundle.
    pub source: PathBuf,
    pub policy: Option<Policy>,
    /// Most steps running at once (`None`: the scheduler's default).
    pub jobs: Option<u32>,
    pub fail_fast: bool,
    /// Run every step even if its result is cached.
    pub refresh: bool,
    pub continuation: Continuation,
    /// Go on with a resume or replay although the pipeline is not the one
    /// the run started with (it is checked in full against the policy).
    pub allow_changed: bool,
    /// The tenant the run belongs to; `None`: the policy's tenant, if any.
    pub tenant: Option<String>,
    /// Where secrets grants come from (a tenant's [`Secrets`], say);
    /// `None`: the engine's environment. Planning checks each granted
    /// secret is there; its value is read when each unit of work starts.
    pub secrets: Option<Arc<dyn SecretSource>>,
    /// A replay's recorded HTTP exchanges, served instead of the network
    /// (see [`Runner::replay`]); `None`: granted requests go out.
    pub tapes: Option<Arc<Tapes>>,
}

impl Launch {
    /// A new run of `source` with the default options.
    pub fn new(source: impl Into<PathBuf>) -> Self {
        Self {
            source: source.into(),
            policy: None,
            jobs: None,
            fail_fast: false,
            refresh: false,
            continuation: Continuation::Fresh,
            allow_changed: false,
            tenant: None,
            secrets: None,
            tapes: None,
        }
    }
}

/// A recorded run to go on with, and what the caller should hear about it.
#[derive(Debug)]
pub struct Continued {
    pub launch: Launch,
    pub warnings: Vec<Warning>,
}

/// What `resume` finds.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per command; boxing buys nothing
pub enum Resumption {
    /// The run had already succeeded: there is nothing to do.
    AlreadySucceeded(RunRecord),
    Ready(Continued),
}

/// A replay to start, and the original run's output hashes to verify it
/// against.
#[derive(Debug)]
pub struct Replay {
    pub continued: Continued,
    pub original: Original,
}

/// The output hash of every step that succeeded in a recorded run.
#[derive(Debug, Clone, Default)]
pub struct Original(BTreeMap<String, String>);

/// How a replay compared with its original.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Verification {
    /// Steps that succeeded in both runs and were compared.
    pub compared: usize,
    /// Those whose output differs.
    pub mismatches: Vec<Mismatch>,
}

/// A step whose replayed output differs from the original's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Mismatch {
    pub step: String,
    pub original: String,
    pub replay: String,
}

impl Original {
    /// The output hash of every step that succeeded, from a run's journal.
    pub fn of_journal(journal: Vec<JournalEvent>) -> Self {
        Self(
            journal
                .into_iter()
                .filter_map(|e| match e {
                    JournalEvent::StepSucceeded {
                        step, output_hash, ..
                    } => Some((step, output_hash)),
                    _ => None,
                })
                .collect(),
        )
    }

    /// Compare a replay's report with the original run. A step that
    /// succeeded there and failed here is a mismatch too (a networked step
    /// whose request differs from the recorded one fails so).
    pub fn verify(&self, report: &RunReport) -> Verification {
        self.compare(
            report
                .steps
                .iter()
                .filter_map(|s| match (&s.status, &s.output_hash) {
                    (_, Some(hash)) => Some((s.name.as_str(), hash.clone())),
                    (StepStatus::Failed(f), None) => {
                        Some((s.name.as_str(), format!("failed: {}", f.message)))
                    }
                    _ => None,
                }),
        )
    }

    /// Compare a recorded replay (its steps' output hashes, from its
    /// journal) with the original run.
    pub fn verify_recorded(&self, replay: &Original) -> Verification {
        self.compare(replay.0.iter().map(|(s, h)| (s.as_str(), h.clone())))
    }

    fn compare<'s>(&self, replay: impl Iterator<Item = (&'s str, String)>) -> Verification {
        let mut verification = Verification {
            compared: 0,
            mismatches: Vec::new(),
        };
        for (step, after) in replay {
            let Some(before) = self.0.get(step) else {
                continue;
            };
            verification.compared += 1;
            if *before != after {
                verification.mismatches.push(Mismatch {
                    step: step.to_owned(),
                    original: before.clone(),
                    replay: after,
                });
            }
        }
        verification
    }
}

/// The run service over one store: one sandbox and one database shared by
/// every run it starts. Cheap to clone.
#[derive(Clone)]
pub struct Runner {
    store_dir: PathBuf,
    db: Arc<dyn Store>,
    sandbox: Arc<Sandbox>,
    audit: Arc<AuditLog>,
    /// Writes every run's journal and results, one thread for them all.
    writer: Arc<JournalWriter>,
    /// The share of the sandbox this runner's attempts may hold at once.
    share: Option<Arc<tokio::sync::Semaphore>>,
    share_size: usize,
}

impl Runner {
    pub fn new(store_dir: &Path, db: Arc<dyn Store>, sandbox: Arc<Sandbox>) -> Self {
        Self {
            store_dir: store_dir.to_owned(),
            writer: JournalWriter::start(db.clone()),
            db,
            sandbox,
            audit: Arc::new(AuditLog::new(store_dir)),
            share: None,
            share_size: 0,
        }
    }

    /// The same runner, with its attempts limited to `slots` sandboxes in
    /// flight at once across all its runs (a tenant's quota).
    pub fn with_sandbox_share(mut self, slots: usize) -> Self {
        self.share_size = slots.max(1);
        self.share = Some(Arc::new(tokio::sync::Semaphore::new(self.share_size)));
        self
    }

    /// Attempts of this runner's runs in the sandbox now (with a share).
    pub fn sandboxes_in_flight(&self) -> Option<usize> {
        self.share
            .as_ref()
            .map(|s| self.share_size - s.available_permits())
    }

    /// Open the store at `store_dir` (creating it) and a sandbox with room
    /// for at least `jobs` live instances.
    pub fn open(store_dir: &Path, jobs: u32) -> Result<Self, RunError> {
        let sandbox = Arc::new(open_sandbox(store_dir, jobs)?);
        let db: Arc<dyn Store> = Arc::new(SledStore::open(store_dir)?);
        Ok(Self::new(store_dir, db, sandbox))
    }

    /// Open an existing store only (for going on with a recorded run).
    pub fn open_existing(store_dir: &Path, jobs: u32) -> Result<Self, RunError> {
        if !store_exists(store_dir) {
            return Err(RunError::NoStore {
                store: store_dir.to_owned(),
            });
        }
        Self::open(store_dir, jobs)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.db
    }

    /// A run by id, unique id prefix, or `last` (the newest run).
    pub fn find(&self, text: &str) -> Result<RunRecord, RunError> {
        find_run(&*self.db, text, &self.store_dir)
    }

    /// The plan of a recorded run (manifest, directory or bundle), if its
    /// source still loads; for drawing its dependencies, not for running.
    pub async fn replan(&self, record: &RunRecord) -> Option<Plan> {
        replan(record, &self.sandbox).await
    }

    /// How a finished replay compares with the run it replayed: `None` for
    /// a run that is not a replay.
    pub fn verification(&self, replay: &RunRecord) -> Result<Option<Verification>, RunError> {
        let Some(of) = &replay.replay_of else {
            return Ok(None);
        };
        let original = Original::of_journal(self.db.journal(of)?);
        let replayed = Original::of_journal(self.db.journal(&replay.id)?);
        Ok(Some(original.verify_recorded(&replayed)))
    }

    /// Go on with a recorded run: under the policy it was admitted under,
    /// reusing every result its journal has.
    pub fn resume(&self, run: &str, given: Option<Policy>) -> Result<Resumption, RunError> {
        let record = self.find(run)?;
        // Read first: a damaged journal is named even for a finished run.
        let journal = self.db.journal(&record.id)?;
        if record.status == RunStatus::Succeeded {
            return Ok(Resumption::AlreadySucceeded(record));
        }
        let (policy, warnings) = readmission(&record, given)?;
        // Results the run already has: each executed element's own event, and
        // every key a finished step lists (cache hits have no event of their own).
        let done: HashSet<CacheKey> = journal
            .iter()
            .flat_map(|e| match e {
                JournalEvent::ItemSucceeded { key, .. } => vec![key.as_str()],
                JournalEvent::StepSucceeded { keys, .. } => {
                    keys.iter().map(String::as_str).collect()
                }
                _ => Vec::new(),
            })
            .filter_map(CacheKey::from_hex)
            .collect();
        let launch = Launch {
            policy,
            tenant: record.tenant.clone(),
            continuation: Continuation::Resume {
                record: record.clone(),
                done,
            },
            ..Launch::new(record.manifest.clone())
        };
        Ok(Resumption::Ready(Continued { launch, warnings }))
    }

    /// Execute a recorded run again, every step anew, under the policy it
    /// was admitted under.
    pub fn replay(&self, run: &str, given: Option<Policy>) -> Result<Replay, RunError> {
        let record = self.find(run)?;
        let (policy, warnings) = readmission(&record, given)?;
        let journal = self.db.journal(&record.id)?;
        let tapes = self.tapes(&journal)?;
        let original = Original::of_journal(journal);
        let launch = Launch {
            policy,
            tenant: record.tenant.clone(),
            refresh: true,
            tapes: Some(Arc::new(tapes)),
            continuation: Continuation::Replay { of: record.clone() },
            ..Launch::new(record.manifest.clone())
        };
        Ok(Replay {
            continued: Continued { launch, warnings },
            original,
        })
    }

    /// The HTTP exchanges of each unit of work's successful attempt in a
    /// run's journal, their responses read back from the store.
    fn tapes(&self, journal: &[JournalEvent]) -> Result<Tapes, RunError> {
        let mut tapes = Tapes::new();
        for event in journal {
            let JournalEvent::AttemptFinished {
                step,
                index,
                class: None,
                http,
                ..
            } = event
            else {
                continue;
            };
            let mut exchanges = Vec::with_capacity(http.len());
            for record in http {
                let lost = |reason: &str| {
                    RunError::Store(StoreError::Corrupt {
                        path: self.store_dir.join("recorded").join(&record.response),
                        reason: format!(
                            "the recorded response to {} {} (step {step}) {reason}; \
                             replay with --live to use the network instead",
                            record.method, record.url
                        ),
                    })
                };
                let (Some(response), Some(request)) = (
                    blake3::Hash::from_hex(&record.response).ok(),
                    blake3::Hash::from_hex(&record.request).ok(),
                ) else {
                    return Err(lost("is not named by a hash"));
                };
                let bytes = self
                    .db
                    .recording(&response)?
                    .ok_or_else(|| lost("is gone"))?;
                let response = Recorded::decode(&bytes).ok_or_else(|| lost("cannot be read"))?;
                exchanges.push(Exchange {
                    method: record.method.clone(),
                    url: record.url.clone(),
                    request,
                    response,
                });
            }
            tapes.insert((step.clone(), *index), Arc::from(exchanges));
        }
        Ok(tapes)
    }

    /// Plan `launch`'s source and check it against its policy. Nothing is
    /// written but audit entries for what the policy refuses.
    pub async fn admit(&self, launch: Launch) -> Result<Admitted, RunError> {
        // The run's record keeps the path (JSON, so UTF-8) for resume and replay.
        let source = std::path::absolute(&launch.source).unwrap_or_else(|_| launch.source.clone());
        if source.to_str().is_none() {
            return Err(RunError::UnencodablePath { path: source });
        }
        let planned = plan(
            &launch.source,
            &self.sandbox,
            launch.policy.as_ref(),
            &self.audit,
            launch.secrets.as_deref(),
        )
        .await?;
        let mut warnings = Vec::new();
        // A resume or replay runs what the run started with, or, when asked
        // explicitly, a changed pipeline that has just been checked in full.
        if let Some(earlier) = launch.continuation.earlier()
            && earlier.manifest_hash != planned.source_hash
        {
            if !launch.allow_changed {
                return Err(RunError::Changed(Box::new(Changed {
                    what: planned.what(),
                    verb: match launch.continuation {
                        Continuation::Resume { .. } => "resume",
                        _ => "replay",
                    },
                    path: launch.source.clone(),
                    run: earlier.id.clone(),
                    then: earlier.manifest_hash.clone(),
                    now: planned.source_hash.clone(),
                })));
            }
            warnings.push(Warning::PipelineChanged {
                what: planned.what(),
                path: launch.source.clone(),
                run: earlier.id.clone(),
            });
        }
        check(&planned, launch.policy.as_ref(), &self.audit)?;
        let admission = launch.policy.as_ref().map(Policy::admission);
        let tenant = launch
            .tenant
            .clone()
            .or_else(|| launch.policy.as_ref().map(|p| p.tenant.clone()));
        let bundle = planned
            .signatures
            .is_some()
            .then(|| planned.source_hash.clone());
        let plan = Arc::new(planned.plan);
        let (record, done, resumed) = match launch.continuation {
            Continuation::Resume { mut record, done } => {
                record.status = RunStatus::Running;
                record.finished_ms = None;
                record.manifest_hash = planned.source_hash;
                record.admission = admission;
                record.tenant = tenant;
                record.bundle = bundle;
                (record, done, true)
            }
            continuation => (
                RunRecord {
                    id: RunId::new(),
                    pipeline: plan.name.clone(),
                    manifest: source,
                    manifest_hash: planned.source_hash,
                    started_ms: now_ms(),
                    finished_ms: None,
                    status: RunStatus::Running,
                    steps: plan.steps.len(),
                    replay_of: match continuation {
                        Continuation::Replay { of } => Some(of.id),
                        _ => None,
                    },
                    admission,
                    tenant,
                    bundle,
                    tally: None,
                },
                HashSet::new(),
                false,
            ),
        };
        let mut options = RunOptions {
            fail_fast: launch.fail_fast,
            ..RunOptions::default()
        };
        if let Some(jobs) = launch.jobs {
            options.jobs = jobs as usize;
        }
        if let Some(max) = launch.policy.as_ref().and_then(|p| p.max_concurrency) {
            options.jobs = options.jobs.min(max.max(1) as usize);
        }
        Ok(Admitted {
            runner: self.clone(),
            plan,
            record,
            done,
            resumed,
            refresh: launch.refresh,
            tapes: launch.tapes.clone(),
            options,
            tenant: launch
                .tenant
                .clone()
                .or_else(|| launch.policy.as_ref().map(|p| p.tenant.clone()))
                .unwrap_or_else(|| "-".to_owned()),
            secrets: match &launch.secrets {
                Some(secrets) => secrets.clone(),
                None => Arc::new(crate::sandbox::EngineEnv),
            },
            warnings,
        })
    }
}

/// A run that planned and was admitted, not yet recorded.
pub struct Admitted {
    runner: Runner,
    plan: Arc<Plan>,
    record: RunRecord,
    /// Results a resumed run already has.
    done: HashSet<CacheKey>,
    resumed: bool,
    refresh: bool,
    tapes: Option<Arc<Tapes>>,
    options: RunOptions,
    /// For the audit log: the policy's tenant, or `-` without a policy.
    tenant: String,
    /// Where the steps' secrets are read, as each unit of work starts.
    secrets: Arc<dyn SecretSource>,
    warnings: Vec<Warning>,
}

impl Admitted {
    pub fn id(&self) -> &RunId {
        &self.record.id
    }

    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// Is this a resumed run?
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// What the caller should show before the run starts (they are not
    /// repeated later).
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// Record the run and the journal's `run-started` durably, mark it live
    /// and audit its grants. What goes wrong after the record is durable
    /// (the audit log) comes back in [`Finished::warnings`].
    pub fn record(mut self) -> Result<Started, RunError> {
        self.warnings.clear();
        let db = &self.runner.db;
        let started = JournalEvent::RunStarted {
            at_ms: now_ms(),
            pipeline: self.plan.name.clone(),
            manifest: self.record.manifest.clone(),
            manifest_hash: self.record.manifest_hash.clone(),
            resumed: self.resumed,
            steps: Some(self.plan.steps.len()),
            replay_of: self.record.replay_of.clone(),
        };
        db.put_run(&self.record)
            .and_then(|()| db.append(&self.record.id, &started))
            .and_then(|()| db.flush())?;
        // Tells `cairn runs list` in another process that this run is live.
        let active = ActiveRun::mark(&self.runner.store_dir, &self.record.id);
        let entries = grant_entries(&self.plan, &self.tenant, &self.record.id);
        if let Err(e) = self.runner.audit.append(&entries) {
            self.warnings.push(Warning::Audit(e.to_string()));
        }
        Ok(Started {
            admitted: self,
            _active: active,
        })
    }
}

/// A recorded run, ready to execute.
pub struct Started {
    admitted: Admitted,
    _active: ActiveRun,
}

impl Started {
    pub fn record(&self) -> &RunRecord {
        &self.admitted.record
    }

    pub fn plan(&self) -> &Arc<Plan> {
        &self.admitted.plan
    }

    /// Run every step, telling `observer` as they go, until the run ends or
    /// `cancel` completes; then audit denials and record the end.
    pub async fn execute(
        self,
        observer: Arc<dyn RunObserver>,
        cancel: impl Future<Output = ()>,
    ) -> Finished {
        self.execute_draining(observer, std::future::pending(), cancel)
            .await
    }

    /// [`Started::execute`], and once `drain` completes, start nothing
    /// more and let the attempts running then finish (see
    /// [`schedule::run_draining`]): a graceful stop that loses no work.
    pub async fn execute_draining(
        self,
        observer: Arc<dyn RunObserver>,
        drain: impl Future<Output = ()> + Send + 'static,
        cancel: impl Future<Output = ()>,
    ) -> Finished {
        let Started {
            admitted:
                Admitted {
                    runner,
                    plan,
                    mut record,
                    done,
                    refresh,
                    tapes,
                    options,
                    tenant,
                    secrets,
                    warnings,
                    ..
                },
            _active,
        } = self;
        let ledger = Arc::new(Ledger::new(
            &runner.writer,
            record.id.clone(),
            refresh,
            done,
        ));
        let executor = Arc::new(SandboxExecutor {
            sandbox: runner.sandbox.clone(),
            share: runner.share.clone(),
            secrets,
            tapes,
            on_refused: Some({
                let (audit, tenant, run) =
                    (runner.audit.clone(), tenant.clone(), record.id.0.clone());
                Arc::new(move |step: &str, lines: &[String]| {
                    let entries: Vec<AuditEntry> = lines
                        .iter()
                        .map(|line| AuditEntry {
                            at_ms: now_ms(),
                            run: Some(run.clone()),
                            tenant: tenant.clone(),
                            step: Some(step.to_owned()),
                            event: "denied".into(),
                            capability: "http".into(),
                            detail: line.clone(),
                        })
                        .collect();
                    if let Err(e) = audit.append(&entries) {
                        tracing::warn!("cannot audit a refused request of step {step}: {e}");
                    }
                })
            }),
        });
        let report = schedule::run_draining(
            plan,
            executor,
            options,
            observer,
            Some(ledger.clone()),
            drain,
            cancel,
        )
        .await;
        let mut warnings = warnings;
        let denied: Vec<AuditEntry> = report
            .steps
            .iter()
            .filter_map(|step| match &step.status {
                StepStatus::Failed(f) if f.class == FailureClass::Denied.into() => {
                    Some(AuditEntry {
                        at_ms: now_ms(),
                        run: Some(record.id.0.clone()),
                        tenant: tenant.clone(),
                        step: Some(step.name.clone()),
                        event: "denied".into(),
                        capability: "sandbox".into(),
                        detail: f.message.clone(),
                    })
                }
                _ => None,
            })
            .collect();
        if let Err(e) = runner.audit.append(&denied) {
            warnings.push(Warning::Audit(e.to_string()));
        }
        record.status = report.status;
        record.finished_ms = Some(now_ms());
        record.tally = Some(crate::store::records::Tally {
            succeeded: report
                .steps
                .iter()
                .filter(|s| s.status == StepStatus::Succeeded)
                .count(),
            cached: report
                .steps
                .iter()
                .filter(|s| s.source == Some(crate::store::StepSource::Cached))
                .count(),
            failed: report
                .steps
                .iter()
                .filter(|s| matches!(s.status, StepStatus::Failed(_)))
                .count(),
        });
        let finished = JournalEvent::RunFinished {
            at_ms: now_ms(),
            status: report.status,
        };
        // Through the ledger, so it lands after everything the run queued.
        let journalled = ledger.finish_with(finished.clone()).await;
        drop(ledger);
        let db = &runner.db;
        let ended = match journalled {
            Ok(()) => Ok(()),
            // The run's writes broke off (a full disk); the end may still fit.
            Err(_) => db.append(&record.id, &finished),
        };
        if let Err(e) = ended
            .and_then(|()| db.put_run(&record))
            .and_then(|()| db.flush())
            .and_then(|()| db.close_run(&record.id))
        {
            warnings.push(Warning::EndNotRecorded {
                run: record.id.clone(),
                reason: e.to_string(),
            });
        }
        Finished {
            record,
            report,
            warnings,
        }
    }
}

/// The plan of a recorded run, if its source still loads (see
/// [`Runner::replan`]).
pub async fn replan(record: &RunRecord, sandbox: &Sandbox) -> Option<Plan> {
    if is_bundle(&record.manifest) {
        let bundle = Bundle::open(&record.manifest).ok()?;
        let manifest = bundle.manifest().ok()?;
        let shown = record.manifest.join(crate::bundle::MANIFEST);
        let grants_base = record
            .manifest
            .parent()
            .map(Path::to_owned)
            .unwrap_or_default();
        let sources = Sources::Bundle {
            bundle: &bundle,
            grants_base: &grants_base,
            secrets: None,
        };
        return Plan::build_from(&shown, manifest, sandbox, sources)
            .await
            .ok();
    }
    let (path, manifest) = Manifest::load(&record.manifest).ok()?;
    Plan::build(&path, manifest, sandbox).await.ok()
}

/// A run that ended: its final record, its report, and what went wrong
/// around it that the caller should show.
pub struct Finished {
    pub record: RunRecord,
    pub report: RunReport,
    pub warnings: Vec<Warning>,
}

/// A run by id, unique id prefix, or `last` (the newest run), from any
/// history (the store, or its journals while another process holds it).
pub fn find_run<H: History + ?Sized>(
    db: &H,
    text: &str,
    store: &Path,
) -> Result<RunRecord, RunError> {
    if text == "last" {
        return db
            .runs()?
            .into_iter()
            .max_by(|a, b| a.started_ms.cmp(&b.started_ms).then(a.id.cmp(&b.id)))
            .ok_or_else(|| RunError::NoRuns {
                store: store.to_owned(),
            });
    }
    let id = RunId::parse(text).map_err(RunError::BadRunId)?;
    db.run(&id)?.ok_or_else(|| RunError::UnknownRun {
        run: text.to_owned(),
        store: store.to_owned(),
    })
}

/// The policy a recorded run goes on under: the one it was admitted under.
/// A run admitted without a policy may be given one now (that only takes
/// away); a run admitted under one cannot lose it, or move to another
/// policy file or tenant, by how it is resumed.
fn readmission(
    record: &RunRecord,
    given: Option<Policy>,
) -> Result<(Option<Policy>, Vec<Warning>), RunError> {
    let Some(admitted) = &record.admission else {
        return Ok((given, Vec::new()));
    };
    let tenant = admitted.tenant.as_deref().unwrap_or("default").to_owned();
    let policy = match given {
        Some(policy) => {
            if policy.file != admitted.policy || policy.selected != admitted.tenant {
                return Err(RunError::PolicyMismatch {
                    run: record.id.clone(),
                    policy: admitted.policy.clone(),
                    tenant,
                });
            }
            policy
        }
        None => Policy::load(&admitted.policy, admitted.tenant.as_deref()).map_err(|reason| {
            RunError::PolicyUnavailable {
                run: record.id.clone(),
                policy: admitted.policy.clone(),
                tenant,
                reason,
            }
        })?,
    };
    let mut warnings = Vec::new();
    if policy.hash != admitted.policy_hash {
        warnings.push(Warning::PolicyChanged {
            policy: admitted.policy.clone(),
            run: record.id.clone(),
        });
    }
    Ok((Some(policy), warnings))
}

/// Each capability a step is granted, as the audit log names it
/// (`read:/srv/data`, `secret:TOKEN`, `http:https://api.example.com:443`, …).
pub fn capabilities(step: &crate::plan::Step) -> Vec<String> {
    let g = &step.grants;
    let mut caps: Vec<String> = g
        .read_dirs
        .iter()
        .map(|d| format!("read:{}", d.display()))
        .collect();
    caps.extend(g.scratch.iter().map(Scratch::capability));
    caps.extend(g.env.iter().map(|(k, _)| format!("env:{k}")));
    caps.extend(g.secrets.iter().map(|k| format!("secret:{k}")));
    if g.wall_clock {
        caps.push("clock".into());
    }
    if g.random {
        caps.push("random".into());
    }
    caps.extend(g.http.iter().map(|grant| format!("http:{grant}")));
    caps
}

/// One audit entry per capability each step is granted.
fn grant_entries(plan: &Plan, tenant: &str, run: &RunId) -> Vec<AuditEntry> {
    let mut entries = Vec::new();
    for step in &plan.steps {
        entries.extend(capabilities(step).into_iter().map(|capability| AuditEntry {
            at_ms: now_ms(),
            run: Some(run.0.clone()),
            tenant: tenant.to_owned(),
            step: Some(step.name.clone()),
            event: "granted".into(),
            capability,
            detail: format!("pipeline {}", plan.name),
        }));
    }
    entries
}

/// The first 12 hex digits of a hash, for messages.
pub fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}
