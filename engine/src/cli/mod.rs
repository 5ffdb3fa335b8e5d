//! The `cairn` command line: argument parsing, diagnostics set-up, exit codes.
//!
//! A thin layer over the library: each subcommand parses its arguments into
//! library types, calls the library, and renders the result for people (on a
//! TTY) or machines (`--json`). Errors become one line on stderr and an exit
//! code from the documented table; nothing here panics on user input.

/// `eprintln!` that never panics: a closed or full stderr (`cairn run P
/// 2>&1 | head -3`) must not stop a run, so what cannot be shown is dropped.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` that never panics (see `say!`).
macro_rules! say_part {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

/// `println!` that never panics: a failed write to stdout (`> /dev/full`,
/// a closed pipe) is remembered, and the command then fails with a clear
/// error instead of a panic (see [`stdout_failed`]).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        $crate::cli::json_errors::stdout_used();
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::cli::note_stdout_failure(e);
        }
    }};
}

/// `print!` that never panics (see `out!`).
macro_rules! out_part {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        $crate::cli::json_errors::stdout_used();
        if let Err(e) = write!(std::io::stdout(), $($arg)*) {
            $crate::cli::note_stdout_failure(e);
        }
    }};
}

mod bundle;
mod events;
mod pipeline;
mod remote;
mod runs;
mod scaffold;
mod serve;
mod task;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::sandbox::{FailureClass, Sandbox};

/// Exit code: the command could not do its job (bad input, bad component, I/O).
pub const EXIT_ERROR: u8 = 1;
/// Exit code: the command line itself was wrong (clap's convention).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: `cairn run` finished but a required step failed.
pub const EXIT_PIPELINE_FAILED: u8 = 3;
/// Exit code: interrupted with Ctrl-C.
pub const EXIT_INTERRUPTED: u8 = 130;
/// Exit code: stopped by SIGTERM.
pub const EXIT_TERMINATED: u8 = 143;

fn exit_code_help() -> String {
    let mut help = String::from(
        "Exit codes:\n  0    success\n  1    error: bad input, invalid manifest, unloadable component, I/O problem, store in use\n  2    usage error\n  3    cairn run/resume/replay: a required step failed\n  4    cairn replay --verify: some output differs from the original run\n",
    );
    help.push_str("  cairn task run, when the task fails:\n");
    let mut classes = FailureClass::ALL;
    classes.sort_by_key(|c| c.exit_code());
    for class in classes {
        help.push_str(&format!(
            "  {:<4} {} ({})\n",
            class.exit_code(),
            class.describe(),
            class
        ));
    }
    help.push_str(&format!("  {EXIT_INTERRUPTED:<4} interrupted (Ctrl-C)\n"));
    help.push_str(&format!(
        "  {EXIT_TERMINATED:<4} stopped by SIGTERM (a run is cancelled as on Ctrl-C)\n"
    ));
    help.push_str("\nDiagnostics: -v (info), -vv (debug), or CAIRN_LOG=<filter> (e.g. CAIRN_LOG=cairn=debug).");
    help
}

/// Cairn runs WebAssembly components as sandboxed, deterministic tasks.
///
/// A task gets its input as JSON and returns JSON. It runs with a fuel budget,
/// a deadline, a memory cap and an output cap, and sees no files, network,
/// environment, real clock or OS randomness unless you grant them.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, after_help = exit_code_help(), max_term_width = 100)]
struct Cli {
    /// More engine diagnostics on stderr: -v for info, -vv for debug.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    /// Store directory: precompiled artifacts, result cache, run journals, audit log.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "CAIRN_HOME",
        default_value = ".cairn"
    )]
    store: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline: plan it, then run its steps in dependency order.
    ///
    /// Independent steps run in parallel (up to --jobs), failed attempts are
    /// retried as each step's policy says, and a failed step's dependents are
    /// skipped while the rest of the pipeline goes on (unless --fail-fast).
    /// Progress goes to stderr, the pipeline's output to stdout.
    Run(pipeline::RunArgs),

    /// Check a pipeline without running it: references, cycles, components,
    /// limits, grants and schemas.
    Check(pipeline::CheckArgs),

    /// Print a pipeline's DAG as a Mermaid flowchart or Graphviz DOT.
    Graph(pipeline::GraphArgs),

    /// Continue an interrupted run: finished steps come from its journal,
    /// steps that were in flight run again.
    Resume(runs::ResumeArgs),

    /// Re-execute a run ignoring the cache; with --verify, compare every
    /// output with the original and report differences as nondeterminism.
    Replay(runs::ReplayArgs),

    /// Stop a run on a server (`--server URL`); it ends cancelled and can
    /// be resumed.
    Cancel(runs::CancelArgs),

    /// Inspect recorded runs.
    #[command(subcommand)]
    Runs(runs::RunsCommand),

    /// Inspect or trim the result cache.
    #[command(subcommand)]
    Cache(runs::CacheCommand),

    /// For every output of a run, the component and input hashes that
    /// produced it (OpenLineage-style run events, JSON).
    Lineage(runs::LineageArgs),

    /// Pack, inspect, verify and sign bundles: a pipeline in one file.
    #[command(subcommand)]
    Bundle(bundle::BundleCommand),

    /// Make signing keys for bundles.
    #[command(subcommand)]
    Key(bundle::KeyCommand),

    /// Show the audit log: every capability granted and every denial.
    Audit(runs::AuditArgs),

    /// Run or inspect a single task component.
    #[command(subcommand)]
    Task(task::TaskCommand),

    /// Serve the run service over HTTP for many tenants: tokens, roles,
    /// quotas, bundles, runs (see the README's "Hosting" section).
    Serve(serve::ServeArgs),

    /// Create, list and revoke a server's tokens (`--server URL`, an admin
    /// token in CAIRN_TOKEN).
    #[command(subcommand)]
    Token(serve::TokenCommand),

    /// Add and list a server's tenants (`--server URL`, a server-wide admin
    /// token in CAIRN_TOKEN).
    #[command(subcommand)]
    Tenant(serve::TenantCommand),
}

