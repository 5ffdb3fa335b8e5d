//! The embedded store: sled 0.34 under `<store>/db` as the index, with the
//! bulk of the data in append-only files beside it — result bytes in
//! `<store>/packs` ([`super::pack`]), one journal per run in
//! `<store>/journal` ([`super::journal`]), outputs over [`BLOB_THRESHOLD`] in
//! `<store>/blobs` — and run records in sled.
//!
//! sled's durability model, and how Cairn lives with it:
//! - sled buffers writes in its own memory and writes them out (with fsync)
//!   every 500 ms or on [`Store::flush`]; a crash, even `kill -9`, loses what
//!   was written since, and recovery restores a consistent earlier state. An
//!   fsync of sled costs ~0.1–0.7 ms here and one insert ~10 µs, which is
//!   why the per-step writes do not go to sled.
//! - Packs and journals are written with plain `write` calls, so a killed
//!   process loses nothing it wrote; `fdatasync` (on [`Durability::Machine`])
//!   makes them survive a power cut. The scheduler asks for that once per
//!   group of finished steps, before it reports any of them done.
//! - The result index in sled lags behind the packs: a sled insert costs
//!   ~10 µs here, so entries are written by an indexer thread while the
//!   scheduler goes on, and lookups consult the entries still on their way
//!   first. With every batch of entries sled records a *watermark* (segment,
//!   offset) in the same atomic batch; on open, every pack record past the
//!   watermark is indexed again, so after any crash a result whose journal
//!   event survived has its index entry back.
//! - sled has been seen to corrupt on unclean stops, so every value (index
//!   entries, run records) carries a blake3 checksum verified on read, as do
//!   pack and journal frames. A bad result is a cache miss (it is
//!   recomputable); a bad journal or run record is an error that says what
//!   was lost. sled may also open a damaged directory as an empty database:
//!   a marker file catches that.
//! - sled takes an exclusive lock on its directory and is opened first, so a
//!   second `cairn` process on the same store gets [`StoreError::Locked`]
//!   (after waiting [`LOCK_WAIT`] for the lock) and never touches the files
//!   beside it.
//! - sled keeps several copies of what it stores; here it stores ~50 bytes
//!   per result, and the result bytes are written once, in a pack.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use super::journal::Journals;
use super::log;
use super::pack::{self, Location, PackReader, PackWriter};
use super::records::{CacheKey, JournalEvent, ResultMeta, RunId, RunRecord, now_ms};
use super::{CacheStats, Durability, NewResult, Store, StoreError};

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

/// Outputs larger than this live in blob files of their own.
pub const BLOB_THRESHOLD: usize = 64 << 10;

/// The key of the pack watermark in the results tree (cache keys are 32 bytes).
const WATERMARK: &[u8] = b"pack-watermark";

pub struct SledStore {
    db: sled::Db,
    /// Cache key → [`IndexEntry`], plus the [`WATERMARK`].
    results: sled::Tree,
    runs: sled::Tree,
    /// Appends to the packs; held while index entries are handed to the
    /// indexer, so they reach sled in pack order.
    writer: Mutex<PackWriter>,
    /// Index entries in the packs but not yet in sled; lookups see them first.
    overlay: Arc<Mutex<HashMap<[u8; 32], IndexEntry>>>,
    /// Feeds the indexer thread; `None` once the store is dropped.
    to_indexer: Mutex<Option<mpsc::Sender<IndexJob>>>,
    indexer: Option<JoinHandle<()>>,
    reader: PackReader,
    journals: Journals,
    packs: PathBuf,
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

/// What the index knows of a result without reading its pack record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IndexEntry {
    at: Location,
    created_ms: u64,
    size: u64,
    /// The output is in a blob file, not in the pack record.
    blob: bool,
}

const ENTRY_LEN: usize = 4 + 8 + 4 + 8 + 8 + 1;

