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

pub fn step_views(events: &[JournalEvent]) -> BTreeMap<String, StepView> {
    fn entry<'v>(views: &'v mut BTreeMap<String, StepView>, step: &str) -> &'v mut StepView {
        views.entry(step.to_owned()).or_insert(StepView {
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
    // Steps seen with an element index: mapped.
    let mut mapped = std::collections::HashSet::new();
    let mut views = BTreeMap::new();
    let mut scheduled: BTreeMap<String, u64> = BTreeMap::new();
    let mut first_attempt: BTreeMap<String, u64> = BTreeMap::new();
    // From the first attempt (or from being queued) to `end`; and the wait.
    let timing =
        |step: &str, end: u64, scheduled: &BTreeMap<String, u64>, first: &BTreeMap<String, u64>| {
            let queued = scheduled.get(step).copied();
            let ran = first.get(step).copied();
            let from = ran.or(queued);
            (
                from.map(|f| end.saturating_sub(f)),
                queued.map(|q| ran.map_or(0, |r| r.saturating_sub(q))),
            )
        };
    for event in events {
        match event {
            JournalEvent::StepScheduled { at_ms, step } => {
                scheduled.insert(step.clone(), *at_ms);
                // A resumed run schedules the step again: time this try.
                first_attempt.remove(step);
                let v = entry(&mut views, step);
                v.status = "queued".into();
            }
            JournalEvent::AttemptStarted {
                at_ms, step, index, ..
            } => {
                if index.is_some() {
                    mapped.insert(step.clone());
                }
                first_attempt.entry(step.clone()).or_insert(*at_ms);
                let v = entry(&mut views, step);
                v.attempts += 1;
                v.status = "running".into();
            }
            JournalEvent::AttemptFinished { step, fuel, .. } => {
                entry(&mut views, step).fuel += fuel;
            }
            JournalEvent::StepSucceeded {
                at_ms,
                step,
                source,
                output_hash,
                keys,
            } => {
                let (duration, wait) = timing(step, *at_ms, &scheduled, &first_attempt);
                let is_mapped = mapped.contains(step) || keys.len() != 1;
                let v = entry(&mut views, step);
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
                let (duration, wait) = timing(step, *at_ms, &scheduled, &first_attempt);
                let v = entry(&mut views, step);
                v.status = "failed".into();
                v.detail = message.clone();
                (v.duration_ms, v.wait_ms) = (duration, wait);
            }
            JournalEvent::StepSkipped { step, reason, .. } => {
                let v = entry(&mut views, step);
                v.status = "skipped".into();
                v.detail = reason.clone();
            }
            JournalEvent::StepCancelled { step, .. } => {
                entry(&mut views, step).status = "cancelled".into()
            }
            _ => {}
        }
    }
    views
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
