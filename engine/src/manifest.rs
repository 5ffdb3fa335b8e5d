//! The pipeline manifest (`pipeline.toml`): its syntax, read from disk.
//!
//! This module only turns TOML text into the [`Manifest`] structure, rejecting
//! unknown keys and ill-typed values with the file, line and column that the
//! TOML parser reports. It does not resolve references, read components or
//! check schemas — that is [`crate::plan`]'s job. Untrusted input: a
//! manifest may come from anyone, so nothing here panics or reads anything
//! but the one file it is given.
//!
//! Manifests may be generated and huge (100 000 steps), so the text is parsed
//! one `[steps.NAME]` table at a time where its shape allows (`sections`),
//! with exactly the result and the errors of a whole-document parse.
//!
//! ```toml
//! name = "orders"
//! output = "${report}"            # optional: what `cairn run` prints
//!
//! [defaults]                      # limits and retry policy for every step
//! timeout = "10s"
//! retry = { attempts = 3, backoff = "exponential", delay = "100ms" }
//!
//! [steps.parse]
//! component = "csv_parse.wasm"    # relative to this file
//! input = { csv = { "$file" = "orders.csv" } }
//!
//! [steps.totals]
//! component = "aggregate.wasm"
//! input = { rows = "${parse.rows}", group_by = "region", sum = ["amount"] }
//! ```

mod sections;

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Deserialize;

/// The hasher of maps keyed by step names: foldhash is several times faster
/// than the standard SipHash on short keys and, seeded per process, still
/// keeps a hostile manifest from choosing colliding names.
pub type NameHasher = foldhash::fast::RandomState;

/// The largest manifest Cairn reads (a generated 100 000-step DAG fits easily).
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// A parsed (not yet validated) pipeline manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The pipeline's name.
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// What the pipeline returns: a template over step outputs. Defaults to an
    /// object holding the output of every step nothing else depends on.
    #[serde(default)]
    pub output: Option<toml::Value>,
    /// Settings every step inherits unless it overrides them.
    #[serde(default)]
    pub defaults: StepSettings,
    /// The steps, in the order written.
    pub steps: IndexMap<String, Box<StepSpec>, NameHasher>,
}

/// Limits and retry policy, as written (strings not yet parsed).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSettings {
    #[serde(default, deserialize_with = "fuel_units")]
    pub fuel: Option<u64>,
    pub timeout: Option<String>,
    pub memory: Option<String>,
    pub output_limit: Option<String>,
    pub retry: Option<RetrySpec>,
    /// `"inputs"` (cache by inputs, even with nondeterministic grants) or
    /// `"off"`. Unset: cache unless the step has a nondeterministic grant.
    pub cache: Option<String>,
    /// How long a cached result stays usable, e.g. `"7d"`.
    pub cache_ttl: Option<String>,
}

/// One step, as written.
///
/// Deserialized from the table's flat keys, then the settings most steps
/// leave unset are boxed, so they cost one pointer: a generated 100 000-step
/// manifest is held whole while it is planned.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "table::StepSpec")]
pub struct StepSpec {
    /// Path to the component, relative to the manifest.
    pub component: String,
    /// The input document: any TOML value, where a string `"${step.field}"`
    /// is replaced by that upstream value, `{ "$file" = "path" }` by a file's
    /// text and `{ "$json" = "path" }` by a file's JSON.
    pub input: Option<toml::Value>,
    /// Run once per element of this upstream list (`"${split.parts}"`);
    /// the input may use `${item}` for the element and `${index}` for its position.
    pub map: Option<String>,
    /// Run only if this upstream value is truthy; `"!${x}"` negates.
    pub when: Option<String>,
    /// Order-only dependencies.
    pub after: Vec<String>,
    /// A failure of this step does not fail the pipeline (its dependents are still skipped).
    pub allow_failure: bool,
    /// Arguments for a command component.
    pub args: Vec<String>,
    pub grants: GrantSpec,
    /// The limits, retry policy and cache settings this step sets itself
    /// (`fuel`, `timeout`, …); `None` when it sets none. Read them with
    /// [`StepSpec::settings`].
    pub overrides: Option<Box<StepSettings>>,
}

/// A `[steps.NAME]` table's keys, flat, as TOML spells them. In a module
/// of its own only so it can share `StepSpec`'s name, which serde puts in
/// its messages ("expected struct StepSpec").
mod table {
    use serde::Deserialize;

