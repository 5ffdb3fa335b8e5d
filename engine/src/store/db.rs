//! The embedded store: sled 0.34 under `<store>/db`, large outputs as blob
//! files under `<store>/blobs`.
//!
//! sled's durability model, and how Cairn lives with it:
//! - Writes reach the OS page cache at once and are fsynced by a background
//!   flush every 500 ms, or when [`Store::flush`] is called. A crash (even
//!   `kill -9`) loses at most the writes since the last flush, and recovery
//!   restores a consistent state.
//! - A step's result and the journal event that says it succeeded are
//!   written in one transaction across both trees: after any crash, a
//!   journal that says "succeeded" always has the result to go with it. A
//!   lost tail only means the step runs again on resume.
//! - Cairn flushes when a run starts and when it finishes, and on every
//!   failure, so the record of a finished run is always durable.
//! - sled has been seen to corrupt on unclean stops, so every value carries a
//!   blake3 checksum that is verified on read; a bad result is treated as a
//!   cache miss (it is recomputable), a bad journal or run record is an
//!   error that says what was lost.
//! - sled takes an exclusive lock on its directory: a second `cairn` process
//!   on the same store gets [`StoreError::Locked`] at once, not a hang.
//! - sled can use ~3× the payload on disk, so outputs above
//!   [`BLOB_THRESHOLD`] go to content-addressed files and sled keeps only
//!   their hash.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sled::Transactional;

use super::records::{CacheKey, JournalEvent, ResultMeta, RunId, RunRecord, now_ms};
use super::{CacheStats, Store, StoreError};

thread_local! {
    static EXPECTING_PANIC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// While alive, panics on this thread are expected and caught: a panic hook
/// should stay quiet (see [`panic_expected`]).
struct QuietPanics;

impl QuietPanics {
    fn begin() -> Self {
        EXPECTING_PANIC.with(|f| f.set(true));
        QuietPanics
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        EXPECTING_PANIC.with(|f| f.set(false));
    }
}

/// Is this thread inside code whose panics the store catches and reports?
pub fn panic_expected() -> bool {
    EXPECTING_PANIC.with(|f| f.get())
}

/// Outputs larger than this live in blob files.
pub const BLOB_THRESHOLD: usize = 64 << 10;

pub struct SledStore {
    db: sled::Db,
    results: sled::Tree,
    journal: sled::Tree,
    runs: sled::Tree,
    blobs: PathBuf,
    path: PathBuf,
}

const CHECKSUM: usize = 16;

fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CHECKSUM + payload.len());
    out.extend_from_slice(&blake3::hash(payload).as_bytes()[..CHECKSUM]);
    out.extend_from_slice(payload);
    out
}

fn unseal<'v>(value: &'v [u8], what: &dyn Fn() -> String) -> Result<&'v [u8], String> {
    if value.len() < CHECKSUM {
        return Err(format!("{} is truncated", what()));
    }
    let (sum, payload) = value.split_at(CHECKSUM);
    if &blake3::hash(payload).as_bytes()[..CHECKSUM] != sum {
        return Err(format!("{} fails its checksum", what()));
    }
    Ok(payload)
}

fn encode_result(meta: &ResultMeta, inline: &[u8]) -> Vec<u8> {
    let meta = serde_json::to_vec(meta).expect("result metadata always encodes");
    let mut payload = Vec::with_capacity(4 + meta.len() + inline.len());
    payload.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    payload.extend_from_slice(&meta);
    payload.extend_from_slice(inline);
    seal(&payload)
}

fn decode_result(value: &[u8], key: &CacheKey) -> Result<(ResultMeta, Vec<u8>), String> {
    let what = || format!("result {key}");
    let payload = unseal(value, &what)?;
    let len = payload
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
    let len = len
        .filter(|&l| 4 + l <= payload.len())
        .ok_or_else(|| format!("{} is malformed", what()))?;
    let meta: ResultMeta = serde_json::from_slice(&payload[4..4 + len])
        .map_err(|e| format!("{} is malformed: {e}", what()))?;
    Ok((meta, payload[4 + len..].to_vec()))
}

