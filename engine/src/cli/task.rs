//! `cairn task run` and `cairn task inspect`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{EXIT_ERROR, open_sandbox};
use crate::sandbox::host::Capability;
use crate::sandbox::limits::{parse_duration, parse_fuel};
use crate::sandbox::{
    Attempt, ByteSize, ComponentKind, Descriptor, EngineEnv, Grants, Limits, LoadedComponent,
    LogLine, Observer, Progress, RunRequest, Sandbox,
};

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Run one component in the sandbox and print its output.
    ///
    /// A task component (built with cairn-sdk) gets the JSON document given by
    /// --input and prints the JSON document it returns. A plain command
    /// component (any `wasm32-wasip2` program) gets --input as stdin and the
    /// arguments after `--` as argv, and its stdout is the output.
    ///
    /// Examples:
    ///   cairn task run word_count.wasm --input '{"text": "a rose is a rose"}'
    ///   cairn task run csv_parse.wasm --input @request.json --json
    ///   cairn task run shout.wasm --input @notes.txt -- --lines
    ///   cairn task run shout.wasm --allow-read data -- data/notes.txt   (relative to here)
    #[command(verbatim_doc_comment)]
    Run(RunArgs),

    /// Show what a component is: its description, schemas, imports and exports.
    Inspect(InspectArgs),

    /// Create a task crate that builds as it is: the cdylib crate type, the
    /// SDK dependency, a small release profile and a test.
    ///
    /// Then: cd NAME && cargo build --release --target wasm32-wasip2
    #[command(verbatim_doc_comment)]
    New(super::scaffold::NewArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The component (.wasm) to run.
    component: PathBuf,

    /// The input: inline JSON, @FILE to read a file, or - for stdin.
    /// Tasks default to `{}`; commands to empty stdin.
    #[arg(short, long, value_name = "JSON|@FILE|-")]
    input: Option<String>,

    /// Fuel budget (deterministic CPU units, about one per wasm instruction).
    #[arg(long, value_name = "N", value_parser = parse_fuel, default_value_t = Limits::DEFAULT_FUEL)]
    fuel: u64,

    /// Wall-clock deadline, e.g. 500ms, 5s, 2m.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    timeout: Duration,

    /// Memory cap for the task's linear memory, e.g. 64MiB (at most 4GiB).
    #[arg(long, value_name = "SIZE", default_value = "256MiB")]
    memory: ByteSize,

    /// Output cap (a task's JSON document or a command's stdout), e.g. 1MiB.
    #[arg(long, value_name = "SIZE", default_value = "16MiB")]
    output_limit: ByteSize,

    /// Grant read-only access to DIR, seen inside the sandbox at the real path it resolves to
    /// (symlinks followed, `..` applied); a policy checks that resolved path. Repeatable.
    #[arg(long, value_name = "DIR")]
    allow_read: Vec<PathBuf>,

    /// Grant read-write access to one host directory as scratch, seen at the real path it resolves to.
    #[arg(long, value_name = "DIR")]
    scratch: Option<PathBuf>,

    /// Grant an environment variable: NAME (its value here) or NAME=VALUE. Repeatable.
    #[arg(long = "env", value_name = "NAME[=VALUE]")]
    env: Vec<String>,

    /// Grant a secret: the engine's environment variable NAME, passed to the
    /// task like --env but masked as *** in its logs and errors. Repeatable.
    #[arg(long = "secret", value_name = "NAME")]
    secrets: Vec<String>,

    /// Grant the real wall clock (the run is no longer deterministic).
    #[arg(long)]
    allow_clock: bool,

    /// Grant OS randomness (the run is no longer deterministic).
    #[arg(long)]
    allow_random: bool,

    /// Grant outbound HTTP to HOST: `api.example.com` (https, port 443),
    /// `http://127.0.0.1:8080`, `https://*.example.com:8443`; any method.
    /// Other hosts, ports and schemes are refused (class `denied`), and a
    /// name never reaches a loopback or private address unless HOST is that
    /// address. Repeatable.
    #[arg(long = "allow-http", value_name = "HOST")]
    allow_http: Vec<String>,

    /// Print one JSON report on stdout (status, output, failure class, fuel, logs).
    #[arg(long)]
    json: bool,

    /// Do not echo the task's log lines to stderr.
    #[arg(short, long)]
    quiet: bool,

    /// Arguments for a command component (after `--`).
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The component (.wasm) to inspect.
    component: PathBuf,

    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub async fn execute(command: TaskCommand, store: &Path) -> u8 {
    let result = match command {
        TaskCommand::Run(args) => run(args, store).await,
        TaskCommand::Inspect(args) => inspect(args, store).await,
        TaskCommand::New(args) => super::scaffold::new(args),
    };
    result.unwrap_or_else(|message| {
        super::print_error(message);
        EXIT_ERROR
    })
}

fn load(sandbox: &Sandbox, path: &Path) -> Result<Arc<LoadedComponent>, String> {
    sandbox
        .load_file(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Prints task logs to stderr as they arrive, labelled with the task.
struct StderrObserver {
    label: String,
}

impl Observer for StderrObserver {
    fn log(&self, line: &LogLine) {
        say!("[{}] {}: {}", self.label, line.level.as_str(), line.message);
    }
    fn progress(&self, progress: &Progress) {
        match progress.total {
            0 => say!(
                "[{}] progress: {} {}",
                self.label,
                progress.done,
                progress.message
            ),
            total => say!(
                "[{}] progress: {}/{} {}",
                self.label,
                progress.done,
                total,
                progress.message
            ),
        }
    }
}

async fn run(args: RunArgs, store: &Path) -> Result<u8, String> {
    if args.json {
        super::json_errors::want();
    }
    let grants = grants(&args)?;
    if args.memory > Limits::MAX_MEMORY {
        return Err(format!(
            "--memory {} is more than the most a task can address ({})",
            args.memory,
            Limits::MAX_MEMORY
        ));
    }
    let limits = Limits {
        fuel: args.fuel,
        timeout: args.timeout,
        memory: args.memory,
        output: args.output_limit,
    };
    let sandbox = open_sandbox(store)?;
    let loaded = load(&sandbox, &args.component)?;
    let raw_input = read_input(args.input.as_deref())?;
    let input = match loaded.kind {
        ComponentKind::Task => {
            canonical_json(raw_input.as_deref().unwrap_or(b"{}"), args.input.as_deref())?
        }
        ComponentKind::Command => {
            if !args.args.is_empty() || raw_input.is_some() {
                raw_input.unwrap_or_default()
            } else {
                Vec::new()
            }
        }
    };
    if loaded.kind == ComponentKind::Task && !args.args.is_empty() {
        return Err("arguments after `--` are only for command components; a task takes its input from --input".into());
    }
    let label = task_label(&args.component);
    let observer: Option<Arc<dyn Observer>> = if args.quiet || args.json {
        None
    } else {
        Some(Arc::new(StderrObserver {
            label: label.clone(),
        }))
    };
    let secrets = grants
        .resolve_secrets(&EngineEnv)
        .map_err(|e| format!("--secret: {e}"))?;
    let request = RunRequest {
        input: &input,
        args: &args.args,
        limits,
        grants: &grants,
        secrets: &secrets,
        observer,
        tape: None,
    };
    let interrupted = super::interrupted();
    let attempt = tokio::select! {
        attempt = sandbox.run(&loaded, request) => attempt.map_err(|e| e.to_string())?,
        signal = interrupted => {
            say!("interrupted: the task was stopped");
            return Ok(signal.exit_code());
        }
    };
    report(&args, &label, &loaded, &attempt)
}

fn grants(args: &RunArgs) -> Result<Grants, String> {
    let mut grants = Grants::default();
    for dir in &args.allow_read {
        grants
            .allow_read(dir)
            .map_err(|e| format!("--allow-read: {e}"))?;
    }
    if let Some(dir) = &args.scratch {
        grants
            .allow_scratch(dir)
            .map_err(|e| format!("--scratch: {e}"))?;
    }
    for spec in &args.env {
        grants.allow_env(spec).map_err(|e| format!("--env: {e}"))?;
    }
    for name in &args.secrets {
        grants
            .allow_secret(name, &EngineEnv)
            .map_err(|e| format!("--secret: {e}"))?;
    }
    grants.wall_clock = args.allow_clock;
    grants.random = args.allow_random;
    for host in &args.allow_http {
        grants.http.push(
            crate::sandbox::http_grant::HttpGrant::parse(host, None)
                .map_err(|e| format!("--allow-http: {e}"))?,
        );
    }
    // Relative paths mean inside the sandbox what they mean here:
    // `--allow-read data -- data/notes.txt`.
    if grants.guest_cwd().is_none() && (!grants.read_dirs.is_empty() || args.scratch.is_some()) {
        let here = std::env::current_dir()
            .map_err(|e| format!("cannot find the current directory: {e}"))?;
        grants
            .set_cwd(&here)
            .map_err(|e| format!("the current directory: {e}"))?;
    }
    Ok(grants)
}

fn task_label(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "task".into())
}

/// The largest input `--input` takes (a file or stdin).
const MAX_INPUT_BYTES: u64 = 256 << 20;

/// `None` when no input was given; otherwise the bytes of the literal, the
/// file (`@path`) or stdin (`-`).
fn read_input(spec: Option<&str>) -> Result<Option<Vec<u8>>, String> {
    let Some(spec) = spec else { return Ok(None) };
    if spec == "-" {
        let bytes = crate::files::read_capped(std::io::stdin().lock(), MAX_INPUT_BYTES)
            .map_err(|e| format!("cannot read the input from stdin: {e}"))?;
        return Ok(Some(bytes));
    }
    if let Some(path) = spec.strip_prefix('@') {
        return crate::files::read_regular(Path::new(path), MAX_INPUT_BYTES)
            .map(Some)
            .map_err(|e| format!("cannot read the input file {path}: {e}"));
    }
    Ok(Some(spec.as_bytes().to_vec()))
}

/// Parse the input as JSON and re-encode it compactly with sorted keys, so
/// equal documents are equal bytes.
fn canonical_json(bytes: &[u8], spec: Option<&str>) -> Result<Vec<u8>, String> {
    let source = match spec {
        Some("-") => "stdin".to_owned(),
        Some(s) if s.starts_with('@') => s[1..].to_owned(),
        _ => "--input".to_owned(),
    };
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        // `--input request.json`: a file name given without its `@`.
        let file_hint = match spec {
            Some(s)
                if source == "--input"
                    && !s.trim_start().starts_with(['{', '[', '"'])
                    && Path::new(s).is_file() =>
            {
                format!("; to read the file {s}, write --input @{s}")
            }
            _ => String::new(),
        };
        format!(
            "the input is not valid JSON ({source}: {e}); a task takes one JSON document{file_hint}"
        )
    })?;
    serde_json::to_vec(&value).map_err(|e| format!("cannot encode the input: {e}"))
}