    use super::{GrantSpec, RetrySpec};

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct StepSpec {
        pub component: String,
        #[serde(default)]
        pub input: Option<toml::Value>,
        #[serde(default)]
        pub map: Option<String>,
        #[serde(default)]
        pub when: Option<String>,
        #[serde(default)]
        pub after: Vec<String>,
        #[serde(default)]
        pub allow_failure: bool,
        #[serde(default)]
        pub args: Vec<String>,
        #[serde(default)]
        pub grants: GrantSpec,
        #[serde(default, deserialize_with = "super::fuel_units")]
        pub fuel: Option<u64>,
        pub timeout: Option<String>,
        pub memory: Option<String>,
        pub output_limit: Option<String>,
        pub retry: Option<RetrySpec>,
        pub cache: Option<String>,
        pub cache_ttl: Option<String>,
    }
}

impl From<table::StepSpec> for StepSpec {
    fn from(table: table::StepSpec) -> StepSpec {
        let overrides = StepSettings {
            fuel: table.fuel,
            timeout: table.timeout,
            memory: table.memory,
            output_limit: table.output_limit,
            retry: table.retry,
            cache: table.cache,
            cache_ttl: table.cache_ttl,
        };
        StepSpec {
            component: table.component,
            input: table.input,
            map: table.map,
            when: table.when,
            after: table.after,
            allow_failure: table.allow_failure,
            args: table.args,
            grants: table.grants,
            overrides: (!overrides.is_empty()).then(|| Box::new(overrides)),
        }
    }
}

impl StepSpec {
    /// This step's settings over the pipeline defaults.
    pub fn settings(&self, defaults: &StepSettings) -> StepSettings {
        match &self.overrides {
            Some(own) => own.over(defaults),
            None => defaults.clone(),
        }
    }
}

impl StepSettings {
    /// Nothing set.
    fn is_empty(&self) -> bool {
        // Destructured so that a new setting cannot be forgotten here.
        let StepSettings {
            fuel,
            timeout,
            memory,
            output_limit,
            retry,
            cache,
            cache_ttl,
        } = self;
        fuel.is_none()
            && timeout.is_none()
            && memory.is_none()
            && output_limit.is_none()
            && retry.is_none()
            && cache.is_none()
            && cache_ttl.is_none()
    }

    /// These settings, each falling back to `defaults` where unset.
    fn over(&self, defaults: &StepSettings) -> StepSettings {
        StepSettings {
            fuel: self.fuel.or(defaults.fuel),
            timeout: self.timeout.clone().or_else(|| defaults.timeout.clone()),
            memory: self.memory.clone().or_else(|| defaults.memory.clone()),
            output_limit: self
                .output_limit
                .clone()
                .or_else(|| defaults.output_limit.clone()),
            retry: self.retry.clone().or_else(|| defaults.retry.clone()),
            cache: self.cache.clone().or_else(|| defaults.cache.clone()),
            cache_ttl: self
                .cache_ttl
                .clone()
                .or_else(|| defaults.cache_ttl.clone()),
        }
    }
}

/// Capabilities a step asks for, as written. Paths are relative to the manifest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantSpec {
    #[serde(default)]
    pub read: Vec<String>,
    pub scratch: Option<ScratchSpec>,
    #[serde(default)]
    pub env: Vec<String>,
    /// Names of secrets: environment variables of the engine passed to the
    /// task, masked in its logs and errors. Values never go in a manifest.
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub clock: bool,
    #[serde(default)]
    pub random: bool,
    /// Outbound HTTP: `"api.example.com"` (https, port 443, any method),
    /// `"http://127.0.0.1:8080"`, `"https://*.example.com"`, or
    /// `{ host = "...", methods = ["GET"] }`.
    #[serde(default)]
    pub http: Vec<HttpSpec>,
    /// What the step's HTTP may spend (each unset field keeps its default).
    pub http_limits: Option<HttpLimitsSpec>,
}

/// One `http` grant, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum HttpSpec {
    Host(String),
    Full(HttpSpecTable),
}

/// `{ host = "...", methods = ["GET"], headers = { authorization = "Bearer ${secrets.TOKEN}" } }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSpecTable {
    pub host: String,
    pub methods: Option<Vec<String>>,
    /// Headers the host attaches to the requests this grant allows; a
    /// value may hold `${secrets.NAME}`, filled in by the host (the task
    /// never sees it).
    #[serde(default)]
    pub headers: IndexMap<String, String>,
}

