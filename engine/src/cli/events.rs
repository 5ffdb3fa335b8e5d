//! `--events FILE`: a run's scheduler events as JSON lines, written as they
//! happen, for machines that follow a run live (`tail -f`, a log shipper, a
//! dashboard). The final `--json` report says how a run ended; this says
//! what happened on the way.
//!
//! One object per line, each with `at_ms`, `run` and `event`:
//! `run-started`, `step-queued` (inputs ready, waiting for a job slot),
//! `step-started` (its first attempt runs; `wait_us` queued), `attempt-started`,
//! `task-log`, `task-progress`, `attempt-failed`, `item-finished`,
//! `step-finished` (`duration_us` running, `wait_us` queued), `run-finished`.
//! Task text (logs, progress, failure messages) arrives already masked by
//! the sandbox, so no secret reaches the file. The scheduler's own lines
//! are buffered and written whenever it goes idle, so a burst of cached
//! steps costs a few writes; lines from running work (a step starting, its
//! attempts, logs and progress) are written at once, as they happen.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::schedule::{Event, RunObserver, StepStatus};
use crate::store::records::now_ms;

pub struct EventStream {
    path: PathBuf,
    run: String,
    out: Mutex<Sink>,
}

struct Sink {
    writer: BufWriter<File>,
    /// The first write error; later events are dropped (the run goes on).
    failed: bool,
}

impl EventStream {
    /// Create (or truncate) `path`.
    pub fn create(path: &Path, run: &str) -> Result<Self, String> {
        let file = File::create(path).map_err(|e| {
            format!(
                "cannot write events to {}: {e} (check the path, or leave out --events)",
                path.display()
            )
        })?;
        Ok(Self {
            path: path.to_owned(),
            run: run.to_owned(),
            out: Mutex::new(Sink {
                writer: BufWriter::with_capacity(64 << 10, file),
                failed: false,
            }),
        })
    }

    /// Write one event object (given without `at_ms`, `run`).
    pub fn emit(&self, kind: &str, mut fields: Value) {
        // Timed under the lock, so the file's times never go backwards
        // when work on several threads reports at once.
        let mut sink = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if sink.failed {
            return;
        }
        if let Value::Object(map) = &mut fields {
            map.insert("at_ms".into(), json!(now_ms()));
            map.insert("run".into(), json!(self.run));
            map.insert("event".into(), json!(kind));
        }
        let written = serde_json::to_writer(&mut sink.writer, &fields)
            .map_err(std::io::Error::from)
            .and_then(|()| sink.writer.write_all(b"\n"));
        if let Err(e) = written {
            sink.fail(&self.path, e);
        }
    }

    /// Write out what is buffered.
    pub fn flush(&self) {
        let mut sink = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if !sink.failed
            && let Err(e) = sink.writer.flush()
        {
            sink.fail(&self.path, e);
        }
    }
}

impl Sink {
    fn fail(&mut self, path: &Path, e: std::io::Error) {
        self.failed = true;
        say!(
            "warning: cannot write events to {}: {e}; the run goes on without them",
            path.display()
        );
    }
}

/// The fields of one scheduler event.
fn describe(event: &Event<'_>) -> (&'static str, Value) {
    match event {
        Event::StepQueued { step, items } => {
            ("step-queued", json!({"step": step.name, "items": items}))
        }
        Event::StepStarted { step, items, wait } => (
            "step-started",
            json!({"step": step.name, "items": items, "wait_us": wait.as_micros() as u64}),
        ),
        Event::AttemptStarted {
            step,
            index,
            attempt,
        } => (
            "attempt-started",
            json!({"step": step.name, "index": index, "attempt": attempt}),
        ),
        Event::AttemptFailed {
            step,
            index,
            attempt,
            failure,
            retry_in,
        } => (
            "attempt-failed",
            json!({
                "step": step.name,
                "index": index,
                "attempt": attempt,
                "class": failure.class,
                "message": failure.message,
                "retry_in_us": retry_in.map(|d| d.as_micros() as u64),
            }),
        ),
        Event::ItemFinished { step, index } => {
            ("item-finished", json!({"step": step.name, "index": index}))
        }
        Event::StepFinished { step, report } => {
            let detail = match &report.status {
                StepStatus::Failed(f) => json!({"class": f.class, "message": f.message}),
                StepStatus::Skipped { reason } => json!({"reason": reason}),
                _ => json!({}),
            };
            (
                "step-finished",
                json!({
                    "step": step.name,
                    "status": report.status.label(),
                    "attempts": report.attempts,
                    "duration_us": report.duration.as_micros() as u64,
                    "wait_us": report.wait.as_micros() as u64,
                    "fuel": report.fuel,
                    "source": report.source,
                    "output_hash": report.output_hash,
                    "detail": detail,
                }),
            )
        }
        Event::TaskLog { step, index, line } => (
            "task-log",
            json!({
                "step": step.name,
                "index": index,
                "level": line.level,
                "message": line.message,
            }),
        ),
        Event::TaskProgress { step, progress } => (
            "task-progress",
            json!({
                "step": step.name,
                "done": progress.done,
                "total": progress.total,
                "message": progress.message,
            }),
        ),
    }
}

impl RunObserver for EventStream {
    fn event(&self, event: Event<'_>) {
        let (kind, fields) = describe(&event);
        self.emit(kind, fields);
        if event.from_work() {
            self.flush();
        }
    }

    fn idle(&self) {
        self.flush();
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Sends every event to two observers: the one for people, and the stream.
pub struct Tee(pub Arc<dyn RunObserver>, pub Arc<EventStream>);

impl RunObserver for Tee {
    fn event(&self, event: Event<'_>) {
        self.1.event(event);
        self.0.event(event);
    }

    fn idle(&self) {
        self.0.idle();
        self.1.idle();
    }
}
