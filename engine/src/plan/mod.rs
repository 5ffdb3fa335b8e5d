//! Planning: a parsed manifest → a validated DAG of steps, or every reason it
//! cannot be one.
//!
//! The plan is where a miswired pipeline is rejected before anything runs:
//! unknown or self references, cycles (printed), missing components,
//! components of the wrong world, bad durations and sizes, bad grants,
//! references to fields the upstream output schema does not have, and inputs
//! that do not fit the downstream input schema. Every error names the file,
//! the step and the field, and all of them are reported at once.
//!
//! Invariants of a [`Plan`]: step ids index `steps`; every dependency of a
//! step comes before it in `order`; every reference in a template points at a
//! dependency (or at the mapped item). The scheduler relies on these and does
//! not re-check them.
//!
//! Uses the sandbox only to load components and ask them to describe
//! themselves; never runs a step.

pub mod retry;
pub mod schema;
pub mod template;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Component as PathComponent, Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::bundle::Bundle;
use crate::manifest::{GrantSpec, Manifest, NameHasher, ScratchSpec, StepSettings, StepSpec};
use crate::sandbox::grants::Scratch;
use crate::sandbox::http_grant::HttpGrant;
use crate::sandbox::limits::{ByteSize, parse_duration};
use crate::sandbox::{
    ComponentKind, EngineEnv, Grants, Limits, LoadedComponent, Sandbox, SecretSource,
};
pub use retry::{Backoff, RetryPolicy};
use schema::Lookup;
pub use template::{Reference, Source, Template};

/// Index of a step in [`Plan::steps`].
pub type StepId = usize;

/// Largest data file a manifest may inline with `$file` / `$json`.
pub const MAX_INLINE_FILE: u64 = 256 << 20;

/// A validated pipeline.
#[derive(Debug)]
pub struct Plan {
    pub name: String,
    pub manifest: PathBuf,
    /// In manifest order; a [`StepId`] indexes this.
    pub steps: Vec<Step>,
    /// A topological order: every step after all of its dependencies.
    pub order: Vec<StepId>,
    /// For each step, the steps that depend on it.
    pub dependents: Vec<Vec<StepId>>,
    /// What the pipeline returns; `None` means "every sink step's output".
    pub output: Option<Template>,
    ids: HashMap<String, StepId, NameHasher>,
}

/// One validated step.
#[derive(Debug)]
pub struct Step {
    pub id: StepId,
    pub name: String,
    /// Shared by the steps that run the same component.
    pub component_path: Arc<Path>,
    pub component: Arc<LoadedComponent>,
    /// What the component said in `describe` (task components only).
    pub describe: Option<Arc<Described>>,
    /// The schema of this step's output: the component's output schema, or
    /// for a mapped step a list of those. `None` when not known.
    pub output_schema: Option<Arc<Value>>,
    pub input: Template,
    /// Run once per element of this list.
    pub map: Option<Reference>,
    /// Run only if this holds.
    pub when: Option<Condition>,
    /// Every step this one waits for (data and order-only), deduplicated.
    pub deps: Vec<StepId>,
    pub limits: Limits,
    /// Shared by the steps of a plan that are granted the same (most are
    /// granted nothing): a `Grants` is some 250 bytes.
    pub grants: Arc<Grants>,
    pub retry: RetryPolicy,
    pub allow_failure: bool,
    pub args: Vec<String>,
    /// Whether results of this step are looked up in the cache.
    pub cache: bool,
    /// How old a cached result may be.
    pub cache_ttl: Option<std::time::Duration>,
}

/// A `when` condition: a reference, maybe negated.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub reference: Reference,
    pub negate: bool,
}

/// A task's self-description with its schemas parsed.
#[derive(Debug)]
pub struct Described {
    pub name: String,
    pub version: String,
    pub input_schema: Value,
    pub output_schema: Value,
    /// Hosts the task says it sends HTTP requests to, as written.
    pub http: Vec<String>,
}

/// One reason a manifest is not a valid plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError {
    pub file: PathBuf,
    pub step: Option<String>,
    pub message: String,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.step {
            Some(step) => write!(
                f,
                "{}: step `{step}`: {}",
                self.file.display(),
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every reason a manifest is not a valid plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanErrors(pub Vec<PlanError>);

impl fmt::Display for PlanErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PlanErrors {}

struct Errors<'a> {
    file: &'a Path,
    list: Vec<PlanError>,
}

impl Errors<'_> {
    fn step(&mut self, step: &str, message: impl Into<String>) {
        self.list.push(PlanError {
            file: self.file.to_owned(),
            step: Some(step.to_owned()),
            message: message.into(),
        });
    }
    fn pipeline(&mut self, message: impl Into<String>) {
        self.list.push(PlanError {
            file: self.file.to_owned(),
            step: None,
            message: message.into(),
        });
    }
}

/// A step before its references are resolved and its component described.
struct Draft {
    name: String,
    component_path: PathBuf,
    component: Option<Arc<LoadedComponent>>,
    input: Template,
    map: Option<Reference>,
    when: Option<Condition>,
    after: Vec<String>,
    limits: Limits,
    grants: Grants,
    retry: RetryPolicy,
    allow_failure: bool,
    args: Vec<String>,
    cache: bool,
    cache_ttl: Option<std::time::Duration>,
}

