//! Bundles: a whole pipeline — manifest, components, data files — in one
//! reproducible file (`.cairn`), read back without trusting it.
//!
//! Format: a zstd-compressed tar archive (the `tar` and `zstd` crates) holding
//! - `cairn.lock`: JSON `{"format": 1, "members": [{"path", "blake3", "size"}]}`
//!   listing every other member, sorted by path;
//! - `pipeline.toml`: the manifest, with component paths rewritten to
//!   `components/<name>-<hash>.wasm`;
//! - the components and every `$file`/`$json` data file, at their
//!   manifest-relative paths.
//!
//! The bundle id is blake3 of `cairn.lock`. Packing is reproducible: members
//! in path order, zero timestamps, uid/gid 0, mode 0644, one single-threaded
//! zstd frame with a checksum.
//!
//! Reading is hostile-input code: the compressed and unpacked sizes are
//! capped, only regular files with plain relative paths are accepted (no
//! `..`, no absolute paths, no links, no duplicates), every member must match
//! its hash in the lock, and nothing is ever written to disk — members are
//! kept in memory and read by path.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::{MAX_MANIFEST_BYTES, Manifest, ManifestError};

/// The lock member's name.
pub const LOCK: &str = "cairn.lock";
/// The manifest member's name.
pub const MANIFEST: &str = "pipeline.toml";
/// Largest bundle file read.
pub const MAX_BUNDLE_BYTES: u64 = 1 << 30;
/// Largest total of unpacked member bytes (a decompression bomb stops here).
pub const MAX_UNPACKED_BYTES: u64 = 256 << 20;
/// Most members a bundle may hold.
pub const MAX_MEMBERS: usize = 10_000;

/// One entry of the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockEntry {
    pub path: String,
    pub blake3: String,
    pub size: u64,
}

/// The lock: what the bundle holds, by hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub format: u32,
    pub members: Vec<LockEntry>,
}

/// A verified bundle, in memory.
#[derive(Debug)]
pub struct Bundle {
    /// blake3 of the lock bytes.
    pub id: blake3::Hash,
    pub lock: Lock,
    /// Valid signatures over the id (an invalid one refuses the bundle).
    pub signatures: Vec<Signature>,
    members: BTreeMap<String, Vec<u8>>,
    lock_bytes: Vec<u8>,
    signature_members: BTreeMap<String, Vec<u8>>,
}

/// Where signatures live; they sign the bundle id, so they are not in the lock.
pub const SIGNATURES: &str = "signatures/";

/// A verified ed25519 signature of a bundle id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Hex of the 32-byte ed25519 public key.
    pub public_key: String,
    /// The first 16 hex digits of blake3(public key).
    pub key_id: String,
}

/// The member a signature is stored in.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureMember {
    public_key: String,
    signature: String,
}

/// What is signed: a domain tag and the bundle id.
fn signed_message(id: &blake3::Hash) -> Vec<u8> {
    let mut message = b"cairn bundle signature v1\n".to_vec();
    message.extend_from_slice(id.as_bytes());
    message
}

/// The short id of a public key.
pub fn key_id(public_key: &[u8; 32]) -> String {
    blake3::hash(public_key).to_hex()[..16].to_owned()
}

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the bundle is {size} bytes; bundles are limited to {MAX_BUNDLE_BYTES} bytes")]
    TooLarge { size: u64 },
    #[error(
        "the bundle unpacks to more than {MAX_UNPACKED_BYTES} bytes; refusing it (a decompression bomb?)"
    )]
    Bomb,
    #[error("the bundle is not a readable archive: {0} (truncated or not a .cairn file?)")]
    Archive(String),
    #[error("member {path:?} is refused: {reason}")]
    Member { path: String, reason: String },
    #[error("the bundle's lock is invalid: {0}")]
    Lock(String),
    #[error("member {path} does not match the lock: {reason}")]
    Mismatch { path: String, reason: String },
    #[error("cannot pack: {0}")]
    Pack(String),
    #[error(
        "signature {path} is invalid: {reason}; the bundle was changed after signing, or the signature is forged"
    )]
    BadSignature { path: String, reason: String },
    #[error("{0}")]
    Key(String),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// A plain relative path: normal components only.