impl IndexEntry {
    fn new(at: Location, meta: &ResultMeta, blob: bool) -> Self {
        Self {
            at,
            created_ms: meta.created_ms,
            size: meta.size,
            blob,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENTRY_LEN);
        out.extend_from_slice(&self.at.segment.to_le_bytes());
        out.extend_from_slice(&self.at.offset.to_le_bytes());
        out.extend_from_slice(&self.at.len.to_le_bytes());
        out.extend_from_slice(&self.created_ms.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.push(u8::from(self.blob));
        seal(&out)
    }

    fn decode(value: &[u8]) -> Result<Self, String> {
        let payload = unseal(value, &|| "an index entry".to_owned())?;
        let bytes: &[u8; ENTRY_LEN] = payload
            .try_into()
            .map_err(|_| "an index entry has the wrong length".to_owned())?;
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        Ok(Self {
            at: Location {
                segment: u32_at(0),
                offset: u64_at(4),
                len: u32_at(12),
            },
            created_ms: u64_at(16),
            size: u64_at(24),
            blob: bytes[32] == 1,
        })
    }

    fn expired(&self, max_age: Option<Duration>) -> bool {
        max_age.is_some_and(|age| now_ms().saturating_sub(self.created_ms) > age.as_millis() as u64)
    }
}

fn encode_watermark((segment, offset): (u32, u64)) -> Vec<u8> {
    let mut out = segment.to_le_bytes().to_vec();
    out.extend_from_slice(&offset.to_le_bytes());
    seal(&out)
}

fn decode_watermark(value: &[u8]) -> Option<(u32, u64)> {
    let payload = unseal(value, &String::new).ok()?;
    let bytes: &[u8; 12] = payload.try_into().ok()?;
    Some((
        u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")),
        u64::from_le_bytes(bytes[4..].try_into().expect("8 bytes")),
    ))
}

impl SledStore {
    /// Open (creating if needed) the store in `dir`, waiting up to
    /// `LOCK_WAIT` for another process to let go of it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_waiting(dir, LOCK_WAIT)
    }

    /// Open the store in `dir`, or fail with [`StoreError::Locked`] at once
    /// if another process holds it (for readers that have another way in).
    pub fn open_now(dir: &Path) -> Result<Self, StoreError> {
        Self::open_waiting(dir, Duration::ZERO)
    }

    /// Journals held open for appending: one per run in progress.
    pub fn open_journals(&self) -> usize {
        self.journals.open_count()
    }

    fn open_waiting(dir: &Path, wait: Duration) -> Result<Self, StoreError> {
        let path = dir.join("db");
        let blobs = dir.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(|e| StoreError::io(&blobs, e))?;
        let config = sled::Config::new().path(&path).flush_every_ms(Some(500));
        let deadline = std::time::Instant::now() + wait;
        let db = loop {
            match open_sled(&config, &path) {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                opened => break opened?,
            }
        };
        check_identity(&db, &path)?;
        let tree = |name: &str| db.open_tree(name).map_err(|e| open_error(&path, e));
        let packs = dir.join("packs");
        let results = tree("results")?;
        let overlay = Arc::new(Mutex::new(HashMap::new()));
        let (to_indexer, jobs) = mpsc::channel();
        let indexer = {
            let (results, overlay) = (results.clone(), overlay.clone());
            std::thread::Builder::new()
                .name("cairn-indexer".into())
                .spawn(move || index_jobs(&results, &overlay, jobs))
                .map_err(|e| StoreError::io(&path, e))?
        };
        let store = Self {
            results,
            runs: tree("runs")?,
            writer: Mutex::new(PackWriter::open(&packs)?),
            overlay,
            to_indexer: Mutex::new(Some(to_indexer)),
            indexer: Some(indexer),
            reader: PackReader::new(&packs),
            journals: Journals::open(&dir.join("journal"))?,
            db,
            packs,
            blobs,
            path,
        };
        store.recover()?;
        Ok(store)
    }

    /// Index every pack record past the watermark: sled may have lost its
    /// last writes, the packs have not.
    fn recover(&self) -> Result<(), StoreError> {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let watermark = self
            .results
            .get(WATERMARK)
            .map_err(|e| self.sled_error(e))?
            .and_then(|v| decode_watermark(&v))
            .unwrap_or((0, 0));
        let (active, _) = writer.position();
        let mut batch = sled::Batch::default();
        let mut recovered = 0usize;
        for segment in pack::segments(&self.packs)? {
            if segment < watermark.0 {
                continue;
            }
            let mut from = if segment == watermark.0 {
                watermark.1
            } else {
                0
            };
            if from > self.reader.len(segment)? {
                tracing::warn!(
                    "{} is shorter than the index expects; indexing it again",
                    self.reader.path(segment).display()
                );
                from = 0;
            }
            // Only the part past the watermark is read: usually nothing.
            let bytes = self.reader.read_from(segment, from)?;
            let scan = log::scan(&bytes);
            for &(offset, payload) in &scan.records {
                let Some(packed) = pack::decode(payload) else {
                    continue;
                };
                let at = Location {
                    segment,
                    offset: from + offset,
                    len: (payload.len() + log::HEADER) as u32,
                };
                let entry = IndexEntry::new(at, &packed.meta, packed.inline.is_none());
                batch.insert(packed.key.0.as_bytes(), entry.encode());
                recovered += 1;
            }
            let end = from + scan.valid_len;
            if scan.valid_len < bytes.len() as u64 {
                tracing::warn!(
                    "{}: dropping {} damaged or unfinished bytes at offset {end} (cached results there will be computed again)",
                    self.reader.path(segment).display(),
                    bytes.len() as u64 - scan.valid_len
                );
                if segment == active {
                    writer.truncate(end)?;
                }
            }
        }
        if recovered > 0 {
            tracing::info!("re-indexed {recovered} results from the packs");
        }
        batch.insert(WATERMARK, encode_watermark(writer.position()));
        self.results
            .apply_batch(batch)
            .map_err(|e| self.sled_error(e))
    }

