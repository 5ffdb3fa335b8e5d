//! `cairn-sdk`: write a Cairn task as a plain Rust function over serde types.
//!
//! A task is a WebAssembly component built for `wasm32-wasip2` that exports
//! the `cairn:task/task` interface (see `wit/task.wit`). This crate hides that
//! contract: you write `fn(In) -> Result<Out, TaskError>` where `In` and `Out`
//! are serde + [`JsonSchema`] types, and one [`task!`] invocation generates
//! the export, JSON decoding and encoding, and the `describe` answer (name,
//! version, input/output JSON Schema, wanted capabilities).
//!
//! ```ignore
//! use cairn_sdk::{JsonSchema, TaskError, task};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize, JsonSchema)]
//! struct In { text: String }
//!
//! #[derive(Serialize, JsonSchema)]
//! struct Out { words: usize }
//!
//! fn count(input: In) -> Result<Out, TaskError> {
//!     cairn_sdk::info!("counting {} bytes", input.text.len());
//!     Ok(Out { words: input.text.split_whitespace().count() })
//! }
//!
//! task! {
//!     name: "count-words",
//!     description: "Counts the words in a text.",
//!     run: count,
//! }
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type
//! `cdylib`) and run it with `cairn task run target/wasm32-wasip2/release/x.wasm
//! --input '{"text": "a b c"}'`.
//!
//! The SDK never panics on bad input: undecodable input becomes a
//! [`TaskError`] of kind [`ErrorKind::InvalidInput`].

use std::fmt;

pub mod http;

pub use schemars::{self, JsonSchema};
pub use serde;
pub use serde_json;

/// Bindings generated from `wit/task.wit`. Authors do not need them directly.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "cairn-task",
        pub_export_macro: true,
        export_macro_name: "__export_cairn_task",
        default_bindings_module: "cairn_sdk::bindings",
    });
}

use bindings::cairn::task::types as wit;

/// How the engine should treat a task failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Transient: the engine may retry.
    Retryable,
    /// Permanent: retrying the same input cannot help.
    Fatal,
    /// The input is not what the task accepts.
    InvalidInput,
    /// The task needed a capability it was not granted.
    Denied,
}

/// A failure reported by a task. Pick the constructor that tells the engine
/// what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    kind: ErrorKind,
    message: String,
}

impl TaskError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    /// A permanent failure.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Fatal, message)
    }
    /// A transient failure worth retrying.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Retryable, message)
    }
    /// The input does not fit what the task accepts.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }
    /// A capability the task needed was not granted.
    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Denied, message)
    }
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for TaskError {}

/// I/O errors map onto the taxonomy: a refused path or variable is a denial
/// (the sandbox did not grant it), anything else is fatal.
impl From<std::io::Error> for TaskError {
    fn from(err: std::io::Error) -> Self {
        let kind = if is_denial(&err) {
            ErrorKind::Denied
        } else {
            ErrorKind::Fatal
        };
        Self::new(kind, err.to_string())
    }
}

/// In the sandbox, a path outside every granted directory fails with
/// `ENOTCAPABLE` (errno 76 in wasi-libc) or `EACCES`/`EPERM`, and a denied
/// socket with `EACCES`.
fn is_denial(err: &std::io::Error) -> bool {
    const ENOTCAPABLE: i32 = 76;
    err.kind() == std::io::ErrorKind::PermissionDenied
        || (cfg!(target_os = "wasi") && err.raw_os_error() == Some(ENOTCAPABLE))
}

impl From<serde_json::Error> for TaskError {
    fn from(err: serde_json::Error) -> Self {
        Self::invalid_input(err.to_string())
    }
}

/// A capability a task asks for in its description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    ReadDir(String),
    Scratch,
    Env(String),
    WallClock,
    Random,
    /// Outbound HTTP to a host, spelled like a step's `http` grant
    /// (`api.example.com`, `http://127.0.0.1:8080`): the planner refuses a
    /// step that does not grant it.
    Http(String),
}