fn safe_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > 512 {
        return Err("empty or overlong path".into());
    }
    if path.contains('\\') || path.contains('\0') {
        return Err("backslashes and NUL are not allowed in member paths".into());
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return Err("absolute paths are not allowed".into());
    }
    if !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err("`..` and `.` are not allowed in member paths".into());
    }
    Ok(())
}

impl Bundle {
    /// Read and verify a bundle file.
    pub fn open(path: &Path) -> Result<Bundle, BundleError> {
        let read = |source| BundleError::Read {
            path: path.to_owned(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read)?.len();
        if size > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge { size });
        }
        let bytes = crate::files::read_regular(path, MAX_BUNDLE_BYTES).map_err(read)?;
        Self::read(&bytes)
    }

    /// Parse and verify bundle bytes.
    pub fn read(bytes: &[u8]) -> Result<Bundle, BundleError> {
        if bytes.len() as u64 > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge {
                size: bytes.len() as u64,
            });
        }
        // The cap applies to the decompressed stream, so a bomb stops at
        // MAX_UNPACKED_BYTES + 1 bytes however small the file is. Tar
        // headers count towards it, so the cap is slightly conservative.
        let decoder = zstd::stream::read::Decoder::new(bytes)
            .map_err(|e| BundleError::Archive(e.to_string()))?
            .take(MAX_UNPACKED_BYTES + 1);
        let mut archive = tar::Archive::new(decoder);
        let mut members = BTreeMap::new();
        let mut total: u64 = 0;
        let entries = archive
            .entries()
            .map_err(|e| BundleError::Archive(e.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| archive_error(e, total))?;
            let path = String::from_utf8(entry.path_bytes().into_owned()).map_err(|_| {
                BundleError::Member {
                    path: "?".into(),
                    reason: "path is not UTF-8".into(),
                }
            })?;
            let kind = entry.header().entry_type();
            if kind.is_dir() {
                continue;
            }
            if !kind.is_file() {
                return Err(BundleError::Member {
                    path,
                    reason: format!("only regular files are allowed, not {kind:?}"),
                });
            }
            safe_path(&path).map_err(|reason| BundleError::Member {
                path: path.clone(),
                reason,
            })?;
            let size = entry
                .header()
                .size()
                .map_err(|e| BundleError::Archive(e.to_string()))?;
            total = total.saturating_add(size);
            if total > MAX_UNPACKED_BYTES {
                return Err(BundleError::Bomb);
            }
            if members.len() >= MAX_MEMBERS {
                return Err(BundleError::Member {
                    path,
                    reason: format!("more than {MAX_MEMBERS} members"),
                });
            }
            let mut data = Vec::with_capacity(size.min(64 << 20) as usize);
            entry
                .read_to_end(&mut data)
                .map_err(|e| archive_error(e, total))?;
            if data.len() as u64 != size {
                return Err(BundleError::Archive(format!("member {path} is truncated")));
            }
            if members.insert(path.clone(), data).is_some() {
                return Err(BundleError::Member {
                    path,
                    reason: "appears twice".into(),
                });
            }
        }
        // Read to the end of the zstd frame so its checksum is checked: a
        // truncated file must not pass as a shorter bundle.
        let mut rest = archive.into_inner();
        std::io::copy(&mut rest, &mut std::io::sink()).map_err(|e| archive_error(e, total))?;
        if rest.limit() == 0 {
            return Err(BundleError::Bomb);
        }
        let lock_bytes = members
            .remove(LOCK)
            .ok_or_else(|| BundleError::Lock(format!("no {LOCK} member")))?;
        let signature_names: Vec<String> = members
            .keys()
            .filter(|p| p.starts_with(SIGNATURES))
            .cloned()
            .collect();
        let mut signature_members = BTreeMap::new();
        for name in signature_names {
            let data = members.remove(&name).expect("the name was just listed");
            signature_members.insert(name, data);
        }
        let lock: Lock =
            serde_json::from_slice(&lock_bytes).map_err(|e| BundleError::Lock(e.to_string()))?;
        if lock.format != 1 {
            return Err(BundleError::Lock(format!(
                "format {} (this engine reads format 1)",
                lock.format
            )));
        }
        let mut listed = std::collections::HashSet::new();
        for entry in &lock.members {
            safe_path(&entry.path)
                .map_err(|reason| BundleError::Lock(format!("{:?}: {reason}", entry.path)))?;
            if !listed.insert(entry.path.as_str()) {
                return Err(BundleError::Lock(format!(
                    "{:?} is listed twice",
                    entry.path
                )));
            }
            let data = members
                .get(&entry.path)
                .ok_or_else(|| BundleError::Mismatch {
                    path: entry.path.clone(),
                    reason: "listed in the lock but missing from the bundle".into(),
                })?;
            let hash = blake3::hash(data).to_hex();
            if data.len() as u64 != entry.size || hash.as_str() != entry.blake3 {
                return Err(BundleError::Mismatch {
                    path: entry.path.clone(),
                    reason: format!(
                        "blake3 {} ({} bytes), the lock says {} ({} bytes)",
                        hash,
                        data.len(),
                        entry.blake3,
                        entry.size
                    ),
                });
            }
        }
        if let Some(extra) = members.keys().find(|p| !listed.contains(p.as_str())) {
            return Err(BundleError::Mismatch {
                path: extra.clone(),
                reason: "present in the bundle but not in the lock".into(),
            });
        }
        if !members.contains_key(MANIFEST) {
            return Err(BundleError::Lock(format!("no {MANIFEST} member")));
        }
        let id = blake3::hash(&lock_bytes);
        let signatures = signature_members
            .iter()
            .map(|(path, data)| verify_signature(&id, path, data))
            .collect::<Result<_, _>>()?;
        Ok(Bundle {
            id,
            lock,
            signatures,
            members,
            lock_bytes,
            signature_members,
        })
    }

    /// The bundle with one more signature, made with `key`.
    pub fn sign(&self, key: &ed25519_dalek::SigningKey) -> Vec<u8> {
        use ed25519_dalek::Signer;
        let public = key.verifying_key().to_bytes();
        let member = SignatureMember {
            public_key: hex::encode(public),
            signature: hex::encode(key.sign(&signed_message(&self.id)).to_bytes()),
        };
        let mut all = self.members.clone();
        all.insert(LOCK.into(), self.lock_bytes.clone());
        all.extend(self.signature_members.clone());
        let json = serde_json::to_vec_pretty(&member).expect("signatures always encode");
        all.insert(format!("{SIGNATURES}{}.sig", key_id(&public)), json);
        write_archive(&all).expect("writing to memory cannot fail")
    }

    /// A member's bytes by its path.
    pub fn member(&self, path: &str) -> Option<&[u8]> {
        self.members.get(path).map(Vec::as_slice)
    }

    /// The manifest, parsed.
    pub fn manifest(&self) -> Result<Manifest, BundleError> {
        let bytes = self
            .member(MANIFEST)
            .expect("checked when the bundle was read");
        Manifest::parse(bytes).map_err(|message| {
            BundleError::Manifest(ManifestError::Syntax {
                path: PathBuf::from(MANIFEST),
                message,
            })
        })
    }
}

