//! One step of a recorded run, looked at closely: the output it was left
//! with, the input it was given (rebuilt from its dependencies' stored
//! outputs and checked against the hash its results keep), and why it ran
//! or was answered from the cache.

use serde_json::Value;

use crate::plan::Plan;
use crate::schedule::{decode_output, unit_inputs};
use crate::store::{CacheKey, JournalEvent, ResultMeta, RunRecord, StepSource, Store, StoreError};

/// A succeeded step's results, read back from the store.
#[derive(Debug, Clone)]
pub struct StoredOutput {
    /// The cache key of each unit (one for a plain step, one per element).
    pub keys: Vec<String>,
    /// What the store keeps beside each unit's bytes, in the same order.
    pub metas: Vec<ResultMeta>,
    /// Each unit's bytes, in the same order.
    pub units: Vec<Vec<u8>>,
    /// Whether the step is mapped (its output is the list of its units').
    pub mapped: bool,
}

impl StoredOutput {
    /// The output as the steps after it saw it: the document of a plain
    /// step, the list of a mapped step's elements; each unit decoded by
    /// `decode`.
    pub fn value(&self, decode: impl Fn(&[u8]) -> Value) -> Value {
        document(self.units.iter().map(|u| decode(u)).collect(), self.mapped)
    }
}

/// A step's document from its units' values: the one value of a plain
/// step, the list of a mapped step's elements.
fn document(mut values: Vec<Value>, mapped: bool) -> Value {
    if mapped || values.len() != 1 {
        Value::Array(values)
    } else {
        values.pop().unwrap_or(Value::Null)
    }
}