fn report(
    args: &RunArgs,
    label: &str,
    loaded: &LoadedComponent,
    attempt: &Attempt,
) -> Result<u8, String> {
    let code = match &attempt.result {
        Ok(_) => 0,
        Err(failure) => failure.class().exit_code(),
    };
    if args.json {
        let (status, output, failure) = match &attempt.result {
            Ok(bytes) => ("succeeded", output_value(loaded.kind, bytes), Value::Null),
            Err(f) => (
                "failed",
                Value::Null,
                json!({"class": f.class(), "message": f.to_string()}),
            ),
        };
        let report = json!({
            "status": status,
            "output": output,
            "failure": failure,
            "exit_code": code,
            "component": {
                "path": args.component,
                "hash": loaded.hash.to_hex().as_str(),
                "kind": loaded.kind,
                "code_source": loaded.source,
            },
            "fuel_used": attempt.fuel_used,
            "duration_us": attempt.duration.as_micros() as u64,
            "peak_memory_bytes": attempt.peak_memory,
            "logs": attempt.log,
        });
        out!("{report}");
        return Ok(code);
    }
    let stats = format!(
        "{:.1?}, fuel {}, peak memory {}",
        attempt.duration,
        attempt.fuel_used,
        ByteSize(attempt.peak_memory)
    );
    match &attempt.result {
        Ok(bytes) => {
            write_output(loaded.kind, bytes)?;
            if !args.quiet {
                say!("ok: {label} succeeded in {stats}");
            }
        }
        Err(failure) => say!(
            "error: {label} failed [{}]: {failure} ({stats})",
            failure.class()
        ),
    }
    if attempt.log.dropped > 0 {
        say!(
            "note: {} log lines from {label} were dropped (log cap reached)",
            attempt.log.dropped
        );
    }
    Ok(code)
}

