//! `hostile`: a task that misbehaves on purpose. The engine's sandbox tests
//! run every attack below and check that each one fails cleanly, with its own
//! failure class, inside its limit — and that nothing leaks out.
//!
//! Input: `{"attack": "<name>", ...}`. Attacks that *succeed* return what they
//! obtained (file contents, directory entries, variables), so a sandbox leak
//! shows up as output instead of hiding behind an error.
//!
//! This crate implements the `cairn:task` contract by hand (no `task!`), so it
//! can also return bytes that are not JSON.

// Exports exist only in the wasm build; on the host nothing calls this code.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

use std::hint::black_box;

use cairn_sdk::bindings::cairn::task::types::{Descriptor, ErrorKind, TaskError as WitError};
use cairn_sdk::bindings::exports::cairn::task::task::Guest;
use cairn_sdk::{Level, TaskError};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(tag = "attack", rename_all = "kebab-case")]
enum Attack {
    /// Loop forever without calling the host.
    Spin,
    /// Allocate and touch memory until something stops us.
    MemoryBomb,
    /// Recurse until the stack is gone.
    DeepRecursion,
    /// Read the host's password file.
    ReadPasswd,
    /// List the host's root directory.
    ListRoot,
    /// Read every environment variable (or one, by name).
    ReadEnv { name: Option<String> },
    /// Open a TCP connection.
    Socket { addr: Option<String> },
    /// Return `bytes` bytes of output.
    HugeOutput { bytes: usize },
    /// Return bytes that are not JSON.
    Garbage,
    /// Log without end, in large lines.
    LogFlood,
    /// Write to stdout without end.
    StdoutFlood,
    /// Panic with a message.
    Panic,
    /// Block in a host call (a WASI sleep) for an hour.
    Sleep,
    /// Fail with a retryable task error.
    Retryable,
    /// Write a file into a path given in the input (tests the scratch grant).
    WriteFile { path: String },
    /// Read a file at a path given in the input (tests read grants).
    ReadFile { path: String },
    /// Write `files` files of `bytes` bytes each into the scratch directory
    /// (`CAIRN_SCRATCH`); returns how many were written (tests its quota).
    FillScratch { files: usize, bytes: usize },
    /// Make a symbolic link at `link` pointing to `target` (tests links a
    /// task leaves behind in a directory it may write).
    Symlink { target: String, link: String },
    /// Open the file at `path` `count` times, keeping every handle; returns
    /// how many opens succeeded (tests the per-attempt descriptor cap).
    HoldOpen { path: String, count: usize },
    /// Spill the environment variable `name` everywhere the host listens:
    /// a log line, stderr, progress, then an error message (tests masking).
    SpillEnv { name: String },
}

struct Hostile;

impl Guest for Hostile {
    fn describe() -> Descriptor {
        Descriptor {
            name: "hostile".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Misbehaves on purpose, for the sandbox tests.".into(),
            input_schema: r#"{"type":"object","required":["attack"]}"#.into(),
            output_schema: "{}".into(),
            capabilities: vec![],
        }
    }

    fn run(input: Vec<u8>) -> Result<Vec<u8>, WitError> {
        let attack: Attack = serde_json::from_slice(&input).map_err(|e| WitError {
            kind: ErrorKind::InvalidInput,
            message: format!("unknown attack: {e}"),
        })?;
        attack_with(attack).map_err(|e| WitError {
            kind: match e.kind() {
                cairn_sdk::ErrorKind::Retryable => ErrorKind::Retryable,
                cairn_sdk::ErrorKind::Fatal => ErrorKind::Fatal,
                cairn_sdk::ErrorKind::InvalidInput => ErrorKind::InvalidInput,
                cairn_sdk::ErrorKind::Denied => ErrorKind::Denied,
            },
            message: e.message().to_owned(),
        })
    }
}

