//! Capabilities granted to one run of a task.
//!
//! The default grant is nothing: no files, no environment, no network, no
//! real clock, no OS randomness. Each grant here is something the caller asked
//! for explicitly; validation happens when the grant is built, so the sandbox
//! can apply a [`Grants`] value without further checks.

use std::path::{Path, PathBuf};

use super::http::HttpLimits;
use super::http_grant::HttpGrant;

/// What a run may reach beyond its input.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Grants {
    /// Directories readable (not writable) at the same path inside the
    /// sandbox. Always fully resolved (absolute, no `.`/`..`, no symlink in
    /// any component): the policy checks, the audit log records and the
    /// sandbox opens exactly these paths, never the path as written.
    pub read_dirs: Vec<PathBuf>,
    /// One directory readable and writable by the task.
    pub scratch: Option<Scratch>,
    /// Environment variables visible to the task, in order.
    pub env: Vec<(String, String)>,
    /// Names of secrets, visible to the task as environment variables like
    /// `env`. Only names: the values come from the run's [`SecretSource`]
    /// when an attempt starts (never from a manifest, never kept in a
    /// plan), and are masked as `***` wherever the host writes what the
    /// task said: its logs, its error messages, its stderr.
    pub secrets: Vec<String>,
    /// The host's real wall and monotonic clocks (nondeterministic).
    pub wall_clock: bool,
    /// The host's random number generator (nondeterministic).
    pub random: bool,
    /// Outbound HTTP requests the task may send (none: every request is
    /// refused), and what it may spend on them.
    pub http: Vec<HttpGrant>,
    pub http_limits: HttpLimits,
    /// Secrets (also in `secrets`) used only in the headers the host
    /// attaches to HTTP requests: the task does not get them as variables.
    pub header_secrets: Vec<String>,
    /// The task's working directory, resolved like a grant: relative paths
    /// the task opens (`data/notes.txt` in its argv) are taken from here.
    /// Only applied when a directory is granted (see [`Grants::guest_cwd`]):
    /// it opens nothing by itself.
    pub cwd: Option<PathBuf>,
}

impl std::fmt::Debug for Grants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grants")
            .field("read_dirs", &self.read_dirs)
            .field("scratch", &self.scratch)
            .field("env", &self.env)
            .field("secrets", &self.secrets)
            .field("wall_clock", &self.wall_clock)
            .field("random", &self.random)
            .field("http", &self.http)
            .field("http_limits", &self.http_limits)
            .field("header_secrets", &self.header_secrets)
            .field("cwd", &self.cwd)
            .finish()
    }
}

/// Where a run's secrets grants get their values, when each attempt starts.
/// Its debug print must show no value.
pub trait SecretSource: Send + Sync + std::fmt::Debug {
    /// The value of secret `name`, if there is one.
    fn secret(&self, name: &str) -> Option<String>;
    /// Why `name` has no value here and what to do, for an error.
    fn missing(&self, name: &str) -> String;
    /// Whose secrets these are when a host serves them (a tenant), so that
    /// its steps get no variables of the host's own; `None`: the engine's.
    fn owner(&self) -> Option<&str> {
        None
    }
}

/// The engine's own environment: where a local run's secrets come from.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineEnv;

impl SecretSource for EngineEnv {
    fn secret(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn missing(&self, _: &str) -> String {
        "it is not set (or not UTF-8) in the engine's environment; export it there before running"
            .into()
    }
}

/// Secrets with their values, resolved for one attempt. Its debug print
/// shows names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Resolved(pub Vec<(String, String)>);

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| (name, MASK)))
            .finish()
    }
}

impl Resolved {
    /// Masks these values in text the task produced.
    pub fn redactor(&self) -> Redactor {
        Redactor::new(self.0.iter().map(|(_, value)| value.clone()))
    }
}

/// A writable directory for a task.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scratch {
    /// A fresh, empty directory the sandbox makes for each attempt under its
    /// scratch root and removes afterwards; the task sees it at
    /// [`MANAGED_SCRATCH`]. Nothing outlives the attempt, and nothing on the
    /// host is reachable through it.
    Managed,
    /// A host directory, resolved like a read grant, seen at its real path.
    /// State in it outlives attempts and runs; a policy allows one only
    /// under an `allow_scratch` prefix.
    Dir(PathBuf),
}