fn verify_signature(id: &blake3::Hash, path: &str, data: &[u8]) -> Result<Signature, BundleError> {
    let bad = |reason: String| BundleError::BadSignature {
        path: path.to_owned(),
        reason,
    };
    if !path.ends_with(".sig") || path[SIGNATURES.len()..].contains('/') {
        return Err(bad(
            "signature members are named signatures/<key id>.sig".into()
        ));
    }
    let member: SignatureMember = serde_json::from_slice(data).map_err(|e| bad(e.to_string()))?;
    let public: [u8; 32] = hex::decode(&member.public_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("the public key is not 32 bytes of hex".into()))?;
    let signature: [u8; 64] = hex::decode(&member.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("the signature is not 64 bytes of hex".into()))?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&public).map_err(|e| bad(e.to_string()))?;
    key.verify_strict(
        &signed_message(id),
        &ed25519_dalek::Signature::from_bytes(&signature),
    )
    .map_err(|_| bad("it does not verify against this bundle's id".into()))?;
    Ok(Signature {
        public_key: member.public_key,
        key_id: key_id(&public),
    })
}

/// Generate a signing key; returns (secret key file text, public key hex).
pub fn generate_key() -> (String, String) {
    let seed: [u8; 32] = rand::random();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    (
        format!("cairn-ed25519-secret:{}\n", hex::encode(seed)),
        hex::encode(key.verifying_key().to_bytes()),
    )
}