fn journal_key(run: &RunId, seq: u64) -> Vec<u8> {
    let mut key = run.0.as_bytes().to_vec();
    key.push(b'/');
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn journal_prefix(run: &RunId) -> Vec<u8> {
    let mut key = run.0.as_bytes().to_vec();
    key.push(b'/');
    key
}

impl SledStore {
    /// Open (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("db");
        let blobs = dir.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(|e| StoreError::io(&blobs, e))?;
        let config = sled::Config::new().path(&path).flush_every_ms(Some(500));
        // sled can panic on some kinds of on-disk damage; that is a damaged
        // store to report, not a crash.
        let opened = {
            let _quiet = QuietPanics::begin();
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()))
        };
        let db = match opened {
            Ok(result) => result.map_err(|e| open_error(&path, e))?,
            Err(panic) => {
                let reason = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "sled panicked while opening it".into());
                return Err(StoreError::Unreadable { path, reason });
            }
        };
        check_identity(&db, &path)?;
        let tree = |name: &str| db.open_tree(name).map_err(|e| open_error(&path, e));
        Ok(Self {
            results: tree("results")?,
            journal: tree("journal")?,
            runs: tree("runs")?,
            db,
            blobs,
            path,
        })
    }

    fn blob_path(&self, hash: &str) -> PathBuf {
        self.blobs.join(hash)
    }

    fn write_blob(&self, hash: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.blob_path(hash);
        if path.exists() {
            return Ok(());
        }
        let mut file = tempfile::NamedTempFile::new_in(&self.blobs)
            .map_err(|e| StoreError::io(&self.blobs, e))?;
        file.write_all(bytes)
            .and_then(|()| file.as_file().sync_data())
            .map_err(|e| StoreError::io(file.path(), e))?;
        file.persist(&path)
            .map_err(|e| StoreError::io(&path, e.error))?;
        Ok(())
    }

    fn read_blob(&self, meta: &ResultMeta) -> Result<Vec<u8>, String> {
        let path = self.blob_path(&meta.output_hash);
        let bytes = std::fs::read(&path).map_err(|e| format!("blob {}: {e}", path.display()))?;
        if blake3::hash(&bytes).to_hex().as_str() != meta.output_hash {
            return Err(format!("blob {} fails its checksum", path.display()));
        }
        Ok(bytes)
    }

    fn sled_error(&self, e: sled::Error) -> StoreError {
        open_error(&self.path, e)
    }
}

/// The key that proves a sled directory is the store Cairn created.
const IDENTITY_KEY: &[u8] = b"cairn-store-format";
const IDENTITY: &[u8] = b"1";

/// sled may open a damaged directory as a fresh, empty database. A marker
/// file in that directory records that a store was created here; if the marker is
/// present but sled's identity key is not, the index was lost and saying
/// "no runs" would hide that.
fn check_identity(db: &sled::Db, path: &Path) -> Result<(), StoreError> {
    // Inside sled's directory, so moving a damaged store aside moves it too.
    let marker = path.join("cairn-store.json");
    let identity = db.get(IDENTITY_KEY).map_err(|e| open_error(path, e))?;
    match identity {
        Some(value) if value.as_ref() == IDENTITY => Ok(()),
        Some(other) => Err(StoreError::Unreadable {
            path: path.to_owned(),
            reason: format!("unknown store format {:?}", String::from_utf8_lossy(&other)),
        }),
        None if marker.exists() => Err(StoreError::Unreadable {
            path: path.to_owned(),
            reason: "its index is missing or was reset (damaged files?)".into(),
        }),
        None => {
            db.insert(IDENTITY_KEY, IDENTITY)
                .map_err(|e| open_error(path, e))?;
            db.flush().map_err(|e| open_error(path, e))?;
            let text = format!("{{\"format\": 1, \"created_ms\": {}}}\n", now_ms());
            std::fs::write(&marker, text).map_err(|e| StoreError::io(&marker, e))?;
            Ok(())
        }
    }
}