impl Draft {
    /// The step, with its dependencies resolved; `None` if its component
    /// did not load. Its self-description is filled in once every
    /// component has been described.
    fn into_step(
        self,
        id: StepId,
        deps: Vec<StepId>,
        granted: &mut HashMap<Grants, Arc<Grants>>,
        paths: &mut HashMap<PathBuf, Arc<Path>>,
    ) -> Option<Step> {
        let component_path = match paths.get(&self.component_path) {
            Some(shared) => shared.clone(),
            None => {
                let shared: Arc<Path> = Arc::from(self.component_path.as_path());
                paths.insert(self.component_path, shared.clone());
                shared
            }
        };
        let grants = match granted.get(&self.grants) {
            Some(shared) => shared.clone(),
            None => {
                let shared = Arc::new(self.grants.clone());
                granted.insert(self.grants, shared.clone());
                shared
            }
        };
        Some(Step {
            id,
            name: self.name,
            component_path,
            component: self.component?,
            describe: None,
            output_schema: None,
            input: self.input,
            map: self.map,
            when: self.when,
            deps,
            limits: self.limits,
            grants,
            retry: self.retry,
            allow_failure: self.allow_failure,
            args: self.args,
            cache: self.cache,
            cache_ttl: self.cache_ttl,
        })
    }
}

/// Where a manifest's components and data files come from.
#[derive(Clone, Copy)]
pub enum Sources<'a> {
    /// Files relative to the manifest's directory.
    Dir {
        base: &'a Path,
        /// Where the steps' secrets come from; `None`: the engine's
        /// environment (see the bundle's).
        secrets: Option<&'a dyn SecretSource>,
    },
    /// Members of a verified bundle; relative grants resolve against
    /// `grants_base` (the bundle file's directory).
    Bundle {
        bundle: &'a Bundle,
        grants_base: &'a Path,
        /// Where the steps' secrets come from (a tenant's own); `None`:
        /// the engine's environment. Planning checks each granted secret
        /// is there; the value is taken when each attempt starts.
        secrets: Option<&'a dyn SecretSource>,
    },
}

impl Sources<'_> {
    fn secrets(&self) -> &dyn SecretSource {
        match self {
            Sources::Dir { secrets, .. } | Sources::Bundle { secrets, .. } => match secrets {
                Some(source) => *source,
                None => &EngineEnv,
            },
        }
    }
}

impl Sources<'_> {
    fn grants_base(&self) -> &Path {
        match self {
            Sources::Dir { base, .. } => base,
            Sources::Bundle { grants_base, .. } => grants_base,
        }
    }
}

impl Plan {
    /// Validate `manifest` (read from `path`) into a plan. Components are
    /// loaded (compiled or taken from the artifact cache) and described.
    pub async fn build(
        path: &Path,
        manifest: Manifest,
        sandbox: &Sandbox,
    ) -> Result<Plan, PlanErrors> {
        Self::build_with(path, manifest, sandbox, None).await
    }

    /// [`Plan::build`], with the steps' secrets from `secrets` (`None`:
    /// the engine's environment).
    pub async fn build_with(
        path: &Path,
        manifest: Manifest,
        sandbox: &Sandbox,
        secrets: Option<&dyn SecretSource>,
    ) -> Result<Plan, PlanErrors> {
        let base = path.parent().map(Path::to_owned).unwrap_or_default();
        let sources = Sources::Dir {
            base: &base,
            secrets,
        };
        Self::build_from(path, manifest, sandbox, sources).await
    }