impl HttpSpec {
    /// The grant this spells.
    pub fn parse(
        &self,
    ) -> Result<crate::sandbox::http_grant::HttpGrant, crate::sandbox::http_grant::HttpGrantError>
    {
        use crate::sandbox::http_grant::HttpGrant;
        match self {
            HttpSpec::Host(host) => HttpGrant::parse(host, None),
            HttpSpec::Full(table) => {
                let headers: Vec<(String, String)> = table
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                HttpGrant::parse(&table.host, table.methods.as_deref())?.with_headers(&headers)
            }
        }
    }
}

/// `http_limits = { requests = 10, received = "1MiB", ... }`, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpLimitsSpec {
    pub requests: Option<u32>,
    pub received: Option<String>,
    pub sent: Option<String>,
    pub connect_timeout: Option<String>,
    pub first_byte_timeout: Option<String>,
    pub between_bytes_timeout: Option<String>,
}

impl HttpLimitsSpec {
    /// The limits this spells, over the defaults.
    pub fn parse(&self) -> Result<crate::sandbox::http::HttpLimits, String> {
        use crate::sandbox::limits::{ByteSize, parse_duration};
        let mut limits = crate::sandbox::http::HttpLimits::default();
        if let Some(n) = self.requests {
            limits.requests = n;
        }
        let size =
            |field: &str, text: &Option<String>, into: &mut ByteSize| -> Result<(), String> {
                if let Some(text) = text {
                    *into = text
                        .parse()
                        .map_err(|e| format!("http_limits.{field}: {e}"))?;
                }
                Ok(())
            };
        size("received", &self.received, &mut limits.received)?;
        size("sent", &self.sent, &mut limits.sent)?;
        let wait = |field: &str,
                    text: &Option<String>,
                    into: &mut std::time::Duration|
         -> Result<(), String> {
            if let Some(text) = text {
                let d = parse_duration(text).map_err(|e| format!("http_limits.{field}: {e}"))?;
                if d.is_zero() {
                    return Err(format!("http_limits.{field}: must be longer than 0"));
                }
                *into = d;
            }
            Ok(())
        };
        wait(
            "connect_timeout",
            &self.connect_timeout,
            &mut limits.connect_timeout,
        )?;
        wait(
            "first_byte_timeout",
            &self.first_byte_timeout,
            &mut limits.first_byte_timeout,
        )?;
        wait(
            "between_bytes_timeout",
            &self.between_bytes_timeout,
            &mut limits.between_bytes_timeout,
        )?;
        Ok(limits)
    }
}

/// `scratch = true` (a fresh directory per attempt, made and removed by the
/// engine) or `scratch = "dir"` (a host directory, relative to the manifest).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ScratchSpec {
    Managed(bool),
    Dir(String),
}

/// A retry policy, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Total attempts, including the first (default 1: no retry).
    pub attempts: Option<u32>,
    /// `"fixed"` or `"exponential"` (default).
    pub backoff: Option<String>,
    /// First delay (default `"100ms"`).
    pub delay: Option<String>,
    /// Cap on any one delay (default `"30s"`).
    pub max_delay: Option<String>,
    /// Draw each delay uniformly below its bound (default true).
    pub jitter: Option<bool>,
    /// Failure classes to retry (default `["task-retryable", "timeout"]`).
    pub on: Option<Vec<String>>,
}

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is {size} bytes; manifests are limited to {MAX_MANIFEST_BYTES} bytes")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
}

impl Manifest {
    /// Read `path`, or `path/pipeline.toml` if `path` is a directory.
    pub fn load(path: &Path) -> Result<(PathBuf, Manifest), ManifestError> {
        let path = if path.is_dir() {
            path.join("pipeline.toml")
        } else {
            path.to_owned()
        };
        let read_error = |source| ManifestError::Read {
            path: path.clone(),
            source,
        };
        let size = std::fs::metadata(&path).map_err(read_error)?.len();
        if size > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge { path, size });
        }
        let bytes = crate::files::read_regular(&path, MAX_MANIFEST_BYTES).map_err(read_error)?;
        let manifest = Self::parse(&bytes).map_err(|message| ManifestError::Syntax {
            path: path.clone(),
            message,
        })?;
        Ok((path, manifest))
    }

    /// Parse manifest text. The error names the line and column.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))?;
        // A few step tables at a time keep a generated 100 000-step
        // manifest's peak memory near the manifest's own size; whatever that
        // path does not accept, errors included, is parsed whole, so errors
        // are toml's own.
        match sections::parse(text) {
            Some(manifest) => Ok(manifest),
            None => parse_whole(text),
        }
    }
}

