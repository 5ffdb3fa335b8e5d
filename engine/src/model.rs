//! The vocabulary every layer shares: how a run stands, why an attempt
//! failed, how loud a task's log line is.
//!
//! This module is at the bottom: it imports nothing of Cairn's, and any
//! module may use it, so the store records these as typed values rather
//! than strings and a lower layer never reaches up for a type. The serde
//! names are the words the journal, `--json` and the CLI use; they are part
//! of the store's format, so a variant is never renamed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    /// Started and not ended. A run still `running` with no process behind
    /// it was interrupted and can be resumed.
    Running,
    Succeeded,
    Failed,
    /// Stopped on request (Ctrl-C, SIGTERM, a cancel); resumable.
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The coarse class of an attempt's failure: what retry policies, exit codes
/// and journal events are keyed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureClass {
    TaskRetryable,
    TaskFatal,
    OutOfFuel,
    Timeout,
    MemoryLimit,
    Trap,
    Denied,
    OutputTooLarge,
    InvalidOutput,
    HttpLimit,
}

impl FailureClass {
    pub const ALL: [FailureClass; 10] = [
        Self::TaskRetryable,
        Self::TaskFatal,
        Self::OutOfFuel,
        Self::Timeout,
        Self::MemoryLimit,
        Self::Trap,
        Self::Denied,
        Self::OutputTooLarge,
        Self::InvalidOutput,
        Self::HttpLimit,
    ];

    /// The `cairn` process exit code for an attempt that ended in this class.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::TaskFatal => 10,
            Self::TaskRetryable => 11,
            Self::OutOfFuel => 12,
            Self::Timeout => 13,
            Self::MemoryLimit => 14,
            Self::Trap => 15,
            Self::Denied => 16,
            Self::OutputTooLarge => 17,
            Self::InvalidOutput => 18,
            Self::HttpLimit => 19,
        }
    }

    /// One line for `cairn --help`'s exit-code table.
    pub fn describe(self) -> &'static str {
        match self {
            Self::TaskRetryable => "the task failed with a retryable error",
            Self::TaskFatal => "the task failed with a fatal error (or rejected its input)",
            Self::OutOfFuel => "the task ran out of fuel (--fuel)",
            Self::Timeout => "the task ran past its deadline (--timeout)",
            Self::MemoryLimit => "the task hit its memory cap (--memory)",
            Self::Trap => "the task trapped (panic, unreachable, stack overflow)",
            Self::Denied => "the task was denied a capability it was not granted",
            Self::OutputTooLarge => "the output exceeded its cap (--output-limit)",
            Self::InvalidOutput => "the task returned output that is not valid JSON",
            Self::HttpLimit => {
                "the task's HTTP hit a limit (requests, bytes, or a server too slow to answer)"
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TaskRetryable => "task-retryable",
            Self::TaskFatal => "task-fatal",
            Self::OutOfFuel => "out-of-fuel",
            Self::Timeout => "timeout",
            Self::MemoryLimit => "memory-limit",
            Self::Trap => "trap",
            Self::Denied => "denied",
            Self::OutputTooLarge => "output-too-large",
            Self::InvalidOutput => "invalid-output",
            Self::HttpLimit => "http-limit",
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FailureClass {
    type Err = UnknownWord;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|class| class.as_str() == text)
            .ok_or_else(|| UnknownWord(text.to_owned()))
    }
}

/// Why a step failed, as its journal records it: an attempt's class, or a
/// failure outside any attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StepFailureClass {
    /// An attempt in the sandbox failed so.
    Attempt(FailureClass),
    /// No attempt could start or finish for a reason of Cairn's.
    Engine(EngineFailure),
}

impl fmt::Display for StepFailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Attempt(class) => class.fmt(f),
            Self::Engine(engine) => engine.fmt(f),
        }
    }
}

impl StepFailureClass {
    /// The attempt's class, if an attempt failed.
    pub fn attempt(self) -> Option<FailureClass> {
        match self {
            Self::Attempt(class) => Some(class),
            Self::Engine(_) => None,
        }
    }
}

impl From<FailureClass> for StepFailureClass {
    fn from(class: FailureClass) -> Self {
        Self::Attempt(class)
    }
}

/// A step's failure that is not its task's doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineFailure {
    /// The step's input could not be built (a bad reference, a template
    /// that does not render, input over its cap) before the sandbox.
    Input,
    /// Cairn itself failed: a unit of work panicked, or the step's result
    /// could not be made durable.
    Engine,
}

impl fmt::Display for EngineFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Input => "input",
            Self::Engine => "engine",
        })
    }
}

/// How loud a task's log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that names none of an enum's variants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown word {0:?}")]
pub struct UnknownWord(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_names_are_the_words_the_store_has_always_used() {
        let json = |v: &dyn erased::Ser| v.json();
        assert_eq!(json(&RunStatus::Running), "\"running\"");
        assert_eq!(json(&RunStatus::Cancelled), "\"cancelled\"");
        assert_eq!(json(&FailureClass::OutOfFuel), "\"out-of-fuel\"");
        assert_eq!(
            json(&StepFailureClass::Attempt(FailureClass::Trap)),
            "\"trap\""
        );
        assert_eq!(
            json(&StepFailureClass::Engine(EngineFailure::Input)),
            "\"input\""
        );
        assert_eq!(json(&LogLevel::Warn), "\"warn\"");
        for class in FailureClass::ALL {
            assert_eq!(json(&class), format!("\"{}\"", class.as_str()));
            assert_eq!(class.as_str().parse::<FailureClass>(), Ok(class));
        }
    }

    #[test]
    fn a_journalled_class_reads_back_as_attempt_or_engine() {
        let read = |text: &str| serde_json::from_str::<StepFailureClass>(text).unwrap();
        assert_eq!(
            read("\"timeout\""),
            StepFailureClass::Attempt(FailureClass::Timeout)
        );
        assert_eq!(
            read("\"engine\""),
            StepFailureClass::Engine(EngineFailure::Engine)
        );
        assert!(serde_json::from_str::<StepFailureClass>("\"bogus\"").is_err());
        assert!("bogus".parse::<FailureClass>().is_err());
    }

    mod erased {
        pub trait Ser {
            fn json(&self) -> String;
        }
        impl<T: serde::Serialize> Ser for T {
            fn json(&self) -> String {
                serde_json::to_string(self).unwrap()
            }
        }
    }
}
