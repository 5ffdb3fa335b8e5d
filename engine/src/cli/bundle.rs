//! `cairn bundle pack|inspect|verify|sign|push`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::json;

use super::report_error;
use crate::bundle::{self, Bundle};
use crate::manifest::ScratchSpec;

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Pack a pipeline (manifest or directory) with its components and data
    /// files into one reproducible .cairn file.
    Pack {
        /// The pipeline manifest, or a directory holding `pipeline.toml`.
        pipeline: PathBuf,
        /// Where to write the bundle.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Show a bundle: id, steps, components with hashes and sizes, and the
    /// capabilities every step asks for.
    Inspect {
        bundle: PathBuf,
        /// Print what was found as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Check every member of a bundle against its lock, and every signature.
    Verify { bundle: PathBuf },
    /// Upload a pipeline (a bundle, or a manifest or directory, packed
    /// first) to a server, where it is verified and checked against the
    /// tenant's policy before it is stored; prints its bundle id.
    Push {
        /// The bundle, pipeline manifest, or directory holding `pipeline.toml`.
        pipeline: PathBuf,
        /// Print the server's answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: super::remote::RemoteArgs,
    },
    /// Add an ed25519 signature over the bundle id (the file is rewritten;
    /// its id does not change).
    Sign {
        bundle: PathBuf,
        /// A secret key file from `cairn key gen`.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate an ed25519 signing key: NAME.key (secret, mode 0600) and
    /// NAME.pub (the public key, for a host's trusted_keys).
    Gen {
        /// Path prefix of the two files.
        #[arg(long, value_name = "NAME")]
        out: PathBuf,
    },
}

/// Replace `path` with `bytes` via a synced temporary file and a rename, so
/// a crash leaves either the old file or the new one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_data()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

pub fn key(command: KeyCommand) -> u8 {
    let KeyCommand::Gen { out } = command;
    let (secret, public) = bundle::generate_key();
    let secret_path = out.with_extension("key");
    let public_path = out.with_extension("pub");
    if secret_path.exists() {
        return report_error(&format!(
            "{} exists; refusing to overwrite a key",
            secret_path.display()
        ));
    }
    let written = (|| -> std::io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(&secret_path)?.write_all(secret.as_bytes())?;
        std::fs::write(&public_path, format!("{public}\n"))
    })();
    if let Err(e) = written {
        return report_error(&format!("cannot write the key files: {e}"));
    }
    out!("secret key {} (keep it private)", secret_path.display());
    out!("public key {} : {public}", public_path.display());
    0
}

pub async fn execute(command: BundleCommand) -> u8 {
    match command {
        BundleCommand::Pack { pipeline, output } => {
            let bytes = match bundle::pack(&pipeline) {
                Ok(bytes) => bytes,
                Err(e) => return report_error(&e.to_string()),
            };
            // Check what we wrote reads back before putting it in place.
            let id = match Bundle::read(&bytes) {
                Ok(b) => b.id,
                Err(e) => {
                    return report_error(&format!("the packed bundle does not read back: {e}"));
                }
            };
            if let Err(e) = write_atomically(&output, &bytes) {
                return report_error(&format!("cannot write {}: {e}", output.display()));
            }
            out!(
                "packed {} ({} bytes), bundle id {}",
                output.display(),
                bytes.len(),
                id.to_hex()
            );
            0
        }
        BundleCommand::Verify { bundle } => match Bundle::open(&bundle) {
            Ok(b) => {
                out!(
                    "ok: {} members match the lock; {} valid signature{}; bundle id {}",
                    b.lock.members.len(),
                    b.signatures.len(),
                    if b.signatures.len() == 1 { "" } else { "s" },
                    b.id.to_hex()
                );
                0
            }
            Err(e) => report_error(&format!("{}: {e}", bundle.display())),
        },
        BundleCommand::Sign { bundle, key } => {
            let signing = match bundle::read_key(&key) {
                Ok(k) => k,
                Err(e) => return report_error(&e.to_string()),
            };
            let opened = match Bundle::open(&bundle) {
                Ok(b) => b,
                Err(e) => return report_error(&format!("{}: {e}", bundle.display())),
            };
            let bytes = opened.sign(&signing);
            if let Err(e) = write_atomically(&bundle, &bytes) {
                return report_error(&format!("cannot write {}: {e}", bundle.display()));
            }
            let public = hex::encode(signing.verifying_key().to_bytes());
            out!("signed {} with key {public}", bundle.display());
            0
        }
        BundleCommand::Inspect { bundle, json } => inspect(&bundle, json).await,
        BundleCommand::Push {
            pipeline,
            json,
            remote,
        } => match remote.connect() {
            Ok(Some(server)) => super::remote::push(&server, &pipeline, json),
            Ok(None) => report_error(
                "cairn bundle push needs a server: --server URL (or CAIRN_SERVER) and a token in CAIRN_TOKEN",
            ),
            Err(code) => code,
        },
    }
}

/// Show a bundle without running or compiling anything in it: what a host
/// reads before deciding to trust it.
async fn inspect(path: &Path, json: bool) -> u8 {
    let bundle = match Bundle::open(path) {
        Ok(b) => b,
        Err(e) => return report_error(&format!("{}: {e}", path.display())),
    };
    let manifest = match bundle.manifest() {
        Ok(m) => m,
        Err(e) => return report_error(&format!("{}: {e}", path.display())),
    };
    let steps: Vec<_> = manifest
        .steps
        .iter()
        .map(|(name, spec)| {
            let settings = spec.settings(&manifest.defaults);
            let g = &spec.grants;
            let mut wants: Vec<String> = g.read.iter().map(|d| format!("read:{d}")).collect();
            wants.extend(
                g.scratch
                    .iter()
                    .map(|s| match s {
                        ScratchSpec::Managed(managed) => {
                            if *managed {
                                "scratch".to_owned()
                            } else {
                                String::new()
                            }
                        }
                        ScratchSpec::Dir(d) => format!("scratch:{d}"),
                    })
                    .filter(|w| !w.is_empty()),
            );
            wants.extend(
                g.env
                    .iter()
                    .map(|e| format!("env:{}", e.split('=').next().unwrap_or(e))),
            );
            wants.extend(g.secrets.iter().map(|name| format!("secret:{name}")));
            if g.clock {
                wants.push("clock".into());
            }
            if g.random {
                wants.push("random".into());
            }
            wants.extend(g.http.iter().map(|h| match h.parse() {
                Ok(grant) => format!("http:{grant}"),
                Err(_) => format!("http:{h:?}"),
            }));
            let member = bundle
                .lock
                .members
                .iter()
                .find(|m| m.path == spec.component);
            json!({
                "name": name,
                "component": spec.component,
                "component_hash": member.map(|m| m.blake3.as_str()),
                "component_size": member.map(|m| m.size),
                "capabilities": wants,
                "fuel": settings.fuel,
                "timeout": settings.timeout,
                "memory": settings.memory,
            })
        })
        .collect();
    if json {
        out!(
            "{}",
            json!({"id": bundle.id.to_hex().as_str(), "pipeline": manifest.name, "members": bundle.lock.members, "steps": steps, "signatures": bundle.signatures})
        );
        return 0;
    }
    out!("bundle     {}", path.display());
    out!("id         {}", bundle.id.to_hex());
    out!("pipeline   {} ({} steps)", manifest.name, steps.len());
    out!("members:");
    for m in &bundle.lock.members {
        out!(
            "  {:<48} {:>10} bytes  blake3 {}…",
            m.path,
            m.size,
            &m.blake3[..16]
        );
    }
    out!("steps and the capabilities they ask for:");
    for s in &steps {
        let caps = s["capabilities"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        out!(
            "  {:<20} {}  {}",
            s["name"].as_str().unwrap_or_default(),
            s["component"].as_str().unwrap_or_default(),
            if caps.is_empty() {
                "(nothing)".to_owned()
            } else {
                caps
            }
        );
    }
    if bundle.signatures.is_empty() {
        out!("signatures: none");
    }
    for sig in &bundle.signatures {
        out!(
            "signature: ed25519 key {} ({}), valid",
            sig.public_key,
            sig.key_id
        );
    }
    0
}
