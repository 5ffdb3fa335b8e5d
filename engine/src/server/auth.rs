//! Tokens and roles: who may call the API, for which tenant, as what.
//!
//! A token is 32 random bytes, shown once as `cairn_<64 hex>`. The server
//! keeps only a keyed blake3 hash of it (the key, `DIR/token-key`, never
//! leaves the data directory), so a copy of the token table lets no one in.
//! The table is one JSON file, rewritten whole through a temporary file and
//! a rename, so a crash leaves the old table or the new one.
//!
//! Invariant: a request is authorized by [`Tokens::authenticate`] alone; it
//! answers the same [`Unauthorized`] for a missing, malformed, unknown,
//! revoked or expired token, so a caller learns nothing about which.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// What a token may do. Each role may do everything the ones before it may.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read the tenant's runs, logs, bundles.
    Viewer,
    /// Also upload bundles and start, cancel, resume and replay runs.
    Operator,
    /// Also manage the tenant's tokens and read its audit log.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "{other:?} is not a role (viewer, operator or admin)"
            )),
        }
    }
}

/// Whose a token is: one tenant's, or the whole server's (which manages
/// tenants' tokens but reads no tenant's data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Server,
    Tenant(String),
}

/// One row of the token table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEntry {
    /// A short public id (for listing and revoking), not the secret.
    pub id: String,
    /// Keyed blake3 of the token, hex.
    pub hash: String,
    /// `None`: a server-wide admin token.
    pub tenant: Option<String>,
    pub role: Role,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub revoked: bool,
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub token_id: String,
    pub scope: Scope,
    pub role: Role,
}

/// The request carries no token the server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unauthorized;

/// Why the token table cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read or write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is damaged: {reason}; restore it from a backup, or remove it and the admin-token file and restart the server for a new admin token", path.display())]
    Damaged { path: PathBuf, reason: String },
}

/// The token table and the key its hashes are made with.
pub struct Tokens {
    key: [u8; 32],
    path: PathBuf,
    table: Mutex<BTreeMap<String, TokenEntry>>,
}

/// The prefix every token starts with, so a leaked one is recognisable.
const PREFIX: &str = "cairn_";