fn open_error(path: &Path, e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") =>
        {
            StoreError::Locked {
                path: path.to_owned(),
            }
        }
        sled::Error::Io(io) => StoreError::io(path, io),
        other => StoreError::Unreadable {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    }
}

impl Store for SledStore {
    fn result(
        &self,
        key: &CacheKey,
        max_age: Option<Duration>,
    ) -> Result<Option<(ResultMeta, Vec<u8>)>, StoreError> {
        let Some(value) = self
            .results
            .get(key.0.as_bytes())
            .map_err(|e| self.sled_error(e))?
        else {
            return Ok(None);
        };
        let decoded = decode_result(&value, key).and_then(|(meta, inline)| {
            let bytes = if inline.is_empty() && meta.size > 0 {
                self.read_blob(&meta)?
            } else {
                inline
            };
            Ok((meta, bytes))
        });
        match decoded {
            Ok((meta, bytes)) => {
                if max_age.is_some_and(|age| {
                    now_ms().saturating_sub(meta.created_ms) > age.as_millis() as u64
                }) {
                    return Ok(None);
                }
                Ok(Some((meta, bytes)))
            }
            Err(reason) => {
                // Results are recomputable: drop the bad one and miss.
                tracing::warn!(
                    "discarding a damaged cached result: {reason}; the step will run again"
                );
                let _ = self.results.remove(key.0.as_bytes());
                Ok(None)
            }
        }
    }

    fn commit_result(
        &self,
        key: &CacheKey,
        meta: &ResultMeta,
        output: &[u8],
        run: &RunId,
        event: &JournalEvent,
    ) -> Result<(), StoreError> {
        let inline: &[u8] = if output.len() > BLOB_THRESHOLD {
            self.write_blob(&meta.output_hash, output)?;
            &[]
        } else {
            output
        };
        let value = encode_result(meta, inline);
        let event = seal(&serde_json::to_vec(event).expect("journal events always encode"));
        let seq = self.db.generate_id().map_err(|e| self.sled_error(e))?;
        let journal_key = journal_key(run, seq);
        (&self.results, &self.journal)
            .transaction(|(results, journal)| {
                results.insert(key.0.as_bytes(), value.as_slice())?;
                journal.insert(journal_key.as_slice(), event.as_slice())?;
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => self.sled_error(e),
                sled::transaction::TransactionError::Abort(()) => StoreError::Unreadable {
                    path: self.path.clone(),
                    reason: "transaction aborted".into(),
                },
            })
    }

    fn append_all(&self, run: &RunId, events: &[JournalEvent]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for event in events {
            let seq = self.db.generate_id().map_err(|e| self.sled_error(e))?;
            let value = seal(&serde_json::to_vec(event).expect("journal events always encode"));
            batch.insert(journal_key(run, seq), value);
        }
        self.journal
            .apply_batch(batch)
            .map_err(|e| self.sled_error(e))?;
        Ok(())
    }

    fn journal(&self, run: &RunId) -> Result<Vec<JournalEvent>, StoreError> {
        let mut events = Vec::new();
        for entry in self.journal.scan_prefix(journal_prefix(run)) {
            let (key, value) = entry.map_err(|e| self.sled_error(e))?;
            let what = || {
                format!(
                    "journal entry {:?} of run {run}",
                    String::from_utf8_lossy(&key)
                )
            };
            let payload =
                unseal(&value, &what).map_err(|reason| self.corrupt_journal(run, reason))?;
            let event = serde_json::from_slice(payload)
                .map_err(|e| self.corrupt_journal(run, format!("{}: {e}", what())))?;
            events.push(event);
        }
        Ok(events)
    }

