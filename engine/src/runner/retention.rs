//! Which recorded runs to forget: `cairn runs gc` locally and
//! `POST /v1/runs/gc` on a server choose them the same way.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::RunStatus;
use crate::store::RunRecord;

/// Can `cairn resume` still continue this run, as it was told when it
/// stopped? A run killed outright (still `running`, nothing running it) and
/// one cancelled (Ctrl-C, SIGTERM, a cancel) both can; retention keeps
/// them unless told otherwise.
pub fn resumable(run: &RunRecord) -> bool {
    matches!(run.status, RunStatus::Running | RunStatus::Cancelled)
}

/// Which runs to forget: those that ended more than `older_than` before
/// `now_ms` (an interrupted run counts from its start).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub now_ms: u64,
    pub older_than: Duration,
    /// Forget resumable runs of that age too.
    pub include_interrupted: bool,
}

/// What [`Retention::select`] decided.
#[derive(Debug)]
pub struct Selection<'r> {
    pub expired: Vec<&'r RunRecord>,
    /// Resumable runs old enough to go, kept because they can be resumed.
    pub kept_interrupted: usize,
}

impl Retention {
    /// The runs to forget. A run `live` says is being run now is never
    /// one of them, however old its start.
    pub fn select<'r>(
        &self,
        runs: &'r [RunRecord],
        live: impl Fn(&RunRecord) -> bool,
    ) -> Selection<'r> {
        let mut selection = Selection {
            expired: Vec::new(),
            kept_interrupted: 0,
        };
        let cutoff = self
            .now_ms
            .saturating_sub(u64::try_from(self.older_than.as_millis()).unwrap_or(u64::MAX));
        for run in runs {
            let interrupted = run.status == RunStatus::Running;
            let ended = if interrupted {
                run.started_ms
            } else {
                run.finished_ms.unwrap_or(run.started_ms)
            };
            if ended > cutoff || live(run) {
                continue;
            }
            if resumable(run) && !self.include_interrupted {
                selection.kept_interrupted += 1;
            } else {
                selection.expired.push(run);
            }
        }
        selection
    }
}

/// A run forgotten (or, in a dry run, to be).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ForgottenRun {
    pub id: String,
    pub pipeline: String,
    pub status: String,
    pub started_ms: u64,
}

/// What a gc of runs forgot (or, in a dry run, would forget): what
/// `cairn runs gc --json` prints and `POST /v1/runs/gc` answers.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunsGcReport {
    pub dry_run: bool,
    /// The ids of the runs forgotten.
    pub removed: Vec<String>,
    /// The same runs, described.
    pub removed_runs: Vec<ForgottenRun>,
    /// Resumable runs old enough, kept (unless `include_interrupted`).
    pub kept_interrupted: usize,
    /// Journal bytes freed.
    pub freed_bytes: u64,
}

impl RunsGcReport {
    pub fn new(
        dry_run: bool,
        removed: &[RunRecord],
        kept_interrupted: usize,
        freed_bytes: u64,
    ) -> Self {
        Self {
            dry_run,
            removed: removed.iter().map(|r| r.id.0.clone()).collect(),
            removed_runs: removed
                .iter()
                .map(|r| ForgottenRun {
                    id: r.id.0.clone(),
                    pipeline: r.pipeline.clone(),
                    status: r.status.as_str().to_owned(),
                    started_ms: r.started_ms,
                })
                .collect(),
            kept_interrupted,
            freed_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RunId;

    fn record(id: &str, status: &str, started_ms: u64, finished_ms: Option<u64>) -> RunRecord {
        let status = serde_json::from_value(serde_json::json!(status)).expect("a run status word");
        RunRecord {
            id: RunId(id.into()),
            pipeline: "p".into(),
            manifest: "m".into(),
            manifest_hash: "h".into(),
            started_ms,
            finished_ms,
            status,
            steps: 1,
            replay_of: None,
            admission: None,
            tenant: None,
            bundle: None,
            tally: None,
        }
    }

    fn selected(retention: &Retention, runs: &[RunRecord], live: &[&str]) -> (Vec<String>, usize) {
        let selection = retention.select(runs, |run| live.contains(&run.id.0.as_str()));
        let ids = selection.expired.iter().map(|r| r.id.0.clone()).collect();
        (ids, selection.kept_interrupted)
    }

    #[test]
    fn retention_counts_age_from_the_end_and_keeps_resumable_and_live_runs() {
        let day = 86_400_000;
        let runs = [
            // Started 40 days ago but ended 10 days ago: young.
            record("long", "succeeded", 60 * day, Some(90 * day)),
            record("old", "failed", 10 * day, Some(10 * day + 5)),
            record("cancelled", "cancelled", 20 * day, Some(20 * day)),
            record("interrupted", "running", 5 * day, None),
            record("fresh", "running", 99 * day, None),
            // Running for 50 days now: old, but being run.
            record("live", "running", 50 * day, None),
        ];
        let mut retention = Retention {
            now_ms: 100 * day,
            older_than: Duration::from_millis(30 * day),
            include_interrupted: false,
        };
        // Cancelled (Ctrl-C, SIGTERM) and interrupted runs can be resumed.
        assert_eq!(
            selected(&retention, &runs, &["live"]),
            (vec!["old".to_owned()], 2)
        );
        retention.include_interrupted = true;
        assert_eq!(
            selected(&retention, &runs, &["live"]),
            (
                vec![
                    "old".to_owned(),
                    "cancelled".to_owned(),
                    "interrupted".to_owned()
                ],
                0
            )
        );
        // Nothing live: the long-running one is interrupted, and old.
        assert_eq!(selected(&retention, &runs, &[]).0.len(), 4);
        // A retention longer than the epoch selects nothing, without overflow.
        retention.older_than = Duration::MAX;
        assert_eq!(selected(&retention, &runs, &[]), (vec![], 0));
    }
}
