//! The host side of one sandboxed run: per-store state, the `cairn:task/host`
//! imports (log, progress) and the memory limiter.
//!
//! Everything here is reachable by guest code, so nothing here may panic,
//! block, or grow without bound: log lines are truncated and the total log
//! volume per run is capped; memory growth is accounted across every memory
//! of the component and refused past the cap.

use std::sync::Arc;

use serde::Serialize;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::grants::Redactor;
use super::http::HttpHooks;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "cairn-task",
    exports: { default: async },
});

use self::cairn::task::types::LogLevel;
pub use self::cairn::task::types::{Capability, Descriptor, ErrorKind, TaskError};

/// Longest log line kept; the rest is cut and marked.
pub const MAX_LOG_LINE: usize = 16 << 10;
/// Most log bytes kept per run; later lines are counted, not kept.
pub const MAX_LOG_BYTES: usize = 1 << 20;

/// Severity of a task log line (the shared vocabulary's [`LogLevel`]; the
/// WIT binding's own `LogLevel` has this module's other name).
pub use crate::model::LogLevel as Level;

/// One line a task logged (through `cairn:task/host.log` or its stderr).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    pub level: Level,
    pub message: String,
}

/// A progress report from a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    pub message: String,
}

/// Receives a task's logs and progress as they happen.
pub trait Observer: Send + Sync {
    fn log(&self, _line: &LogLine) {}
    fn progress(&self, _progress: &Progress) {}
}

/// The logs of one run, bounded by [`MAX_LOG_BYTES`].
#[derive(Debug, Default, Clone, Serialize)]
pub struct TaskLog {
    pub lines: Vec<LogLine>,
    /// Lines dropped because the run's log budget was spent.
    pub dropped: u64,
    #[serde(skip)]
    bytes: usize,
}

impl TaskLog {
    /// Keep a line if the budget allows, its control characters escaped;
    /// returns the kept line.
    pub fn push(&mut self, level: Level, mut message: String) -> Option<&LogLine> {
        if self.bytes >= MAX_LOG_BYTES {
            self.dropped += 1;
            return None;
        }
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            let extra = message.len() - cut;
            message.truncate(cut);
            message.push_str(&format!(" …[{extra} more bytes cut]"));
        }
        // After the cut, so a flood of huge lines costs no more than it keeps.
        let message = super::failure::printable(message);
        self.bytes += message.len();
        self.lines.push(LogLine { level, message });
        self.lines.last()
    }
}

/// Accounts linear memory across all of a store's memories and refuses
/// growth past the cap, remembering the refused request so the failure can
/// be classified as a memory limit (the guest usually traps right after).
#[derive(Debug)]
pub struct MemoryCap {
    cap: usize,
    total: usize,
    pub peak: usize,
    pub refused: Option<usize>,
}

impl MemoryCap {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            total: 0,
            peak: 0,
            refused: None,
        }
    }
}

/// Most table elements any one table may have; Rust components use a few
/// hundred, and the pooling allocator reserves for this many.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total - current.min(self.total) + desired;
        if total > self.cap {
            self.refused = Some(total);
            return Ok(false);
        }
        self.total = total;
        self.peak = self.peak.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Per-store state for one run.
pub struct RunState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) memory: MemoryCap,
    pub(crate) log: TaskLog,
    pub(crate) observer: Option<Arc<dyn Observer>>,
    /// Masks the run's secrets in everything it says.
    pub(crate) redactor: Redactor,
    pub(crate) http: WasiHttpCtx,
    /// Where the task's outbound requests are checked and sent.
    pub(crate) http_hooks: HttpHooks,
}

impl RunState {
    pub(crate) fn record_log(&mut self, level: Level, message: String) {
        let message = self.redactor.redact(message);
        if let Some(line) = self.log.push(level, message)
            && let Some(observer) = &self.observer
        {
            observer.log(line);
        }
    }
}

impl WasiView for RunState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for RunState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

impl self::cairn::task::types::Host for RunState {}

impl self::cairn::task::host::Host for RunState {
    fn log(&mut self, level: LogLevel, message: String) {
        let level = match level {
            LogLevel::Trace => Level::Trace,
            LogLevel::Debug => Level::Debug,
            LogLevel::Info => Level::Info,
            LogLevel::Warn => Level::Warn,
            LogLevel::Error => Level::Error,
        };
        self.record_log(level, message);
    }

    fn progress(&mut self, done: u64, total: u64, message: String) {
        let mut message = super::failure::printable(self.redactor.redact(message));
        message.truncate(message.floor_char_boundary(1024));
        if let Some(observer) = &self.observer {
            observer.progress(&Progress {
                done,
                total,
                message,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn log_lines_are_truncated_and_volume_is_capped() {
        let mut log = TaskLog::default();
        let long = "é".repeat(MAX_LOG_LINE); // two bytes each: the cut must land on a char boundary
        let kept = log.push(Level::Info, long).unwrap();
        assert!(kept.message.len() < MAX_LOG_LINE + 64 && kept.message.contains("more bytes cut"));
        while log.push(Level::Info, "x".repeat(MAX_LOG_LINE)).is_some() {}
        assert_eq!(log.dropped, 1);
        assert!(log.bytes <= MAX_LOG_BYTES + MAX_LOG_LINE + 64);
    }

    #[test]
    fn memory_is_accounted_across_memories_and_refused_past_the_cap() {
        let mut cap = MemoryCap::new(100);
        assert!(cap.memory_growing(0, 60, None).unwrap());
        assert!(cap.memory_growing(0, 30, None).unwrap()); // a second memory
        assert!(!cap.memory_growing(30, 50, None).unwrap()); // 60 + 50 > 100
        assert_eq!(cap.refused, Some(110));
        assert!(cap.memory_growing(60, 70, None).unwrap()); // 70 + 30 = 100
        assert_eq!(cap.peak, 100);
    }
}