    /// Like [`Plan::build`], reading components and data from `sources`.
    pub async fn build_from(
        path: &Path,
        manifest: Manifest,
        sandbox: &Sandbox,
        sources: Sources<'_>,
    ) -> Result<Plan, PlanErrors> {
        let mut errors = Errors {
            file: path,
            list: Vec::new(),
        };
        // Consume the manifest step by step so a huge one is not held twice.
        let Manifest {
            name: pipeline_name,
            output: output_spec,
            defaults,
            steps: specs,
            ..
        } = manifest;
        if specs.is_empty() {
            errors.pipeline("the pipeline has no steps; add a [steps.<name>] table");
        }

        // Every step's name is known before any is drafted, so each step's
        // references are resolved as it is drafted and it becomes a `Step`
        // at once: the manifest is consumed while the plan grows, and no
        // third copy of a 100 000-step pipeline (drafts) exists between them.
        let ids: HashMap<String, StepId, NameHasher> = specs
            .keys()
            .filter(|name| check_name(name).is_ok())
            .cloned()
            .zip(0..)
            .collect();
        // The same names in step order, for messages and suggestions.
        let mut names = vec![""; ids.len()];
        for (name, &id) in &ids {
            names[id] = name.as_str();
        }
        // Reported after every step's own problems and the components'
        // descriptions, in step order.
        let mut reference_errors = Errors {
            file: path,
            list: Vec::new(),
        };
        let mut components: HashMap<PathBuf, Option<Arc<LoadedComponent>>> = HashMap::new();
        let mut steps: Vec<Step> = Vec::with_capacity(ids.len());
        let mut granted: HashMap<Grants, Arc<Grants>> = HashMap::new();
        let mut paths: HashMap<PathBuf, Arc<Path>> = HashMap::new();
        for (name, spec) in specs {
            let Some(draft) = draft_step(
                &name,
                &spec,
                &defaults,
                sources,
                sandbox,
                &mut components,
                &mut errors,
            ) else {
                continue;
            };
            let deps = resolve_deps(&draft, &ids, &names, &mut reference_errors);
            // A step whose component did not load was reported; the plan
            // fails below, so only its references needed checking.
            if let Some(step) = draft.into_step(steps.len(), deps, &mut granted, &mut paths) {
                steps.push(step);
            }
        }
        let described = describe_all(&steps, sandbox, &mut errors).await;
        errors.list.append(&mut reference_errors.list);
        share_schemas(&mut steps, &described);
        for step in &steps {
            check_wanted_hosts(step, &mut errors);
        }

        let output = output_spec.as_ref().and_then(|value| {
            let template = to_json(value).and_then(|v| Template::parse(&v));
            match template {
                Ok(t) => {
                    for r in t.references() {
                        match &r.source {
                            Source::Step(name) if !ids.contains_key(name.as_str()) => errors
                                .pipeline(format!(
                                    "output: {r} names no step{}",
                                    suggest(name, &names)
                                )),
                            Source::Step(_) => {}
                            _ => errors.pipeline(format!(
                                "output: {r} is only meaningful inside a mapped step"
                            )),
                        }
                    }
                    Some(t)
                }
                Err(e) => {
                    errors.pipeline(format!("output: {e}"));
                    None
                }
            }
        });
        if !errors.list.is_empty() {
            // Check what can be checked of the steps that did load, so one
            // round of `cairn check` reports every problem it can see.
            let by_name: HashMap<&str, &Step> =
                steps.iter().map(|s| (s.name.as_str(), s)).collect();
            check_schemas(&steps, &|name| by_name.get(name).copied(), &mut errors);
            return Err(PlanErrors(errors.list));
        }
        // Without errors every named step was drafted and loaded, so a
        // step's index in `steps` is its id in `ids`, as `deps` assume.
        debug_assert_eq!(steps.len(), ids.len());

        let deps: Vec<&[StepId]> = steps.iter().map(|s| s.deps.as_slice()).collect();
        let order = match topological_order(&deps) {
            Ok(order) => order,
            Err(cycle) => {
                let path: Vec<&str> = cycle.iter().map(|&i| names[i]).collect();
                errors.pipeline(format!(
                    "the steps form a cycle: {}; break it by removing one reference",
                    path.join(" → ")
                ));
                return Err(PlanErrors(errors.list));
            }
        };
        drop(deps);

        let mut dependents = vec![Vec::new(); steps.len()];
        for step in &steps {
            for &dep in &step.deps {
                dependents[dep].push(step.id);
            }
        }
        let plan = Plan {
            name: pipeline_name,
            manifest: path.to_owned(),
            steps,
            order,
            dependents,
            output,
            ids,
        };
        check_schemas(&plan.steps, &|name| plan.step(name), &mut errors);
        if !errors.list.is_empty() {
            return Err(PlanErrors(errors.list));
        }
        Ok(plan)
    }

    pub fn step(&self, name: &str) -> Option<&Step> {
        self.id(name).map(|id| &self.steps[id])
    }

    pub fn id(&self, name: &str) -> Option<StepId> {
        self.ids.get(name).copied()
    }

    /// Steps nothing depends on.
    pub fn sinks(&self) -> impl Iterator<Item = &Step> {
        self.steps
            .iter()
            .filter(|s| self.dependents[s.id].is_empty())
    }
}

