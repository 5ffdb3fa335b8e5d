//! Outbound HTTP: granted hosts work; every other scheme, host, port and
//! method is refused with class `denied` naming it; a name never reaches a
//! loopback or link-local address through DNS; limits stop a task at their
//! class; a policy caps what a bundle may ask for.
//!
//! All traffic goes to servers this file starts on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use serde_json::{Value, json};

use crate::support::{Cairn, Pipeline, Run, assert_failed, guest, step};

/// A JSON API on 127.0.0.1: `/items?page=N` (three pages), `/echo` (method
/// and body back), `/redirect?to=URL`, `/big` (2 MiB), `/hang` (never
/// answers). Counts the requests it serves.
struct Api {
    addr: SocketAddr,
    seen: Arc<Seen>,
    _runtime: tokio::runtime::Runtime,
}

/// What the server saw: how many requests, and each `Authorization` sent.
#[derive(Default)]
struct Seen {
    hits: AtomicUsize,
    authorization: std::sync::Mutex<Vec<String>>,
}

#[derive(serde::Deserialize)]
struct PageQuery {
    page: Option<u32>,
    to: Option<String>,
}

impl Api {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let seen = Arc::new(Seen::default());
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/items", get(items))
            .route("/echo", any(echo))
            .route("/redirect", get(redirect))
            .route("/big", get(|| async { "x".repeat(2 << 20) }))
            .route(
                "/stall",
                get(|| async {
                    use futures_util::StreamExt;
                    let first = futures_util::stream::once(async {
                        Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"{\"items\": ["))
                    });
                    axum::body::Body::from_stream(first.chain(futures_util::stream::pending()))
                }),
            )
            .route(
                "/hang",
                get(|| async {
                    std::future::pending::<()>().await;
                    ""
                }),
            )
            .with_state(seen.clone());
        runtime.spawn(async move { axum::serve(listener, app).await });
        Self {
            addr,
            seen,
            _runtime: runtime,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The grant for this server: `http://127.0.0.1:PORT`.
    fn grant(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> usize {
        self.seen.hits.load(Ordering::SeqCst)
    }
}

async fn items(State(seen): State<Arc<Seen>>, Query(q): Query<PageQuery>) -> Json {
    seen.hits.fetch_add(1, Ordering::SeqCst);
    let page = q.page.unwrap_or(1);
    let next = (page < 3).then(|| format!("/items?page={}", page + 1));
    let items: Vec<Value> = (0..2)
        .map(|i| json!({"id": page * 10 + i, "region": if i == 0 { "eu" } else { "us" }, "amount": page + i}))
        .collect();
    axum::Json(json!({ "items": items, "next": next }))
}

type Json = axum::Json<Value>;

async fn echo(
    State(seen): State<Arc<Seen>>,
    method: Method,
    headers: HeaderMap,
    body: String,
) -> Json {
    seen.hits.fetch_add(1, Ordering::SeqCst);
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
    {
        seen.authorization.lock().unwrap().push(auth.to_owned());
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_owned();
    axum::Json(json!({ "method": method.as_str(), "body": body, "host": host }))
}

async fn redirect(State(seen): State<Arc<Seen>>, Query(q): Query<PageQuery>) -> impl IntoResponse {
    seen.hits.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::FOUND,
        [(header::LOCATION, q.to.unwrap_or_default())],
    )
}

/// `guest-examples/pipelines/api` pointed at `api` (its port for 8080),
/// its components by absolute path.
fn api_example(api: &Api) -> Pipeline {
    let text = std::fs::read_to_string(
        crate::support::repo_root().join("guest-examples/pipelines/api/pipeline.toml"),
    )
    .unwrap();
    guest("http_pages");
    let built = crate::support::repo_root().join("guest-examples/target/wasm32-wasip2/release/");
    let text = text
        .replace("127.0.0.1:8080", &api.addr.to_string())
        .replace(
            "../../target/wasm32-wasip2/release/",
            built.to_str().unwrap(),
        );
    Pipeline::new(&text)
}

fn probe(cairn: &Cairn, input: Value, grants: &[&str]) -> (crate::support::Run, Value) {
    let mut extra = Vec::new();
    for grant in grants {
        extra.extend(["--allow-http", grant]);
    }
    cairn.task_json(&guest("http_probe"), &input.to_string(), &extra)
}

#[test]
fn a_granted_host_is_reached_and_every_other_scheme_host_port_and_method_is_denied() {
    let api = Api::start();
    let other = Api::start();
    let cairn = Cairn::new();
    let grant = api.grant();

    // Granted: the request arrives, with the URI's authority as its Host.
    let (run, report) = probe(
        &cairn,
        json!({"method": "POST", "url": api.url("/echo"), "body": "hello"}),
        &[&grant],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let body: Value = serde_json::from_str(report["output"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["method"], "POST");
    assert_eq!(body["body"], "hello");
    assert_eq!(body["host"], api.addr.to_string());
    assert_eq!(api.hits(), 1);

    // Each refused request names what was refused, and reaches nobody.
    let refused = [
        // No grant at all.
        (
            json!({"url": api.url("/echo")}),
            vec![],
            format!("GET {}", api.url("/echo")),
        ),
        // Another port (a second server, listening, but not granted).
        (
            json!({"url": other.url("/echo")}),
            vec![grant.clone()],
            format!("{} is not granted", other.grant()),
        ),
        // Another scheme.
        (
            json!({"url": api.url("/echo")}),
            vec![format!("https://{}", api.addr)],
            format!("{} is not granted", api.grant()),
        ),
        // Another method.
        (
            json!({"method": "DELETE", "url": api.url("/echo")}),
            vec![],
            "DELETE".into(),
        ),
        // Another host that resolves to the same address: the grant is on the name in the URI.
        (
            json!({"url": format!("http://localhost:{}/echo", api.addr.port())}),
            vec![grant.clone()],
            format!("http://localhost:{} is not granted", api.addr.port()),
        ),
    ];
    for (input, grants, named) in refused {
        let grants: Vec<&str> = grants.iter().map(String::as_str).collect();
        let (run, report) = probe(&cairn, input.clone(), &grants);
        assert_failed(&report, &run, "denied", 16);
        let message = report["failure"]["message"].as_str().unwrap();
        assert!(message.contains(&named), "{input}: {message}");
        assert!(
            report["logs"].to_string().contains("http: refused"),
            "the refusal is in the task's log: {report}"
        );
    }
    // A method grant: GET only, through a pipeline's { host, methods } form.
    let p = Pipeline::new(&format!(
        r#"
        name = "methods"
        [steps.get]
        component = "{{wasm:http_probe}}"
        input = {{ url = "{get}" }}
        grants = {{ http = ["https://api.example.com", {{ host = "{grant}", methods = ["GET"] }}] }}
        [steps.post]
        component = "{{wasm:http_probe}}"
        input = {{ method = "POST", url = "{get}", body = "x" }}
        grants = {{ http = ["https://api.example.com", {{ host = "{grant}", methods = ["get"] }}] }}
        "#,
        get = api.url("/echo"),
    ));
    let run = cairn.run(&["run", p.path(), "--json"]);
    let report = run.json();
    assert_eq!(step(&report, "get")["status"], "succeeded", "{report}");
    assert_eq!(step(&report, "post")["class"], "denied", "{report}");
    assert!(
        step(&report, "post")["message"]
            .as_str()
            .unwrap()
            .contains("POST"),
        "{report}"
    );
    assert_eq!(api.hits(), 2, "only the granted GET arrived");
    assert_eq!(other.hits(), 0);
    // The refused request is in the audit log, with its run and step.
    let audit = cairn.run(&["audit", "--json"]).json();
    let refused = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "denied" && e["capability"] == "http")
        .unwrap_or_else(|| panic!("no refused request audited: {audit}"));
    assert_eq!(refused["step"], "post");
    assert_eq!(refused["run"], report["run_id"]);
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .starts_with("POST http://127.0.0.1:"),
        "{refused}"
    );
}

#[test]
fn redirects_are_not_followed_and_a_name_never_reaches_loopback_without_naming_the_address() {
    let api = Api::start();
    let elsewhere = Api::start();
    let cairn = Cairn::new();
    let target = elsewhere.url("/echo");
    let (run, report) = probe(
        &cairn,
        json!({"url": api.url(&format!("/redirect?to={target}"))}),
        &[&api.grant()],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        report["output"]["status"], 302,
        "the task sees the redirect itself"
    );
    assert_eq!(report["output"]["location"], target.as_str());
    // Following it is a new request, checked like any other.
    let (run, report) = probe(&cairn, json!({"url": target}), &[&api.grant()]);
    assert_failed(&report, &run, "denied", 16);
    assert_eq!(
        elsewhere.hits(),
        0,
        "the redirect's target was never reached"
    );

    // `localhost` is granted by name, but resolves to 127.0.0.1: refused
    // after resolution, naming the address and the grant that would reach it.
    let by_name = format!("http://localhost:{}", api.addr.port());
    let (run, report) = probe(
        &cairn,
        json!({"url": format!("{by_name}/echo")}),
        &[&by_name],
    );
    assert_failed(&report, &run, "denied", 16);
    let message = report["failure"]["message"].as_str().unwrap();
    assert!(
        message.contains("localhost resolves to 127.0.0.1") && message.contains(&api.grant()),
        "{message}"
    );
    assert_eq!(api.hits(), 1, "only the redirect was served");
}

#[test]
fn an_oversized_response_and_a_server_that_never_answers_stop_at_their_limit() {
    let api = Api::start();
    let cairn = Cairn::new();
    let p = Pipeline::new(&format!(
        r#"
        name = "limits"
        [steps.big]
        component = "{{wasm:http_probe}}"
        input = {{ url = "{big}", stream = true }}
        grants = {{ http = ["https://api.example.com", "{grant}"], http_limits = {{ received = "1MiB" }} }}
        [steps.hang]
        component = "{{wasm:http_probe}}"
        input = {{ url = "{hang}" }}
        grants = {{ http = ["https://api.example.com", "{grant}"], http_limits = {{ first_byte_timeout = "300ms" }} }}
        [steps.stall]
        component = "{{wasm:http_probe}}"
        input = {{ url = "{stall}" }}
        grants = {{ http = ["https://api.example.com", "{grant}"], http_limits = {{ between_bytes_timeout = "300ms" }} }}
        [steps.many]
        component = "{{wasm:http_pages}}"
        input = {{ url = "{items}" }}
        grants = {{ http = ["{grant}"], http_limits = {{ requests = 2 }} }}
        "#,
        big = api.url("/big"),
        hang = api.url("/hang"),
        stall = api.url("/stall"),
        items = api.url("/items?page=1"),
        grant = api.grant(),
    ));
    let run = cairn.run(&["run", p.path(), "--json"]);
    let report = run.json();
    for (name, says) in [
        ("big", "http_limits.received"),
        ("hang", "http_limits.first_byte_timeout"),
        ("stall", "http_limits.between_bytes_timeout"),
        ("many", "http_limits.requests"),
    ] {
        let s = step(&report, name);
        assert_eq!(s["class"], "http-limit", "{name}: {report}");
        assert!(s["message"].as_str().unwrap().contains(says), "{name}: {s}");
    }
    assert_eq!(run.code, 3, "a failed pipeline: {}", run.stderr);
}

#[test]
fn the_http_pipeline_fetches_every_page_and_aggregates_and_the_planner_and_policy_check_hosts() {
    let api = Api::start();
    let cairn = Cairn::new();
    let p = api_example(&api);
    let run = cairn.run(&["run", p.path(), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(step(&report, "fetch")["status"], "succeeded");
    // Pages 1-3 hold amounts eu 1, 2, 3 and us 2, 3, 4; `clean` keeps > 1.
    let groups = &report["output"]["groups"];
    assert_eq!(groups[0]["key"], "eu", "{report}");
    assert_eq!(groups[0]["count"], 2);
    assert_eq!(groups[0]["sums"]["amount"], 5.0);
    assert_eq!(groups[1]["key"], "us");
    assert_eq!(groups[1]["count"], 3);
    assert_eq!(groups[1]["sums"]["amount"], 9.0);
    assert_eq!(api.hits(), 3);
    // Not cached: a step with an http grant runs again unless it opts in.
    let again = cairn.run(&["run", p.path(), "--json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(api.hits(), 6, "the networked step ran again");

    // The probe says it needs https://api.example.com: a step that does
    // not grant it is refused before anything runs.
    let wants = Pipeline::new(&format!(
        r#"
        name = "wants"
        [steps.probe]
        component = "{{wasm:http_probe}}"
        input = {{ url = "{echo}" }}
        grants = {{ http = ["{grant}"] }}
        "#,
        echo = api.url("/echo"),
        grant = api.grant(),
    ));
    let run = cairn.run(&["run", wants.path()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("https://api.example.com:443") && run.stderr.contains("probe"),
        "{}",
        run.stderr
    );
    assert_eq!(api.hits(), 6, "nothing ran");

    // A policy caps the hosts: a step asking beyond allow_http is refused
    // at plan time, and the refusal is audited.
    let policy = p.dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[default]\nallow_http = [\"https://*.example.com\"]\n",
    )
    .unwrap();
    let run = cairn.run(&["run", p.path(), "--policy", policy.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "step `fetch`: HTTP to {} (GET) is not within allow_http",
            api.grant()
        )),
        "{}",
        run.stderr
    );
    assert_eq!(api.hits(), 6, "nothing ran");
    std::fs::write(
        &policy,
        format!("[default]\nallow_http = [\"{}\"]\n", api.grant()),
    )
    .unwrap();
    let run = cairn.run(&["run", p.path(), "--policy", policy.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let audit = cairn.run(&["audit", "--json"]).json();
    let caps: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["capability"].as_str())
        .collect();
    assert!(
        caps.contains(&format!("http:{} (GET)", api.grant()).as_str()),
        "{caps:?}"
    );
    // The refusal before it, too, under the capability it asked for.
    let denied = audit.as_array().unwrap().iter().any(|e| {
        e["event"] == "denied" && e["capability"] == format!("http:{} (GET)", api.grant())
    });
    assert!(denied, "{audit}");
}

/// Resolves every name to one address (no DNS server is involved).
#[derive(Debug)]
struct ResolvesTo(std::net::IpAddr);

impl cairn::sandbox::http::Resolve for ResolvesTo {
    fn resolve(
        &self,
        _host: &str,
        port: u16,
    ) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>> {
        let addr = SocketAddr::new(self.0, port);
        Box::pin(async move { Ok(vec![addr]) })
    }
}

#[test]
fn a_name_resolving_to_the_cloud_metadata_or_loopback_address_is_refused_before_connecting() {
    let api = Api::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(refused_by_address(api.addr.port()));
    assert_eq!(
        api.hits(),
        0,
        "the loopback server was never reached by name"
    );
}

async fn refused_by_address(loopback_port: u16) {
    use cairn::sandbox::http_grant::HttpGrant;
    use cairn::sandbox::{Failure, Grants, Limits, RunRequest, Sandbox, SandboxConfig};
    let artifacts = tempfile::tempdir().unwrap();
    for (address, port) in [("169.254.169.254", 80), ("127.0.0.1", loopback_port)] {
        let sandbox = Sandbox::new(
            SandboxConfig {
                resolver: Arc::new(ResolvesTo(address.parse().unwrap())),
                ..SandboxConfig::for_this_machine()
            },
            Arc::new(cairn::store::DirArtifactStore::open(artifacts.path()).unwrap()),
        )
        .unwrap();
        let probe = sandbox
            .load(&std::fs::read(guest("http_probe")).unwrap())
            .unwrap();
        let grants = Grants {
            http: vec![HttpGrant::parse(&format!("http://metadata.example:{port}"), None).unwrap()],
            ..Grants::default()
        };
        let input = json!({"url": format!("http://metadata.example:{port}/latest/meta-data/")});
        let input = input.to_string();
        let attempt = sandbox
            .run(
                &probe,
                RunRequest {
                    input: input.as_bytes(),
                    args: &[],
                    limits: Limits::default(),
                    grants: &grants,
                    secrets: &Default::default(),
                    observer: None,
                    tape: None,
                },
            )
            .await
            .unwrap();
        match attempt.result {
            Err(Failure::Denied { message }) => assert!(
                message.contains(&format!("metadata.example resolves to {address}")),
                "{message}"
            ),
            other => panic!("{address}: expected a denial, got {other:?}"),
        }
    }
}

#[test]
fn a_replay_serves_the_recorded_responses_with_the_server_gone_and_names_a_request_that_differs() {
    let api = Api::start();
    let cairn = Cairn::new();
    let manifest = |page: u32| {
        format!(
            r#"
            name = "api-report"
            [steps.fetch]
            component = "{{wasm:http_pages}}"
            input = {{ url = "{}" }}
            grants = {{ http = ["{}"] }}
            [steps.by_region]
            component = "{{wasm:aggregate}}"
            input = {{ rows = "${{fetch.items}}", group_by = "region", sum = ["amount"] }}
            "#,
            api.url(&format!("/items?page={page}")),
            api.grant()
        )
    };
    let p = Pipeline::new(&manifest(1));
    let run = cairn.run(&["run", p.path(), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let original = run.json();
    let id = original["run_id"].as_str().unwrap().to_owned();
    assert_eq!(api.hits(), 3);
    let text = std::fs::read_to_string(p.dir.path().join("pipeline.toml")).unwrap();
    drop(api); // the server is gone: nothing answers on its port now

    let replay = cairn.run(&["replay", &id, "--verify", "--json"]);
    assert_eq!(replay.code, 0, "{}", replay.stderr);
    let mut lines = replay.stdout.lines();
    let report: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let verified: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(verified["verified"], 2, "{verified}");
    assert_eq!(verified["nondeterministic"], json!([]));
    assert_eq!(report["output"], original["output"], "bit for bit");

    // --live sends the requests again: with the server gone, they fail.
    let live = cairn.run(&["replay", &id, "--live"]);
    assert_eq!(live.code, 3, "{}", live.stderr);
    assert!(live.stderr.contains("fetch"), "{}", live.stderr);

    // The step now asks for another page: the replay names that request.
    let changed = text.replace("page=1", "page=2");
    assert_ne!(changed, text);
    std::fs::write(p.dir.path().join("pipeline.toml"), changed).unwrap();
    let replay = cairn.run(&["replay", &id, "--verify", "--allow-changed"]);
    assert_eq!(replay.code, 4, "{}", replay.stderr);
    assert!(
        replay.stderr.contains("mismatch: step `fetch`")
            && replay.stderr.contains("request 1 is GET http://127.0.0.1:")
            && replay
                .stderr
                .contains("/items?page=2, the recorded run sent GET"),
        "{}",
        replay.stderr
    );

    // Once every run is forgotten, so are the responses they recorded.
    let recorded = || {
        std::fs::read_dir(cairn.store.path().join("recorded"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert!(recorded() > 0);
    let gc = cairn.run(&["runs", "gc", "--older-than", "0s", "--include-interrupted"]);
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    assert_eq!(recorded(), 0, "{}", gc.stdout);
}

#[test]
fn a_secret_header_reaches_the_server_but_never_the_task_the_journal_or_the_store() {
    let api = Api::start();
    let cairn = Cairn::new();
    let secret = "tok-7d1f0c2a9e";
    let p = Pipeline::new(&format!(
        r#"
        name = "auth"
        [steps.call]
        component = "{{wasm:http_probe}}"
        input = {{ url = "{echo}" }}
        grants = {{ http = ["https://api.example.com", {{ host = "{grant}", headers = {{ Authorization = "Bearer ${{secrets.API_TOKEN}}" }} }}] }}
        [steps.peek]
        component = "{{wasm:hostile}}"
        input = {{ attack = "read-env" }}
        allow_failure = true
        grants = {{ http = [{{ host = "{grant}", headers = {{ Authorization = "Bearer ${{secrets.API_TOKEN}}" }} }}] }}
        "#,
        echo = api.url("/echo?q=1"),
        grant = api.grant(),
    ));
    let run = Run::from(
        cairn
            .command()
            .args(["run", p.path(), "--json"])
            .env("API_TOKEN", secret)
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        *api.seen.authorization.lock().unwrap(),
        vec![format!("Bearer {secret}")],
        "the host attached the header"
    );
    let report = run.json();
    assert_eq!(step(&report, "call")["status"], "succeeded");
    // The other step, granted the same header, finds no variable at all.
    assert!(
        step(&report, "peek")["message"]
            .as_str()
            .unwrap()
            .contains("no environment variables are visible"),
        "{report}"
    );
    assert!(!run.stdout.contains(secret) && !run.stderr.contains(secret));
    // A replay works from the recording without the secret's value
    // reaching it either.
    let id = report["run_id"].as_str().unwrap();
    let replay = Run::from(
        cairn
            .command()
            .args(["replay", id, "--verify"])
            .env("API_TOKEN", secret)
            .output()
            .unwrap(),
    );
    assert_eq!(replay.code, 0, "{}", replay.stderr);
    assert_eq!(
        api.seen.authorization.lock().unwrap().len(),
        1,
        "the replay sent nothing"
    );
    let holding = crate::secrets::files_holding(cairn.store.path(), secret.as_bytes());
    assert!(holding.is_empty(), "the secret is in {holding:?}");
    assert!(
        cairn
            .store
            .path()
            .join("recorded")
            .read_dir()
            .unwrap()
            .count()
            > 0,
        "the responses were recorded"
    );
}

#[test]
fn a_policy_refuses_a_header_secret_it_does_not_list_before_looking_for_its_value() {
    let cairn = Cairn::new();
    let p = Pipeline::new(
        r#"
        name = "probe-secrets"
        [steps.call]
        component = "{wasm:http_pages}"
        input = { url = "http://127.0.0.1:9/items" }
        grants = { http = [{ host = "http://127.0.0.1:9", headers = { authorization = "Bearer ${secrets.HOST_ONLY_VAR}" } }] }
        "#,
    );
    let policy = p.dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[default]\nallow_http = [\"http://127.0.0.1:9\"]\n",
    )
    .unwrap();
    // Whether the variable is set or not, the answer is the same.
    for set in [false, true] {
        let mut command = cairn.command();
        command.args(["run", p.path(), "--policy", policy.to_str().unwrap()]);
        if set {
            command.env("HOST_ONLY_VAR", "x");
        } else {
            command.env_remove("HOST_ONLY_VAR");
        }
        let run = Run::from(command.output().unwrap());
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(
            run.stderr
                .contains("secret HOST_ONLY_VAR is not in allow_secrets"),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn a_plain_wasi_cli_command_reaches_a_granted_host_and_only_that() {
    let api = Api::start();
    let cairn = Cairn::new();
    let fetch = guest("fetch_url");
    let url = api.url("/items?page=3");
    let run = cairn.run(&[
        "task",
        "run",
        fetch.to_str().unwrap(),
        "--allow-http",
        &api.grant(),
        "--",
        &url,
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let page: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(page["items"][0]["id"], 30, "{page}");
    let (run, report) = cairn.task_json(&fetch, "", &["--", &url]);
    assert_failed(&report, &run, "denied", 16);
    assert_eq!(api.hits(), 1);
}