    /// Where recorded HTTP responses are kept (beside `blobs/`, which
    /// `cache gc` sweeps).
    fn recordings_dir(&self) -> PathBuf {
        self.blobs.with_file_name("recorded")
    }

    fn blob_path(&self, hash: &blake3::Hash) -> PathBuf {
        self.blobs.join(hash.to_hex().as_str())
    }

    fn write_blob(&self, hash: &blake3::Hash, bytes: &[u8]) -> Result<(), StoreError> {
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
        if blake3::hash(&bytes) != meta.output_hash {
            return Err(format!("blob {} fails its checksum", path.display()));
        }
        Ok(bytes)
    }

    /// The index entry of `result`'s key, if the record it points at is
    /// intact and holds the same output (by hash).
    fn stored_same(&self, result: &NewResult) -> Option<IndexEntry> {
        let key = result.key.0.as_bytes();
        let recent = self
            .overlay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied();
        let entry = match recent {
            Some(entry) => entry,
            None => IndexEntry::decode(&self.results.get(key).ok()??).ok()?,
        };
        let payload = self.reader.read(entry.at).ok()?;
        let packed = pack::decode(&payload)?;
        let same = packed.key == result.key
            && packed.meta.output_hash == result.meta.output_hash
            && packed.inline.is_none() == entry.blob
            && (!entry.blob || self.blob_path(&packed.meta.output_hash).exists());
        same.then_some(entry)
    }

    /// A result's metadata and bytes, read through every checksum.
    fn load(&self, key: &CacheKey, entry: &IndexEntry) -> Result<(ResultMeta, Vec<u8>), String> {
        let mut payload = self.reader.read(entry.at)?;
        let packed = pack::decode(&payload)
            .filter(|p| p.key == *key)
            .ok_or_else(|| {
                format!(
                    "{} at offset {} does not hold result {key}",
                    self.reader.path(entry.at.segment).display(),
                    entry.at.offset
                )
            })?;
        let meta = packed.meta;
        let inline = packed.inline.map(<[u8]>::len);
        match inline {
            Some(len) => {
                // The output ends the record: keep just it, without a copy.
                payload.drain(..payload.len() - len);
                Ok((meta, payload))
            }
            None => {
                let bytes = self.read_blob(&meta)?;
                Ok((meta, bytes))
            }
        }
    }

    fn sled_error(&self, e: sled::Error) -> StoreError {
        open_error(&self.path, e)
    }
}

/// The key that proves a sled directory is the store Cairn created.
const IDENTITY_KEY: &[u8] = b"cairn-store-format";
const IDENTITY: &[u8] = b"2";

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
        Some(value) if value.as_ref() == b"1" => Err(StoreError::Unreadable {
            path: path.to_owned(),
            reason: "it was written by an earlier cairn (store format 1, journals inside sled)"
                .into(),
        }),
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
            let text = format!("{{\"format\": 2, \"created_ms\": {}}}\n", now_ms());
            std::fs::write(&marker, text).map_err(|e| StoreError::io(&marker, e))?;
            Ok(())
        }
    }
}

/// How long opening waits for a locked store before refusing. sled lets go
/// of its lock only when its IO threads drop their handle on the file, a
/// moment after the last `Db` is dropped, so a process that closes the store
/// and opens it again (`cairn resume` does) can find it still locked by
/// itself. A store held by another process is refused after this.
const LOCK_WAIT: Duration = Duration::from_secs(1);

fn open_sled(config: &sled::Config, path: &Path) -> Result<sled::Db, StoreError> {
    // sled can panic on some kinds of on-disk damage; that is a damaged
    // store to report, not a crash.
    let opened = {
        let _quiet = QuietPanics::begin();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()))
    };
    match opened {
        Ok(result) => result.map_err(|e| open_error(path, e)),
        Err(panic) => {
            let reason = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "sled panicked while opening it".into());
            Err(StoreError::Unreadable {
                path: path.to_owned(),
                reason,
            })
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

impl SledStore {
    /// Remove the recorded HTTP responses that no remaining journal names
    /// (their runs were forgotten), and what an interrupted write left;
    /// the bytes freed. It reads every journal, so only when something is
    /// recorded at all, and it keeps everything if a journal cannot be read
    /// (what that run replays from is not known).
    fn sweep_recordings(&self) -> Result<u64, StoreError> {
        let dir = self.recordings_dir();
        let files: Vec<(String, u64)> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .flatten()
                .filter_map(|e| Some((e.file_name().into_string().ok()?, e.metadata().ok()?.len())))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(StoreError::io(&dir, e)),
        };
        if files.is_empty() {
            return Ok(0);
        }
        let mut named = HashSet::new();
        for id in self.journals.runs()? {
            let Ok(events) = self.journals.read(&id) else {
                tracing::warn!("journal of run {id} unreadable: recorded responses kept");
                return Ok(0);
            };
            for event in events {
                if let JournalEvent::AttemptFinished { http, .. } = event {
                    named.extend(http.into_iter().map(|record| record.response));
                }
            }
        }
        let mut freed = 0;
        for (name, len) in files {
            if named.contains(&name) {
                continue;
            }
            let path = dir.join(&name);
            match std::fs::remove_file(&path) {
                Ok(()) => freed += len,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(&path, e)),
            }
        }
        Ok(freed)
    }
}

