//! The values the store keeps: cache keys, results, journal events, runs.

use std::fmt;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use crate::model::{FailureClass, LogLevel, RunStatus, StepFailureClass};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The blake3 key of one result: everything that can change a step's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(pub blake3::Hash);

impl CacheKey {
    pub fn to_hex(&self) -> String {
        self.0.to_hex().to_string()
    }

    pub fn from_hex(hex: &str) -> Option<Self> {
        blake3::Hash::from_hex(hex).ok().map(CacheKey)
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_hex())
    }
}

/// A run's identifier: 12 hex digits of milliseconds since the epoch, then 4
/// random ones, so ids sort by start time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RunId(pub String);

impl RunId {
    pub fn new() -> Self {
        RunId(format!("{:012x}{:04x}", now_ms(), rand::random::<u16>()))
    }

    /// Accept what a user typed: the full id or a unique prefix is resolved
    /// by the store; this only checks the characters.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.len() > 16 || !text.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "{text:?} is not a run id (16 hex digits, as shown by `cairn runs list`)"
            ));
        }
        Ok(RunId(text.to_ascii_lowercase()))
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the store knows about a result besides its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultMeta {
    /// blake3 of the output bytes.
    pub output_hash: blake3::Hash,
    pub size: u64,
    /// blake3 of the component.
    pub component: blake3::Hash,
    /// blake3 of the canonical input bytes.
    pub input_hash: blake3::Hash,
    pub fuel: u64,
    pub duration_us: u64,
    pub created_ms: u64,
}

/// One event of a run's append-only journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum JournalEvent {
    RunStarted {
        at_ms: u64,
        pipeline: String,
        manifest: PathBuf,
        manifest_hash: String,
        resumed: bool,
        /// Steps in the plan (journals written before it was recorded: none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        steps: Option<usize>,
        /// The run this one replays.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replay_of: Option<RunId>,
    },
    StepScheduled {
        at_ms: u64,
        step: String,
        /// A mapped step's element count (`None` for a plain step, and in
        /// journals written before it was recorded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        items: Option<usize>,
    },
    AttemptStarted {
        at_ms: u64,
        step: String,
        index: Option<usize>,
        attempt: u32,
    },
    AttemptFinished {
        at_ms: u64,
        step: String,
        index: Option<usize>,
        attempt: u32,
        /// `None` on success, else the failure class.
        class: Option<FailureClass>,
        message: Option<String>,
        fuel: u64,
        duration_us: u64,
        /// Highest total linear memory, in bytes (journals before it: 0).
        #[serde(default)]
        peak_memory: u64,
        logs: Vec<LoggedLine>,
        /// The HTTP requests the attempt sent that got a response, in order,
        /// each with its response kept in the store: what a replay serves.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        http: Vec<HttpRecord>,
        /// A failed attempt that will be tried again: after how long
        /// (`None`: it was the last, or it succeeded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_in_ms: Option<u64>,
    },
    /// One element of a mapped step (or a whole step) has its result stored.
    ItemSucceeded {
        at_ms: u64,
        step: String,
        index: Option<usize>,
        key: String,
        output_hash: String,
        cached: bool,
    },
    StepSucceeded {
        at_ms: u64,
        step: String,
        keys: Vec<String>,
        output_hash: String,
        source: StepSource,
    },
    StepFailed {
        at_ms: u64,
        step: String,
        class: Option<StepFailureClass>,
        message: String,
    },
    StepSkipped {
        at_ms: u64,
        step: String,
        reason: String,
    },
    StepCancelled {
        at_ms: u64,
        step: String,
    },
    RunFinished {
        at_ms: u64,
        status: RunStatus,
    },
}

/// One HTTP request of an attempt, as its journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRecord {
    pub method: String,
    /// The URL as sent, the run's secrets masked.
    pub url: String,
    /// blake3 (hex) over the method, URL, headers and body as sent.
    pub request: String,
    pub status: u16,
    /// blake3 (hex) of the recorded response in the store.
    pub response: String,
}

/// A task's log line as kept in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedLine {
    pub level: LogLevel,
    pub message: String,
}

/// Where a succeeded step's output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepSource {
    /// Ran in the sandbox (at least one element).
    Executed,
    /// Every element came from the result cache.
    Cached,
    /// Taken from the journal of the run being resumed.
    Journal,
}

/// A run as listed by `cairn runs list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: RunId,
    pub pipeline: String,
    pub manifest: PathBuf,
    pub manifest_hash: String,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    /// `running` until the run ends; a run still `running` with no process
    /// behind it was interrupted and can be resumed.
    pub status: RunStatus,
    pub steps: usize,
    /// The run this one replays, for `cairn replay`.
    pub replay_of: Option<RunId>,
    /// The policy the run was admitted under; `None` when it ran without
    /// one. Resume and replay re-admit under the same policy and tenant.
    #[serde(default)]
    pub admission: Option<Admission>,
    /// The tenant the run belongs to (`None`: the single-user store's
    /// runs, before tenants).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The bundle the run came from, by content hash (its id), when it came
    /// from one; with it a host can resume the run from its own copy of the
    /// bundle rather than from a path on the machine that started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
    /// How its steps ended, counted when the run ended (`None` before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tally: Option<Tally>,
}

/// How a finished run's steps ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Tally {
    /// Steps that succeeded (the cached ones too).
    pub succeeded: usize,
    /// Of those, steps answered wholly from the cache.
    pub cached: usize,
    pub failed: usize,
}

/// The policy and tenant a run was admitted under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    /// The policy file, absolute.
    pub policy: PathBuf,
    /// blake3 of the policy file's bytes when the run was admitted.
    pub policy_hash: String,
    /// The `[tenants.NAME]` the run was admitted as; `None`: `[default]`.
    pub tenant: Option<String>,
}
