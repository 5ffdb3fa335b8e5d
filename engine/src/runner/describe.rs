//! Describing a recorded run from its journal: each step's last word.

use std::collections::BTreeMap;

use crate::store::JournalEvent;

/// Per-step status from the journal: the last word on each step.
///
/// `attempts` counts attempts that ran in the sandbox (over every element
/// and every resume), `duration_ms` runs from the step's first attempt
/// starting (or, for a step that never ran, from its being queued) to its
/// end, and `wait_ms` is the time between being queued and that first
/// attempt: the same figures `cairn run` prints in its summary.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct StepView {
    /// `pending`, `queued`, `running`, `succeeded`, `cached`, `resumed`,
    /// `failed`, `skipped` or `cancelled`.
    pub status: String,
    /// A failure's message or a skip's reason.
    pub detail: String,
    pub duration_ms: Option<u64>,
    pub wait_ms: Option<u64>,
    pub attempts: u32,
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
            output_hash: None,
        })
    }
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
            JournalEvent::AttemptStarted { at_ms, step, .. } => {
                first_attempt.entry(step.clone()).or_insert(*at_ms);
                let v = entry(&mut views, step);
                v.attempts += 1;
                v.status = "running".into();
            }
            JournalEvent::StepSucceeded {
                at_ms,
                step,
                source,
                output_hash,
                ..
            } => {
                let (duration, wait) = timing(step, *at_ms, &scheduled, &first_attempt);
                let v = entry(&mut views, step);
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
