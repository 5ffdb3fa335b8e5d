//! `server.toml`: where the server listens, where it keeps its data, which
//! tenants it hosts, the policy their pipelines are held to, and each
//! tenant's quotas.
//!
//! ```toml
//! listen = "127.0.0.1:8650"
//! data = "/var/lib/cairn"
//! policy = "policy.toml"        # the rules of policy.toml; a tenant's
//!                               # [tenants.NAME] section applies to it,
//!                               # else [default]
//! [tenants.acme]
//! runs_in_flight = 4            # runs executing at once
//! sandboxes_in_flight = 8       # their attempts in the sandbox at once
//! queued_runs = 100             # runs waiting for a slot; more get 429
//! upload = "64MiB"              # largest bundle upload
//! uploads_in_flight = 2         # bundle uploads read at once; more get 429
//! bundle_storage = "1GiB"       # all of the tenant's bundles together
//! keep_runs = "30d"             # forget runs that ended longer ago (none
//!                               # forgotten unless set); resumable ones stay
//!
//! [secrets]                     # each tenant's secrets file (mode 0600):
//! acme = "acme-secrets.toml"    # NAME = "value" lines; a step granted
//!                               # `secrets = ["NAME"]` gets the value.
//!                               # Never the server's environment.
//! ```
//!
//! With no file, the server hosts one tenant, `default`, and holds it to a
//! policy it writes into the data directory on first start: no host
//! directories, environment, secrets, real clock or randomness, and modest
//! limits. Relative paths are relative to the config file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sandbox::ByteSize;
use crate::sandbox::limits::Age;

/// The policy the server holds tenants to when its config names none.
pub const DEFAULT_POLICY: &str = r#"# Written by `cairn serve` on first start: the most any tenant's pipeline
# may ask for. Edit it (or name another file as `policy` in server.toml) and
# restart the server. See the README's "Host policy" section.
[default]
max_fuel = 100_000_000_000
max_timeout = "5m"
max_memory = "512MiB"
max_output = "64MiB"
max_concurrency = 8
allow_read = []
allow_env = []
allow_secrets = []
allow_scratch = true
allow_clock = false
allow_random = false
"#;

/// A tenant's quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    pub runs_in_flight: u32,
    /// Attempts of the tenant's runs in the sandbox at once.
    pub sandboxes_in_flight: u32,
    pub queued_runs: u32,
    pub upload: ByteSize,
    /// Bundle uploads being received and checked at once (each may hold
    /// `upload` bytes in memory); one more is refused with 429.
    pub uploads_in_flight: u32,
    pub bundle_storage: ByteSize,
    /// Runs that ended longer ago than this are forgotten (at start and
    /// then every hour), as `cairn runs gc` would; `None`: kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_runs: Option<Age>,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            runs_in_flight: 4,
            sandboxes_in_flight: 8,
            queued_runs: 100,
            upload: ByteSize::mib(64),
            uploads_in_flight: 2,
            keep_runs: None,
            bundle_storage: ByteSize::gib(1),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<SocketAddr>,
    data: Option<PathBuf>,
    policy: Option<PathBuf>,
    #[serde(default)]
    tenants: BTreeMap<String, Quotas>,
    #[serde(default)]
    secrets: BTreeMap<String, PathBuf>,
}

/// The server's settings, validated.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data: PathBuf,
    /// `None`: the policy written into the data directory.
    pub policy: Option<PathBuf>,
    pub tenants: BTreeMap<String, Quotas>,
    /// Each tenant's secrets file (`NAME = "value"` lines, TOML), by tenant.
    pub secrets: BTreeMap<String, PathBuf>,
}

/// Read a tenant's secrets file: a TOML table of names to string values.
/// It must not be readable by group or others.
pub fn load_secrets(file: &Path) -> Result<BTreeMap<String, String>, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(file).map_err(|e| format!("{}: {e}", file.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} can be read by others; `chmod 600` it (it holds secrets)",
            file.display()
        ));
    }
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    toml::from_str(&text).map_err(|e| {
        format!(
            "{}: {} (expected NAME = \"value\" lines)",
            file.display(),
            e.message()
        )
    })
}
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// Where the server listens unless told otherwise: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8650";