/// Entry point of the `cairn` binary.
pub fn main() -> ExitCode {
    install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // Commands that run tasks keep SIGPIPE ignored (Rust's default): a
    // reader that goes away must not kill a run midway, leaving it
    // interrupted, nor a server with every tenant's runs in it. Listing
    // commands end quietly on a closed pipe, like other Unix tools.
    if !matches!(
        cli.command,
        Command::Run(_)
            | Command::Resume(_)
            | Command::Replay(_)
            | Command::Task(_)
            | Command::Serve(_)
    ) {
        restore_sigpipe();
    }
    init_diagnostics(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => pipeline::run(args, &cli.store).await,
            Command::Check(args) => pipeline::check(args, &cli.store).await,
            Command::Graph(args) => pipeline::graph(args, &cli.store).await,
            Command::Resume(args) => runs::resume(args, &cli.store).await,
            Command::Replay(args) => runs::replay(args, &cli.store).await,
            Command::Cancel(args) => runs::cancel(args),
            Command::Runs(command) => runs::runs(command, &cli.store),
            Command::Cache(command) => runs::cache(command, &cli.store),
            Command::Lineage(args) => runs::lineage(args, &cli.store),
            Command::Bundle(command) => bundle::execute(command).await,
            Command::Key(command) => bundle::key(command),
            Command::Audit(args) => runs::audit(args, &cli.store),
            Command::Task(command) => task::execute(command, &cli.store).await,
            Command::Serve(args) => serve::serve(args).await,
            Command::Token(command) => tokio::task::block_in_place(|| serve::token(command)),
            Command::Tenant(command) => tokio::task::block_in_place(|| serve::tenant(command)),
        }
    });
    json_errors::finish(code);
    // A task blocked in a host call that cannot be interrupted (a read of a
    // FIFO, say) keeps a blocking thread busy after its attempt timed out;
    // the process must still exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match stdout_failed() {
        Some(e) if code == 0 => {
            say!("error: cannot write the output to stdout: {e}");
            ExitCode::from(EXIT_ERROR)
        }
        _ => ExitCode::from(code),
    }
}

/// The first error writing to stdout, if any.
static STDOUT_FAILURE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

#[doc(hidden)]
pub fn note_stdout_failure(e: std::io::Error) {
    let mut first = STDOUT_FAILURE.lock().unwrap_or_else(|p| p.into_inner());
    first.get_or_insert_with(|| e.to_string());
}

/// Why stdout could not be written, if it could not.
fn stdout_failed() -> Option<String> {
    use std::io::Write as _;
    if let Err(e) = std::io::stdout().flush() {
        note_stdout_failure(e);
    }
    STDOUT_FAILURE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// A signal that asks Cairn to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// Ctrl-C (SIGINT).
    CtrlC,
    /// SIGTERM: what service managers and container runtimes send.
    Terminate,
}

