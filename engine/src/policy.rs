//! Host policy (`policy.toml`): the most any pipeline may ask for, per tenant.
//!
//! A host that runs pipelines it does not trust caps them here: limits
//! (fuel, timeout, memory, output, concurrency), which capabilities may be
//! granted at all (read directories by prefix, environment variables and
//! secrets by name, scratch, real clock, OS randomness, HTTP hosts), and whether bundles must be
//! signed by a trusted key. A plan that asks for more is rejected before
//! anything runs, naming the step, the capability and the policy line.
//!
//! ```toml
//! [default]
//! max_fuel = 10_000_000_000
//! max_timeout = "60s"
//! max_memory = "512MiB"
//! max_output = "64MiB"
//! max_concurrency = 4
//! allow_read = ["/srv/data"]
//! allow_env = ["LANG"]
//! allow_secrets = ["WAREHOUSE_TOKEN"]   # names; values come from the engine's environment
//! allow_scratch = true           # `scratch = true`: a fresh directory per attempt
//! # allow_scratch = ["/srv/work"] # also host directories under these prefixes
//! allow_clock = false
//! allow_random = false
//! allow_http = ["api.example.com", { host = "https://*.example.org", methods = ["GET"] }]
//! require_signed = false
//! trusted_keys = []              # hex ed25519 public keys
//!
//! [tenants.acme]                 # overrides [default] field by field
//! max_memory = "1GiB"
//! require_signed = true
//! trusted_keys = ["3b6a27bc…"]
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde::Deserialize;

use crate::bundle::Signature;
use crate::manifest::{HttpSpec, Manifest};
use crate::plan::Plan;
use crate::sandbox::grants::Scratch;
use crate::sandbox::http_grant::HttpGrant;
use crate::sandbox::limits::{ByteSize, parse_duration};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    pub max_fuel: Option<u64>,
    pub max_timeout: Option<String>,
    pub max_memory: Option<String>,
    pub max_output: Option<String>,
    pub max_concurrency: Option<u32>,
    pub allow_read: Option<Vec<String>>,
    pub allow_env: Option<Vec<String>>,
    pub allow_secrets: Option<Vec<String>>,
    pub allow_scratch: Option<ScratchRule>,
    pub allow_clock: Option<bool>,
    pub allow_random: Option<bool>,
    pub allow_http: Option<Vec<HttpSpec>>,
    pub require_signed: Option<bool>,
    pub trusted_keys: Option<Vec<String>>,
}

/// `allow_scratch`: `true` allows engine-managed scratch only; a list of
/// prefixes allows that and host directories under them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ScratchRule {
    Managed(bool),
    Under(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    default: Rules,
    #[serde(default)]
    tenants: IndexMap<String, Rules>,
}

/// The effective rules for one tenant, validated.
#[derive(Debug, Clone)]
pub struct Policy {
    pub file: PathBuf,
    /// blake3 of the policy file's bytes, hex: what a run records it was
    /// admitted under.
    pub hash: String,
    pub tenant: String,
    /// The tenant asked for when loading (`None`: `[default]`), to load the
    /// same rules again.
    pub selected: Option<String>,
    max_fuel: Option<(u64, String)>,
    max_timeout: Option<(Duration, String)>,
    max_memory: Option<(ByteSize, String)>,
    max_output: Option<(ByteSize, String)>,
    pub max_concurrency: Option<u32>,
    allow_read: (Vec<PathBuf>, String),
    allow_env: (Vec<String>, String),
    allow_secrets: (Vec<String>, String),
    /// Managed scratch allowed; host scratch directories allowed under.
    allow_scratch: ((bool, Vec<PathBuf>), String),
    allow_clock: (bool, String),
    allow_random: (bool, String),
    /// Hosts a step's `http` grants must lie within.
    allow_http: (Vec<HttpGrant>, String),
    require_signed: (bool, String),
    trusted_keys: (Vec<String>, String),
}