/// Where a task finds a managed scratch directory (also in `CAIRN_SCRATCH`).
pub const MANAGED_SCRATCH: &str = "/scratch";

impl Scratch {
    /// How the grant is named in the audit log and in denials.
    pub fn capability(&self) -> String {
        match self {
            Scratch::Managed => "scratch".to_owned(),
            Scratch::Dir(dir) => format!("scratch:{}", dir.display()),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrantError {
    #[error("cannot grant directory {path}: {reason}")]
    Dir { path: PathBuf, reason: String },
    #[error("cannot grant environment variable {name:?}: {reason}")]
    Env { name: String, reason: String },
    #[error("cannot grant secret {name:?}: {reason}")]
    Secret { name: String, reason: String },
}

impl Grants {
    /// Does a run depend on nothing but its component, input and these
    /// grants' values? False once it may read host files (which can change
    /// without Cairn knowing), keep state in a scratch directory, or see the
    /// real clock or OS randomness, or reach the network.
    pub fn is_hermetic(&self) -> bool {
        !self.wall_clock
            && !self.random
            && self.scratch.is_none()
            && self.read_dirs.is_empty()
            && self.http.is_empty()
    }

    /// Grant read access to `dir`, which must exist and be a directory. The
    /// grant is on the directory the path resolves to (symlinks followed,
    /// `..` applied), so a policy that checks the grant checks what the task
    /// will actually reach.
    pub fn allow_read(&mut self, dir: &Path) -> Result<(), GrantError> {
        self.read_dirs.push(existing_dir(dir)?);
        Ok(())
    }

    /// Set the task's working directory to where `dir` resolves (the
    /// directory the command was run in, or the manifest's).
    pub fn set_cwd(&mut self, dir: &Path) -> Result<(), GrantError> {
        self.cwd = Some(existing_dir(dir)?);
        Ok(())
    }

    /// The working directory the task gets: [`Grants::cwd`] when some host
    /// directory is granted, else none (the guest's default, `/`). Without
    /// a granted directory there is nothing a relative path could reach, and
    /// the host's path would only be a leak.
    pub fn guest_cwd(&self) -> Option<&Path> {
        let dirs = !self.read_dirs.is_empty() || matches!(self.scratch, Some(Scratch::Dir(_)));
        self.cwd.as_deref().filter(|_| dirs)
    }

    /// Grant a host directory as the writable scratch directory.
    pub fn allow_scratch(&mut self, dir: &Path) -> Result<(), GrantError> {
        self.scratch = Some(Scratch::Dir(existing_dir(dir)?));
        Ok(())
    }

    /// Grant a fresh, engine-managed scratch directory for each attempt.
    pub fn allow_managed_scratch(&mut self) {
        self.scratch = Some(Scratch::Managed);
    }

    /// Grant `NAME=VALUE`, or `NAME` with the value it has in this process.
    pub fn allow_env(&mut self, spec: &str) -> Result<(), GrantError> {
        let (name, value) = match spec.split_once('=') {
            Some((name, value)) => (name.to_owned(), value.to_owned()),
            None => {
                let value = std::env::var(spec).map_err(|e| GrantError::Env {
                    name: spec.to_owned(),
                    reason: format!(
                        "{e} in the engine's environment; pass NAME=VALUE to set it explicitly"
                    ),
                })?;
                (spec.to_owned(), value)
            }
        };
        if name.is_empty() || name.contains('\0') || value.contains('\0') {
            return Err(GrantError::Env {
                name,
                reason: "names must be non-empty and neither may contain NUL".into(),
            });
        }
        self.env.push((name, value));
        Ok(())
    }

    /// Grant secret `name`, which `source` must have now (a missing secret
    /// is refused before anything runs). Only the name is kept; the value
    /// is taken again when each attempt starts ([`Grants::resolve_secrets`]).
    pub fn allow_secret(
        &mut self,
        name: &str,
        source: &dyn SecretSource,
    ) -> Result<(), GrantError> {
        let fail = |reason: String| GrantError::Secret {
            name: name.to_owned(),
            reason,
        };
        if name.contains('=') {
            return Err(fail(
                "a secret's value cannot be written here; give its name and set its value where the run's secrets come from".into(),
            ));
        }
        if name.is_empty() || name.contains('\0') {
            return Err(fail("names must be non-empty and free of NUL".into()));
        }
        if self.env.iter().any(|(n, _)| n == name) || self.secrets.iter().any(|n| n == name) {
            return Err(fail("the name is granted twice".into()));
        }
        secret_value(name, source)?;
        self.secrets.push(name.to_owned());
        Ok(())
    }

    /// The granted secrets' values from `source`, for one attempt.
    pub fn resolve_secrets(&self, source: &dyn SecretSource) -> Result<Resolved, GrantError> {
        self.secrets
            .iter()
            .map(|name| Ok((name.clone(), secret_value(name, source)?)))
            .collect::<Result<_, _>>()
            .map(Resolved)
    }
}

/// A secret's value from `source`, if it is one a task can use and the
/// host can mask.
fn secret_value(name: &str, source: &dyn SecretSource) -> Result<String, GrantError> {
    let fail = |reason: String| GrantError::Secret {
        name: name.to_owned(),
        reason,
    };
    let value = source
        .secret(name)
        .ok_or_else(|| fail(source.missing(name)))?;
    if value.is_empty() || value.contains('\0') {
        return Err(fail(
            "its value is empty or holds NUL: nothing a task could use, or mask".into(),
        ));
    }
    Ok(value)
}

/// Replaces every occurrence of a set of secret values with `***`.
///
/// A guard against accidents (a task that logs its configuration, a panic
/// message quoting a connection string), not against a hostile task: one
/// that was handed a secret can always pass it on transformed.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Longest first, so a secret that contains another is masked whole.
    values: Vec<String>,
}

/// What a masked secret reads as.
pub const MASK: &str = "***";

impl Redactor {
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut values: Vec<String> = values.into_iter().filter(|v| !v.is_empty()).collect();
        // A multi-line secret (a PEM key) may surface a line at a time: mask
        // each of its lines that is long enough not to be boilerplate.
        let lines: Vec<String> = values
            .iter()
            .filter(|v| v.contains('\n'))
            .flat_map(|v| v.lines().map(str::trim).filter(|l| l.len() >= 8))
            .map(str::to_owned)
            .collect();
        values.extend(lines);
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        Self { values }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The length of the longest value masked (0 if none).
    pub fn longest(&self) -> usize {
        self.values.first().map_or(0, String::len)
    }

    /// The first `cap` bytes of `bytes`, as text, with every secret masked
    /// — including one that starts before `cap` and ends after it, so the
    /// capture behind `bytes` must hold [`Self::longest`]` - 1` bytes more
    /// than `cap`. Masking after cutting would show such a secret's start.
    pub fn redact_prefix(&self, bytes: &[u8], cap: usize) -> String {
        if self.values.is_empty() {
            return String::from_utf8_lossy(&bytes[..cap.min(bytes.len())]).into_owned();
        }
        let mut out = Vec::with_capacity(cap.min(bytes.len()));
        let mut i = 0;
        while i < cap.min(bytes.len()) {
            // Longest first, as in `redact`.
            match self
                .values
                .iter()
                .find(|v| bytes[i..].starts_with(v.as_bytes()))
            {
                Some(value) => {
                    out.extend_from_slice(MASK.as_bytes());
                    i += value.len();
                }
                None => {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
        }
        // A multi-byte character cut at `cap` becomes U+FFFD, not a panic.
        String::from_utf8_lossy(&out).into_owned()
    }

    /// `text` with every secret value replaced by [`MASK`].
    pub fn redact(&self, text: String) -> String {
        let mut text = text;
        for value in &self.values {
            if text.contains(value.as_str()) {
                text = text.replace(value.as_str(), MASK);
            }
        }
        text
    }
}

/// `dir` resolved to the real directory it names.
fn existing_dir(dir: &Path) -> Result<PathBuf, GrantError> {
    let fail = |reason: String| GrantError::Dir {
        path: dir.to_owned(),
        reason,
    };
    let real = std::fs::canonicalize(dir).map_err(|e| fail(e.to_string()))?;
    let meta = std::fs::metadata(&real).map_err(|e| fail(e.to_string()))?;
    if !meta.is_dir() {
        return Err(fail("not a directory".into()));
    }
    let path = real
        .to_str()
        .ok_or_else(|| fail("path is not valid UTF-8".into()))?;
    Ok(PathBuf::from(path))
}

/// The directory at `dir` (a resolved grant), opened once and checked to be
/// the directory the grant names: a symlink swapped into any component of
/// the path after the grant was checked leads somewhere else, and is
/// refused. The caller hands the sandbox this open handle (through
/// [`OpenDir::handle_path`]), never the path, so nothing is resolved twice.
pub fn open_granted_dir(dir: &Path) -> Result<OpenDir, GrantError> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |reason: String| GrantError::Dir {
        path: dir.to_owned(),
        reason,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| fail(e.to_string()))?;
    let opened = OpenDir { file };
    let reached = std::fs::read_link(opened.handle_path())
        .map_err(|e| fail(format!("cannot tell what was opened: {e}")))?;
    if reached != dir {
        return Err(fail(format!(
            "it now leads to {} (a symlink was swapped in after the grant was checked); refusing",
            reached.display()
        )));
    }
    Ok(opened)
}

/// A granted directory held open for the length of one attempt's set-up.
#[derive(Debug)]
pub struct OpenDir {
    file: std::fs::File,
}

impl OpenDir {
    /// A path that reopens exactly this directory (`/proc/self/fd/N`): the
    /// kernel follows it to the open handle, not by name through the tree.
    pub fn handle_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_granted_by_default() {
        let g = Grants::default();
        assert!(g.read_dirs.is_empty() && g.scratch.is_none() && g.env.is_empty());
        assert!(g.is_hermetic());
    }

    #[test]
    fn dirs_must_exist_and_be_directories() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = Grants::default();
        g.allow_read(dir.path()).unwrap();
        assert!(g.read_dirs[0].is_absolute());
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(
            g.allow_read(&file)
                .unwrap_err()
                .to_string()
                .contains("not a directory")
        );
        assert!(g.allow_read(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn grants_are_on_the_resolved_directory() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::os::unix::fs::symlink(root.join("a/b"), root.join("link")).unwrap();
        let mut g = Grants::default();
        g.allow_read(&root.join("link")).unwrap();
        g.allow_read(&root.join("a/b/../b/.")).unwrap();
        assert_eq!(g.read_dirs, [root.join("a/b"), root.join("a/b")]);
    }

    #[test]
    fn a_granted_directory_opens_only_while_it_is_still_what_was_granted() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path().canonicalize().unwrap();
        let granted = root.join("a/b");
        std::fs::create_dir_all(&granted).unwrap();
        std::fs::create_dir_all(root.join("elsewhere/b")).unwrap();
        let open = open_granted_dir(&granted).unwrap();
        let reopened = std::fs::canonicalize(open.handle_path()).unwrap();
        assert_eq!(reopened, granted, "the handle reopens the same directory");

        // The last component swapped for a link after the check.
        std::fs::rename(&granted, root.join("a/was-b")).unwrap();
        std::os::unix::fs::symlink(root.join("elsewhere/b"), &granted).unwrap();
        let err = open_granted_dir(&granted).unwrap_err().to_string();
        assert!(err.contains(&granted.display().to_string()), "{err}");
        std::fs::remove_file(&granted).unwrap();
        std::fs::rename(root.join("a/was-b"), &granted).unwrap();
        open_granted_dir(&granted).unwrap();

        // A parent component swapped for a link after the check.
        std::fs::rename(root.join("a"), root.join("was-a")).unwrap();
        std::os::unix::fs::symlink(root.join("elsewhere"), root.join("a")).unwrap();
        let err = open_granted_dir(&granted).unwrap_err().to_string();
        assert!(
            err.contains("now leads to") && err.contains("elsewhere/b"),
            "{err}"
        );

        // Special files are not directories.
        assert!(open_granted_dir(Path::new("/dev/null")).is_err());
    }

    /// A source of one secret, without touching the process's environment.
    #[derive(Debug)]
    struct OneSecret(&'static str);

    impl SecretSource for OneSecret {
        fn secret(&self, name: &str) -> Option<String> {
            (name == "CAIRN_TEST_SECRET_TOKEN").then(|| self.0.to_owned())
        }
        fn missing(&self, name: &str) -> String {
            format!("{name} is not one of the test's secrets")
        }
    }

    #[test]
    fn a_secret_grant_keeps_the_name_and_the_value_is_taken_per_attempt() {
        let source = OneSecret("s3cr3t-value");
        let mut g = Grants::default();
        g.allow_secret("CAIRN_TEST_SECRET_TOKEN", &source).unwrap();
        assert_eq!(g.secrets, ["CAIRN_TEST_SECRET_TOKEN"]);
        let resolved = g.resolve_secrets(&source).unwrap();
        assert_eq!(
            resolved.0,
            [(
                "CAIRN_TEST_SECRET_TOKEN".to_owned(),
                "s3cr3t-value".to_owned()
            )]
        );
        // Rotated between planning and the attempt: the attempt sees the new value.
        let rotated = g.resolve_secrets(&OneSecret("rotated")).unwrap();
        assert_eq!(rotated.0[0].1, "rotated");
        for shown in [format!("{g:?}"), format!("{resolved:?}")] {
            assert!(
                shown.contains("CAIRN_TEST_SECRET_TOKEN") && !shown.contains("s3cr3t"),
                "{shown}"
            );
        }
        let twice = g
            .allow_secret("CAIRN_TEST_SECRET_TOKEN", &source)
            .unwrap_err();
        assert!(twice.to_string().contains("granted twice"), "{twice}");
        let inline = g
            .allow_secret("TOKEN=abc", &source)
            .unwrap_err()
            .to_string();
        assert!(inline.contains("cannot be written here"), "{inline}");
        let unset = g
            .allow_secret("CAIRN_TEST_SURELY_UNSET_SECRET", &source)
            .unwrap_err()
            .to_string();
        assert!(unset.contains("not one of the test's secrets"), "{unset}");
        assert!(g.allow_secret("", &source).is_err());
        assert!(
            Grants::default()
                .allow_secret("CAIRN_TEST_SECRET_TOKEN", &OneSecret(""))
                .is_err(),
            "an empty value masks nothing"
        );
        // Gone by the time of the attempt: a clear error, not an empty value.
        let gone = g.resolve_secrets(&EngineEnv).unwrap_err().to_string();
        assert!(gone.contains("export it there"), "{gone}");
    }

    #[test]
    fn redaction_masks_every_secret_longest_first() {
        let r = Redactor::new(["abc".to_owned(), "abcdef".to_owned(), String::new()]);
        assert_eq!(
            r.redact("key=abcdef, short=abc, again abcdefabc".into()),
            "key=***, short=***, again ******"
        );
        assert_eq!(r.redact("nothing here".into()), "nothing here");
        let pem = Redactor::new([
            "-----BEGIN KEY-----\nMIIEvQIBADANBgkq\nabc\n-----END KEY-----".to_owned(),
        ]);
        assert_eq!(
            pem.redact("line: MIIEvQIBADANBgkq, short: abc".into()),
            "line: ***, short: abc",
            "each long line of a multi-line secret is masked on its own"
        );
        assert!(Redactor::default().is_empty());
        assert_eq!(Redactor::default().redact("abc".into()), "abc");
    }

    #[test]
    fn a_secret_across_the_capture_cap_is_masked_whole() {
        let secret = "S3CRET-abcdefghijklmnopq"; // 24 bytes
        let r = Redactor::new([secret.to_owned()]);
        assert_eq!(r.longest(), 24);
        let cap = 64;
        for start in 40..cap {
            let mut raw = "x".repeat(start).into_bytes();
            raw.extend_from_slice(secret.as_bytes());
            raw.extend_from_slice(b"tail");
            raw.truncate(cap + r.longest() - 1);
            let shown = r.redact_prefix(&raw, cap);
            assert!(!shown.contains("S3C"), "start {start}: {shown}");
            assert!(shown.ends_with("***"), "start {start}: {shown}");
        }
        // Two secrets, the second starting just inside the extra capture.
        let mut raw = secret.as_bytes().to_vec();
        raw.extend("y".repeat(cap - secret.len() + 5).into_bytes());
        raw.extend_from_slice(secret.as_bytes());
        raw.truncate(cap + r.longest() - 1);
        let shown = r.redact_prefix(&raw, cap);
        assert!(!shown.contains("S3C"), "{shown}");
        assert_eq!(Redactor::default().redact_prefix(b"abcdef", 3), "abc");
    }

    #[test]
    fn env_takes_explicit_values_and_refuses_unset_names() {
        let mut g = Grants::default();
        g.allow_env("GREETING=hi=there").unwrap();
        assert_eq!(g.env, [("GREETING".to_owned(), "hi=there".to_owned())]);
        let err = g
            .allow_env("CAIRN_TEST_SURELY_UNSET_VARIABLE")
            .unwrap_err()
            .to_string();
        assert!(err.contains("NAME=VALUE"), "{err}");
        assert!(g.allow_env("=x").is_err());
    }
}