impl Tokens {
    /// Open the table in `dir` (`token-key`, `tokens.json`), creating the
    /// key on first use. Returns the table and, when the table was empty, a
    /// new server-wide admin token (shown once).
    pub fn open(dir: &Path, now_ms: u64) -> Result<(Self, Option<String>), TokenError> {
        let key_path = dir.join("token-key");
        let key = match std::fs::read(&key_path) {
            Ok(bytes) => {
                <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| TokenError::Damaged {
                    path: key_path.clone(),
                    reason: "not 32 bytes".into(),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                write_private(&key_path, &key)?;
                key
            }
            Err(source) => {
                return Err(TokenError::Io {
                    path: key_path,
                    source,
                });
            }
        };
        let path = dir.join("tokens.json");
        let table: BTreeMap<String, TokenEntry> = match std::fs::read(&path) {
            Ok(bytes) => {
                let rows: Vec<TokenEntry> =
                    serde_json::from_slice(&bytes).map_err(|e| TokenError::Damaged {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                rows.into_iter().map(|r| (r.id.clone(), r)).collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(TokenError::Io { path, source }),
        };
        let tokens = Self {
            key,
            path,
            table: Mutex::new(table),
        };
        let first = if tokens.lock().is_empty() {
            Some(tokens.create(None, Role::Admin, None, now_ms)?.1)
        } else {
            None
        };
        Ok((tokens, first))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, TokenEntry>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn hash(&self, token: &str) -> String {
        blake3::keyed_hash(&self.key, token.as_bytes())
            .to_hex()
            .to_string()
    }

    /// Make a token; returns its entry and the token itself (the only time
    /// it exists outside the caller's hands).
    pub fn create(
        &self,
        tenant: Option<String>,
        role: Role,
        expires_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<(TokenEntry, String), TokenError> {
        let secret: [u8; 32] = rand::random();
        let token = format!("{PREFIX}{}", hex::encode(secret));
        let id_bytes: [u8; 6] = rand::random();
        let entry = TokenEntry {
            id: hex::encode(id_bytes),
            hash: self.hash(&token),
            tenant,
            role,
            created_ms: now_ms,
            expires_ms,
            revoked: false,
        };
        let mut table = self.lock();
        table.insert(entry.id.clone(), entry.clone());
        self.save(&table)?;
        Ok((entry, token))
    }

    /// Revoke a token by id; `false` if there is none (in `scope`).
    pub fn revoke(&self, id: &str, tenant: Option<&str>) -> Result<bool, TokenError> {
        let mut table = self.lock();
        let Some(entry) = table.get_mut(id) else {
            return Ok(false);
        };
        if tenant.is_some() && entry.tenant.as_deref() != tenant {
            return Ok(false);
        }
        entry.revoked = true;
        self.save(&table)?;
        Ok(true)
    }

    /// Delete every token of `tenant` (being removed): none of them
    /// authorizes anything again, and a later tenant of the same name
    /// neither inherits nor sees them. Returns how many there were.
    pub fn remove_tenant(&self, tenant: &str) -> Result<usize, TokenError> {
        let mut table = self.lock();
        let before = table.len();
        table.retain(|_, e| e.tenant.as_deref() != Some(tenant));
        let removed = before - table.len();
        if removed > 0 {
            self.save(&table)?;
        }
        Ok(removed)
    }

    /// Every token of `tenant` (every token at all for `None`).
    pub fn list(&self, tenant: Option<&str>) -> Vec<TokenEntry> {
        self.lock()
            .values()
            .filter(|e| tenant.is_none() || e.tenant.as_deref() == tenant)
            .cloned()
            .collect()
    }

    /// The caller a bearer token stands for.
    pub fn authenticate(&self, token: &str, now_ms: u64) -> Result<Caller, Unauthorized> {
        if !token.starts_with(PREFIX) || token.len() != PREFIX.len() + 64 {
            return Err(Unauthorized);
        }
        let hash = self.hash(token);
        let table = self.lock();
        let entry = table
            .values()
            .find(|e| e.hash == hash)
            .ok_or(Unauthorized)?;
        if entry.revoked || entry.expires_ms.is_some_and(|at| at <= now_ms) {
            return Err(Unauthorized);
        }
        Ok(Caller {
            token_id: entry.id.clone(),
            scope: entry.tenant.clone().map_or(Scope::Server, Scope::Tenant),
            role: entry.role,
        })
    }

    /// The caller of token `id` if it is still valid now (not revoked, not
    /// expired): what a session signed in with it may still do.
    pub fn still_valid(&self, id: &str, now_ms: u64) -> Option<Caller> {
        let table = self.lock();
        let entry = table.values().find(|e| e.id == id)?;
        if entry.revoked || entry.expires_ms.is_some_and(|at| at <= now_ms) {
            return None;
        }
        Some(Caller {
            token_id: entry.id.clone(),
            scope: entry.tenant.clone().map_or(Scope::Server, Scope::Tenant),
            role: entry.role,
        })
    }

    fn save(&self, table: &BTreeMap<String, TokenEntry>) -> Result<(), TokenError> {
        let rows: Vec<&TokenEntry> = table.values().collect();
        let bytes = serde_json::to_vec_pretty(&rows).expect("token entries always serialize");
        write_private(&self.path, &bytes)
    }
}

/// Write `bytes` to `path` readable by the owner only, through a temporary
/// file and a rename, synced.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TokenError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TokenError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_authenticate_until_revoked_or_expired_and_only_hashes_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (tokens, admin) = Tokens::open(dir.path(), 1_000).unwrap();
        let admin = admin.expect("a first admin token");
        assert_eq!(
            tokens.authenticate(&admin, 1_000).unwrap().scope,
            Scope::Server
        );
        let (entry, viewer) = tokens
            .create(Some("acme".into()), Role::Viewer, Some(5_000), 1_000)
            .unwrap();
        let caller = tokens.authenticate(&viewer, 4_999).unwrap();
        assert_eq!(
            (caller.scope, caller.role),
            (Scope::Tenant("acme".into()), Role::Viewer)
        );
        assert_eq!(tokens.authenticate(&viewer, 5_000), Err(Unauthorized));
        let stored = std::fs::read_to_string(dir.path().join("tokens.json")).unwrap();
        assert!(
            !stored.contains(&viewer[PREFIX.len()..]),
            "a token in clear"
        );
        assert!(!stored.contains(&admin[PREFIX.len()..]), "a token in clear");

        assert!(
            !tokens.revoke(&entry.id, Some("other")).unwrap(),
            "another tenant's"
        );
        assert!(tokens.revoke(&entry.id, Some("acme")).unwrap());
        assert_eq!(tokens.authenticate(&viewer, 1_000), Err(Unauthorized));
        for garbage in [
            "",
            "cairn_",
            "Bearer x",
            &viewer[..20],
            &"cairn_".repeat(12),
        ] {
            assert_eq!(tokens.authenticate(garbage, 1_000), Err(Unauthorized));
        }

        // Reopened: the same table, no new admin token.
        drop(tokens);
        let (tokens, again) = Tokens::open(dir.path(), 2_000).unwrap();
        assert!(again.is_none());
        assert!(tokens.authenticate(&admin, 2_000).is_ok());
        use std::os::unix::fs::PermissionsExt;
        for file in ["token-key", "tokens.json"] {
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
    }
}