/// The reference parse: the whole document as one TOML tree.
fn parse_whole(text: &str) -> Result<Manifest, String> {
    toml::from_str(text).map_err(|e| one_line_toml_error(&e, text))
}

/// toml's errors are multi-line with a source excerpt; keep the position and
/// the message on one line.
fn one_line_toml_error(err: &toml::de::Error, input: &str) -> String {
    let message = err.message().trim().replace('\n', " ");
    match err.span() {
        Some(span) => {
            let before = &input[..span.start.min(input.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_steps_in_written_order_with_defaults() {
        let m = Manifest::parse(
            br#"
            name = "p"
            [defaults]
            timeout = "5s"
            [steps.b]
            component = "b.wasm"
            [steps.a]
            component = "a.wasm"
            timeout = "1s"
            after = ["b"]
            "#,
        )
        .unwrap();
        assert_eq!(m.steps.keys().collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(
            m.steps["a"].settings(&m.defaults).timeout.as_deref(),
            Some("1s")
        );
        assert_eq!(
            m.steps["b"].settings(&m.defaults).timeout.as_deref(),
            Some("5s")
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_position() {
        let err =
            Manifest::parse(b"name = \"p\"\n[steps.a]\ncomponent = \"a.wasm\"\ntimout = \"1s\"\n")
                .unwrap_err();
        assert!(
            err.starts_with("line 4, column 1: unknown field `timout`"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_step_names_are_rejected() {
        let err = Manifest::parse(
            b"name = \"p\"\n[steps.a]\ncomponent = \"a\"\n[steps.a]\ncomponent = \"b\"\n",
        )
        .unwrap_err();
        assert!(err.contains("line 4") && err.contains("duplicate"), "{err}");
    }

    #[test]
    fn only_steps_that_set_something_carry_their_settings() {
        let m = Manifest::parse(
            b"name = \"p\"\n[steps.a]\ncomponent = \"a\"\n[steps.b]\ncomponent = \"b\"\ncache = \"off\"\n",
        )
        .unwrap();
        assert!(m.steps["a"].overrides.is_none(), "{:?}", m.steps["a"]);
        assert_eq!(
            m.steps["b"].settings(&m.defaults).cache.as_deref(),
            Some("off")
        );
    }

    #[test]
    fn a_step_that_is_not_a_table_is_named_in_the_error() {
        let err = Manifest::parse(b"name = \"p\"\n[steps]\na = 1\n").unwrap_err();
        assert!(
            err.starts_with(
                "line 3, column 5: invalid type: integer `1`, expected struct StepSpec"
            ),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b"\xff\xfe"[..],
            b"[[[",
            b"name = ",
            b"steps = 3\nname = \"x\"",
        ] {
            assert!(Manifest::parse(bytes).is_err());
        }
    }
}

/// Fuzzing the manifest parser: seeds from `engine/fuzz-corpus/manifests`,
/// mutated, plus arbitrary bytes. Parsing may fail; it may never panic.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn seeds() -> Vec<Vec<u8>> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus/manifests");
        let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(dir)
            .expect("corpus exists")
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        seeds.sort();
        seeds
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Manifest::parse(&bytes);
        }

        #[test]
        fn mutated_seeds_never_panic(
            seed in 0usize..3,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in any::<usize>(),
        ) {
            let mut bytes = seeds()[seed % 3].clone();
            for (at, value) in flips {
                let len = bytes.len();
                bytes[at % len] = value;
            }
            let len = bytes.len();
            bytes.truncate(cut % (len + 1));
            let _ = Manifest::parse(&bytes);
        }
    }
}

/// `fuel = …`: a whole number of fuel units, with an error that says so
/// (serde's own would be "invalid type: string, expected u64").
fn fuel_units<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    struct Fuel;
    impl serde::de::Visitor<'_> for Fuel {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a whole number of fuel units, e.g. fuel = 500_000_000 (about half a second of compute)")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
        }
    }
    deserializer.deserialize_u64(Fuel).map(Some)
}
