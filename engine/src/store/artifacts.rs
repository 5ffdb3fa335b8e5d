//! The precompiled-artifact cache.
//!
//! Compiling a component with Cranelift costs tens to hundreds of
//! milliseconds; loading its precompiled form costs well under one. Artifacts
//! are keyed by blake3 of the component bytes plus the engine's compatibility
//! fingerprint, so a different wasmtime version or configuration never loads
//! an artifact it did not produce.
//!
//! A precompiled artifact is native code that wasmtime runs without further
//! checks. Each file therefore carries a blake3 of its payload, and [`get`]
//! returns the payload only after that checksum matches; a truncated or
//! flipped file is reported as [`StoreError::Corrupt`] so the caller can
//! recompile. Writes go to a temporary file that is renamed into place, so a
//! crash never leaves a half-written artifact under its final name.
//!
//! [`get`]: ArtifactStore::get

use std::fmt;
use std::io::Write;
use std::path::PathBuf;

use super::StoreError;

/// Identifies one precompiled artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArtifactKey {
    /// blake3 of the component's wasm bytes.
    pub component: blake3::Hash,
    /// Fingerprint of the engine configuration that must load it.
    pub engine: u64,
}

impl fmt::Display for ArtifactKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:016x}", self.component.to_hex(), self.engine)
    }
}

/// Storage for precompiled artifacts. Implementations must verify every
/// payload before returning it.
pub trait ArtifactStore: Send + Sync {
    /// The verified payload, `None` if absent, or `Corrupt` if it fails its check.
    fn get(&self, key: &ArtifactKey) -> Result<Option<Vec<u8>>, StoreError>;
    /// Store a payload durably under `key`, replacing any previous one.
    fn put(&self, key: &ArtifactKey, payload: &[u8]) -> Result<(), StoreError>;
    /// Forget an artifact (e.g. after it failed its check). Absent is not an error.
    fn remove(&self, key: &ArtifactKey) -> Result<(), StoreError>;
}

/// Artifacts as files `<dir>/<key>.cwasm`: a header (magic, format version,
/// payload length, blake3 of the payload) followed by the payload.
pub struct DirArtifactStore {
    dir: PathBuf,
}

const MAGIC: &[u8; 8] = b"CAIRNART";
const FORMAT: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8 + 32;

impl DirArtifactStore {
    /// Open (creating if needed) an artifact directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        Ok(Self { dir })
    }

    /// The file an artifact lives in (tests corrupt it on purpose).
    pub fn path_of(&self, key: &ArtifactKey) -> PathBuf {
        self.dir.join(format!("{key}.cwasm"))
    }
}

impl ArtifactStore for DirArtifactStore {
    fn get(&self, key: &ArtifactKey) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path_of(key);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        decode(&bytes)
            .map(|payload| Some(payload.to_vec()))
            .map_err(|reason| StoreError::Corrupt { path, reason })
    }

    fn put(&self, key: &ArtifactKey, payload: &[u8]) -> Result<(), StoreError> {
        let path = self.path_of(key);
        let mut file =
            tempfile::NamedTempFile::new_in(&self.dir).map_err(|e| StoreError::io(&self.dir, e))?;
        file.write_all(&encode_header(payload))
            .and_then(|()| file.write_all(payload))
            .and_then(|()| file.as_file().sync_data())
            .map_err(|e| StoreError::io(file.path(), e))?;
        file.persist(&path)
            .map_err(|e| StoreError::io(&path, e.error))?;
        Ok(())
    }

    fn remove(&self, key: &ArtifactKey) -> Result<(), StoreError> {
        let path = self.path_of(key);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::io(&path, e)),
            _ => Ok(()),
        }
    }
}

/// A store's own artifacts over a cache shared by every store of this user
/// on the machine, so a fresh store (a new project, a CI job, a test) does
/// not compile again a component the machine has compiled before. Reads
/// try the store's own directory first; compiled artifacts go to both.
/// Every artifact is checked against its checksum wherever it comes from,
/// and the shared directory is used only when it belongs to this user and
/// no one else may write to it ([`shared_cache_dir`]): what is in it runs
/// as native code.
pub struct LayeredArtifacts {
    local: DirArtifactStore,
    shared: DirArtifactStore,
}

impl LayeredArtifacts {
    pub fn new(local: DirArtifactStore, shared: DirArtifactStore) -> Self {
        Self { local, shared }
    }
}

