//! The failure taxonomy: every way an attempt can fail, classified.
//!
//! A failure is a value, not a string: the scheduler decides retries from its
//! [`FailureClass`], the CLI maps the class to a distinct exit code, and the
//! journal records it. Each variant carries what limit was hit and by how
//! much, so the message can tell the user what to change.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::limits::ByteSize;

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The task returned an error of its own.
    Task {
        kind: TaskErrorKind,
        message: String,
    },
    /// The task used up its fuel (deterministic CPU budget).
    OutOfFuel { limit: u64 },
    /// The task ran past its wall-clock deadline.
    Timeout { limit: Duration },
    /// The task tried to grow its memory past the cap.
    MemoryLimit {
        limit: ByteSize,
        requested: ByteSize,
    },
    /// The task trapped: a panic, an unreachable, a stack overflow, a bad call.
    Trap { message: String },
    /// The task needed a capability it was not granted.
    Denied { message: String },
    /// The output (or a command's stdout) is larger than the cap.
    OutputTooLarge { limit: ByteSize, size: ByteSize },
    /// The task returned bytes that break the contract (e.g. not JSON).
    InvalidOutput { message: String },
    /// The task's outbound HTTP hit one of its limits (requests, bytes,
    /// a connect, first-byte or between-bytes wait).
    HttpLimit { message: String },
}

impl Failure {
    /// The same failure with every secret in its messages masked and
    /// their control characters escaped (a task writes these messages).
    pub fn redact(self, redactor: &super::Redactor) -> Self {
        let clean = |message: String| printable(redactor.redact(message));
        match self {
            Failure::Task { kind, message } => Failure::Task {
                kind,
                message: clean(message),
            },
            Failure::Trap { message } => Failure::Trap {
                message: clean(message),
            },
            Failure::Denied { message } => Failure::Denied {
                message: clean(message),
            },
            Failure::InvalidOutput { message } => Failure::InvalidOutput {
                message: clean(message),
            },
            Failure::HttpLimit { message } => Failure::HttpLimit {
                message: clean(message),
            },
            other => other,
        }
    }
}

/// `text` with every control character but newline and tab escaped
/// (`\u{1b}`): text a task wrote reaches terminals, and an ANSI or OSC
/// sequence, a carriage return or a NUL in it must not act on them.
pub fn printable(text: String) -> String {
    if !text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod printable_tests {
    #[test]
    fn control_characters_are_escaped_but_lines_and_tabs_kept() {
        let shown = super::printable("a\x1b[31mred\x1b]0;title\x07\0\rb\n\tc".to_owned());
        assert_eq!(shown, "a\\u{1b}[31mred\\u{1b}]0;title\\u{7}\\u{0}\\rb\n\tc");
        assert_eq!(super::printable("plain".to_owned()), "plain");
    }
}

/// What a task said about its own error (`cairn:task/types.error-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskErrorKind {
    Retryable,
    Fatal,
    InvalidInput,
}

pub use crate::model::FailureClass;

impl Failure {
    pub fn class(&self) -> FailureClass {
        match self {
            Self::Task {
                kind: TaskErrorKind::Retryable,
                ..
            } => FailureClass::TaskRetryable,
            Self::Task { .. } => FailureClass::TaskFatal,
            Self::OutOfFuel { .. } => FailureClass::OutOfFuel,
            Self::Timeout { .. } => FailureClass::Timeout,
            Self::MemoryLimit { .. } => FailureClass::MemoryLimit,
            Self::Trap { .. } => FailureClass::Trap,
            Self::Denied { .. } => FailureClass::Denied,
            Self::OutputTooLarge { .. } => FailureClass::OutputTooLarge,
            Self::InvalidOutput { .. } => FailureClass::InvalidOutput,
            Self::HttpLimit { .. } => FailureClass::HttpLimit,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Task {
                kind: TaskErrorKind::InvalidInput,
                message,
            } => {
                write!(f, "the task rejected its input: {message}")
            }
            Self::Task { kind, message } => {
                let kind = if *kind == TaskErrorKind::Retryable {
                    "retryable"
                } else {
                    "fatal"
                };
                write!(f, "the task failed ({kind}): {message}")
            }
            Self::OutOfFuel { limit } => {
                write!(
                    f,
                    "out of fuel: used all {limit} units; raise --fuel if the task needs more"
                )
            }
            Self::Timeout { limit } => write!(
                f,
                "timed out after {}; raise --timeout if the task needs longer",
                humantime::format_duration(*limit)
            ),
            Self::MemoryLimit { limit, requested } => write!(
                f,
                "memory limit: the task asked for {requested} of linear memory, the cap is {limit}; raise --memory if it needs more"
            ),
            Self::Trap { message } => write!(f, "the task trapped: {message}"),
            Self::Denied { message } => write!(f, "capability denied: {message}"),
            Self::OutputTooLarge { limit, size } => write!(
                f,
                "output too large: {size} exceeds the cap of {limit}; raise --output-limit if it is expected"
            ),
            Self::InvalidOutput { message } => write!(f, "invalid output: {message}"),
            Self::HttpLimit { message } => write!(
                f,
                "http limit: {message}; raise it in the step's `grants.http_limits` if that is expected"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_its_own_exit_code_outside_clap_and_engine_codes() {
        let mut codes: Vec<u8> = FailureClass::ALL.iter().map(|c| c.exit_code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), FailureClass::ALL.len());
        assert!(
            codes.iter().all(|c| *c >= 10),
            "0-2 belong to success, engine errors and usage"
        );
    }

    #[test]
    fn messages_say_what_limit_was_hit_and_what_to_change() {
        let m = Failure::MemoryLimit {
            limit: ByteSize(64 << 20),
            requested: ByteSize(65 << 20),
        }
        .to_string();
        assert!(
            m.contains("64.0 MiB") && m.contains("65.0 MiB") && m.contains("--memory"),
            "{m}"
        );
        let t = Failure::Timeout {
            limit: Duration::from_millis(1500),
        }
        .to_string();
        assert!(t.contains("1s 500ms") && t.contains("--timeout"), "{t}");
    }
}