impl Interrupt {
    /// The shell's convention: 128 + the signal's number.
    pub fn exit_code(self) -> u8 {
        match self {
            Interrupt::CtrlC => EXIT_INTERRUPTED,
            Interrupt::Terminate => EXIT_TERMINATED,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Interrupt::CtrlC => "Ctrl-C",
            Interrupt::Terminate => "SIGTERM",
        }
    }
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM, saying which. The handlers are
/// installed by this call, not when the future is first polled: work
/// starts on other threads at once, and a signal that came before the
/// first poll would otherwise end the process by its default action
/// instead of cancelling the work.
fn interrupted() -> impl std::future::Future<Output = Interrupt> + Send + 'static {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        )
    };
    async move {
        #[cfg(unix)]
        {
            // A stream that cannot be had, or that ends, never fires.
            async fn next(signal: std::io::Result<tokio::signal::unix::Signal>) {
                if let Ok(mut signal) = signal
                    && signal.recv().await.is_some()
                {
                    return;
                }
                std::future::pending::<()>().await;
            }
            let (int, term) = signals;
            tokio::select! {
                () = next(int) => Interrupt::CtrlC,
                () = next(term) => Interrupt::Terminate,
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
            Interrupt::CtrlC
        }
    }
}

/// Print one error line and return the generic error exit code.
fn fail(message: &str) -> ExitCode {
    ExitCode::from(report_error(message))
}

fn report_error(message: &str) -> u8 {
    print_error(message);
    EXIT_ERROR
}

/// Print `error: <message>`, cut to a readable length: a message that
/// quotes untrusted input (a 20 MB path in a manifest) must not repeat all
/// of it.
fn print_error(message: impl std::fmt::Display) {
    const MAX: usize = 4096;
    let text = message.to_string();
    json_errors::note(&text, MAX);
    if text.len() <= MAX {
        say!("error: {text}");
    } else {
        let end = text.floor_char_boundary(MAX);
        say!(
            "error: {}… ({} more bytes of this message cut)",
            &text[..end],
            text.len() - end
        );
    }
}

/// `--json` commands that fail before they print their report print a JSON
/// error object on stdout instead, so a machine reading stdout always gets
/// JSON: `{"ok": false, "exit_code": N, "errors": ["…", …]}`, the errors
/// being the lines printed on stderr (without `error: `).
pub mod json_errors {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    static WANTED: AtomicBool = AtomicBool::new(false);
    static USED: AtomicBool = AtomicBool::new(false);
    static ERRORS: Mutex<Vec<String>> = Mutex::new(Vec::new());
    /// Errors kept for the object (a plan can have thousands of problems).
    const KEEP: usize = 1000;

    /// The command was asked for `--json`.
    pub fn want() {
        WANTED.store(true, Ordering::Relaxed);
    }

    /// Something was written to stdout: the command printed its own JSON.
    pub fn stdout_used() {
        USED.store(true, Ordering::Relaxed);
    }

    pub(super) fn note(text: &str, max: usize) {
        if !WANTED.load(Ordering::Relaxed) {
            return;
        }
        let mut errors = ERRORS.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() < KEEP {
            errors.push(text[..text.floor_char_boundary(max)].to_owned());
        }
    }

    /// Print the error object if the command failed without printing.
    pub(super) fn finish(code: u8) {
        if code == 0 || !WANTED.load(Ordering::Relaxed) || USED.load(Ordering::Relaxed) {
            return;
        }
        let errors = std::mem::take(&mut *ERRORS.lock().unwrap_or_else(|e| e.into_inner()));
        let object = serde_json::json!({"ok": false, "exit_code": code, "errors": errors});
        out!("{object}");
    }
}

/// The process's sandbox, with its artifact cache under the store directory.
fn open_sandbox(store: &Path) -> Result<Sandbox, String> {
    crate::runner::open_sandbox(store, 0).map_err(|e| e.to_string())
}

fn init_diagnostics(verbose: u8) {
    let filter = match std::env::var("CAIRN_LOG") {
        Ok(filter) if !filter.is_empty() => tracing_subscriber::EnvFilter::new(filter),
        _ => tracing_subscriber::EnvFilter::new(match verbose {
            0 => "cairn=warn",
            1 => "cairn=info",
            _ => "cairn=debug",
        }),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .init();
}

/// Rust ignores SIGPIPE, so `cairn runs list | head` would fail writing to a
/// closed pipe; like other Unix tools, let the signal end the process quietly.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists; setting
    // a signal's disposition to its default has no other preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// A panic is a bug in Cairn, never the user's fault: say so in one line
/// instead of a backtrace.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        if crate::store::db::panic_expected() {
            return;
        }
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        say!("internal error: {message}{location}. This is a bug in Cairn; please report it.");
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_documents_every_exit_code() {
        let help = exit_code_help();
        for class in FailureClass::ALL {
            assert!(
                help.contains(&format!("{:<4} ", class.exit_code())),
                "missing {class} in\n{help}"
            );
        }
    }
}
