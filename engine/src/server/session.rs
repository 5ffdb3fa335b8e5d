//! Browser sessions for the dashboard: a token is exchanged once for a
//! session cookie, so the page never keeps the token.
//!
//! - `POST /v1/session` with the token as a bearer (the sign-in form sends
//!   it once) sets `cairn_session`: `HttpOnly` (no page script reads it),
//!   `SameSite=Strict` (no other site's page sends it), `Path=/`, and
//!   `Secure` when the request came through a TLS proxy
//!   (`X-Forwarded-Proto: https`). The answer carries the session's CSRF
//!   token, which lives in the page's memory only.
//! - Every other route accepts the cookie in place of a bearer token; a
//!   request that changes anything (not GET or HEAD) and is authorized by
//!   the cookie must also carry `X-CSRF-Token` with the session's value, or
//!   it is refused (403) before any handler runs.
//! - `DELETE /v1/session` ends the session on the server: the cookie is
//!   worth nothing afterwards, even if kept.
//!
//! Sessions are kept in the server's data directory (`sessions.json`, each
//! under a blake3 hash of its id, so the file holds no cookie), survive a
//! restart, last at most [`SESSION_LIFETIME_MS`], and die with the token
//! they were opened with (revoked or expired: the session no longer
//! authorizes anything). A session's CSRF token is not stored: it is a
//! keyed hash of the session's id under the server's `session-key`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use axum::http::{HeaderMap, HeaderValue, Method, header};
use serde::{Deserialize, Serialize};

use super::auth::Caller;

/// The cookie's name.
pub const COOKIE: &str = "cairn_session";
/// The header a cookie-authorized change must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts, from sign-in.
pub const SESSION_LIFETIME_MS: u64 = 12 * 60 * 60 * 1000;
/// Most sessions kept at once; the oldest go first past it.
const MAX_SESSIONS: usize = 10_000;

#[derive(Serialize, Deserialize)]
struct Session {
    token_id: String,
    expires_ms: u64,
}

/// A kept session, as `sessions.json` lists it.
#[derive(Serialize, Deserialize)]
struct Kept {
    /// blake3 of the session's id.
    key: String,
    #[serde(flatten)]
    session: Session,
}

/// The server's open sessions.
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
    /// What CSRF tokens are derived with.
    csrf_key: [u8; 32],
    /// Where the sessions are kept (`None`: in memory only).
    file: Option<PathBuf>,
}

impl Default for Sessions {
    /// Sessions in memory only, with a key of their own.
    fn default() -> Self {
        Self {
            open: Mutex::new(HashMap::new()),
            csrf_key: rand::random(),
            file: None,
        }
    }
}

/// A new session: the cookie's value and the CSRF token.
pub struct Opened {
    pub id: String,
    pub csrf: String,
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The key a session is kept under: a hash, so the table holds no cookie.
fn key(id: &str) -> String {
    blake3::hash(id.as_bytes()).to_hex().to_string()
}

impl Sessions {
    /// The sessions kept in `dir` (`session-key`, `sessions.json`). What
    /// cannot be read is started afresh, with a warning: a damaged file
    /// signs people out, it does not stop the server.
    pub fn open(dir: &Path) -> Self {
        let key_path = dir.join("session-key");
        let csrf_key = match std::fs::read(&key_path).map(|b| <[u8; 32]>::try_from(b.as_slice())) {
            Ok(Ok(key)) => key,
            _ => {
                let key: [u8; 32] = rand::random();
                if let Err(e) = super::auth::write_private(&key_path, &key) {
                    tracing::warn!("sessions will not survive a restart: {e}");
                }
                key
            }
        };
        let file = dir.join("sessions.json");
        let open = match std::fs::read(&file) {
            Ok(bytes) => match serde_json::from_slice::<Vec<Kept>>(&bytes) {
                Ok(kept) => kept.into_iter().map(|k| (k.key, k.session)).collect(),
                Err(e) => {
                    tracing::warn!(
                        "{} is damaged ({e}): everyone signs in again",
                        file.display()
                    );
                    HashMap::new()
                }
            },
            Err(_) => HashMap::new(),
        };
        Self {
            open: Mutex::new(open),
            csrf_key,
            file: Some(file),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A session's CSRF token, from its id.
    fn csrf(&self, id: &str) -> String {
        blake3::keyed_hash(&self.csrf_key, id.as_bytes())
            .to_hex()
            .to_string()
    }

    /// Write the table out (called with it locked, so writes are in order).
    fn keep(&self, open: &HashMap<String, Session>) {
        let Some(file) = &self.file else {
            return;
        };
        let kept: Vec<Kept> = open
            .iter()
            .map(|(key, s)| Kept {
                key: key.clone(),
                session: Session {
                    token_id: s.token_id.clone(),
                    expires_ms: s.expires_ms,
                },
            })
            .collect();
        let written = serde_json::to_vec(&kept)
            .map_err(|e| e.to_string())
            .and_then(|bytes| super::auth::write_private(file, &bytes).map_err(|e| e.to_string()));
        if let Err(e) = written {
            tracing::warn!("sessions not kept on disk: {e}");
        }
    }

    /// Open a session for the caller of token `token_id`.
    pub fn open_session(&self, token_id: &str, now_ms: u64) -> Opened {
        let id = random_hex();
        let opened = Opened {
            csrf: self.csrf(&id),
            id,
        };
        let mut open = self.lock();
        open.retain(|_, s| s.expires_ms > now_ms);
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open
                .iter()
                .min_by_key(|(_, s)| s.expires_ms)
                .map(|(k, _)| k.clone())
        {
            open.remove(&oldest);
        }
        open.insert(
            key(&opened.id),
            Session {
                token_id: token_id.to_owned(),
                expires_ms: now_ms + SESSION_LIFETIME_MS,
            },
        );
        self.keep(&open);
        opened
    }

    /// The token id and CSRF token of a live session.
    pub fn find(&self, id: &str, now_ms: u64) -> Option<(String, String)> {
        let open = self.lock();
        let session = open.get(&key(id))?;
        (session.expires_ms > now_ms).then(|| (session.token_id.clone(), self.csrf(id)))
    }

    /// End a session; `false` if there was none.
    pub fn close(&self, id: &str) -> bool {
        let mut open = self.lock();
        let closed = open.remove(&key(id)).is_some();
        if closed {
            self.keep(&open);
        }
        closed
    }
}

/// The session cookie's value in `headers`, if any.
pub fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| cookie::Cookie::parse(pair.trim().to_owned()).ok())
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value().to_owned())
}