/// Whether `name` can name a step (and be named in a reference).
fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid {
        return Err("step names may use only letters, digits, `_` and `-` (they appear in ${...} references)".into());
    }
    if name == "item" || name == "index" {
        return Err(format!(
            "`{name}` is reserved for mapped steps (${{{name}}}); rename the step"
        ));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn draft_step(
    name: &str,
    spec: &StepSpec,
    defaults: &StepSettings,
    sources: Sources<'_>,
    sandbox: &Sandbox,
    components: &mut HashMap<PathBuf, Option<Arc<LoadedComponent>>>,
    errors: &mut Errors<'_>,
) -> Option<Draft> {
    if let Err(message) = check_name(name) {
        errors.step(name, message);
        return None;
    }
    let component_path = match sources {
        Sources::Dir { base, .. } => base.join(&spec.component),
        Sources::Bundle { .. } => PathBuf::from(&spec.component),
    };
    let load = |path: &Path| match sources {
        Sources::Dir { .. } => sandbox.load_file(path),
        Sources::Bundle { bundle, .. } => match bundle.member(&spec.component) {
            Some(bytes) => sandbox.load(bytes),
            None => Err(crate::sandbox::LoadError::Read {
                path: path.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not a member of the bundle",
                ),
            }),
        },
    };
    // Looked up before inserting: most steps share a component, and the
    // entry API would copy the path for every one of them.
    let known = components.get(&component_path).cloned();
    let component = known.unwrap_or_else(|| {
        let loaded = match load(&component_path) {
            Ok(loaded) => Some(loaded),
            Err(crate::sandbox::LoadError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                errors.step(
                    name,
                    format!(
                        "component {} does not exist (component paths are relative to the manifest; build the guests first?)",
                        component_path.display()
                    ),
                );
                None
            }
            Err(e) => {
                errors.step(name, format!("component {}: {e}", component_path.display()));
                None
            }
        };
        components.insert(component_path.clone(), loaded.clone());
        loaded
    });

    let settings = spec.settings(defaults);
    let mut limits = Limits::default();
    if let Some(fuel) = settings.fuel {
        if fuel == 0 {
            errors.step(name, "fuel must be greater than zero");
        }
        limits.fuel = fuel;
    }
    if let Some(timeout) = &settings.timeout {
        match parse_duration(timeout) {
            Ok(t) => limits.timeout = t,
            Err(e) => errors.step(name, format!("timeout: {e}")),
        }
    }
    for (field, text, slot) in [
        ("memory", &settings.memory, &mut limits.memory),
        ("output_limit", &settings.output_limit, &mut limits.output),
    ] {
        if let Some(text) = text {
            match text.parse::<ByteSize>() {
                Ok(size) => *slot = size,
                Err(e) => errors.step(name, format!("{field}: {e}")),
            }
        }
    }
    if limits.memory > Limits::MAX_MEMORY {
        errors.step(
            name,
            format!(
                "memory: {} is more than a task can address ({})",
                limits.memory,
                Limits::MAX_MEMORY
            ),
        );
    }
    let retry = match &settings.retry {
        Some(spec) => RetryPolicy::from_spec(spec).unwrap_or_else(|e| {
            errors.step(name, e);
            RetryPolicy::default()
        }),
        None => RetryPolicy::default(),
    };
    let grants =
        grants(&spec.grants, sources.grants_base(), sources.secrets()).unwrap_or_else(|e| {
            errors.step(name, format!("grants: {e}"));
            Grants::default()
        });

    let is_command = component
        .as_ref()
        .is_some_and(|c| c.kind == ComponentKind::Command);
    let default_input = if is_command {
        Value::String(String::new())
    } else {
        Value::Object(Default::default())
    };
    let input = match spec
        .input
        .as_ref()
        .map(to_json)
        .unwrap_or(Ok(default_input))
    {
        Ok(value) => match inline_files(value, sources).and_then(|v| Template::parse(&v)) {
            Ok(t) => t.compacted(),
            Err(e) => {
                errors.step(name, format!("input: {e}"));
                Template::Literal(Value::Null)
            }
        },
        Err(e) => {
            errors.step(name, format!("input: {e}"));
            Template::Literal(Value::Null)
        }
    };
    let map = spec.map.as_deref().and_then(|text| match whole_reference(text) {
        Ok(r) if r.source == Source::Step(name.to_owned()) || !matches!(r.source, Source::Step(_)) => {
            errors.step(name, format!("map = {text:?}: must name an upstream step's list, e.g. \"${{split.parts}}\""));
            None
        }
        Ok(r) => Some(r),
        Err(e) => {
            errors.step(name, format!("map: {e}"));
            None
        }
    });
    let when = spec.when.as_deref().and_then(|text| {
        let (negate, rest) = match text.trim().strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, text.trim()),
        };
        match whole_reference(rest) {
            Ok(reference) => Some(Condition { reference, negate }),
            Err(e) => {
                errors.step(name, format!("when: {e}"));
                None
            }
        }
    });
    if map.is_none() {
        let uses_item = input
            .references()
            .iter()
            .any(|r| matches!(r.source, Source::Item | Source::Index))
            || when
                .as_ref()
                .is_some_and(|c| !matches!(c.reference.source, Source::Step(_)));
        if uses_item && spec.map.is_none() {
            errors.step(
                name,
                "uses ${item} or ${index}, which only exist in a step with `map`",
            );
        }
    }
    if !spec.args.is_empty() && !is_command && component.is_some() {
        errors.step(
            name,
            "`args` are only for command components; a task takes its input from `input`",
        );
    }
    let cache = match settings.cache.as_deref() {
        None => grants.is_hermetic(),
        Some("inputs") => true,
        Some("off") => false,
        Some(other) => {
            errors.step(
                name,
                format!("cache = {other:?}: write \"inputs\" or \"off\""),
            );
            false
        }
    };
    let cache_ttl = settings
        .cache_ttl
        .as_deref()
        .and_then(|ttl| match parse_duration(ttl) {
            Ok(d) => Some(d),
            Err(e) => {
                errors.step(name, format!("cache_ttl: {e}"));
                None
            }
        });
    Some(Draft {
        cache,
        cache_ttl,
        name: name.to_owned(),
        component_path,
        component,
        input,
        map,
        when,
        after: spec.after.clone(),
        limits,
        grants,
        retry,
        allow_failure: spec.allow_failure,
        args: spec.args.clone(),
    })
}

