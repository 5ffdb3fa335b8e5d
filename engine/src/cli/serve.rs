//! `cairn serve` (the multi-tenant server) and `cairn token` (its client
//! for managing tokens).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::remote::Remote;
use super::{EXIT_ERROR, report_error};
use crate::server::{Server, ServerConfig};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The server's config (listen address, data directory, policy,
    /// tenants and their quotas); without it, one `default` tenant.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where to listen (overrides the config). Loopback unless told
    /// otherwise; put a reverse proxy in front for TLS. Port 0 picks a free
    /// port (the address is printed on stderr).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// The data directory: every tenant's store and bundles, the token
    /// table, the audit log (overrides the config; default: ./cairn-server).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// After SIGTERM or Ctrl-C, runs start nothing more and the attempts
    /// running finish; those still running after this long are cancelled.
    /// Either way each run stays resumable, and no finished step is lost.
    #[arg(long, value_name = "DURATION", default_value = "30s",
          value_parser = crate::sandbox::limits::parse_duration)]
    grace: Duration,
}

/// How often tenants' `keep_runs` are applied while the server runs.
const RETENTION_EVERY: std::time::Duration = std::time::Duration::from_secs(60 * 60);

pub async fn serve(args: ServeArgs) -> u8 {
    let default_data = PathBuf::from("cairn-server");
    let mut config = match &args.config {
        Some(file) => match ServerConfig::load(file, default_data) {
            Ok(config) => config,
            Err(e) => return report_error(&e.to_string()),
        },
        None => ServerConfig::embedded(default_data),
    };
    if let Some(data) = &args.data {
        config.data = data.clone();
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let started = match Server::open(&config) {
        Ok(started) => started,
        Err(e) => return report_error(&e.to_string()),
    };
    if started.admin_token.is_some() {
        say!(
            "created a server-wide admin token in {} (readable by you only); \
             use it to create tenants' tokens with `cairn token create`",
            started.server.data.join("admin-token").display()
        );
    }
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            return report_error(&format!(
                "cannot listen on {}: {e}; is another server running there? (--listen ADDR)",
                config.listen
            ));
        }
    };
    let addr = listener.local_addr().map_or(config.listen, |a| a);
    if !addr.ip().is_loopback() {
        say!(
            "warning: listening on {addr}, not only loopback: the API is plain HTTP, \
             put a TLS reverse proxy in front of it"
        );
    }
    let resumed = started.server.resume_interrupted().await;
    if resumed > 0 {
        say!("resumed {resumed} interrupted run(s)");
    }
    // Tenants' `keep_runs`: at start, then every hour.
    let forgotten = started.server.apply_retention().await;
    if forgotten > 0 {
        say!("forgot {forgotten} run(s) past their tenant's keep_runs");
    }
    let keeping = started.server.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RETENTION_EVERY).await;
            keeping.apply_retention().await;
        }
    });
    say!(
        "listening on http://{addr} (tenants: {}); stop with Ctrl-C or SIGTERM",
        started.server.tenants.names().join(", ")
    );
    let server = started.server.clone();
    let grace = args.grace;
    let shutdown = async move {
        let signal = super::interrupted().await;
        // Listening for the second signal before saying it may be sent.
        let again = super::interrupted();
        say!(
            "{}: no new requests; live runs start nothing more and finish the attempts they run \
             (for up to {}); send it again to cancel them now. Every run stays resumable.",
            signal.name(),
            humantime::format_duration(grace)
        );
        // A second signal: no more waiting.
        tokio::spawn(async move {
            let signal = again.await;
            say!("{} again: cancelling the live runs now", signal.name());
            server.cancel_all();
        });
    };
    match crate::server::serve(started.server, listener, shutdown, args.grace).await {
        Ok(()) => 0,
        Err(e) => report_error(&format!("the server stopped: {e}")),
    }
}

