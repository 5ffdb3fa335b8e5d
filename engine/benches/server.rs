//! Load benchmark of `cairn serve` on loopback: an in-process server, real
//! HTTP clients (ureq, one thread each).
//!
//! - latency, submit → finished, of a 3-step sequential pipeline of the
//!   trivial `echo` task (POST /v1/runs, then its event stream to the end),
//!   median and p99, cache off (`refresh`);
//! - the same run through the library in-process (`Runner`), for the
//!   server's overhead;
//! - runs/s and steps/s with 64 concurrent clients over two tenants;
//! - 1 000 runs in flight at once: every one finishes, and the process's
//!   peak RSS (VmHWM, the clients' threads included).
//!
//! Needs the guests built first:
//!   cargo build --release --target wasm32-wasip2 --manifest-path guest-examples/Cargo.toml
//! Run: cargo bench -p cairn-engine --bench server
//! (CAIRN_BENCH_LATENCY_ONLY=1: only the latency figures, for profiling)

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::runner::Launch;
use cairn::schedule::Silent;
use cairn::server::{Quotas, Role, ServerConfig};
use serde_json::{Value, json};

fn guest(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../guest-examples/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{}: build the guest examples first",
        path.display()
    );
    path
}

/// A 3-step chain of `echo`, packed.
fn chain_bundle(dir: &std::path::Path) -> Vec<u8> {
    let echo = guest("echo");
    let echo = echo.display();
    std::fs::write(
        dir.join("pipeline.toml"),
        format!(
            "name = \"three\"\n\
             [steps.a]\ncomponent = \"{echo}\"\ninput = {{ n = 1 }}\n\
             [steps.b]\ncomponent = \"{echo}\"\ninput = {{ n = \"${{a.n}}\" }}\n\
             [steps.c]\ncomponent = \"{echo}\"\ninput = {{ n = \"${{b.n}}\" }}\n"
        ),
    )
    .unwrap();
    cairn::bundle::pack(dir).unwrap()
}

struct Client {
    agent: ureq::Agent,
    url: String,
    token: String,
}

