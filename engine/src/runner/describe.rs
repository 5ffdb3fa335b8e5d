//! Describing a recorded run from its journal: each step's last word, and
//! the lineage of its outputs.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::store::{CacheKey, JournalEvent, RunRecord, Store};

/// Per-step status from the journal: the last word on each step.
///
/// `attempts` counts attempts that ran in the sandbox (over every element
/// and every resume), `duration_ms` runs from the step's first attempt
/// starting (or, for a step that never ran, from its being queued) to its
/// end, and `wait_ms` is the time between being queued and that first
/// attempt: the same figures `cairn run` prints in its summary.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StepView {
    /// `pending`, `queued`, `running`, `succeeded`, `cached`, `resumed`,
    /// `failed`, `skipped` or `cancelled`.
    pub status: String,
    /// A failure's message or a skip's reason.
    pub detail: String,
    pub duration_ms: Option<u64>,
    pub wait_ms: Option<u64>,
    pub attempts: u32,
    /// Fuel its attempts burned, over every element and attempt.
    pub fuel: u64,
    /// How many elements a mapped step had (`null` for a plain step, and
    /// for a one-element map answered wholly from the cache).
    pub elements: Option<usize>,
    /// blake3 of a succeeded step's output.
    pub output_hash: Option<String>,
}

/// Per-step status from the whole journal (see [`StepFold`]).
pub fn step_views(events: &[JournalEvent]) -> BTreeMap<String, StepView> {
    let mut fold = StepFold::default();
    fold.apply(events);
    fold.views
}

/// Per-step status folded from a journal's events as they come: a
/// follower of a live run applies only the events it has not seen.
#[derive(Debug, Clone, Default)]
pub struct StepFold {
    views: BTreeMap<String, StepView>,
    /// Steps seen with an element index: mapped.
    mapped: std::collections::HashSet<String>,
    /// When each step was (last) queued, and its first attempt since.
    scheduled: BTreeMap<String, u64>,
    first_attempt: BTreeMap<String, u64>,
}

impl StepFold {
    /// Each step's last word so far.
    pub fn views(&self) -> &BTreeMap<String, StepView> {
        &self.views
    }

    /// From the step's first attempt (or from being queued) to `end`; and
    /// the wait between the two.
    fn timing(&self, step: &str, end: u64) -> (Option<u64>, Option<u64>) {
        let queued = self.scheduled.get(step).copied();
        let ran = self.first_attempt.get(step).copied();
        let from = ran.or(queued);
        (
            from.map(|f| end.saturating_sub(f)),
            queued.map(|q| ran.map_or(0, |r| r.saturating_sub(q))),
        )
    }

    fn entry(&mut self, step: &str) -> &mut StepView {
        self.views.entry(step.to_owned()).or_insert(StepView {
            status: "pending".into(),
            detail: String::new(),
            duration_ms: None,
            wait_ms: None,
            attempts: 0,
            fuel: 0,
            elements: None,
            output_hash: None,
        })
    }

    /// Take in the next events, in journal order.
    pub fn apply(&mut self, events: &[JournalEvent]) {
        for event in events {
            self.apply_one(event);
        }
    }

    fn apply_one(&mut self, event: &JournalEvent) {
        match event {
            JournalEvent::StepScheduled { at_ms, step, .. } => {
                self.scheduled.insert(step.clone(), *at_ms);
                // A resumed run schedules the step again: time this try.
                self.first_attempt.remove(step);
                self.entry(step).status = "queued".into();
            }
            JournalEvent::AttemptStarted {
                at_ms, step, index, ..
            } => {
                if index.is_some() {
                    self.mapped.insert(step.clone());
                }
                self.first_attempt.entry(step.clone()).or_insert(*at_ms);
                let v = self.entry(step);
                v.attempts += 1;
                v.status = "running".into();
            }
            JournalEvent::AttemptFinished { step, fuel, .. } => {
                self.entry(step).fuel += fuel;
            }
            JournalEvent::StepSucceeded {
                at_ms,
                step,
                source,
                output_hash,
                keys,
            } => {
                let (duration, wait) = self.timing(step, *at_ms);
                let is_mapped = self.mapped.contains(step) || keys.len() != 1;
                let v = self.entry(step);
                v.elements = is_mapped.then_some(keys.len());
                v.status = match source {
                    crate::store::StepSource::Executed => "succeeded",
                    crate::store::StepSource::Cached => "cached",
                    crate::store::StepSource::Journal => "resumed",
                }
                .into();
                v.detail = String::new();
                v.output_hash = Some(output_hash.clone());
                (v.duration_ms, v.wait_ms) = (duration, wait);
            }
            JournalEvent::StepFailed {
                at_ms,
                step,
                message,
                ..
            } => {
                let (duration, wait) = self.timing(step, *at_ms);
                let v = self.entry(step);
                v.status = "failed".into();
                v.detail = message.clone();
                (v.duration_ms, v.wait_ms) = (duration, wait);
            }
            JournalEvent::StepSkipped { step, reason, .. } => {
                let v = self.entry(step);
                v.status = "skipped".into();
                v.detail = reason.clone();
            }
            JournalEvent::StepCancelled { step, .. } => {
                self.entry(step).status = "cancelled".into()
            }
            _ => {}
        }
    }
}

fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A run's lineage as OpenLineage-style run events: one `COMPLETE` event
/// per succeeded step, whose inputs and outputs are content hashes (and the
/// components that made them, while their results are still cached).
pub fn lineage(db: &dyn Store, record: &RunRecord, events: &[JournalEvent]) -> Vec<Value> {
    let mut out = Vec::new();
    // A resumed run journals again the steps it took from its own journal:
    // a step's lineage is its first success, the one that produced it.
    let mut seen = std::collections::HashSet::new();
    for event in events {
        let JournalEvent::StepSucceeded {
            at_ms,
            step,
            keys,
            output_hash,
            ..
        } = event
        else {
            continue;
        };
        if !seen.insert(step.as_str()) {
            continue;
        }
        let mut inputs = Vec::new();
        let mut components = Vec::new();
        for key in keys {
            let meta = CacheKey::from_hex(key)
                .and_then(|k| db.result(&k, None).ok().flatten())
                .map(|(m, _)| m);
            match meta {
                Some(meta) => {
                    inputs.push(json!({"namespace": "cairn", "name": format!("blake3:{}", meta.input_hash), "facets": {"cacheKey": key}}));
                    if !components.contains(&meta.component) {
                        components.push(meta.component);
                    }
                }
                None => inputs.push(json!({"namespace": "cairn", "name": format!("cache-key:{key}"), "facets": {"note": "result no longer cached"}})),
            }
        }
        out.push(json!({
            "eventType": "COMPLETE",
            "eventTime": rfc3339(*at_ms),
            "producer": "https://github.com/cairn-dev/cairn",
            "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
            "run": {"runId": record.id.0, "facets": {"cairn": {"replayOf": record.replay_of}}},
            "job": {"namespace": format!("cairn/{}", record.pipeline), "name": step, "facets": {"cairn": {"components": components.iter().map(|c| format!("blake3:{c}")).collect::<Vec<_>>()}}},
            "inputs": inputs,
            "outputs": [{"namespace": "cairn", "name": format!("blake3:{output_hash}")}],
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StepSource;

    fn finished(at_ms: u64, step: &str, index: Option<usize>, fuel: u64) -> JournalEvent {
        JournalEvent::AttemptFinished {
            at_ms,
            step: step.into(),
            index,
            attempt: 1,
            class: None,
            message: None,
            fuel,
            duration_us: 1,
            peak_memory: 0,
            logs: Vec::new(),
            http: Vec::new(),
            retry_in_ms: None,
        }
    }

    fn started(at_ms: u64, step: &str, index: Option<usize>) -> JournalEvent {
        JournalEvent::AttemptStarted {
            at_ms,
            step: step.into(),
            index,
            attempt: 1,
        }
    }

    #[test]
    fn a_journal_folded_in_pieces_gives_what_it_gives_whole() {
        let scheduled = |at_ms, step: &str| JournalEvent::StepScheduled {
            at_ms,
            step: step.into(),
            items: None,
        };
        let succeeded = |at_ms, step: &str, keys: usize| JournalEvent::StepSucceeded {
            at_ms,
            step: step.into(),
            keys: vec!["k".into(); keys],
            output_hash: "h".into(),
            source: StepSource::Executed,
        };
        // A mapped step whose elements start in one piece and end in
        // another; a step failed, then queued and run again (a resume).
        let events = vec![
            scheduled(10, "map"),
            started(12, "map", Some(0)),
            started(13, "map", Some(1)),
            finished(20, "map", Some(0), 5),
            finished(21, "map", Some(1), 7),
            succeeded(22, "map", 2),
            scheduled(30, "flaky"),
            started(35, "flaky", None),
            JournalEvent::StepFailed {
                at_ms: 40,
                step: "flaky".into(),
                class: None,
                message: "boom".into(),
            },
            scheduled(100, "flaky"),
            started(104, "flaky", None),
            finished(110, "flaky", None, 3),
            succeeded(111, "flaky", 1),
            scheduled(120, "after"),
            JournalEvent::StepSkipped {
                at_ms: 121,
                step: "after".into(),
                reason: "why".into(),
            },
        ];
        let whole = step_views(&events);
        assert_eq!(whole["map"].elements, Some(2));
        assert_eq!(whole["map"].fuel, 12);
        assert_eq!(
            (whole["flaky"].duration_ms, whole["flaky"].wait_ms),
            (Some(7), Some(4)),
            "timed from the resumed try"
        );
        assert_eq!(whole["flaky"].attempts, 2);
        for cut in 0..=events.len() {
            for second in cut..=events.len() {
                let mut fold = StepFold::default();
                fold.apply(&events[..cut]);
                fold.apply(&events[cut..second]);
                fold.apply(&events[second..]);
                assert_eq!(fold.views(), &whole, "cut at {cut} and {second}");
            }
        }
    }
}