/// An `allow_read` prefix as the directory it really is. Grants are checked
/// resolved, so a prefix that is itself reached through a symlink
/// (`/srv/data -> /mnt/data`) must be resolved too or it would match nothing.
/// A prefix that does not exist (yet) is kept as written: no resolved grant
/// can lie under a path that does not exist.
fn resolve_prefix(prefix: &str) -> PathBuf {
    std::fs::canonicalize(prefix).unwrap_or_else(|_| PathBuf::from(prefix))
}

/// A `deny(step, capability, message)` that adds to `denials`.
fn collect_into(denials: &mut Vec<Denial>) -> impl FnMut(Option<&str>, String, String) + '_ {
    |step, capability, message| {
        denials.push(Denial {
            step: step.map(str::to_owned),
            capability,
            message,
        })
    }
}

/// A capability or limit the policy refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub step: Option<String>,
    pub capability: String,
    pub message: String,
}

impl Policy {
    /// Load `file` and select `tenant` (or `[default]` when `None`).
    pub fn load(file: &Path, tenant: Option<&str>) -> Result<Policy, String> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read policy {}: {e}", file.display()))?;
        let hash = blake3::hash(text.as_bytes()).to_hex().to_string();
        let file = &std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
        let parsed: PolicyFile =
            toml::from_str(&text).map_err(|e| format!("{}: {}", file.display(), e.message()))?;
        let over_name = tenant.map(str::to_owned);
        let (tenant, over) = match tenant {
            None => ("default".to_owned(), Rules::default()),
            Some(name) => match parsed.tenants.get(name) {
                Some(rules) => (name.to_owned(), rules.clone()),
                None => {
                    let known: Vec<&str> = parsed.tenants.keys().map(String::as_str).collect();
                    return Err(format!(
                        "{}: no [tenants.{name}] (tenants: {})",
                        file.display(),
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ));
                }
            },
        };
        let tenant_section = format!("[tenants.{tenant}] of {}", file.display());
        let default_section = format!("[default] of {}", file.display());
        let section = |overridden: bool| {
            if overridden {
                tenant_section.clone()
            } else {
                default_section.clone()
            }
        };
        macro_rules! pick {
            ($field:ident) => {
                match (&over.$field, &parsed.default.$field) {
                    (Some(v), _) => Some((v.clone(), section(true))),
                    (None, Some(v)) => Some((v.clone(), section(false))),
                    (None, None) => None,
                }
            };
        }
        let duration = |v: Option<(String, String)>,
                        name: &str|
         -> Result<Option<(Duration, String)>, String> {
            v.map(|(t, s)| {
                parse_duration(&t)
                    .map(|d| (d, s.clone()))
                    .map_err(|e| format!("{s}: {name}: {e}"))
            })
            .transpose()
        };
        let size = |v: Option<(String, String)>,
                    name: &str|
         -> Result<Option<(ByteSize, String)>, String> {
            v.map(|(t, s)| {
                t.parse::<ByteSize>()
                    .map(|b| (b, s.clone()))
                    .map_err(|e| format!("{s}: {name}: {e}"))
            })
            .transpose()
        };
        let or = |v: Option<(bool, String)>, default: bool| v.unwrap_or((default, section(false)));
        let list = |v: Option<(Vec<String>, String)>| v.unwrap_or((Vec::new(), section(false)));
        let read = list(pick!(allow_read));
        let allow_http = match pick!(allow_http) {
            None => (Vec::new(), section(false)),
            Some((specs, at)) => (
                specs
                    .iter()
                    .map(|spec| match spec.parse() {
                        Ok(grant) if grant.has_headers() => Err(format!(
                            "{at}: allow_http: {grant}: a policy caps hosts and methods; headers belong in a step's grant"
                        )),
                        Ok(grant) => Ok(grant),
                        Err(e) => Err(format!("{at}: allow_http: {e}")),
                    })
                    .collect::<Result<_, _>>()?,
                at,
            ),
        };
        Ok(Policy {
            file: file.to_owned(),
            hash,
            tenant,
            selected: over_name,
            max_fuel: pick!(max_fuel),
            max_timeout: duration(pick!(max_timeout), "max_timeout")?,
            max_memory: size(pick!(max_memory), "max_memory")?,
            max_output: size(pick!(max_output), "max_output")?,
            max_concurrency: pick!(max_concurrency).map(|(v, _)| v),
            allow_read: (read.0.iter().map(|p| resolve_prefix(p)).collect(), read.1),
            allow_env: list(pick!(allow_env)),
            allow_secrets: list(pick!(allow_secrets)),
            allow_scratch: match pick!(allow_scratch) {
                None => ((false, Vec::new()), section(false)),
                Some((ScratchRule::Managed(managed), at)) => ((managed, Vec::new()), at),
                Some((ScratchRule::Under(dirs), at)) => {
                    ((true, dirs.iter().map(|d| resolve_prefix(d)).collect()), at)
                }
            },
            allow_clock: or(pick!(allow_clock), false),
            allow_random: or(pick!(allow_random), false),
            allow_http,
            require_signed: or(pick!(require_signed), false),
            trusted_keys: list(pick!(trusted_keys)),
        })
    }

    /// What a run admitted under this policy records.
    pub fn admission(&self) -> crate::store::Admission {
        crate::store::Admission {
            policy: self.file.clone(),
            policy_hash: self.hash.clone(),
            tenant: self.selected.clone(),
        }
    }

    /// Everything in `plan` (and its signatures, for a bundle) that the
    /// policy does not allow.
    pub fn check(&self, plan: &Plan, signatures: Option<&[Signature]>) -> Vec<Denial> {
        let mut denials = Vec::new();
        let mut deny = collect_into(&mut denials);
        if self.require_signed.0 {
            let trusted = signatures.unwrap_or_default().iter().any(|s| {
                self.trusted_keys
                    .0
                    .iter()
                    .any(|k| k.eq_ignore_ascii_case(&s.public_key))
            });
            if !trusted {
                let what = match signatures {
                    None => "a pipeline that is not a bundle".to_owned(),
                    Some([]) => "an unsigned bundle".to_owned(),
                    Some(_) => "a bundle signed only by untrusted keys".to_owned(),
                };
                deny(
                    None,
                    "signature".into(),
                    format!(
                        "refusing {what}: require_signed = true and trusted_keys ({})",
                        self.require_signed.1
                    ),
                );
            }
        }
        for step in &plan.steps {
            let name = Some(step.name.as_str());
            if let Some((max, at)) = &self.max_fuel
                && step.limits.fuel > *max
            {
                deny(
                    name,
                    "fuel".into(),
                    format!("fuel {} exceeds max_fuel = {max} ({at})", step.limits.fuel),
                );
            }
            if let Some((max, at)) = &self.max_timeout
                && step.limits.timeout > *max
            {
                let (have, max) = (
                    humantime::format_duration(step.limits.timeout),
                    humantime::format_duration(*max),
                );
                deny(
                    name,
                    "timeout".into(),
                    format!("timeout {have} exceeds max_timeout = \"{max}\" ({at})"),
                );
            }
            if let Some((max, at)) = &self.max_memory
                && step.limits.memory > *max
            {
                deny(
                    name,
                    "memory".into(),
                    format!(
                        "memory {} exceeds max_memory = \"{max}\" ({at})",
                        step.limits.memory
                    ),
                );
            }
            if let Some((max, at)) = &self.max_output
                && step.limits.output > *max
            {
                deny(
                    name,
                    "output".into(),
                    format!(
                        "output_limit {} exceeds max_output = \"{max}\" ({at})",
                        step.limits.output
                    ),
                );
            }
            // Grants are resolved (see `Grants::read_dirs`), and
            // `Path::starts_with` compares whole components: `/srv/data-evil`
            // is not under `/srv/data`.
            for dir in &step.grants.read_dirs {
                if !self
                    .allow_read
                    .0
                    .iter()
                    .any(|allowed| dir.starts_with(allowed))
                {
                    deny(
                        name,
                        format!("read:{}", dir.display()),
                        format!(
                            "read access to {} is not in allow_read ({})",
                            dir.display(),
                            self.allow_read.1
                        ),
                    );
                }
            }
            self.check_names(
                name,
                step.grants.env.iter().map(|(var, _)| var.as_str()),
                step.grants.secrets.iter().map(String::as_str),
                &mut deny,
            );
            let ((managed, under), at) = &self.allow_scratch;
            match &step.grants.scratch {
                None => {}
                Some(Scratch::Managed) if *managed => {}
                Some(scratch @ Scratch::Managed) => deny(
                    name,
                    scratch.capability(),
                    format!("a scratch directory needs allow_scratch = true ({at})"),
                ),
                Some(Scratch::Dir(dir)) if under.iter().any(|p| dir.starts_with(p)) => {}
                Some(scratch @ Scratch::Dir(dir)) => deny(
                    name,
                    scratch.capability(),
                    format!(
                        "the host directory {} as scratch needs a prefix of it in allow_scratch = [...] ({at}); \
                         `scratch = true` asks for a fresh directory the engine manages instead",
                        dir.display()
                    ),
                ),
            }
            if step.grants.wall_clock && !self.allow_clock.0 {
                deny(
                    name,
                    "clock".into(),
                    format!(
                        "the real clock needs allow_clock = true ({})",
                        self.allow_clock.1
                    ),
                );
            }
            for grant in &step.grants.http {
                if !self
                    .allow_http
                    .0
                    .iter()
                    .any(|allowed| grant.within(allowed))
                {
                    deny(
                        name,
                        format!("http:{grant}"),
                        format!(
                            "HTTP to {grant} is not within allow_http ({})",
                            self.allow_http.1
                        ),
                    );
                }
            }
            if step.grants.random && !self.allow_random.0 {
                deny(
                    name,
                    "random".into(),
                    format!(
                        "OS randomness needs allow_random = true ({})",
                        self.allow_random.1
                    ),
                );
            }
        }
        drop(deny);
        denials
    }

    /// The environment variables and secrets a manifest asks for that the
    /// policy does not allow. Checked before planning, which reads their
    /// values from the engine's environment: a tenant must not learn which
    /// variables the host has from whether planning found them.
    pub fn check_requests(&self, manifest: &Manifest) -> Vec<Denial> {
        let mut denials = Vec::new();
        let mut deny = collect_into(&mut denials);
        for (name, spec) in &manifest.steps {
            let env = spec
                .grants
                .env
                .iter()
                .map(|var| var.split_once('=').map_or(var.as_str(), |(name, _)| name));
            // Secrets a grant's HTTP headers use are asked for too.
            let in_headers: Vec<String> = spec
                .grants
                .http
                .iter()
                .filter_map(|h| h.parse().ok())
                .flat_map(|g| g.header_secrets().map(str::to_owned).collect::<Vec<_>>())
                .collect();
            let secrets = spec
                .grants
                .secrets
                .iter()
                .chain(&in_headers)
                .map(String::as_str);
            self.check_names(Some(name), env, secrets, &mut deny);
        }
        drop(deny);
        denials
    }

    fn check_names<'n>(
        &self,
        step: Option<&str>,
        env: impl Iterator<Item = &'n str>,
        secrets: impl Iterator<Item = &'n str>,
        deny: &mut impl FnMut(Option<&str>, String, String),
    ) {
        for var in env {
            if !self.allow_env.0.iter().any(|allowed| allowed == var) {
                deny(
                    step,
                    format!("env:{var}"),
                    format!(
                        "environment variable {var} is not in allow_env ({})",
                        self.allow_env.1
                    ),
                );
            }
        }
        for secret in secrets {
            if !self.allow_secrets.0.iter().any(|allowed| allowed == secret) {
                deny(
                    step,
                    format!("secret:{secret}"),
                    format!(
                        "secret {secret} is not in allow_secrets ({})",
                        self.allow_secrets.1
                    ),
                );
            }
        }
    }
}