/// Severity of a task log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Write a log line to the engine. The engine labels it with the task and
/// keeps it apart from its own diagnostics. Outside WebAssembly (a task's
/// unit tests on the host) the line goes to stderr instead.
pub fn log(level: Level, message: &str) {
    if cfg!(not(target_arch = "wasm32")) {
        eprintln!("[{level:?}] {message}");
        return;
    }
    let level = match level {
        Level::Trace => wit::LogLevel::Trace,
        Level::Debug => wit::LogLevel::Debug,
        Level::Info => wit::LogLevel::Info,
        Level::Warn => wit::LogLevel::Warn,
        Level::Error => wit::LogLevel::Error,
    };
    bindings::cairn::task::host::log(level, message);
}

/// Report progress: `done` of `total` units (`total = 0` when unknown).
pub fn progress(done: u64, total: u64, message: &str) {
    if cfg!(not(target_arch = "wasm32")) {
        eprintln!("[progress] {done}/{total} {message}");
        return;
    }
    bindings::cairn::task::host::progress(done, total, message);
}

/// `info!("read {} rows", n)` logs at info level; likewise `trace!`,
/// `debug!`, `warn!` and `error!`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log($crate::Level::Info, &::std::format!($($arg)*)) };
}
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => { $crate::log($crate::Level::Trace, &::std::format!($($arg)*)) };
}
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log($crate::Level::Debug, &::std::format!($($arg)*)) };
}
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log($crate::Level::Warn, &::std::format!($($arg)*)) };
}
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log($crate::Level::Error, &::std::format!($($arg)*)) };
}

/// Export a function as a Cairn task.
///
/// ```ignore
/// cairn_sdk::task! {
///     name: "word-count",
///     description: "Counts words.",
///     capabilities: [cairn_sdk::Capability::WallClock], // optional
///     run: word_count,
/// }
/// ```
///
/// `version` is optional and defaults to the crate's `CARGO_PKG_VERSION`.
#[macro_export]
macro_rules! task {
    (
        name: $name:expr,
        $(version: $version:expr,)?
        description: $description:expr,
        $(capabilities: [$($cap:expr),* $(,)?],)?
        run: $run:path $(,)?
    ) => {
        struct __CairnTask;

        impl $crate::bindings::exports::cairn::task::task::Guest for __CairnTask {
            fn describe() -> $crate::bindings::cairn::task::types::Descriptor {
                #[allow(unused_mut)]
                let mut version = ::std::env!("CARGO_PKG_VERSION");
                $(version = $version;)?
                $crate::__private::describe(
                    $run,
                    $crate::__private::About {
                        name: $name,
                        version,
                        description: $description,
                        capabilities: ::std::vec![$($($cap),*)?],
                    },
                )
            }

            fn run(
                input: ::std::vec::Vec<u8>,
            ) -> ::std::result::Result<
                ::std::vec::Vec<u8>,
                $crate::bindings::cairn::task::types::TaskError,
            > {
                $crate::__private::run_json(&input, $run)
            }
        }

        // Only a wasm build exports the contract; on the host the crate
        // builds (and its unit tests run) without the component exports.
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_cairn_task!(__CairnTask);
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn() = || {
            let _ = $run;
        };
    };
}

/// Support code for [`task!`]; not a stable API.
#[doc(hidden)]
pub mod __private {
    use super::*;
    use serde::{Serialize, de::DeserializeOwned};

    pub struct About {
        pub name: &'static str,
        pub version: &'static str,
        pub description: &'static str,
        pub capabilities: Vec<Capability>,
    }

    pub fn describe<I, O, F>(_run: F, about: About) -> wit::Descriptor
    where
        I: JsonSchema,
        O: JsonSchema,
        F: Fn(I) -> Result<O, TaskError>,
    {
        wit::Descriptor {
            name: about.name.to_owned(),
            version: about.version.to_owned(),
            description: about.description.to_owned(),
            input_schema: schema_json::<I>(),
            output_schema: schema_json::<O>(),
            capabilities: about
                .capabilities
                .into_iter()
                .map(to_wit_capability)
                .collect(),
        }
    }

    pub fn run_json<I, O, F>(input: &[u8], run: F) -> Result<Vec<u8>, wit::TaskError>
    where
        I: DeserializeOwned,
        O: Serialize,
        F: Fn(I) -> Result<O, TaskError>,
    {
        decode_run_encode(input, run).map_err(to_wit_error)
    }