impl ArtifactStore for LayeredArtifacts {
    fn get(&self, key: &ArtifactKey) -> Result<Option<Vec<u8>>, StoreError> {
        match self.local.get(key)? {
            Some(payload) => Ok(Some(payload)),
            None => self.shared.get(key),
        }
    }

    fn put(&self, key: &ArtifactKey, payload: &[u8]) -> Result<(), StoreError> {
        if let Err(e) = self.shared.put(key, payload) {
            tracing::warn!("cannot add artifact {key} to the shared cache: {e}");
        }
        self.local.put(key, payload)
    }

    fn remove(&self, key: &ArtifactKey) -> Result<(), StoreError> {
        let shared = self.shared.remove(key);
        self.local.remove(key).and(shared)
    }
}

/// The per-user artifact cache: `$CAIRN_ARTIFACT_CACHE` (`off` for none),
/// else `$XDG_CACHE_HOME/cairn/artifacts`, else `~/.cache/cairn/artifacts`.
/// Created private (0700); a directory that exists but is not this user's,
/// or that others may write to, is not used (with a warning), since a
/// planted artifact would run as native code in every store.
pub fn shared_cache_dir() -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let dir = match std::env::var_os("CAIRN_ARTIFACT_CACHE") {
        Some(v) if v == "off" || v.is_empty() => return None,
        Some(v) => PathBuf::from(v),
        None => match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            Some(cache) => PathBuf::from(cache).join("cairn/artifacts"),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/cairn/artifacts"),
        },
    };
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
    {
        tracing::warn!("not using the shared artifact cache {}: {e}", dir.display());
        return None;
    }
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        tracing::warn!(
            "not using the shared artifact cache {}: it must be a directory of this user's that \
             no one else may write to (fix its owner and mode, or set CAIRN_ARTIFACT_CACHE)",
            dir.display()
        );
        return None;
    }
    Some(dir)
}

fn encode_header(payload: &[u8]) -> Vec<u8> {
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT.to_le_bytes());
    header.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    header.extend_from_slice(blake3::hash(payload).as_bytes());
    header
}

fn decode(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!(
            "file is {} bytes, shorter than its {HEADER_LEN}-byte header",
            bytes.len()
        ));
    }
    let (header, payload) = bytes.split_at(HEADER_LEN);
    if &header[..8] != MAGIC {
        return Err("not a Cairn artifact (bad magic)".into());
    }
    let format = u32::from_le_bytes(header[8..12].try_into().expect("slice of 4 bytes"));
    if format != FORMAT {
        return Err(format!(
            "artifact format {format}, this engine reads {FORMAT}"
        ));
    }
    let len = u64::from_le_bytes(header[12..20].try_into().expect("slice of 8 bytes"));
    if len != payload.len() as u64 {
        return Err(format!(
            "payload is {} bytes, header says {len} (truncated?)",
            payload.len()
        ));
    }
    let expected = blake3::Hash::from_bytes(header[20..52].try_into().expect("slice of 32 bytes"));
    if blake3::hash(payload) != expected {
        return Err("payload does not match its blake3 checksum".into());
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ArtifactKey {
        ArtifactKey {
            component: blake3::hash(b"component"),
            engine: 7,
        }
    }

    #[test]
    fn round_trips_and_misses_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirArtifactStore::open(dir.path()).unwrap();
        assert_eq!(store.get(&key()).unwrap(), None);
        store.put(&key(), b"native code").unwrap();
        assert_eq!(
            store.get(&key()).unwrap().as_deref(),
            Some(&b"native code"[..])
        );
        store.remove(&key()).unwrap();
        assert_eq!(store.get(&key()).unwrap(), None);
        store.remove(&key()).unwrap();
    }

    #[test]
    fn flipped_byte_is_reported_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirArtifactStore::open(dir.path()).unwrap();
        store.put(&key(), b"native code").unwrap();
        let path = store.path_of(&key());
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let err = store.get(&key()).unwrap_err().to_string();
        assert!(err.contains("checksum") && err.contains(".cwasm"), "{err}");
    }

    #[test]
    fn truncated_file_is_reported_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirArtifactStore::open(dir.path()).unwrap();
        store.put(&key(), b"native code").unwrap();
        let path = store.path_of(&key());
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(
            store
                .get(&key())
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );
        std::fs::write(&path, &bytes[..10]).unwrap();
        assert!(
            store
                .get(&key())
                .unwrap_err()
                .to_string()
                .contains("header")
        );
    }
}
