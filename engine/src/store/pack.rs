//! Result packs: cached outputs in append-only segment files,
//! `<store>/packs/00000001.pack`, `00000002.pack`, …
//!
//! sled stores a value several times over on disk (its log keeps old
//! versions until it compacts), so a result's bytes live here instead, once,
//! and sled holds only a small index entry pointing at them (see
//! [`super::db`]). Each record is a [`super::log`] frame holding the cache
//! key, the [`ResultMeta`] and the output bytes, so a pack alone is enough to
//! rebuild the index after sled lost its last writes.
//!
//! Only the newest segment is appended to; older ones are sealed. Space is
//! reclaimed by `cairn cache gc`, which copies live records into a fresh
//! segment and deletes the old ones.
//!
//! Invariants: a record is read only through its frame checksum and only if
//! the key inside matches the key asked for; [`PackWriter`] is used by one
//! thread at a time (the caller holds it behind a lock).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::StoreError;
use super::log;
use super::records::{CacheKey, ResultMeta};

/// A new segment is started once the current one reaches this size.
pub const SEGMENT_LIMIT: u64 = 256 << 20;

/// Where a record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub segment: u32,
    /// Offset of the record's frame.
    pub offset: u64,
    /// Length of the whole frame.
    pub len: u32,
}

/// A decoded pack record.
pub struct Packed<'a> {
    pub key: CacheKey,
    pub meta: ResultMeta,
    /// The output, or `None` if it lives in a blob file (too large to pack).
    pub inline: Option<&'a [u8]>,
}

const META_LEN: usize = 32 * 4 + 8 * 4 + 1;

/// A record's payload: key, meta, then the output unless it is in a blob.
pub fn encode(key: &CacheKey, meta: &ResultMeta, inline: Option<&[u8]>) -> Vec<u8> {
    let bytes = inline.unwrap_or_default();
    let mut out = Vec::with_capacity(META_LEN + bytes.len());
    out.extend_from_slice(key.0.as_bytes());
    out.extend_from_slice(meta.output_hash.as_bytes());
    out.extend_from_slice(meta.component.as_bytes());
    out.extend_from_slice(meta.input_hash.as_bytes());
    for n in [meta.size, meta.fuel, meta.duration_us, meta.created_ms] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.push(u8::from(inline.is_none()));
    out.extend_from_slice(bytes);
    out
}

/// Decode a record's payload (already checked against its frame checksum).
pub fn decode(payload: &[u8]) -> Option<Packed<'_>> {
    let (head, rest) = payload.split_at_checked(META_LEN)?;
    let hash = |i: usize| {
        blake3::Hash::from_bytes(head[i * 32..i * 32 + 32].try_into().expect("32 bytes"))
    };
    let number = |i: usize| {
        let at = 128 + i * 8;
        u64::from_le_bytes(head[at..at + 8].try_into().expect("8 bytes"))
    };
    let meta = ResultMeta {
        output_hash: hash(1),
        component: hash(2),
        input_hash: hash(3),
        size: number(0),
        fuel: number(1),
        duration_us: number(2),
        created_ms: number(3),
    };
    let inline = match head[META_LEN - 1] {
        0 if rest.len() as u64 == meta.size => Some(rest),
        1 if rest.is_empty() => None,
        _ => return None,
    };
    Some(Packed {
        key: CacheKey(hash(0)),
        meta,
        inline,
    })
}

fn segment_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("{segment:08}.pack"))
}

/// The segments in `dir`, oldest first. Files that are not segments are ignored.
pub fn segments(dir: &Path) -> Result<Vec<u32>, StoreError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))? {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let name = entry.file_name();
        let number = name
            .to_str()
            .and_then(|n| n.strip_suffix(".pack"))
            .filter(|n| n.len() == 8)
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(number) = number {
            found.push(number);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Appends records to the newest segment.
pub struct PackWriter {
    dir: PathBuf,
    segment: u32,
    file: File,
    len: u64,
    /// Appended to since the last sync.
    dirty: bool,
}

impl PackWriter {
    /// Continue the newest segment in `dir` (or start segment 1). The
    /// store's recovery cuts off a torn tail before anything is appended.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let segment = segments(dir)?.last().copied().unwrap_or(1);
        Self::open_segment(dir, segment)
    }

    fn open_segment(dir: &Path, segment: u32) -> Result<Self, StoreError> {
        let path = segment_path(dir, segment);
        let file = log::open(&path).map_err(|e| StoreError::io(&path, e))?;
        let len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        Ok(Self {
            dir: dir.to_owned(),
            segment,
            file,
            len,
            dirty: false,
        })
    }

    pub fn position(&self) -> (u32, u64) {
        (self.segment, self.len)
    }

    /// Cut the current segment back to `len` bytes (a torn tail found by recovery).
    pub fn truncate(&mut self, len: u64) -> Result<(), StoreError> {
        let path = segment_path(&self.dir, self.segment);
        self.file
            .set_len(len)
            .map_err(|e| StoreError::io(&path, e))?;
        self.len = len;
        Ok(())
    }

    /// Start a new segment (after the current one), returning its number.
    /// The old one is synced first: a later sync only reaches the new file.
    pub fn rotate(&mut self) -> Result<u32, StoreError> {
        self.sync()?;
        *self = Self::open_segment(&self.dir, self.segment + 1)?;
        Ok(self.segment)
    }

    /// Append framed payloads with one write; returns where each one went.
    pub fn append(&mut self, payloads: &[Vec<u8>]) -> Result<Vec<Location>, StoreError> {
        if self.len >= SEGMENT_LIMIT {
            self.rotate()?;
        }
        let mut frames = Vec::with_capacity(payloads.iter().map(|p| p.len() + log::HEADER).sum());
        let mut locations = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let offset = self.len + frames.len() as u64;
            log::frame(payload, &mut frames);
            locations.push(Location {
                segment: self.segment,
                offset,
                len: (payload.len() + log::HEADER) as u32,
            });
        }
        if let Err(e) = self.file.write_all(&frames) {
            // A partial write leaves a torn tail; cut it so the next append
            // starts on a frame boundary.
            let _ = self.file.set_len(self.len);
            return Err(StoreError::io(&segment_path(&self.dir, self.segment), e));
        }
        self.len += frames.len() as u64;
        self.dirty = true;
        Ok(locations)
    }

    /// Make everything appended so far durable.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        if !self.dirty {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| StoreError::io(&segment_path(&self.dir, self.segment), e))?;
        self.dirty = false;
        Ok(())
    }
}