/// Read a secret key file written by [`generate_key`].
pub fn read_key(path: &Path) -> Result<ed25519_dalek::SigningKey, BundleError> {
    let text = std::fs::read_to_string(path).map_err(|source| BundleError::Read {
        path: path.to_owned(),
        source,
    })?;
    let seed: [u8; 32] = text
        .trim()
        .strip_prefix("cairn-ed25519-secret:")
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            BundleError::Key(format!(
                "{} is not a Cairn secret key (made by `cairn key gen`)",
                path.display()
            ))
        })?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}

fn archive_error(e: std::io::Error, total: u64) -> BundleError {
    if total >= MAX_UNPACKED_BYTES {
        BundleError::Bomb
    } else {
        BundleError::Archive(e.to_string())
    }
}

/// Pack the pipeline at `path` (a manifest or a directory holding
/// `pipeline.toml`) into bundle bytes. The same sources give the same bytes.
pub fn pack(path: &Path) -> Result<Vec<u8>, BundleError> {
    let (manifest_path, manifest) = Manifest::load(path)?;
    let base = manifest_path
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default();
    let text = std::fs::read_to_string(&manifest_path).map_err(|source| BundleError::Read {
        path: manifest_path.clone(),
        source,
    })?;
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| BundleError::Pack(e.to_string()))?;

    let mut members: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let steps = table
        .get_mut("steps")
        .and_then(|s| s.as_table_mut())
        .ok_or_else(|| BundleError::Pack("no [steps]".into()))?;
    for (name, spec) in &manifest.steps {
        let source = base.join(&spec.component);
        let wasm = crate::files::read_regular(&source, crate::sandbox::MAX_COMPONENT_BYTES)
            .map_err(|e| {
                BundleError::Pack(format!(
                    "step `{name}`: component {}: {e}",
                    source.display()
                ))
            })?;
        let stem = source
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "component".into());
        let stem: String = stem
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let member = format!(
            "components/{stem}-{}.wasm",
            &blake3::hash(&wasm).to_hex()[..16]
        );
        if let Some(step) = steps.get_mut(name).and_then(|s| s.as_table_mut()) {
            step.insert("component".into(), toml::Value::String(member.clone()));
        }
        members.insert(member, wasm);
        if let Some(input) = &spec.input {
            collect_files(input, &base, &mut members)?;
        }
    }
    if let Some(output) = &manifest.output {
        collect_files(output, &base, &mut members)?;
    }
    let rewritten = toml::to_string(&table).map_err(|e| BundleError::Pack(e.to_string()))?;
    if rewritten.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(BundleError::Pack("the manifest is too large".into()));
    }
    members.insert(MANIFEST.into(), rewritten.into_bytes());

    let lock = Lock {
        format: 1,
        members: members
            .iter()
            .map(|(path, data)| LockEntry {
                path: path.clone(),
                blake3: blake3::hash(data).to_hex().to_string(),
                size: data.len() as u64,
            })
            .collect(),
    };
    let mut lock_bytes =
        serde_json::to_vec_pretty(&lock).map_err(|e| BundleError::Pack(e.to_string()))?;
    lock_bytes.push(b'\n');
    members.insert(LOCK.into(), lock_bytes);

    write_archive(&members).map_err(|e| BundleError::Pack(e.to_string()))
}