    /// The pure part of [`run_json`], testable on the host.
    pub fn decode_run_encode<I, O, F>(input: &[u8], run: F) -> Result<Vec<u8>, TaskError>
    where
        I: DeserializeOwned,
        O: Serialize,
        F: Fn(I) -> Result<O, TaskError>,
    {
        let mut decoder = serde_json::Deserializer::from_slice(input);
        let input: I = serde_path_to_error::deserialize(&mut decoder)
            .map_err(|e| TaskError::invalid_input(input_error(e.path().to_string(), e.inner())))?;
        decoder
            .end()
            .map_err(|e| TaskError::invalid_input(input_error(String::new(), &e)))?;
        let output = run(input)?;
        serde_json::to_vec(&output)
            .map_err(|e| TaskError::fatal(format!("output could not be encoded as JSON: {e}")))
    }

    /// `input.rows.0.amount: invalid type: map, expected f64`: where in the
    /// document, and what. The position serde_json adds ("at line 1 column
    /// 12") counts in the canonical JSON the host sent, which the author
    /// never saw, so it is left out.
    fn input_error(path: String, inner: &serde_json::Error) -> String {
        let mut what = inner.to_string();
        let position = format!(" at line {} column {}", inner.line(), inner.column());
        if let Some(cut) = what.strip_suffix(&position) {
            what = cut.to_owned();
        }
        if path == "." || path.is_empty() {
            format!("input does not match the task's input type: {what}")
        } else {
            format!("input.{path}: {what}")
        }
    }

    pub fn schema_json<T: JsonSchema>() -> String {
        schemars::schema_for!(T).as_value().to_string()
    }

    fn to_wit_capability(cap: Capability) -> wit::Capability {
        match cap {
            Capability::ReadDir(dir) => wit::Capability::ReadDir(dir),
            Capability::Scratch => wit::Capability::Scratch,
            Capability::Env(name) => wit::Capability::Env(name),
            Capability::WallClock => wit::Capability::WallClock,
            Capability::Random => wit::Capability::Random,
            Capability::Http(host) => wit::Capability::Http(host),
        }
    }

    fn to_wit_error(err: TaskError) -> wit::TaskError {
        let kind = match err.kind {
            ErrorKind::Retryable => wit::ErrorKind::Retryable,
            ErrorKind::Fatal => wit::ErrorKind::Fatal,
            ErrorKind::InvalidInput => wit::ErrorKind::InvalidInput,
            ErrorKind::Denied => wit::ErrorKind::Denied,
        };
        wit::TaskError {
            kind,
            message: err.message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::__private::*;
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Deserialize, JsonSchema)]
    struct In {
        n: u32,
    }
    #[derive(Serialize, JsonSchema)]
    struct Out {
        double: u32,
    }

    fn double(input: In) -> Result<Out, TaskError> {
        if input.n == 13 {
            return Err(TaskError::retryable("unlucky"));
        }
        Ok(Out {
            double: input.n * 2,
        })
    }

    #[test]
    fn decodes_runs_and_encodes_json() {
        let out = decode_run_encode(br#"{"n": 21}"#, double).unwrap();
        assert_eq!(out, br#"{"double":42}"#);
    }

    #[test]
    fn undecodable_input_is_invalid_input_naming_the_problem() {
        let err = decode_run_encode(br#"{"n": "x"}"#, double).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        // The field path, not a position in JSON the author never wrote.
        assert_eq!(
            err.message(),
            "input.n: invalid type: string \"x\", expected u32",
            "{}",
            err.message()
        );
        let err = decode_run_encode(b"\xff\xfe", double).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn task_errors_pass_through_with_their_kind() {
        let err = decode_run_encode(br#"{"n": 13}"#, double).unwrap_err();
        assert_eq!(err, TaskError::retryable("unlucky"));
    }

    #[test]
    fn schemas_describe_the_fields() {
        let schema: serde_json::Value = serde_json::from_str(&schema_json::<In>()).unwrap();
        assert_eq!(schema["properties"]["n"]["type"], "integer");
        assert_eq!(schema["required"][0], "n");
    }

    #[test]
    fn permission_denied_io_errors_become_denials() {
        let denied: TaskError = std::io::Error::from(std::io::ErrorKind::PermissionDenied).into();
        assert_eq!(denied.kind(), ErrorKind::Denied);
        let missing: TaskError = std::io::Error::from(std::io::ErrorKind::NotFound).into();
        assert_eq!(missing.kind(), ErrorKind::Fatal);
    }
}