/// Describe each distinct task component once.
async fn describe_all(
    steps: &[Step],
    sandbox: &Sandbox,
    errors: &mut Errors<'_>,
) -> HashMap<blake3::Hash, Arc<Described>> {
    let mut described = HashMap::new();
    for step in steps {
        let component = &step.component;
        if component.kind != ComponentKind::Task || described.contains_key(&component.hash) {
            continue;
        }
        match sandbox.describe(component).await {
            Ok(Ok(d)) => {
                let schema = |text: &str| {
                    serde_json::from_str(text).unwrap_or(Value::Object(Default::default()))
                };
                let http = d
                    .capabilities
                    .iter()
                    .filter_map(|c| match c {
                        crate::sandbox::host::Capability::Http(host) => Some(host.clone()),
                        _ => None,
                    })
                    .collect();
                let entry = Described {
                    input_schema: schema(&d.input_schema),
                    output_schema: schema(&d.output_schema),
                    name: d.name,
                    version: d.version,
                    http,
                };
                described.insert(component.hash, Arc::new(entry));
            }
            Ok(Err(failure)) => errors.step(
                &step.name,
                format!(
                    "component {}: `describe` failed [{}]: {failure}",
                    step.component_path.display(),
                    failure.class()
                ),
            ),
            Err(e) => errors.step(
                &step.name,
                format!("component {}: {e}", step.component_path.display()),
            ),
        }
    }
    described
}

/// A step whose task says it needs HTTP to a host its grants do not
/// reach fails planning, before anything runs.
fn check_wanted_hosts(step: &Step, errors: &mut Errors<'_>) {
    let Some(described) = &step.describe else {
        return;
    };
    for wanted in &described.http {
        let text = crate::sandbox::failure::printable(wanted.chars().take(200).collect());
        match HttpGrant::parse(wanted, None) {
            Err(e) => errors.step(
                &step.name,
                format!("its task describes an HTTP host Cairn cannot read: {e}"),
            ),
            Ok(host) if !step.grants.http.iter().any(|g| g.reaches(&host)) => errors.step(
                &step.name,
                format!(
                    "its task sends HTTP requests to {host}, which the step does not grant; \
                     add `grants = {{ http = [\"{text}\"] }}`"
                ),
            ),
            Ok(_) => {}
        }
    }
}

fn resolve_deps(
    draft: &Draft,
    ids: &HashMap<String, StepId, NameHasher>,
    names: &[&str],
    errors: &mut Errors<'_>,
) -> Vec<StepId> {
    let mut deps = Vec::new();
    // Most steps have a few dependencies: a scan of them beats hashing.
    // A wide fan-in gets a set once it is large enough for that to matter.
    let mut seen: Option<HashSet<StepId, NameHasher>> = None;
    let mut add = |dep: StepId, deps: &mut Vec<StepId>| {
        let new = match &mut seen {
            Some(seen) => seen.insert(dep),
            None if deps.len() < 16 => !deps.contains(&dep),
            None => {
                let mut set: HashSet<StepId, NameHasher> = deps.iter().copied().collect();
                let new = set.insert(dep);
                seen = Some(set);
                new
            }
        };
        if new {
            deps.push(dep);
        }
    };
    let mut refs: Vec<(&str, &Reference)> = draft
        .input
        .references()
        .into_iter()
        .map(|r| ("input", r))
        .collect();
    refs.extend(draft.map.iter().map(|r| ("map", r)));
    refs.extend(draft.when.iter().map(|c| ("when", &c.reference)));
    for (field, reference) in refs {
        let Source::Step(target) = &reference.source else {
            continue;
        };
        if target == &draft.name {
            errors.step(
                &draft.name,
                format!("{field}: {reference} refers to the step itself"),
            );
            continue;
        }
        match ids.get(target.as_str()) {
            Some(&id) => add(id, &mut deps),
            None => errors.step(
                &draft.name,
                format!(
                    "{field}: {reference} names no step{}",
                    suggest(target, names)
                ),
            ),
        }
    }
    for target in &draft.after {
        if target == &draft.name {
            errors.step(&draft.name, "after: a step cannot wait for itself");
            continue;
        }
        match ids.get(target.as_str()) {
            Some(&id) => add(id, &mut deps),
            None => errors.step(
                &draft.name,
                format!("after: {target:?} names no step{}", suggest(target, names)),
            ),
        }
    }
    deps
}

/// ` (did you mean `x`?)` when a name is close to an existing one.
fn suggest(name: &str, names: &[&str]) -> String {
    names
        .iter()
        .map(|candidate| (strsim::levenshtein(name, candidate), candidate))
        .filter(|(distance, _)| *distance <= 2.max(name.len() / 3))
        .min()
        .map(|(_, candidate)| format!(" (did you mean `{candidate}`?)"))
        .unwrap_or_default()
}