/// The `Set-Cookie` value that opens (`Some(id)`) or clears a session.
pub fn set_cookie(id: Option<&str>, secure: bool) -> HeaderValue {
    let mut built = cookie::Cookie::build((COOKIE, id.unwrap_or("").to_owned()))
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .path("/")
        .secure(secure);
    built = match id {
        Some(_) => built.max_age(cookie::time::Duration::milliseconds(
            SESSION_LIFETIME_MS as i64,
        )),
        None => built.max_age(cookie::time::Duration::ZERO),
    };
    HeaderValue::from_str(&built.build().to_string())
        .expect("a cookie of hex digits is a valid header value")
}

/// Did the request reach the server through TLS (a proxy says so)?
pub fn behind_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// Why a cookie-authorized request is refused before its handler.
pub enum Refusal {
    /// A change without the session's CSRF token.
    Csrf,
}

/// The caller a request's session cookie stands for (no bearer token
/// given), checking the CSRF token of a request that changes something.
pub fn session_caller(
    sessions: &Sessions,
    tokens: &super::auth::Tokens,
    method: &Method,
    headers: &HeaderMap,
    now_ms: u64,
) -> Result<Option<Caller>, Refusal> {
    if headers.contains_key(header::AUTHORIZATION) {
        return Ok(None);
    }
    let Some(id) = cookie(headers) else {
        return Ok(None);
    };
    let Some((token_id, csrf)) = sessions.find(&id, now_ms) else {
        return Ok(None);
    };
    if !matches!(*method, Method::GET | Method::HEAD) {
        let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        // Compared as hashes: the time taken says nothing of the value.
        if sent.map(|s| blake3::hash(s.as_bytes())) != Some(blake3::hash(csrf.as_bytes())) {
            return Err(Refusal::Csrf);
        }
    }
    Ok(tokens.still_valid(&token_id, now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_open_find_expire_and_close() {
        let sessions = Sessions::default();
        let a = sessions.open_session("tok1", 1_000);
        assert_eq!(
            sessions.find(&a.id, 1_001),
            Some(("tok1".into(), a.csrf.clone()))
        );
        assert_eq!(sessions.find(&a.id, 1_000 + SESSION_LIFETIME_MS), None);
        assert_eq!(sessions.find("not-a-session", 1_001), None);
        let b = sessions.open_session("tok2", 2_000);
        assert!(sessions.close(&b.id));
        assert!(!sessions.close(&b.id));
        assert_eq!(sessions.find(&b.id, 2_001), None);
        // The table holds hashes, not the cookie values.
        assert!(!sessions.lock().contains_key(&a.id));
    }

    #[test]
    fn kept_sessions_read_back_with_the_same_csrf_and_a_damaged_file_signs_everyone_out() {
        let dir = tempfile::tempdir().unwrap();
        let a = Sessions::open(dir.path()).open_session("tok1", 1_000);
        let b = Sessions::open(dir.path()).open_session("tok2", 1_000);
        let again = Sessions::open(dir.path());
        assert_eq!(
            again.find(&a.id, 1_001),
            Some(("tok1".into(), a.csrf.clone()))
        );
        assert!(again.close(&b.id));
        assert_eq!(Sessions::open(dir.path()).find(&b.id, 1_001), None);
        std::fs::write(dir.path().join("sessions.json"), b"{not json").unwrap();
        assert_eq!(Sessions::open(dir.path()).find(&a.id, 1_001), None);
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_behind_tls() {
        let set = set_cookie(Some("abc"), true);
        let text = set.to_str().unwrap();
        for part in [
            "cairn_session=abc",
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Path=/",
        ] {
            assert!(text.contains(part), "{text}");
        }
        assert!(
            !set_cookie(Some("abc"), false)
                .to_str()
                .unwrap()
                .contains("Secure")
        );
        assert!(
            set_cookie(None, false)
                .to_str()
                .unwrap()
                .contains("Max-Age=0")
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; cairn_session=xyz; b=2"),
        );
        assert_eq!(cookie(&headers).as_deref(), Some("xyz"));
    }
}