/// Where the server is and who is asking.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// The server's address, e.g. http://127.0.0.1:8650.
    #[arg(long, value_name = "URL", env = "CAIRN_SERVER")]
    server: String,
    /// A token for it (an admin's, to manage tokens).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "CAIRN_TOKEN",
        hide_env_values = true
    )]
    token: String,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; prints it once, alone on stdout.
    Create {
        #[command(flatten)]
        server: ServerArgs,
        /// The tenant it is for (leave out, with a server-wide admin token,
        /// for another server-wide admin token).
        #[arg(long, value_name = "NAME")]
        tenant: Option<String>,
        /// viewer (read), operator (also upload and run), admin (also
        /// manage the tenant's tokens).
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
        /// How long it is good for, e.g. 30d, 12h (default: no expiry).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// List tokens (ids, tenants, roles; never the tokens).
    List {
        #[command(flatten)]
        server: ServerArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id (from `cairn token list`).
    Revoke {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Host a new tenant from now on (kept across restarts); needs a
    /// server-wide admin token. Then create its first token with
    /// `cairn token create --tenant NAME`.
    Add {
        #[command(flatten)]
        server: ServerArgs,
        /// Its name: 1 to 64 of a-z, 0-9, - and _.
        name: String,
        /// Runs executing at once (default 4).
        #[arg(long, value_name = "N")]
        runs_in_flight: Option<u32>,
        /// Its attempts in the sandbox at once (default 8).
        #[arg(long, value_name = "N")]
        sandboxes_in_flight: Option<u32>,
        /// Runs waiting for a slot; more are refused (default 100).
        #[arg(long, value_name = "N")]
        queued_runs: Option<u32>,
        /// Largest bundle upload, e.g. 64MiB (the default).
        #[arg(long, value_name = "SIZE")]
        upload: Option<crate::sandbox::ByteSize>,
        /// Its bundle uploads received and checked at once; one more is
        /// refused (default 2).
        #[arg(long, value_name = "N")]
        uploads_in_flight: Option<u32>,
        /// Forget its runs that ended longer ago than this, e.g. 30d
        /// (default: keep them); resumable runs stay.
        #[arg(long, value_name = "AGE")]
        keep_runs: Option<String>,
        /// All its bundles together, e.g. 1GiB (the default).
        #[arg(long, value_name = "SIZE")]
        bundle_storage: Option<crate::sandbox::ByteSize>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop hosting a tenant added with `cairn tenant add`, and delete
    /// everything it had: its tokens at once, then its runs (live ones are
    /// cancelled), results, bundles and audit log. Needs a server-wide
    /// admin token. A tenant declared in server.toml is taken out there.
    Remove {
        #[command(flatten)]
        server: ServerArgs,
        /// The tenant to remove.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the server's tenants with their quotas and what each uses now.
    List {
        #[command(flatten)]
        server: ServerArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

impl ServerArgs {
    fn remote(&self) -> Remote {
        Remote {
            url: self.server.clone(),
            token: self.token.clone(),
        }
    }
}

/// A request to the server; returns its JSON answer or the error to print.
fn call(
    server: &ServerArgs,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let body = body.map_or_else(Vec::new, |b| b.to_string().into_bytes());
    server.remote().call(method, path, body)
}

/// One line of `cairn tenant list`.
fn tenant_row(t: &Value) -> String {
    let bytes = |v: &Value| crate::sandbox::ByteSize(v.as_u64().unwrap_or(0)).to_string();
    let n = |v: &Value| v.as_u64().map_or("?".to_owned(), |n| n.to_string());
    let (q, u) = (&t["quotas"], &t["usage"]);
    format!(
        "{:<16}  {:>4}/{:<4}  {:>5}/{:<5}  {:>4}/{:<4}  {:>10} of {:<10}",
        t["tenant"].as_str().unwrap_or("?"),
        n(&u["runs_in_flight"]),
        n(&q["runs_in_flight"]),
        n(&u["queued_runs"]),
        n(&q["queued_runs"]),
        n(&u["sandboxes_in_flight"]),
        n(&q["sandboxes_in_flight"]),
        bytes(&u["bundle_storage_bytes"]),
        bytes(&q["bundle_storage_bytes"]),
    )
}

fn tenant_header() -> String {
    format!(
        "{:<16}  {:<9}  {:<11}  {:<9}  {}",
        "tenant", "runs", "queued", "sandboxes", "bundle storage (used of quota)"
    )
}

pub fn tenant(command: TenantCommand) -> u8 {
    let result = match &command {
        TenantCommand::Add {
            server,
            name,
            runs_in_flight,
            sandboxes_in_flight,
            queued_runs,
            upload,
            uploads_in_flight,
            keep_runs,
            bundle_storage,
            json,
        } => call(
            server,
            "POST",
            "/v1/tenants",
            Some(json!({
                "name": name,
                "quotas": {
                    "runs_in_flight": runs_in_flight,
                    "sandboxes_in_flight": sandboxes_in_flight,
                    "queued_runs": queued_runs,
                    "upload_bytes": upload.map(|s| s.bytes()),
                    "uploads_in_flight": uploads_in_flight,
                    "keep_runs": keep_runs,
                    "bundle_storage_bytes": bundle_storage.map(|s| s.bytes()),
                },
            })),
        )
        .map(|added| {
            if *json {
                out!("{added}");
            } else {
                say!(
                    "tenant {name} added; give it a token with \
                     `cairn token create --tenant {name} --role admin`"
                );
            }
        }),
        TenantCommand::Remove { server, name, json } => {
            call(server, "DELETE", &format!("/v1/tenants/{name}"), None).map(|removed| {
                if *json {
                    out!("{removed}");
                } else {
                    say!("tenant {name} removed, with its tokens, runs, results and bundles");
                }
            })
        }
        TenantCommand::List { server, json } => {
            call(server, "GET", "/v1/tenants", None).map(|list| {
                if *json {
                    out!("{list}");
                    return;
                }
                out!("{}", tenant_header());
                for t in list.as_array().into_iter().flatten() {
                    out!("{}", tenant_row(t));
                }
            })
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            super::print_error(&e);
            EXIT_ERROR
        }
    }
}

pub fn token(command: TokenCommand) -> u8 {
    let result = match &command {
        TokenCommand::Create {
            server,
            tenant,
            role,
            expires,
        } => call(
            server,
            "POST",
            "/v1/tokens",
            Some(json!({"tenant": tenant, "role": role, "expires": expires})),
        )
        .map(|created| {
            say!(
                "token {} for {} ({}); it is shown only now:",
                created["id"].as_str().unwrap_or("?"),
                created["tenant"].as_str().unwrap_or("the whole server"),
                created["role"].as_str().unwrap_or("?")
            );
            out!("{}", created["token"].as_str().unwrap_or_default());
        }),
        TokenCommand::List { server, json } => {
            call(server, "GET", "/v1/tokens", None).map(|list| {
                if *json {
                    out!("{list}");
                    return;
                }
                out!(
                    "{:<12}  {:<16}  {:<8}  {:<8}",
                    "id",
                    "tenant",
                    "role",
                    "state"
                );
                for t in list.as_array().into_iter().flatten() {
                    out!(
                        "{:<12}  {:<16}  {:<8}  {:<8}",
                        t["id"].as_str().unwrap_or("?"),
                        t["tenant"].as_str().unwrap_or("(server)"),
                        t["role"].as_str().unwrap_or("?"),
                        if t["revoked"].as_bool() == Some(true) {
                            "revoked"
                        } else {
                            "active"
                        }
                    );
                }
            })
        }
        TokenCommand::Revoke { server, id } => {
            call(server, "POST", &format!("/v1/tokens/{id}/revoke"), None)
                .map(|_| say!("token {id} revoked"))
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            super::print_error(&e);
            EXIT_ERROR
        }
    }
}