/// Why a step's output cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum DetailError {
    #[error("step {0} has not succeeded in this run")]
    NotSucceeded(String),
    #[error("step {step}'s result is no longer stored (the cache was collected)")]
    Gone { step: String },
    #[error("the run's pipeline no longer loads, so its steps' inputs cannot be rebuilt")]
    NoPlan,
    #[error("the run has no step {0}")]
    NoStep(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The results step `name` was last left with in `journal`.
pub fn stored_output(
    store: &dyn Store,
    journal: &[JournalEvent],
    name: &str,
) -> Result<StoredOutput, DetailError> {
    let mapped = journal.iter().any(
        |e| matches!(e, JournalEvent::ItemSucceeded { step, index: Some(_), .. } if step == name),
    );
    let keys = journal
        .iter()
        .rev()
        .find_map(|e| match e {
            JournalEvent::StepSucceeded { step, keys, .. } if step == name => Some(keys.clone()),
            _ => None,
        })
        .ok_or_else(|| DetailError::NotSucceeded(name.to_owned()))?;
    let gone = || DetailError::Gone {
        step: name.to_owned(),
    };
    let mut metas = Vec::with_capacity(keys.len());
    let mut units = Vec::with_capacity(keys.len());
    for key in &keys {
        let key = CacheKey::from_hex(key).ok_or_else(gone)?;
        let (meta, bytes) = store.result(&key, None)?.ok_or_else(gone)?;
        metas.push(meta);
        units.push(bytes);
    }
    Ok(StoredOutput {
        keys,
        metas,
        units,
        mapped,
    })
}

/// The input a step of a recorded run was given, rebuilt.
#[derive(Debug, Clone)]
pub struct RebuiltInput {
    /// Each unit's input bytes (one for a plain step, one per element).
    pub units: Vec<Vec<u8>>,
    /// Each unit's input as a value (a command's is its stdin text).
    pub values: Vec<Value>,
    pub mapped: bool,
    /// Whether every unit's bytes hash to the input hash its stored result
    /// keeps: `None` when the step has no stored result to compare with.
    pub verified: Option<bool>,
    /// Why the input could not be rendered (as the step's failure would
    /// say), when it could not.
    pub unrenderable: Option<String>,
}

impl RebuiltInput {
    /// The input as the step saw it: the document of a plain step, the
    /// list of a mapped step's elements.
    pub fn value(self) -> Value {
        document(self.values, self.mapped)
    }
}

/// Rebuild the input step `name` of a run planned as `plan` was given, from
/// its dependencies' outputs in `journal` (read back from `store`).
pub fn rebuild_input(
    store: &dyn Store,
    plan: &Plan,
    journal: &[JournalEvent],
    name: &str,
) -> Result<RebuiltInput, DetailError> {
    let id = plan
        .id(name)
        .ok_or_else(|| DetailError::NoStep(name.to_owned()))?;
    let step = &plan.steps[id];
    let mut produced: Vec<Option<Value>> = vec![None; plan.steps.len()];
    for &dep in &step.deps {
        let upstream = &plan.steps[dep];
        match stored_output(store, journal, &upstream.name) {
            Ok(out) => produced[dep] = Some(out.value(|bytes| decode_output(upstream, bytes))),
            // A dependency that did not succeed: the step never had an input.
            Err(DetailError::NotSucceeded(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let units = match unit_inputs(plan, &produced, id) {
        Ok(units) => units,
        Err(message) => {
            return Ok(RebuiltInput {
                units: Vec::new(),
                values: Vec::new(),
                mapped: step.map.is_some(),
                verified: None,
                unrenderable: Some(message),
            });
        }
    };
    let verified = match stored_output(store, journal, name) {
        Ok(own) => Some(
            own.metas.len() == units.len()
                && own
                    .metas
                    .iter()
                    .zip(&units)
                    .all(|(meta, input)| meta.input_hash == blake3::hash(input)),
        ),
        Err(DetailError::NotSucceeded(_) | DetailError::Gone { .. }) => None,
        Err(e) => return Err(e),
    };
    // Inputs are encoded the way outputs are: JSON for a task, text for a command.
    let values = units.iter().map(|u| decode_output(step, u)).collect();
    Ok(RebuiltInput {
        units,
        values,
        mapped: step.map.is_some(),
        verified,
        unrenderable: None,
    })
}

/// How many earlier runs of the pipeline are read, newest first, to find
/// the one a step's key is compared with: each is a whole journal (tens of
/// MB for a 100 000-step run), read when a panel asks why.
const LOOK_BACK: usize = 5;

/// Why step `name` of `record` ran or was answered from the cache, in a
/// sentence: for a step that ran, its key is compared with the one the
/// same step had in the latest earlier run of the same pipeline, through
/// the parts of the key the store keeps (component and input).
pub fn cache_reason(
    store: &dyn Store,
    record: &RunRecord,
    journal: &[JournalEvent],
    name: &str,
) -> Result<Option<String>, DetailError> {
    let Some((source, keys)) = journal.iter().rev().find_map(|e| match e {
        JournalEvent::StepSucceeded {
            step, source, keys, ..
        } if step == name => Some((*source, keys.clone())),
        _ => None,
    }) else {
        return Ok(None);
    };
    let executed: Vec<&str> = journal
        .iter()
        .filter_map(|e| match e {
            JournalEvent::ItemSucceeded {
                step, key, cached, ..
            } if step == name && !cached => Some(key.as_str()),
            _ => None,
        })
        .collect();
    match source {
        StepSource::Cached => {
            return Ok(Some(if keys.len() == 1 {
                "A cache hit: its key had a stored result, so nothing ran.".to_owned()
            } else {
                "A cache hit: every element's key had a stored result, so nothing ran.".to_owned()
            }));
        }
        StepSource::Journal => {
            return Ok(Some(
                "Kept from the run this one resumes: it had succeeded there.".into(),
            ));
        }
        StepSource::Executed => {}
    }
    let part = if keys.len() > 1 {
        format!("{} of its {} elements ran. ", executed.len(), keys.len())
    } else {
        String::new()
    };
    let Some(first) = executed.first().and_then(|k| CacheKey::from_hex(k)) else {
        return Ok(Some(format!("{part}It ran.")));
    };
    // The latest earlier run of the same pipeline in which the step succeeded.
    let mut earlier: Vec<RunRecord> = store
        .runs()?
        .into_iter()
        .filter(|r| r.pipeline == record.pipeline && r.id < record.id && r.tenant == record.tenant)
        .collect();
    earlier.sort_by(|a, b| b.id.cmp(&a.id));
    let mut before = None;
    for run in earlier.iter().take(LOOK_BACK) {
        let Ok(events) = store.journal(&run.id) else {
            continue;
        };
        let found = events.iter().rev().find_map(|e| match e {
            JournalEvent::StepSucceeded { step, keys, .. } if step == name => Some(keys.clone()),
            _ => None,
        });
        if let Some(keys) = found {
            before = Some((run.id.clone(), keys));
            break;
        }
    }
    let Some((run, old_keys)) = before else {
        return Ok(Some(format!(
            "{part}Not a cache hit: no earlier run of {} (of the last {LOOK_BACK}) has this \
             step succeeded, so this is the first result for its key.",
            record.pipeline
        )));
    };
    if old_keys.iter().any(|k| k == executed[0]) {
        return Ok(Some(format!(
            "{part}Not a cache hit, though its key is the one it had in run {run}: \
             this run refreshed the cache (--refresh) or asked for younger results \
             (--max-age), the step does not use the cache, or the result had been collected."
        )));
    }
    let now = store.result(&first, None)?.map(|(meta, _)| meta);
    let then = match old_keys.first().and_then(|k| CacheKey::from_hex(k)) {
        Some(key) => store.result(&key, None)?.map(|(meta, _)| meta),
        None => None,
    };
    let why = match (now, then) {
        (Some(now), Some(then)) => {
            let mut changed = Vec::new();
            if now.component != then.component {
                changed.push("its component");
            }
            if now.input_hash != then.input_hash {
                changed.push("its input");
            }
            if changed.is_empty() {
                "what else its key covers changed (its grants, limits, env or secret values)"
                    .to_owned()
            } else {
                format!("{} changed", changed.join(" and "))
            }
        }
        _ => "its key changed (the earlier result is no longer stored to say how)".to_owned(),
    };
    Ok(Some(format!(
        "{part}Not a cache hit: since run {run}, {why}."
    )))
}