/// Kahn's algorithm in manifest order; on failure, one cycle as a closed path.
fn topological_order<D: AsRef<[StepId]>>(deps: &[D]) -> Result<Vec<StepId>, Vec<StepId>> {
    let n = deps.len();
    let mut waiting: Vec<usize> = deps.iter().map(|ds| ds.as_ref().len()).collect();
    // Each step's dependents, in id order, as ranges of one flat array: two
    // allocations rather than one per step of a 100 000-step pipeline.
    let mut starts = vec![0; n + 1];
    for &d in deps.iter().flat_map(|ds| ds.as_ref()) {
        starts[d + 1] += 1;
    }
    for i in 0..n {
        starts[i + 1] += starts[i];
    }
    let mut dependents = vec![0; starts[n]];
    let mut filled = starts.clone();
    for (id, ds) in deps.iter().enumerate() {
        for &d in ds.as_ref() {
            dependents[filled[d]] = id;
            filled[d] += 1;
        }
    }
    let mut ready: std::collections::VecDeque<StepId> =
        (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(id) = ready.pop_front() {
        order.push(id);
        for &next in &dependents[starts[id]..starts[id + 1]] {
            waiting[next] -= 1;
            if waiting[next] == 0 {
                ready.push_back(next);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Every unordered step waits on another unordered step, so walking
    // dependencies from one of them must revisit a step: that is a cycle.
    let start = (0..n)
        .find(|&i| waiting[i] > 0)
        .expect("some step is unordered");
    let mut path = vec![start];
    let mut position = HashMap::from([(start, 0)]);
    let mut current = start;
    loop {
        let next = *deps[current]
            .as_ref()
            .iter()
            .find(|&&d| waiting[d] > 0)
            .expect("an unordered step waits on an unordered step");
        if let Some(&at) = position.get(&next) {
            let mut cycle: Vec<StepId> = path[at..].to_vec();
            cycle.reverse();
            // Start at the step written first, so the message is stable.
            let first = (0..cycle.len())
                .min_by_key(|&i| cycle[i])
                .expect("a cycle is not empty");
            cycle.rotate_left(first);
            cycle.push(cycle[0]);
            return Err(cycle);
        }
        position.insert(next, path.len());
        path.push(next);
        current = next;
    }
}

fn whole_reference(text: &str) -> Result<Reference, String> {
    match Template::parse(&Value::String(text.to_owned()))? {
        Template::Ref(r) => Ok(r),
        _ => Err(format!(
            "{text:?} must be exactly one reference, e.g. \"${{step.field}}\""
        )),
    }
}

fn to_json(value: &toml::Value) -> Result<Value, String> {
    serde_json::to_value(value).map_err(|e| format!("cannot be expressed as JSON: {e}"))
}

/// Replace `{ "$file" = "p" }` with the file's text and `{ "$json" = "p" }`
/// with its JSON. Paths are relative to the manifest and may not leave its
/// directory, so a manifest cannot make the host read arbitrary files.
fn inline_files(value: Value, sources: Sources<'_>) -> Result<Value, String> {
    Ok(match value {
        Value::Object(map)
            if map.len() == 1 && (map.contains_key("$file") || map.contains_key("$json")) =>
        {
            let (kind, target) = map.into_iter().next().expect("one entry");
            let Value::String(relative) = target else {
                return Err(format!("{kind} must be a path string"));
            };
            let text = read_data_file(sources, &kind, &relative)?;
            if kind == "$json" {
                serde_json::from_str(&text)
                    .map_err(|e| format!("$json {relative:?} is not valid JSON: {e}"))?
            } else {
                Value::String(text)
            }
        }
        // In place: rebuilding every object of every step's input was a
        // tenth of planning a 100 000-step chain.
        Value::Object(mut map) => {
            for value in map.values_mut() {
                *value = inline_files(std::mem::take(value), sources)?;
            }
            Value::Object(map)
        }
        Value::Array(mut items) => {
            for item in &mut items {
                *item = inline_files(std::mem::take(item), sources)?;
            }
            Value::Array(items)
        }
        other => other,
    })
}

/// A data file's text, from the manifest's directory or the bundle.
fn read_data_file(sources: Sources<'_>, kind: &str, relative: &str) -> Result<String, String> {
    match sources {
        Sources::Dir { base, .. } => {
            let path = confined_path(base, relative)?;
            let size = std::fs::metadata(&path)
                .map_err(|e| format!("{kind} {relative:?}: {e}"))?
                .len();
            if size > MAX_INLINE_FILE {
                return Err(format!(
                    "{kind} {relative:?} is {} (the limit is {})",
                    ByteSize(size),
                    ByteSize(MAX_INLINE_FILE)
                ));
            }
            crate::files::read_regular_text(&path, MAX_INLINE_FILE)
                .map_err(|e| format!("{kind} {relative:?}: {e}"))
        }
        Sources::Bundle { bundle, .. } => {
            let bytes = bundle
                .member(relative)
                .ok_or_else(|| format!("{kind} {relative:?} is not a member of the bundle"))?;
            String::from_utf8(bytes.to_vec())
                .map_err(|_| format!("{kind} {relative:?} is not UTF-8 text"))
        }
    }
}

/// `relative` under `base`, refusing absolute paths, `..` and symlinks out.
fn confined_path(base: &Path, relative: &str) -> Result<PathBuf, String> {
    let rel = Path::new(relative);
    if rel
        .components()
        .any(|c| !matches!(c, PathComponent::Normal(_) | PathComponent::CurDir))
    {
        return Err(format!(
            "{relative:?} must be a relative path inside the manifest's directory (no `..`, no absolute paths)"
        ));
    }
    let path = base.join(rel);
    let real = path
        .canonicalize()
        .map_err(|e| format!("{relative:?}: {e}"))?;
    let real_base = base
        .canonicalize()
        .map_err(|e| format!("{}: {e}", base.display()))?;
    if !real.starts_with(&real_base) {
        return Err(format!(
            "{relative:?} resolves outside the manifest's directory (through a symlink)"
        ));
    }
    Ok(real)
}

fn grants(spec: &GrantSpec, base: &Path, secrets: &dyn SecretSource) -> Result<Grants, String> {
    let mut grants = Grants::default();
    for dir in &spec.read {
        grants
            .allow_read(&base.join(dir))
            .map_err(|e| e.to_string())?;
    }
    match &spec.scratch {
        None | Some(ScratchSpec::Managed(false)) => {}
        Some(ScratchSpec::Managed(true)) => grants.allow_managed_scratch(),
        Some(ScratchSpec::Dir(dir)) => grants
            .allow_scratch(&base.join(dir))
            .map_err(|e| e.to_string())?,
    }
    for var in &spec.env {
        // A hosted tenant's step would get the server's own variables.
        if let Some(owner) = secrets.owner() {
            return Err(format!(
                "env {var:?}: {owner}'s steps get no host environment variables; \
                 pass the value in the step's input, or as a secret"
            ));
        }
        grants.allow_env(var).map_err(|e| e.to_string())?;
    }
    for name in &spec.secrets {
        grants
            .allow_secret(name, secrets)
            .map_err(|e| e.to_string())?;
    }
    grants.wall_clock = spec.clock;
    grants.random = spec.random;
    for http in &spec.http {
        let grant = http.parse().map_err(|e| e.to_string())?;
        // A secret a header uses is granted like any other (the policy's
        // allow_secrets, the cache key, masking), but not as a variable.
        for name in grant.header_secrets() {
            if !grants.secrets.iter().any(|s| s == name) {
                grants
                    .allow_secret(name, secrets)
                    .map_err(|e| format!("http header: {e}"))?;
                grants.header_secrets.push(name.to_owned());
            }
        }
        grants.http.push(grant);
    }
    if let Some(limits) = &spec.http_limits {
        if spec.http.is_empty() {
            return Err("http_limits is set but the step has no http grant".into());
        }
        grants.http_limits = limits.parse()?;
    }
    if grants.read_dirs.is_empty() && !matches!(grants.scratch, Some(Scratch::Dir(_))) {
        return Ok(grants);
    }
    // Relative paths in a task's arguments mean what they mean in the
    // manifest: relative to its directory.
    grants.set_cwd(base).map_err(|e| e.to_string())?;
    Ok(grants)
}

/// Give each step its component's description and output schema. One
/// output schema per component (and per mapped or not), shared by every
/// step using it: a copy per step of a 100 000-step chain would be most of
/// the plan's memory.
fn share_schemas(steps: &mut [Step], described: &HashMap<blake3::Hash, Arc<Described>>) {
    let mut output_schemas: HashMap<(blake3::Hash, bool), Arc<Value>> = HashMap::new();
    for step in steps {
        let hash = step.component.hash;
        let Some(desc) = described.get(&hash) else {
            continue;
        };
        let mapped = step.map.is_some();
        let schema = output_schemas.entry((hash, mapped)).or_insert_with(|| {
            Arc::new(match mapped {
                true => list_of(&desc.output_schema),
                false => desc.output_schema.clone(),
            })
        });
        step.output_schema = Some(schema.clone());
        step.describe = Some(desc.clone());
    }
}

/// Finds a step by name among those that loaded.
type Find<'p> = dyn Fn(&str) -> Option<&'p Step> + 'p;

/// Check every reference against upstream output schemas and every input
/// against its step's input schema. A reference to a step that is not
/// there (it did not load, and was reported) is not checked.
fn check_schemas<'p>(steps: &'p [Step], find: &Find<'p>, errors: &mut Errors<'_>) {
    for step in steps {
        let item = step.map.as_ref().and_then(|m| schema_of_ref(find, m));
        if let Some(list) = &step.map
            && let Some((root, schema)) = schema_of_ref(find, list)
            && let Some(kinds) = schema::types(root, schema)
            && !kinds.iter().any(|k| k == "array")
        {
            errors.step(
                &step.name,
                format!(
                    "map: {list} is {}, not a list; `map` runs the step once per element of a list",
                    kinds.join(" or ")
                ),
            );
        }
        let mut refs: Vec<(&str, &Reference)> = step
            .input
            .references()
            .into_iter()
            .map(|r| ("input", r))
            .collect();
        refs.extend(step.map.iter().map(|r| ("map", r)));
        refs.extend(step.when.iter().map(|c| ("when", &c.reference)));
        for (field, reference) in refs {
            let problem = match &reference.source {
                Source::Step(name) => {
                    let Some(upstream) = find(name) else {
                        continue;
                    };
                    match upstream
                        .output_schema
                        .as_ref()
                        .map(|root| schema::follow(root, &reference.path))
                    {
                        Some(Lookup::Missing(why)) => {
                            Some(format!("the output of `{name}` does not fit: {why}"))
                        }
                        _ => None,
                    }
                }
                Source::Item => match &item {
                    Some((root, list)) => match schema::items(root, list)
                        .map(|s| schema::follow_at(root, s, &reference.path))
                    {
                        Some(Lookup::Missing(why)) => {
                            Some(format!("each mapped element does not fit: {why}"))
                        }
                        _ => None,
                    },
                    None => None,
                },
                Source::Index => None,
            };
            if let Some(problem) = problem {
                errors.step(&step.name, format!("{field}: {reference}: {problem}"));
            }
        }
        if let Some(described) = &step.describe {
            let resolver = PlanRefs { find, item };
            for problem in schema::check_input(&step.input, &described.input_schema, &resolver) {
                errors.step(
                    &step.name,
                    format!(
                        "{problem} (see `cairn task inspect {}`)",
                        step.component_path.display()
                    ),
                );
            }
        }
    }
}

/// The (root, schema) of the value a step reference points at, if known.
fn schema_of_ref<'p>(find: &Find<'p>, reference: &Reference) -> Option<(&'p Value, &'p Value)> {
    let Source::Step(name) = &reference.source else {
        return None;
    };
    let root = find(name)?.output_schema.as_deref()?;
    match schema::follow(root, &reference.path) {
        Lookup::Found(schema) => Some((root, schema)),
        _ => None,
    }
}

/// The schema of a list whose elements follow `element`; `$defs` stay at the
/// root so the element's local `$ref`s still resolve.
fn list_of(element: &Value) -> Value {
    let mut items = element.clone();
    let defs = items.as_object_mut().and_then(|o| {
        o.remove("$schema");
        o.remove("$defs")
    });
    let mut list = serde_json::json!({"type": "array", "items": items});
    if let Some(defs) = defs {
        list["$defs"] = defs;
    }
    list
}

struct PlanRefs<'p, 'f> {
    find: &'f Find<'p>,
    item: Option<(&'p Value, &'p Value)>,
}

impl schema::RefSchemas for PlanRefs<'_, '_> {
    fn schema_of(&self, reference: &Reference) -> Option<(&Value, &Value)> {
        match &reference.source {
            Source::Step(_) => schema_of_ref(self.find, reference),
            Source::Item if reference.path.is_empty() => {
                let (root, list) = self.item?;
                Some((root, schema::items(root, list)?))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topological_order_respects_dependencies() {
        let deps = vec![vec![], vec![0], vec![0], vec![1, 2]];
        let order = topological_order(&deps).unwrap();
        let pos = |id| order.iter().position(|&x| x == id).unwrap();
        assert!(pos(0) < pos(1) && pos(1) < pos(3) && pos(2) < pos(3));
    }

    #[test]
    fn cycles_are_reported_as_a_closed_path() {
        // 0 ← 1 ← 2 ← 1 (1 and 2 form a cycle), 3 independent
        let deps = vec![vec![], vec![0, 2], vec![1], vec![]];
        let cycle = topological_order(&deps).unwrap_err();
        assert_eq!(
            cycle,
            [1, 2, 1],
            "starts at the first-written step and closes"
        );
    }

    #[test]
    fn dependencies_are_listed_once_in_first_mention_order() {
        let names: Vec<String> = (0..40).map(|i| format!("s{i}")).collect();
        let ids: HashMap<String, StepId, NameHasher> = names.iter().cloned().zip(0..).collect();
        let all: Vec<&str> = names.iter().map(String::as_str).collect();
        let draft = |after: Vec<String>| Draft {
            name: "me".into(),
            component_path: PathBuf::new(),
            component: None,
            input: Template::parse(&serde_json::json!({"a": "${s5.x}", "b": "${s5.y}"})).unwrap(),
            map: None,
            when: None,
            after,
            limits: Limits::default(),
            grants: Grants::default(),
            retry: RetryPolicy::default(),
            allow_failure: false,
            args: Vec::new(),
            cache: true,
            cache_ttl: None,
        };
        let mut errors = Errors {
            file: Path::new("p.toml"),
            list: Vec::new(),
        };
        // Few dependencies (a scan) and a wide fan-in (a set) must agree.
        let few = draft(vec!["s2".into(), "s5".into(), "s2".into()]);
        assert_eq!(resolve_deps(&few, &ids, &all, &mut errors), [5, 2]);
        let mut wide: Vec<String> = names.iter().rev().cloned().collect();
        wide.extend(names.iter().cloned());
        let deps = resolve_deps(&draft(wide), &ids, &all, &mut errors);
        let mut expected = vec![5];
        expected.extend((0..40).rev().filter(|&i| i != 5));
        assert_eq!(deps, expected);
        assert!(errors.list.is_empty());
    }

    #[test]
    fn suggestions_for_near_misses_only() {
        assert_eq!(
            suggest("pars", &["parse", "clean"]),
            " (did you mean `parse`?)"
        );
        assert_eq!(suggest("zzzzzz", &["parse", "clean"]), "");
    }

    #[test]
    fn inline_files_stay_inside_the_manifest_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data.csv"), "a,b\n").unwrap();
        let v = inline_files(
            serde_json::json!({"csv": {"$file": "data.csv"}}),
            Sources::Dir {
                base: dir.path(),
                secrets: None,
            },
        )
        .unwrap();
        assert_eq!(v, serde_json::json!({"csv": "a,b\n"}));
        for bad in ["../x", "/etc/passwd", "a/../../x"] {
            let err = inline_files(
                serde_json::json!({"$file": bad}),
                Sources::Dir {
                    base: dir.path(),
                    secrets: None,
                },
            )
            .unwrap_err();
            assert!(
                err.contains("inside the manifest's directory"),
                "{bad}: {err}"
            );
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
            let err = inline_files(
                serde_json::json!({"$file": "link"}),
                Sources::Dir {
                    base: dir.path(),
                    secrets: None,
                },
            )
            .unwrap_err();
            assert!(err.contains("symlink"), "{err}");
        }
    }
}
