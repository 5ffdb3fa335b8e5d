//! Capabilities granted to one run of a task.
//!
//! The default grant is nothing: no files, no environment, no network, no
//! real clock, no OS randomness. Each grant here is something the caller asked
//! for explicitly; validation happens when the grant is built, so the sandbox
//! can apply a [`Grants`] value without further checks.

use std::path::{Path, PathBuf};

/// What a run may reach beyond its input.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Grants {
    /// Directories readable (not writable) at the same path inside the sandbox.
    pub read_dirs: Vec<PathBuf>,
    /// One directory readable and writable at the same path inside the sandbox.
    pub scratch: Option<PathBuf>,
    /// Environment variables visible to the task, in order.
    pub env: Vec<(String, String)>,
    /// The host's real wall and monotonic clocks (nondeterministic).
    pub wall_clock: bool,
    /// The host's random number generator (nondeterministic).
    pub random: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrantError {
    #[error("cannot grant directory {path}: {reason}")]
    Dir { path: PathBuf, reason: String },
    #[error("cannot grant environment variable {name:?}: {reason}")]
    Env { name: String, reason: String },
}

impl Grants {
    /// Does a run depend on nothing but its component, input and these
    /// grants' values? False once it may read host files (which can change
    /// without Cairn knowing), keep state in a scratch directory, or see the
    /// real clock or OS randomness.
    pub fn is_hermetic(&self) -> bool {
        !self.wall_clock && !self.random && self.scratch.is_none() && self.read_dirs.is_empty()
    }

    /// Grant read access to `dir`, which must exist and be a directory. The
    /// path is made absolute so the task sees it where the user does.
    pub fn allow_read(&mut self, dir: &Path) -> Result<(), GrantError> {
        self.read_dirs.push(existing_dir(dir)?);
        Ok(())
    }

    /// Grant the writable scratch directory.
    pub fn allow_scratch(&mut self, dir: &Path) -> Result<(), GrantError> {
        self.scratch = Some(existing_dir(dir)?);
        Ok(())
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
}

fn existing_dir(dir: &Path) -> Result<PathBuf, GrantError> {
    let fail = |reason: String| GrantError::Dir {
        path: dir.to_owned(),
        reason,
    };
    let abs = std::path::absolute(dir).map_err(|e| fail(e.to_string()))?;
    let meta = std::fs::metadata(&abs).map_err(|e| fail(e.to_string()))?;
    if !meta.is_dir() {
        return Err(fail("not a directory".into()));
    }
    let path = abs
        .to_str()
        .ok_or_else(|| fail("path is not valid UTF-8".into()))?;
    Ok(PathBuf::from(path))
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