    fn put_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        let value = seal(&serde_json::to_vec(run).expect("run records always encode"));
        self.runs
            .insert(run.id.0.as_bytes(), value)
            .map_err(|e| self.sled_error(e))?;
        Ok(())
    }

    fn run(&self, id: &RunId) -> Result<Option<RunRecord>, StoreError> {
        let matches: Vec<RunRecord> = self
            .runs
            .scan_prefix(id.0.as_bytes())
            .map(|entry| {
                let (_, value) = entry.map_err(|e| self.sled_error(e))?;
                self.decode_run(&value)
            })
            .collect::<Result<_, _>>()?;
        match matches.len() {
            0 => Ok(None),
            1 => Ok(matches.into_iter().next()),
            n => Err(StoreError::Ambiguous {
                prefix: id.0.clone(),
                count: n,
            }),
        }
    }

    fn runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.runs
            .iter()
            .map(|entry| {
                let (_, value) = entry.map_err(|e| self.sled_error(e))?;
                self.decode_run(&value)
            })
            .collect()
    }

    fn cache_stats(&self) -> Result<CacheStats, StoreError> {
        let mut stats = CacheStats::default();
        for entry in self.results.iter() {
            let (key, value) = entry.map_err(|e| self.sled_error(e))?;
            stats.entries += 1;
            stats.index_bytes += (key.len() + value.len()) as u64;
            let Ok(key) = <[u8; 32]>::try_from(key.as_ref()) else {
                continue;
            };
            if let Ok((meta, inline)) =
                decode_result(&value, &CacheKey(blake3::Hash::from_bytes(key)))
            {
                stats.output_bytes += meta.size;
                if inline.is_empty() && meta.size > 0 {
                    stats.blobs += 1;
                }
                stats.oldest_ms = Some(
                    stats
                        .oldest_ms
                        .map_or(meta.created_ms, |o: u64| o.min(meta.created_ms)),
                );
            }
        }
        stats.disk_bytes = dir_size(&self.path) + dir_size(&self.blobs);
        Ok(stats)
    }

    fn cache_gc(&self, older_than: Option<Duration>) -> Result<u64, StoreError> {
        let cutoff = older_than.map(|age| now_ms().saturating_sub(age.as_millis() as u64));
        let mut removed = 0;
        let mut live_blobs = std::collections::HashSet::new();
        for entry in self.results.iter() {
            let (key, value) = entry.map_err(|e| self.sled_error(e))?;
            let decoded = <[u8; 32]>::try_from(key.as_ref())
                .ok()
                .and_then(|k| decode_result(&value, &CacheKey(blake3::Hash::from_bytes(k))).ok());
            let expired = match (&decoded, cutoff) {
                (None, _) => true,
                (Some(_), None) => true,
                (Some((meta, _)), Some(cutoff)) => meta.created_ms < cutoff,
            };
            if expired {
                self.results.remove(&key).map_err(|e| self.sled_error(e))?;
                removed += 1;
            } else if let Some((meta, inline)) = decoded
                && inline.is_empty()
            {
                live_blobs.insert(meta.output_hash);
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.blobs) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !live_blobs.contains(&name) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        self.flush()?;
        Ok(removed)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| self.sled_error(e))?;
        Ok(())
    }
}

impl SledStore {
    fn decode_run(&self, value: &[u8]) -> Result<RunRecord, StoreError> {
        let what = || "a run record".to_owned();
        let payload = unseal(value, &what).map_err(|reason| self.corrupt_runs(reason))?;
        serde_json::from_slice(payload)
            .map_err(|e| self.corrupt_runs(format!("a run record is malformed: {e}")))
    }