/// The deterministic archive of `members`: path order, zero times and ids.
fn write_archive(members: &BTreeMap<String, Vec<u8>>) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        // Level 1: fast, and zstd stores incompressible blocks at memory speed.
        // Single-threaded, so the same input always gives the same bytes.
        let mut zst = zstd::stream::write::Encoder::new(&mut out, 1)?;
        zst.include_checksum(true)?;
        let mut tar = tar::Builder::new(zst);
        tar.mode(tar::HeaderMode::Deterministic);
        for (path, data) in members {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            header.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut header, path, data.as_slice())?;
        }
        tar.into_inner()?.finish()?.flush()?;
    }
    Ok(out)
}

/// Add the data files named by `{ "$file" = … }` / `{ "$json" = … }`.
fn collect_files(
    value: &toml::Value,
    base: &Path,
    members: &mut BTreeMap<String, Vec<u8>>,
) -> Result<(), BundleError> {
    match value {
        toml::Value::Table(table)
            if table.len() == 1 && (table.contains_key("$file") || table.contains_key("$json")) =>
        {
            let (_, target) = table.iter().next().expect("one entry");
            let relative = target
                .as_str()
                .ok_or_else(|| BundleError::Pack("$file/$json must be a path string".into()))?;
            safe_path(relative)
                .map_err(|reason| BundleError::Pack(format!("data file {relative:?}: {reason}")))?;
            let data = crate::files::read_regular(&base.join(relative), MAX_UNPACKED_BYTES)
                .map_err(|e| BundleError::Pack(format!("data file {relative:?}: {e}")))?;
            members.insert(relative.to_owned(), data);
        }
        toml::Value::Table(table) => {
            for v in table.values() {
                collect_files(v, base, members)?;
            }
        }
        toml::Value::Array(items) => {
            for v in items {
                collect_files(v, base, members)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_gz(entries: &[(&str, &[u8], tar::EntryType)]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let gz = zstd::stream::write::Encoder::new(&mut out, 1)
                .unwrap()
                .auto_finish();
            let mut tar = tar::Builder::new(gz);
            for (path, data, kind) in entries {
                let mut header = tar::Header::new_gnu();
                header.set_size(data.len() as u64);
                header.set_entry_type(*kind);
                header.set_mode(0o644);
                // set_path refuses `..`; write the raw name as an attacker would.
                let name = header.as_old_mut().name.as_mut();
                name[..path.len()].copy_from_slice(path.as_bytes());
                header.set_cksum();
                tar.append(&header, *data).unwrap();
            }
            drop(tar.into_inner().unwrap());
        }
        out
    }

    fn lock_for(members: &[(&str, &[u8])]) -> Vec<u8> {
        let lock = Lock {
            format: 1,
            members: members
                .iter()
                .map(|(p, d)| LockEntry {
                    path: p.to_string(),
                    blake3: blake3::hash(d).to_hex().to_string(),
                    size: d.len() as u64,
                })
                .collect(),
        };
        serde_json::to_vec(&lock).unwrap()
    }

    #[test]
    fn a_well_formed_bundle_reads_back() {
        let manifest = b"name = \"x\"\n";
        let lock = lock_for(&[(MANIFEST, manifest)]);
        let bytes = tar_gz(&[
            (LOCK, &lock, tar::EntryType::Regular),
            (MANIFEST, manifest, tar::EntryType::Regular),
        ]);
        let bundle = Bundle::read(&bytes).unwrap();
        assert_eq!(bundle.member(MANIFEST), Some(&manifest[..]));
        assert_eq!(bundle.id, blake3::hash(&lock));
    }

    #[test]
    fn traversal_absolute_and_link_members_are_refused() {
        let manifest = b"name = \"x\"\n";
        let lock = lock_for(&[(MANIFEST, manifest)]);
        for (path, kind) in [
            ("../../etc/x", tar::EntryType::Regular),
            ("/etc/x", tar::EntryType::Regular),
            ("a/../../x", tar::EntryType::Regular),
            ("link", tar::EntryType::Symlink),
            ("hard", tar::EntryType::Link),
        ] {
            let bytes = tar_gz(&[
                (LOCK, &lock, tar::EntryType::Regular),
                (path, b"x", kind),
                (MANIFEST, manifest, tar::EntryType::Regular),
            ]);
            let err = Bundle::read(&bytes).unwrap_err().to_string();
            assert!(err.contains("refused"), "{path}: {err}");
        }
    }

    #[test]
    fn members_must_match_the_lock_both_ways() {
        let manifest = b"name = \"x\"\n";
        let lock = lock_for(&[(MANIFEST, b"name = \"y\"\n")]);
        let bytes = tar_gz(&[
            (LOCK, &lock, tar::EntryType::Regular),
            (MANIFEST, manifest, tar::EntryType::Regular),
        ]);
        assert!(
            Bundle::read(&bytes)
                .unwrap_err()
                .to_string()
                .contains("does not match the lock")
        );
        let lock = lock_for(&[(MANIFEST, manifest)]);
        let bytes = tar_gz(&[
            (LOCK, &lock, tar::EntryType::Regular),
            (MANIFEST, manifest, tar::EntryType::Regular),
            ("extra", b"!", tar::EntryType::Regular),
        ]);
        assert!(
            Bundle::read(&bytes)
                .unwrap_err()
                .to_string()
                .contains("not in the lock")
        );
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        let manifest = b"name = \"x\"\n";
        let lock = lock_for(&[(MANIFEST, manifest)]);
        let good = tar_gz(&[
            (LOCK, &lock, tar::EntryType::Regular),
            (MANIFEST, manifest, tar::EntryType::Regular),
        ]);
        for cut in [0, 1, 10, good.len() / 2, good.len() - 1] {
            assert!(Bundle::read(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Bundle::read(b"definitely not zstd").is_err());
    }
}

/// Fuzzing the bundle reader: a real small bundle, mutated (byte flips,
/// truncation), plus arbitrary bytes. Reading may fail; it may never panic.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn seed() -> Vec<u8> {
        let manifest = b"name = \"seed\"\n[steps.a]\ncomponent = \"c.wasm\"\n".to_vec();
        let component = b"\0asm\x0d\0\x01\0".to_vec();
        let mut members = BTreeMap::new();
        members.insert("c.wasm".to_owned(), component);
        members.insert(MANIFEST.to_owned(), manifest);
        let lock = Lock {
            format: 1,
            members: members
                .iter()
                .map(|(p, d)| LockEntry {
                    path: p.clone(),
                    blake3: blake3::hash(d).to_hex().to_string(),
                    size: d.len() as u64,
                })
                .collect(),
        };
        members.insert(LOCK.to_owned(), serde_json::to_vec(&lock).unwrap());
        write_archive(&members).unwrap()
    }

    #[test]
    fn the_seed_itself_reads() {
        assert!(Bundle::read(&seed()).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = Bundle::read(&bytes);
        }

        #[test]
        fn zstd_of_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let compressed = zstd::stream::encode_all(bytes.as_slice(), 1).unwrap();
            let _ = Bundle::read(&compressed);
        }

        #[test]
        fn mutated_bundles_never_panic(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            cut in any::<usize>(),
        ) {
            let mut bytes = seed();
            for (at, value) in flips {
                let len = bytes.len();
                bytes[at % len] = value;
            }
            let len = bytes.len();
            bytes.truncate(cut % (len + 1));
            let _ = Bundle::read(&bytes);
        }
    }
}