/// Reads records from any segment; shared by all threads.
pub struct PackReader {
    dir: PathBuf,
    open: RwLock<HashMap<u32, Arc<File>>>,
}

impl PackReader {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            open: RwLock::new(HashMap::new()),
        }
    }

    pub fn path(&self, segment: u32) -> PathBuf {
        segment_path(&self.dir, segment)
    }

    fn file(&self, segment: u32) -> std::io::Result<Arc<File>> {
        if let Some(file) = self
            .open
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&segment)
        {
            return Ok(file.clone());
        }
        let file = Arc::new(File::open(self.path(segment))?);
        self.open
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(segment, file.clone());
        Ok(file)
    }

    /// The intact payload at `at`, or why it cannot be had.
    pub fn read(&self, at: Location) -> Result<Vec<u8>, String> {
        let what = || {
            format!(
                "{} at offset {}",
                self.path(at.segment).display(),
                at.offset
            )
        };
        let file = self
            .file(at.segment)
            .map_err(|e| format!("{}: {e}", what()))?;
        let mut frame = vec![0; at.len as usize];
        file.read_exact_at(&mut frame, at.offset)
            .map_err(|e| format!("{}: {e}", what()))?;
        let payload =
            log::unframe(&frame).ok_or_else(|| format!("{} fails its checksum", what()))?;
        // Drop the frame header in place rather than copy the payload.
        frame.drain(..frame.len() - payload.len());
        Ok(frame)
    }

    /// A segment's length in bytes.
    pub fn len(&self, segment: u32) -> Result<u64, StoreError> {
        let path = self.path(segment);
        let file = self.file(segment).map_err(|e| StoreError::io(&path, e))?;
        Ok(file.metadata().map_err(|e| StoreError::io(&path, e))?.len())
    }

    /// A segment from `offset` to its end.
    pub fn read_from(&self, segment: u32, offset: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.path(segment);
        let file = self.file(segment).map_err(|e| StoreError::io(&path, e))?;
        let len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        let mut bytes = vec![0; len.saturating_sub(offset) as usize];
        file.read_exact_at(&mut bytes, offset)
            .map_err(|e| StoreError::io(&path, e))?;
        Ok(bytes)
    }

    /// Forget open handles (before segments are deleted).
    pub fn close(&self, segment: u32) {
        self.open
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&segment);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(size: u64) -> ResultMeta {
        ResultMeta {
            output_hash: blake3::hash(b"out"),
            size,
            component: blake3::hash(b"component"),
            input_hash: blake3::hash(b"in"),
            fuel: 7,
            duration_us: 8,
            created_ms: 9,
        }
    }

    #[test]
    fn records_round_trip_inline_and_blob() {
        let key = CacheKey(blake3::hash(b"k"));
        let payload = encode(&key, &meta(3), Some(b"abc"));
        let packed = decode(&payload).unwrap();
        assert_eq!(
            (packed.key, packed.meta, packed.inline),
            (key, meta(3), Some(&b"abc"[..]))
        );
        let payload = encode(&key, &meta(1 << 20), None);
        assert!(decode(&payload).unwrap().inline.is_none());
    }

    #[test]
    fn malformed_payloads_do_not_decode() {
        let key = CacheKey(blake3::hash(b"k"));
        let good = encode(&key, &meta(3), Some(b"abc"));
        assert!(decode(&good[..good.len() - 1]).is_none(), "size mismatch");
        assert!(decode(&good[..10]).is_none(), "short");
        let mut bad_flag = good.clone();
        bad_flag[META_LEN - 1] = 9;
        assert!(decode(&bad_flag).is_none());
    }

    #[test]
    fn appended_records_read_back_and_damage_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = PackWriter::open(dir.path()).unwrap();
        let locations = writer
            .append(&[b"first".to_vec(), b"second".to_vec()])
            .unwrap();
        let reader = PackReader::new(dir.path());
        assert_eq!(reader.read(locations[1]).unwrap(), b"second");
        writer.rotate().unwrap();
        let later = writer.append(&[b"third".to_vec()]).unwrap();
        assert_eq!(later[0].segment, 2);
        assert_eq!(segments(dir.path()).unwrap(), [1, 2]);
        assert_eq!(reader.read(later[0]).unwrap(), b"third");

        let path = reader.path(1);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = locations[0].len as usize - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        reader.close(1);
        assert!(reader.read(locations[0]).unwrap_err().contains("checksum"));
    }
}