impl Store for SledStore {
    fn put_recording(&self, bytes: &[u8]) -> Result<blake3::Hash, StoreError> {
        let dir = self.recordings_dir();
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        let hash = blake3::hash(bytes);
        let path = dir.join(hash.to_hex().as_str());
        if path.exists() {
            return Ok(hash);
        }
        let mut file =
            tempfile::NamedTempFile::new_in(&dir).map_err(|e| StoreError::io(&dir, e))?;
        file.write_all(bytes)
            .and_then(|()| file.as_file().sync_data())
            .map_err(|e| StoreError::io(file.path(), e))?;
        file.persist(&path)
            .map_err(|e| StoreError::io(&path, e.error))?;
        Ok(hash)
    }

    fn recording(&self, hash: &blake3::Hash) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.recordings_dir().join(hash.to_hex().as_str());
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        if blake3::hash(&bytes) != *hash {
            return Err(StoreError::Corrupt {
                path,
                reason: "the recorded response fails its checksum".into(),
            });
        }
        Ok(Some(bytes))
    }

    fn result(
        &self,
        key: &CacheKey,
        max_age: Option<Duration>,
    ) -> Result<Option<(ResultMeta, Vec<u8>)>, StoreError> {
        let recent = self
            .overlay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key.0.as_bytes())
            .copied();
        let entry = match recent {
            Some(entry) => Ok(entry),
            None => match self
                .results
                .get(key.0.as_bytes())
                .map_err(|e| self.sled_error(e))?
            {
                Some(value) => IndexEntry::decode(&value),
                None => return Ok(None),
            },
        };
        let loaded = entry.and_then(|entry| {
            if entry.expired(max_age) {
                return Ok(None);
            }
            self.load(key, &entry).map(Some)
        });
        match loaded {
            Ok(found) => Ok(found),
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

    fn record(
        &self,
        run: &RunId,
        results: &[NewResult],
        events: &[JournalEvent],
        durability: Durability,
    ) -> Result<(), StoreError> {
        let sync = durability == Durability::Machine;
        if !results.is_empty() {
            let mut payloads = Vec::with_capacity(results.len());
            let mut fresh = Vec::with_capacity(results.len());
            let mut entries: Vec<([u8; 32], IndexEntry)> = Vec::with_capacity(results.len());
            for r in results {
                // The same output under the same key (a rerun with
                // --refresh): the stored record stands, with the new time.
                if let Some(entry) = self.stored_same(r) {
                    let entry = IndexEntry {
                        created_ms: r.meta.created_ms,
                        ..entry
                    };
                    entries.push((*r.key.0.as_bytes(), entry));
                    continue;
                }
                let inline = if r.output.len() > BLOB_THRESHOLD {
                    self.write_blob(&r.meta.output_hash, &r.output)?;
                    None
                } else {
                    Some(&r.output[..])
                };
                payloads.push(pack::encode(&r.key, &r.meta, inline));
                fresh.push(r);
            }
            let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            let locations = if payloads.is_empty() {
                Vec::new()
            } else {
                writer.append(&payloads)?
            };
            // Results are durable before the events that report them.
            if sync {
                writer.sync()?;
            }
            entries.extend(fresh.iter().zip(locations).map(|(r, at)| {
                let blob = r.output.len() > BLOB_THRESHOLD;
                (*r.key.0.as_bytes(), IndexEntry::new(at, &r.meta, blob))
            }));
            self.overlay
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(entries.iter().copied());
            self.send(IndexJob::Entries(entries, writer.position()));
        }
        self.journals.append(run, events)?;
        if sync {
            self.journals.sync(run)?;
        }
        Ok(())
    }

    fn journal(&self, run: &RunId) -> Result<Vec<JournalEvent>, StoreError> {
        self.journals.read(run)
    }

    fn journal_after(
        &self,
        run: &RunId,
        mark: super::JournalMark,
    ) -> Result<(Vec<JournalEvent>, super::JournalMark), StoreError> {
        self.journals.read_after(run, mark)
    }

    fn close_run(&self, run: &RunId) -> Result<(), StoreError> {
        self.journals.close(run)
    }

    fn put_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        let json = serde_json::to_vec(run).map_err(|e| StoreError::Unencodable {
            what: format!("run {}", run.id),
            reason: e.to_string(),
        })?;
        let value = seal(&json);
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

    fn remove_runs(&self, ids: &[RunId]) -> Result<u64, StoreError> {
        for id in ids {
            self.runs
                .remove(id.0.as_bytes())
                .map_err(|e| self.sled_error(e))?;
        }
        // A record must never outlive its journal: a crash from here on
        // leaves journals without records, which the sweep below removes.
        self.db.flush().map_err(|e| self.sled_error(e))?;
        let mut freed = 0;
        for id in ids {
            freed += self.journals.remove(id)?;
        }
        for id in self.journals.runs()? {
            if !self
                .runs
                .contains_key(id.0.as_bytes())
                .map_err(|e| self.sled_error(e))?
            {
                freed += self.journals.remove(&id)?;
            }
        }
        freed += self.sweep_recordings()?;
        Ok(freed)
    }

    fn cache_stats(&self) -> Result<CacheStats, StoreError> {
        self.settle_index()?;
        let mut stats = CacheStats::default();
        // Blob files the index points at, by name.
        let mut live_blobs = HashSet::new();
        for entry in self.results.iter() {
            let (key, value) = entry.map_err(|e| self.sled_error(e))?;
            if key.len() != 32 {
                continue;
            }
            stats.index_bytes += (key.len() + value.len()) as u64;
            let Ok(entry) = IndexEntry::decode(&value) else {
                continue;
            };
            stats.entries += 1;
            stats.output_bytes += entry.size;
            stats.blobs += u64::from(entry.blob);
            stats.live_bytes += u64::from(entry.at.len);
            if entry.blob
                && let Some(packed) = self
                    .reader
                    .read(entry.at)
                    .ok()
                    .as_deref()
                    .and_then(pack::decode)
            {
                live_blobs.insert(packed.meta.output_hash.to_hex().to_string());
            }
            stats.oldest_ms = Some(
                stats
                    .oldest_ms
                    .map_or(entry.created_ms, |o| o.min(entry.created_ms)),
            );
        }
        let (packs, blobs) = (dir_size(&self.packs), dir_size(&self.blobs));
        let live_blob_bytes: u64 = live_blobs
            .iter()
            .filter_map(|name| std::fs::metadata(self.blobs.join(name)).ok())
            .map(|m| m.len())
            .sum();
        stats.live_bytes += live_blob_bytes;
        stats.dead_bytes = (packs + blobs).saturating_sub(stats.live_bytes);
        stats.disk_bytes = dir_size(&self.path) + packs + blobs;
        Ok(stats)
    }

    /// Drop expired results, then compact: copy the live records into a
    /// fresh segment, point the index at them, and delete the old segments
    /// and unreferenced blobs. A crash part-way leaves either the old
    /// segments or the new one indexed, never neither.
    fn cache_gc(&self, older_than: Option<Duration>) -> Result<u64, StoreError> {
        let cutoff = older_than.map(|age| now_ms().saturating_sub(age.as_millis() as u64));
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.settle_index()?;
        let mut live = Vec::new();
        let mut removed = 0;
        let mut batch = sled::Batch::default();
        for entry in self.results.iter() {
            let (key, value) = entry.map_err(|e| self.sled_error(e))?;
            let Ok(key) = <[u8; 32]>::try_from(key.as_ref()) else {
                continue;
            };
            match IndexEntry::decode(&value) {
                Ok(entry) if cutoff.is_some_and(|c| entry.created_ms >= c) => {
                    live.push((key, entry))
                }
                _ => {
                    batch.remove(&key[..]);
                    removed += 1;
                }
            }
        }
        let old_segments = pack::segments(&self.packs)?;
        writer.rotate()?;
        let mut live_blobs = HashSet::new();
        for chunk in live.chunks(1024) {
            let mut payloads = Vec::with_capacity(chunk.len());
            let mut keys = Vec::with_capacity(chunk.len());
            for (key, entry) in chunk {
                let payload = self.reader.read(entry.at).ok();
                // Decoded once: `Some(blob hash if any)` for an intact record.
                let intact = payload
                    .as_deref()
                    .and_then(pack::decode)
                    .filter(|r| r.key.0.as_bytes() == key)
                    .map(|r| r.inline.is_none().then_some(r.meta.output_hash));
                match (payload, intact) {
                    (Some(payload), Some(blob)) => {
                        if let Some(hash) = blob {
                            live_blobs.insert(hash.to_hex().to_string());
                        }
                        payloads.push(payload);
                        keys.push((key, entry));
                    }
                    _ => {
                        batch.remove(&key[..]);
                        removed += 1;
                    }
                }
            }
            for ((key, entry), at) in keys.into_iter().zip(writer.append(&payloads)?) {
                batch.insert(&key[..], IndexEntry { at, ..*entry }.encode());
            }
        }
        writer.sync()?;
        batch.insert(WATERMARK, encode_watermark(writer.position()));
        self.results
            .apply_batch(batch)
            .map_err(|e| self.sled_error(e))?;
        // Whatever the overlay still holds points into the old segments.
        self.overlay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.db.flush().map_err(|e| self.sled_error(e))?;
        // Only now is nothing indexed in the old segments.
        for segment in old_segments {
            self.reader.close(segment);
            let path = self.reader.path(segment);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!("cannot remove {}: {e}", path.display());
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
        Ok(removed)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sync()?;
        self.journals.sync_all()?;
        self.settle_index()?;
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

    fn corrupt_runs(&self, reason: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            reason: format!("{reason}; run history is damaged"),
        }
    }
}

/// Work for the indexer thread.
enum IndexJob {
    /// Entries to write, with the pack position they reach.
    Entries(Vec<([u8; 32], IndexEntry)>, (u32, u64)),
    /// Answer once every earlier job is done (with the first error since
    /// the last barrier, if any).
    Barrier(mpsc::Sender<Result<(), String>>),
}

fn index_jobs(
    results: &sled::Tree,
    overlay: &Mutex<HashMap<[u8; 32], IndexEntry>>,
    jobs: mpsc::Receiver<IndexJob>,
) {
    let mut failure: Option<String> = None;
    for job in jobs {
        match job {
            IndexJob::Entries(entries, position) => {
                let mut batch = sled::Batch::default();
                for (key, entry) in &entries {
                    batch.insert(&key[..], entry.encode());
                }
                batch.insert(WATERMARK, encode_watermark(position));
                match results.apply_batch(batch) {
                    Ok(()) => {
                        let mut overlay = overlay.lock().unwrap_or_else(|e| e.into_inner());
                        for (key, entry) in &entries {
                            // A newer entry for the same key stays until it is written.
                            if overlay.get(key) == Some(entry) {
                                overlay.remove(key);
                            }
                        }
                    }
                    // The entries stay in the overlay for this process, and
                    // the packs re-index them on the next open.
                    Err(e) => {
                        failure.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            IndexJob::Barrier(answer) => {
                let _ = answer.send(failure.take().map_or(Ok(()), Err));
            }
        }
    }
}

impl SledStore {
    fn send(&self, job: IndexJob) {
        if let Some(to_indexer) = &*self.to_indexer.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = to_indexer.send(job);
        }
    }

    /// Wait until every index entry handed over so far is in sled.
    fn settle_index(&self) -> Result<(), StoreError> {
        let (answer, settled) = mpsc::channel();
        self.send(IndexJob::Barrier(answer));
        match settled.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(StoreError::Unreadable {
                path: self.path.clone(),
                reason: format!("cannot write the result index: {reason}"),
            }),
            Err(_) => Err(StoreError::Unreadable {
                path: self.path.clone(),
                reason: "the result indexer stopped".into(),
            }),
        }
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        // Closing the channel ends the indexer once it has written everything.
        self.to_indexer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(indexer) = self.indexer.take()
            && indexer.join().is_err()
        {
            tracing::error!("the result indexer of {} panicked", self.path.display());
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
    use crate::model::RunStatus;

    fn result(output: &[u8], created_ms: u64) -> NewResult {
        NewResult {
            key: CacheKey(blake3::hash(output)),
            meta: ResultMeta {
                output_hash: blake3::hash(output),
                size: output.len() as u64,
                component: blake3::hash(b"c"),
                input_hash: blake3::hash(b"i"),
                fuel: 1,
                duration_us: 2,
                created_ms,
            },
            output: output.to_vec(),
        }
    }

    fn event() -> JournalEvent {
        JournalEvent::StepScheduled {
            at_ms: 1,
            step: "a".into(),
            items: None,
        }
    }

    fn commit(store: &SledStore, results: &[NewResult]) {
        store
            .record(
                &RunId("aa".into()),
                results,
                &[event()],
                Durability::Machine,
            )
            .unwrap();
    }

    #[test]
    fn results_round_trip_inline_and_as_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let run = RunId("aa".into());
        for output in [b"small".to_vec(), vec![7u8; BLOB_THRESHOLD + 1], Vec::new()] {
            let new = result(&output, now_ms());
            store
                .record(
                    &run,
                    std::slice::from_ref(&new),
                    &[event()],
                    Durability::Machine,
                )
                .unwrap();
            let (meta, got) = store.result(&new.key, None).unwrap().unwrap();
            assert_eq!(got, output);
            assert_eq!(meta, new.meta);
        }
        assert_eq!(
            store.journal(&run).unwrap().len(),
            3,
            "each result came with its journal event"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("blobs")).unwrap().count(),
            1
        );
        assert!(
            store
                .result(&CacheKey(blake3::hash(b"absent")), None)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn damaged_blobs_and_pack_records_are_misses_not_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let big = result(&vec![1u8; BLOB_THRESHOLD * 2], now_ms());
        let small = result(b"small output", now_ms());
        commit(&store, &[big.clone(), small.clone()]);
        let blob = std::fs::read_dir(dir.path().join("blobs"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::write(&blob, b"tampered").unwrap();
        assert!(store.result(&big.key, None).unwrap().is_none());

        let pack = dir.path().join("packs/00000001.pack");
        let mut bytes = std::fs::read(&pack).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0xff;
        std::fs::write(&pack, bytes).unwrap();
        assert!(store.result(&small.key, None).unwrap().is_none());
    }

    #[test]
    fn ttl_hides_old_results_and_gc_removes_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let old = result(b"v", now_ms() - 60_000);
        commit(&store, std::slice::from_ref(&old));
        assert!(
            store
                .result(&old.key, Some(Duration::from_secs(30)))
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .result(&old.key, Some(Duration::from_secs(120)))
                .unwrap()
                .is_some()
        );
        assert_eq!(store.cache_gc(Some(Duration::from_secs(120))).unwrap(), 0);
        assert!(
            store.result(&old.key, None).unwrap().is_some(),
            "kept through compaction"
        );
        assert_eq!(store.cache_gc(Some(Duration::from_secs(30))).unwrap(), 1);
        assert_eq!(store.cache_stats().unwrap().entries, 0);
    }

    #[test]
    fn gc_compacts_packs_to_the_live_results() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let keep = result(&[200u8; 1000], now_ms());
        let stale: Vec<NewResult> = (0..50u8)
            .map(|i| result(&[i; 1000], now_ms() - 3_600_000))
            .collect();
        commit(&store, &stale);
        commit(&store, std::slice::from_ref(&keep));
        let packs = dir.path().join("packs");
        let before = dir_size(&packs);
        assert_eq!(store.cache_gc(Some(Duration::from_secs(60))).unwrap(), 50);
        let after = dir_size(&packs);
        assert!(
            after < before / 20,
            "packs shrank from {before} to {after} bytes"
        );
        assert_eq!(
            pack::segments(&packs).unwrap().len(),
            1,
            "old segments deleted"
        );
        assert_eq!(
            store.result(&keep.key, None).unwrap().unwrap().1,
            keep.output
        );
        drop_and_reopen(store, dir.path(), |store| {
            assert_eq!(
                store.result(&keep.key, None).unwrap().unwrap().1,
                keep.output
            );
            assert!(store.result(&stale[0].key, None).unwrap().is_none());
        });
    }

    fn drop_and_reopen(store: SledStore, dir: &Path, check: impl FnOnce(&SledStore)) {
        std::mem::drop(store);
        check(&SledStore::open(dir).unwrap());
    }

    #[test]
    fn an_index_that_lost_its_last_writes_is_rebuilt_from_the_packs() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let early = result(b"early", now_ms());
        commit(&store, std::slice::from_ref(&early));
        store.settle_index().unwrap();
        let watermark = store.results.get(WATERMARK).unwrap().unwrap();
        let late: Vec<NewResult> = (0..10u8).map(|i| result(&[i; 100], now_ms())).collect();
        commit(&store, &late);
        store.settle_index().unwrap();
        // What sled would look like had it lost everything after `early`.
        for r in &late {
            store.results.remove(r.key.0.as_bytes()).unwrap();
        }
        store.results.insert(WATERMARK, watermark).unwrap();
        assert!(store.result(&late[3].key, None).unwrap().is_none());
        drop_and_reopen(store, dir.path(), |store| {
            for r in late.iter().chain([&early]) {
                assert_eq!(store.result(&r.key, None).unwrap().unwrap().1, r.output);
            }
        });
    }

    #[test]
    fn a_torn_pack_tail_is_cut_and_writing_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let first = result(b"first", now_ms());
        commit(&store, std::slice::from_ref(&first));
        let pack = dir.path().join("packs/00000001.pack");
        let intact = std::fs::metadata(&pack).unwrap().len();
        std::mem::drop(store);
        // Half a frame, as a power cut mid-write would leave it.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&pack)
            .unwrap();
        file.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            std::fs::metadata(&pack).unwrap().len(),
            intact,
            "torn tail cut"
        );
        let second = result(b"second", now_ms());
        commit(&store, std::slice::from_ref(&second));
        drop_and_reopen(store, dir.path(), |store| {
            assert_eq!(store.result(&first.key, None).unwrap().unwrap().1, b"first");
            assert_eq!(
                store.result(&second.key, None).unwrap().unwrap().1,
                b"second"
            );
        });
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
            let scheduled = |step: String| JournalEvent::StepScheduled {
                at_ms: i,
                step,
                items: None,
            };
            store.append(&a, &scheduled(format!("s{i}"))).unwrap();
            store.append(&b, &scheduled("other".into())).unwrap();
        }
        let events = store.journal(&a).unwrap();
        assert_eq!(events.len(), 20);
        assert_eq!(
            events[13],
            JournalEvent::StepScheduled {
                at_ms: 13,
                step: "s13".into(),
                items: None,
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
                    status: RunStatus::Running,
                    steps: 1,
                    replay_of: None,
                    admission: None,
                    tenant: None,
                    bundle: None,
                    tally: None,
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

    fn record_of(id: &RunId) -> RunRecord {
        RunRecord {
            id: id.clone(),
            pipeline: "p".into(),
            manifest: "m".into(),
            manifest_hash: "h".into(),
            started_ms: 0,
            finished_ms: Some(1),
            status: RunStatus::Succeeded,
            steps: 1,
            replay_of: None,
            admission: None,
            tenant: None,
            bundle: None,
            tally: None,
        }
    }

    #[test]
    fn forgetting_a_run_removes_the_responses_only_it_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let (gone, kept) = (
            RunId("0000000000001111".into()),
            RunId("0000000000002222".into()),
        );
        let only_gone = store.put_recording(b"gone's response").unwrap();
        let shared = store.put_recording(b"a response both got").unwrap();
        let only_kept = store.put_recording(b"kept's response").unwrap();
        let finished = |responses: &[blake3::Hash]| JournalEvent::AttemptFinished {
            at_ms: 1,
            step: "fetch".into(),
            index: None,
            attempt: 1,
            class: None,
            message: None,
            fuel: 1,
            duration_us: 1,
            peak_memory: 0,
            logs: Vec::new(),
            retry_in_ms: None,
            http: responses
                .iter()
                .map(|hash| crate::store::records::HttpRecord {
                    method: "GET".into(),
                    url: "https://api.example.com/".into(),
                    request: blake3::hash(b"request").to_hex().to_string(),
                    status: 200,
                    response: hash.to_hex().to_string(),
                })
                .collect(),
        };
        for (id, responses) in [(&gone, [only_gone, shared]), (&kept, [shared, only_kept])] {
            store.put_run(&record_of(id)).unwrap();
            store.append(id, &finished(&responses)).unwrap();
        }
        // A temporary file a crash left behind goes too.
        std::fs::write(dir.path().join("recorded/.tmpLEFT"), b"half").unwrap();
        let journal = std::fs::metadata(dir.path().join(format!("journal/{}.log", gone.0)))
            .unwrap()
            .len();
        let freed = store.remove_runs(std::slice::from_ref(&gone)).unwrap();
        assert_eq!(freed, journal + b"gone's response".len() as u64 + 4);
        assert_eq!(store.recording(&only_gone).unwrap(), None);
        assert!(
            store.recording(&shared).unwrap().is_some(),
            "still named by `kept`"
        );
        assert!(store.recording(&only_kept).unwrap().is_some());
        assert!(!dir.path().join("recorded/.tmpLEFT").exists());
    }

    #[test]
    fn removed_runs_lose_record_and_journal_and_orphan_journals_go_too() {
        let dir = tempfile::tempdir().unwrap();
        let (gone, kept, orphan) = (
            RunId("0000000000001111".into()),
            RunId("0000000000002222".into()),
            RunId("0000000000003333".into()),
        );
        let keep_result = result(b"kept output", now_ms());
        {
            let store = SledStore::open(dir.path()).unwrap();
            for id in [&gone, &kept] {
                store.put_run(&record_of(id)).unwrap();
            }
            let results = std::slice::from_ref(&keep_result);
            store
                .record(&gone, results, &[event()], Durability::Machine)
                .unwrap();
            for id in [&kept, &orphan] {
                store.append(id, &event()).unwrap();
            }
            let journal_len = |id: &RunId| {
                std::fs::metadata(dir.path().join(format!("journal/{}.log", id.0)))
                    .unwrap()
                    .len()
            };
            let expected = journal_len(&gone) + journal_len(&orphan);
            assert_eq!(
                store.remove_runs(std::slice::from_ref(&gone)).unwrap(),
                expected
            );
            assert!(store.run(&gone).unwrap().is_none());
            assert_eq!(store.journal(&gone).unwrap(), vec![]);
            assert_eq!(store.journal(&orphan).unwrap(), vec![]);
            assert_eq!(store.journal(&kept).unwrap(), vec![event()]);
            // Removing what is gone already is not an error.
            assert_eq!(store.remove_runs(std::slice::from_ref(&gone)).unwrap(), 0);
        }
        let store = SledStore::open(dir.path()).unwrap();
        let ids: Vec<RunId> = store.runs().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![kept.clone()], "the removal survives a reopen");
        let journals: Vec<String> = std::fs::read_dir(dir.path().join("journal"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(journals, vec![format!("{}.log", kept.0)]);
        assert_eq!(
            store.result(&keep_result.key, None).unwrap().unwrap().1,
            b"kept output",
            "results outlive the runs that made them"
        );
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