fn output_value(kind: ComponentKind, bytes: &[u8]) -> Value {
    match kind {
        // The sandbox accepted it only after checking it is JSON.
        ComponentKind::Task => serde_json::from_slice(bytes).unwrap_or(Value::Null),
        ComponentKind::Command => Value::String(String::from_utf8_lossy(bytes).into_owned()),
    }
}

fn write_output(kind: ComponentKind, bytes: &[u8]) -> Result<(), String> {
    let mut stdout = std::io::stdout().lock();
    let written = if kind == ComponentKind::Task && stdout.is_terminal() {
        let value: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
        let pretty = serde_json::to_string_pretty(&value).unwrap_or_default();
        writeln!(stdout, "{pretty}")
    } else {
        stdout.write_all(bytes).and_then(|()| {
            if kind == ComponentKind::Task {
                writeln!(stdout)
            } else {
                Ok(())
            }
        })
    };
    written
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write the output: {e}"))
}

async fn inspect(args: InspectArgs, store: &Path) -> Result<u8, String> {
    let sandbox = open_sandbox(store)?;
    let loaded = load(&sandbox, &args.component)?;
    let (imports, exports) = sandbox.interface(&loaded);
    let descriptor = match loaded.kind {
        ComponentKind::Command => None,
        ComponentKind::Task => match sandbox.describe(&loaded).await.map_err(|e| e.to_string())? {
            Ok(descriptor) => Some(descriptor),
            Err(failure) => {
                return Err(format!(
                    "{}: `describe` failed [{}]: {failure}",
                    args.component.display(),
                    failure.class()
                ));
            }
        },
    };
    if args.json {
        let report = json!({
            "path": args.component,
            "kind": loaded.kind,
            "hash": loaded.hash.to_hex().as_str(),
            "size_bytes": loaded.size,
            "descriptor": descriptor.as_ref().map(descriptor_json),
            "imports": imports,
            "exports": exports,
        });
        out!("{report}");
        return Ok(0);
    }
    let mut out = String::new();
    out.push_str(&format!("component  {}\n", args.component.display()));
    out.push_str(&format!(
        "kind       {}\n",
        serde_json::to_value(loaded.kind)
            .unwrap_or_default()
            .as_str()
            .unwrap_or("?")
    ));
    out.push_str(&format!("hash       {}\n", loaded.hash.to_hex()));
    out.push_str(&format!("size       {}\n", ByteSize(loaded.size as u64)));
    if let Some(d) = &descriptor {
        let caps: Vec<String> = d.capabilities.iter().map(capability_name).collect();
        out.push_str(&format!("name       {} {}\n", d.name, d.version));
        out.push_str(&format!("about      {}\n", d.description));
        out.push_str(&format!(
            "wants      {}\n",
            if caps.is_empty() {
                "nothing".into()
            } else {
                caps.join(", ")
            }
        ));
        out.push_str(&format!(
            "input schema:\n{}\n",
            indent(&pretty_schema(&d.input_schema))
        ));
        out.push_str(&format!(
            "output schema:\n{}\n",
            indent(&pretty_schema(&d.output_schema))
        ));
    } else {
        out.push_str("about      a wasi:cli command: stdin in, stdout out, arguments after `--`\n");
    }
    out.push_str("imports:\n");
    for name in &imports {
        out.push_str(&format!("  {name}\n"));
    }
    out.push_str("exports:\n");
    for name in &exports {
        out.push_str(&format!("  {name}\n"));
    }
    out_part!("{out}");
    Ok(0)
}

fn descriptor_json(d: &Descriptor) -> Value {
    json!({
        "name": d.name,
        "version": d.version,
        "description": d.description,
        "input_schema": schema_value(&d.input_schema),
        "output_schema": schema_value(&d.output_schema),
        "capabilities": d.capabilities.iter().map(capability_name).collect::<Vec<_>>(),
    })
}

/// A schema string from the guest as JSON; a guest that sends garbage gets
/// its text shown as a string rather than an error.
fn schema_value(schema: &str) -> Value {
    serde_json::from_str(schema).unwrap_or_else(|_| Value::String(schema.to_owned()))
}

fn pretty_schema(schema: &str) -> String {
    serde_json::to_string_pretty(&schema_value(schema)).unwrap_or_else(|_| schema.to_owned())
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn capability_name(cap: &Capability) -> String {
    match cap {
        Capability::ReadDir(dir) => format!("read-dir:{dir}"),
        Capability::Scratch => "scratch".into(),
        Capability::Env(name) => format!("env:{name}"),
        Capability::WallClock => "wall-clock".into(),
        Capability::Random => "random".into(),
        Capability::Http(host) => format!("http:{host}"),
    }
}