impl Client {
    fn post(&self, path: &str, body: Vec<u8>) -> Value {
        let mut response = self
            .agent
            .post(&format!("{}{path}", self.url))
            .header("Authorization", &format!("Bearer {}", self.token))
            .send(body)
            .unwrap();
        let text = response.body_mut().read_to_string().unwrap();
        assert!(response.status().is_success(), "{path}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Start a run and wait for its end through its event stream.
    fn run(&self, bundle: &str) -> String {
        let started = self.post(
            "/v1/runs",
            json!({"bundle": bundle, "refresh": true})
                .to_string()
                .into_bytes(),
        );
        let run = started["id"].as_str().unwrap().to_owned();
        self.wait(&run);
        run
    }

    fn wait(&self, run: &str) {
        let mut response = self
            .agent
            .get(&format!("{}/v1/runs/{run}/events", self.url))
            .header("Authorization", &format!("Bearer {}", self.token))
            .call()
            .unwrap();
        let events = response.body_mut().read_to_string().unwrap();
        assert!(
            events.contains("\"status\":\"succeeded\""),
            "run {run} did not succeed: {events}"
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not used here.
    let runtime = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let quotas = Quotas {
        runs_in_flight: 1_000,
        sandboxes_in_flight: 256,
        queued_runs: 10_000,
        ..Quotas::default()
    };
    let mut config = ServerConfig::embedded(dir.path().join("data"));
    config.tenants = [("a".to_owned(), quotas), ("b".to_owned(), quotas)].into();
    let started = cairn::server::Server::open(&config).unwrap();
    let server = started.server;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    runtime.spawn(cairn::server::serve(
        server.clone(),
        listener,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    let client = |tenant: &str| {
        let (_, token) = server
            .tokens
            .create(Some(tenant.to_owned()), Role::Operator, None, 0)
            .unwrap();
        Client {
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into(),
            url: url.clone(),
            token,
        }
    };
    let (a, b) = (client("a"), client("b"));
    let src = tempfile::tempdir().unwrap();
    let bytes = chain_bundle(src.path());
    let bundle = a.post("/v1/bundles", bytes.clone())["id"]
        .as_str()
        .unwrap()
        .to_owned();
    b.post("/v1/bundles", bytes);

    // Latency, one run at a time.
    for _ in 0..20 {
        a.run(&bundle);
    }
    let mut latencies: Vec<Duration> = (0..300)
        .map(|_| {
            let t = Instant::now();
            a.run(&bundle);
            t.elapsed()
        })
        .collect();
    latencies.sort();
    let (median, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));

    // The same run in-process, through the library.
    let tenant = server.tenants.get("a").expect("tenant a");
    let path = tenant.bundles_dir().join(format!("{bundle}.cairn"));
    let mut local: Vec<Duration> = (0..300)
        .map(|_| {
            let t = Instant::now();
            runtime.block_on(async {
                let launch = Launch {
                    refresh: true,
                    ..Launch::new(&path)
                };
                let started = tenant.runner.admit(launch).await.unwrap().record().unwrap();
                started
                    .execute(Arc::new(Silent), std::future::pending())
                    .await
            });
            t.elapsed()
        })
        .collect();
    local.sort();
    let local_median = percentile(&local, 0.5);
    // For profiling the latency path alone: CAIRN_BENCH_LATENCY_ONLY=1.
    if std::env::var_os("CAIRN_BENCH_LATENCY_ONLY").is_some() {
        println!(
            "submit -> finished: median {:.2} ms, p99 {:.2} ms; in-process median {:.2} ms",
            median.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            local_median.as_secs_f64() * 1e3
        );
        return;
    }

    // Throughput: 64 clients over two tenants.
    let per_client = 16;
    let t = Instant::now();
    std::thread::scope(|scope| {
        for i in 0..64 {
            let c = if i % 2 == 0 { client("a") } else { client("b") };
            let bundle = &bundle;
            scope.spawn(move || {
                for _ in 0..per_client {
                    c.run(bundle);
                }
            });
        }
    });
    let elapsed = t.elapsed().as_secs_f64();
    let runs = 64.0 * per_client as f64;

    // 1 000 runs in flight at once.
    let t = Instant::now();
    let ids: Vec<String> = (0..1_000)
        .map(|i| {
            let c = if i % 2 == 0 { &a } else { &b };
            c.post(
                "/v1/runs",
                json!({"bundle": bundle, "refresh": true})
                    .to_string()
                    .into_bytes(),
            )["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for (i, id) in ids.iter().enumerate() {
        if i % 2 == 0 { &a } else { &b }.wait(id);
    }
    let thousand = t.elapsed().as_secs_f64();

    println!("cairn serve on loopback, 3-step echo chain, cache off");
    println!("| measure | value |");
    println!("| --- | ---: |");
    println!(
        "| submit → finished, median (300 runs, one at a time) | {:.2} ms |",
        median.as_secs_f64() * 1e3
    );
    println!(
        "| submit → finished, p99 | {:.2} ms |",
        p99.as_secs_f64() * 1e3
    );
    println!(
        "| the same run in-process (`Runner`), median | {:.2} ms |",
        local_median.as_secs_f64() * 1e3
    );
    println!(
        "| server / in-process | {:.2}× |",
        median.as_secs_f64() / local_median.as_secs_f64()
    );
    println!(
        "| 64 clients, two tenants: runs/s | {:.0} |",
        runs / elapsed
    );
    println!(
        "| 64 clients, two tenants: steps/s | {:.0} |",
        3.0 * runs / elapsed
    );
    println!("| 1 000 runs submitted at once: all finished in | {thousand:.2} s |");
    println!(
        "| peak RSS of the process (server and clients) | {} MiB |",
        peak_rss_mib()
    );
}