    fn corrupt_journal(&self, run: &RunId, reason: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            reason: format!(
                "the journal of run {run} is damaged ({reason}); that run can no longer be resumed or replayed"
            ),
        }
    }

    fn corrupt_runs(&self, reason: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            reason: format!("{reason}; run history is damaged"),
        }
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(output: &[u8]) -> ResultMeta {
        ResultMeta {
            output_hash: blake3::hash(output).to_hex().to_string(),
            size: output.len() as u64,
            component: "c".into(),
            input_hash: "i".into(),
            fuel: 1,
            duration_us: 2,
            created_ms: now_ms(),
        }
    }

    fn event() -> JournalEvent {
        JournalEvent::StepScheduled {
            at_ms: 1,
            step: "a".into(),
        }
    }

    #[test]
    fn results_round_trip_inline_and_as_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let run = RunId::new();
        for output in [b"small".to_vec(), vec![7u8; BLOB_THRESHOLD + 1]] {
            let key = CacheKey(blake3::hash(&output));
            store
                .commit_result(&key, &meta(&output), &output, &run, &event())
                .unwrap();
            let (got_meta, got) = store.result(&key, None).unwrap().unwrap();
            assert_eq!(got, output);
            assert_eq!(got_meta, meta(&output).clone_with_time(got_meta.created_ms));
        }
        assert_eq!(
            store.journal(&run).unwrap().len(),
            2,
            "each result came with its journal event"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("blobs")).unwrap().count(),
            1
        );
    }

    impl ResultMeta {
        fn clone_with_time(mut self, created_ms: u64) -> Self {
            self.created_ms = created_ms;
            self
        }
    }

    #[test]
    fn damaged_blob_is_a_miss_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let output = vec![1u8; BLOB_THRESHOLD * 2];
        let key = CacheKey(blake3::hash(&output));
        store
            .commit_result(&key, &meta(&output), &output, &RunId::new(), &event())
            .unwrap();
        let blob = std::fs::read_dir(dir.path().join("blobs"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::write(&blob, b"tampered").unwrap();
        assert!(store.result(&key, None).unwrap().is_none());
    }

    #[test]
    fn ttl_hides_old_results_and_gc_removes_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let key = CacheKey(blake3::hash(b"k"));
        let mut old = meta(b"v");
        old.created_ms -= 60_000;
        store
            .commit_result(&key, &old, b"v", &RunId::new(), &event())
            .unwrap();
        assert!(
            store
                .result(&key, Some(Duration::from_secs(30)))
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .result(&key, Some(Duration::from_secs(120)))
                .unwrap()
                .is_some()
        );
        assert_eq!(store.cache_gc(Some(Duration::from_secs(120))).unwrap(), 0);
        assert_eq!(store.cache_gc(Some(Duration::from_secs(30))).unwrap(), 1);
        assert_eq!(store.cache_stats().unwrap().entries, 0);
    }

    #[test]
    fn journal_keeps_order_per_run_and_runs_resolve_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let (a, b) = (
            RunId("00000000000aaaa1".into()),
            RunId("00000000000bbbb2".into()),
        );
        for i in 0..20 {
            store
                .append(
                    &a,
                    &JournalEvent::StepScheduled {
                        at_ms: i,
                        step: format!("s{i}"),
                    },
                )
                .unwrap();
            store
                .append(
                    &b,
                    &JournalEvent::StepScheduled {
                        at_ms: i,
                        step: "other".into(),
                    },
                )
                .unwrap();
        }
        let events = store.journal(&a).unwrap();
        assert_eq!(events.len(), 20);
        assert_eq!(
            events[13],
            JournalEvent::StepScheduled {
                at_ms: 13,
                step: "s13".into()
            }
        );
        for id in [&a, &b] {
            store
                .put_run(&RunRecord {
                    id: id.clone(),
                    pipeline: "p".into(),
                    manifest: "m".into(),
                    manifest_hash: "h".into(),
                    started_ms: 0,
                    finished_ms: None,
                    status: "running".into(),
                    steps: 1,
                    replay_of: None,
                })
                .unwrap();
        }
        assert_eq!(
            store
                .run(&RunId("00000000000b".into()))
                .unwrap()
                .unwrap()
                .id,
            b
        );
        assert!(matches!(
            store.run(&RunId("0000".into())),
            Err(StoreError::Ambiguous { count: 2, .. })
        ));
    }

    #[test]
    fn a_second_open_of_the_same_store_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledStore::open(dir.path()).unwrap();
        let err = SledStore::open(dir.path())
            .err()
            .expect("second open must fail");
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("another cairn process"), "{err}");
    }
}