fn json(value: serde_json::Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

fn attack_with(attack: Attack) -> Result<Vec<u8>, TaskError> {
    match attack {
        Attack::Spin => {
            let mut n: u64 = 0;
            loop {
                n = black_box(n.wrapping_add(1));
            }
        }
        Attack::MemoryBomb => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(black_box(vec![0xA5; 1 << 20]));
            }
        }
        Attack::DeepRecursion => Ok(json(recurse(black_box(0)).into())),
        Attack::ReadPasswd => {
            let text = std::fs::read_to_string("/etc/passwd").map_err(|e| outside_grants("/etc/passwd", e))?;
            Ok(json(text.into()))
        }
        Attack::ListRoot => {
            let names: Vec<String> = std::fs::read_dir("/")
                .map_err(|e| outside_grants("/", e))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            Ok(json(names.into()))
        }
        Attack::ReadEnv { name: Some(name) } => match std::env::var(&name) {
            Ok(value) => Ok(json(value.into())),
            Err(_) => Err(TaskError::denied(format!("environment variable {name} is not visible"))),
        },
        Attack::ReadEnv { name: None } => {
            let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
            if vars.is_empty() {
                return Err(TaskError::denied("no environment variables are visible"));
            }
            Ok(json(vars.into()))
        }
        Attack::Socket { addr } => {
            let addr = addr.unwrap_or_else(|| "127.0.0.1:22".into());
            std::net::TcpStream::connect(&addr)?;
            Ok(json(format!("connected to {addr}").into()))
        }
        Attack::HugeOutput { bytes } => Ok(vec![b'x'; bytes]),
        Attack::Garbage => Ok(vec![0xff, 0xfe, b'{', 0x00, b'!']),
        Attack::LogFlood => {
            let line = "flood ".repeat(10_000);
            for _ in 0..100_000 {
                cairn_sdk::log(Level::Info, &line);
            }
            Ok(json("still alive".into()))
        }
        Attack::StdoutFlood => {
            let line = "flood ".repeat(1_000);
            loop {
                println!("{line}");
            }
        }
        Attack::Panic => panic!("the hostile task panicked on purpose"),
        Attack::Sleep => {
            // Said first, so a test knows the task is in its sleep.
            cairn_sdk::log(Level::Info, "going to sleep for an hour");
            std::thread::sleep(std::time::Duration::from_secs(3600));
            Ok(json("woke up".into()))
        }
        Attack::Retryable => Err(TaskError::retryable("try me again")),
        Attack::WriteFile { path } => {
            std::fs::write(&path, b"written from inside the sandbox")?;
            Ok(json(path.into()))
        }
        Attack::ReadFile { path } => Ok(json(std::fs::read_to_string(&path)?.into())),
        Attack::FillScratch { files, bytes } => {
            let dir = std::env::var("CAIRN_SCRATCH").map_err(|e| TaskError::fatal(e.to_string()))?;
            let block = vec![b's'; bytes];
            for i in 0..files {
                std::fs::write(format!("{dir}/f{i}"), &block)?;
                cairn_sdk::log(Level::Info, &format!("wrote {}", i + 1));
            }
            Ok(json(files.into()))
        }
        Attack::Symlink { target, link } => {
            let c = |s: &str| {
                std::ffi::CString::new(s).map_err(|e| TaskError::fatal(e.to_string()))
            };
            let (target_c, link_c) = (c(&target)?, c(&link)?);
            // SAFETY: both are valid NUL-terminated strings for the call.
            if unsafe { libc::symlink(target_c.as_ptr(), link_c.as_ptr()) } != 0 {
                return Err(TaskError::fatal(format!(
                    "symlink {link} -> {target}: {}",
                    std::io::Error::last_os_error()
                )));
            }
            Ok(json(link.into()))
        }
        Attack::HoldOpen { path, count } => {
            let mut held = Vec::new();
            for _ in 0..count {
                match std::fs::File::open(&path) {
                    Ok(file) => held.push(file),
                    Err(_) => break,
                }
            }
            Ok(json(held.len().into()))
        }
        Attack::SpillEnv { name } => {
            let value = std::env::var(&name).unwrap_or_default();
            cairn_sdk::log(Level::Info, &format!("connecting with {name}={value}"));
            eprintln!("debug: token is {value}");
            cairn_sdk::progress(1, 2, &format!("using {value}"));
            Err(TaskError::fatal(format!("login refused for {value}")))
        }
    }
}

/// In the sandbox a path outside every granted directory does not exist
/// (wasi-libc finds no preopen for it and reports `ENOENT`): for a path the
/// host certainly has, that absence is the sandbox's denial.
fn outside_grants(path: &str, err: std::io::Error) -> TaskError {
    TaskError::denied(format!("{path} is not reachable from the sandbox: {err}"))
}

/// Not a tail call: every frame keeps a live buffer, so the optimiser cannot
/// turn the recursion into a loop.
fn recurse(depth: u64) -> u64 {
    if depth == u64::MAX {
        return 0;
    }
    let frame = black_box([depth; 64]);
    black_box(recurse(depth + 1)) + frame[(depth % 64) as usize]
}

#[cfg(target_arch = "wasm32")]
cairn_sdk::bindings::__export_cairn_task!(Hostile);