impl ServerConfig {
    /// The settings with no config file: one `default` tenant.
    pub fn embedded(data: PathBuf) -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("a valid socket address"),
            data,
            policy: None,
            tenants: BTreeMap::from([("default".to_owned(), Quotas::default())]),
            secrets: BTreeMap::new(),
        }
    }

    /// Read `path`; `data` stands in for a config without `data`.
    pub fn load(path: &Path, data: PathBuf) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file: File = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = Self::embedded(file.data.map_or(data, |d| base.join(d)));
        if let Some(listen) = file.listen {
            config.listen = listen;
        }
        config.policy = file.policy.map(|p| base.join(p));
        if !file.tenants.is_empty() {
            config.tenants = file.tenants;
        }
        for (tenant, secrets) in file.secrets {
            if !config.tenants.contains_key(&tenant) {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    message: format!("[secrets]: {tenant} is not a tenant of this server"),
                });
            }
            config.secrets.insert(tenant, base.join(secrets));
        }
        for (name, quotas) in &config.tenants {
            if !valid_tenant(name) {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    message: format!(
                        "[tenants.{name}]: a tenant name is 1 to 64 of a-z, 0-9, - and _"
                    ),
                });
            }
            for (quota, value) in [
                ("runs_in_flight", quotas.runs_in_flight),
                ("sandboxes_in_flight", quotas.sandboxes_in_flight),
                ("uploads_in_flight", quotas.uploads_in_flight),
            ] {
                if value == 0 {
                    return Err(ConfigError::Invalid {
                        path: path.to_owned(),
                        message: format!("[tenants.{name}]: {quota} must be at least 1"),
                    });
                }
            }
        }
        Ok(config)
    }
}

/// A tenant name is also a directory name: plain and short.
pub fn valid_tenant(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_names_tenants_and_quotas_and_refuses_what_it_does_not_know() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        std::fs::write(
            &file,
            "policy = \"p.toml\"\n[tenants.acme]\nruns_in_flight = 2\n[tenants.small]\nupload = \"1KiB\"\n",
        )
        .unwrap();
        let config = ServerConfig::load(&file, "d".into()).unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.policy, Some(dir.path().join("p.toml")));
        assert_eq!(config.tenants["acme"].runs_in_flight, 2);
        assert_eq!(config.tenants["small"].upload, ByteSize::kib(1));
        assert_eq!(config.tenants["small"].runs_in_flight, 4, "the default");

        std::fs::write(&file, "[tenants.acme]\nrun_in_flight = 2\n").unwrap();
        let e = ServerConfig::load(&file, "d".into())
            .unwrap_err()
            .to_string();
        assert!(e.contains("run_in_flight"), "{e}");
        std::fs::write(&file, "[tenants.\"../x\"]\n").unwrap();
        let e = ServerConfig::load(&file, "d".into())
            .unwrap_err()
            .to_string();
        assert!(e.contains("a tenant name is"), "{e}");
        std::fs::write(&file, "[tenants.acme]\nkeep_runs = \"2d\"\n").unwrap();
        let config = ServerConfig::load(&file, "d".into()).unwrap();
        assert_eq!(
            config.tenants["acme"].keep_runs.map(|k| k.0),
            Some(std::time::Duration::from_secs(2 * 86_400))
        );
        std::fs::write(&file, "[tenants.acme]\nkeep_runs = \"soon\"\n").unwrap();
        let e = ServerConfig::load(&file, "d".into())
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid duration \"soon\""), "{e}");
        for quota in ["runs_in_flight", "sandboxes_in_flight", "uploads_in_flight"] {
            std::fs::write(&file, format!("[tenants.acme]\n{quota} = 0\n")).unwrap();
            let e = ServerConfig::load(&file, "d".into())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("[tenants.acme]: {quota} must be at least 1")),
                "{e}"
            );
        }
    }
}
