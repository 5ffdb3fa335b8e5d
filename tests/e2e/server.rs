//! `cairn serve` through the real binary on loopback: auth on every route
//! of its OpenAPI document, tenant isolation, hostile uploads, quotas, and
//! `cairn token` as its client.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Pipeline, endless_pipeline};

const CONFIG: &str = r#"
policy = "policy.toml"
[tenants.a]
[tenants.b]
[tenants.small]
upload = "1KiB"
[tenants.signed]
[tenants.tight]
runs_in_flight = 1
queued_runs = 1
[tenants.big]
runs_in_flight = 2
sandboxes_in_flight = 2
[tenants.tiny]
runs_in_flight = 1
[tenants.wobbly]
"#;

const POLICY: &str = r#"
[default]
max_memory = "1GiB"
max_timeout = "10m"
allow_scratch = true
[tenants.signed]
require_signed = true
trusted_keys = []
[tenants.wobbly]
allow_clock = true
allow_random = true
"#;

/// A `cairn serve` on a free loopback port with its own data directory.
pub(crate) struct Served {
    child: Child,
    pub url: String,
    pub dir: tempfile::TempDir,
    pub admin: String,
    /// The server's stderr lines after the one saying where it listens
    /// (`None` once hung up).
    stderr: Option<std::sync::Mutex<std::sync::mpsc::Receiver<String>>>,
}

impl Served {
    pub(crate) fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("server.toml"), CONFIG).unwrap();
        std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
        Self::start_in(dir)
    }

    pub(crate) fn start_in(dir: tempfile::TempDir) -> Self {
        Self::start_in_with(dir, &[])
    }

    /// With these environment variables set for the server process.
    pub(crate) fn start_in_with(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Self {
        Self::start_in_with_args(dir, env, &[], false)
    }

    /// With these environment variables and extra `cairn serve` arguments;
    /// with `hang_up`, its stderr is closed once it listens (a log reader
    /// that went away).
    pub(crate) fn start_in_with_args(
        dir: tempfile::TempDir,
        env: &[(&str, &str)],
        args: &[&str],
        hang_up: bool,
    ) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .envs(env.iter().copied())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .arg("--data")
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(dir.path().join("server.toml"))
            .env("CAIRN_ARTIFACT_CACHE", "off")
            .env_remove("CAIRN_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cairn serve starts");
        let stderr = child.stderr.take().unwrap();
        let (lines, seen) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Read to the end even once no one listens, unless hanging up.
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if lines.send(line).is_err() && hang_up {
                    return;
                }
            }
        });
        // Wait for the line that says it listens (a safety deadline only).
        let url = loop {
            let line = seen
                .recv_timeout(Duration::from_secs(120))
                .expect("the server says where it listens");
            if let Some(rest) = line.strip_prefix("listening on ") {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        let admin = std::fs::read_to_string(dir.path().join("data/admin-token"))
            .unwrap()
            .trim()
            .to_owned();
        Self {
            child,
            url,
            dir,
            admin,
            stderr: (!hang_up).then_some(std::sync::Mutex::new(seen)),
        }
    }

    /// Wait for a line of the server's stderr that contains `text`.
    pub(crate) fn wait_for_line(&self, text: &str) -> String {
        let lines = self.stderr.as_ref().expect("stderr is still read");
        let lines = lines.lock().unwrap();
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("the server never said {text:?}"));
            if line.contains(text) {
                return line;
            }
        }
    }

    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let url = format!("{}{path}", self.url);
        let auth = token.map(|t| format!("Bearer {t}"));
        let response = match method {
            "GET" => {
                let mut request = agent.get(&url);
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                request.call()
            }
            "DELETE" => {
                let mut request = agent.delete(&url);
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                request.call()
            }
            _ => {
                let mut request = agent.post(&url);
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                request.send(body.unwrap_or_default())
            }
        };
        let mut response = response.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        let value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("{method} {path} answered {status} with non-JSON ({e}): {text}")
        });
        (status, value)
    }

    pub(crate) fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call("GET", path, Some(token), None)
    }

    /// `cairn ARGS` against this server with `token`.
    pub(crate) fn cli(&self, args: &[&str], token: &str) -> crate::support::Run {
        crate::support::Run::from(
            Command::new(env!("CARGO_BIN_EXE_cairn"))
                .args(args)
                .env("CAIRN_SERVER", &self.url)
                .env("CAIRN_TOKEN", token)
                .env("CAIRN_ARTIFACT_CACHE", "off")
                .env_remove("CAIRN_LOG")
                .output()
                .unwrap(),
        )
    }

    /// Send SIGTERM and wait for the server to exit; its exit code.
    pub(crate) fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        self.child.wait().unwrap().code()
    }

    /// Stop this server (it must have exited) and start one on its data.
    pub(crate) fn restart(mut self) -> Self {
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        drop(self);
        Self::start_in(dir)
    }

    pub(crate) fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(
            "POST",
            path,
            Some(token),
            Some(body.to_string().into_bytes()),
        )
    }

    pub(crate) fn token(&self, tenant: &str, role: &str) -> String {
        let (status, created) = self.post(
            "/v1/tokens",
            &self.admin,
            json!({"tenant": tenant, "role": role}),
        );
        assert_eq!(status, 201, "{created}");
        created["token"].as_str().unwrap().to_owned()
    }

    /// A server on this config and policy, its stderr kept for
    /// [`Self::wait_for_line`].
    pub(crate) fn start_with(config: &str, policy: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("server.toml"), config).unwrap();
        std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
        Self::start_in_with_args(dir, &[], &[], false)
    }

    /// Upload `bundle` (or find it stored) and start a run of it; its id.
    pub(crate) fn start_bundle(&self, token: &str, bundle: Vec<u8>) -> String {
        let (status, uploaded) = self.upload(token, bundle);
        assert!(status == 201 || status == 200, "{uploaded}");
        let (status, started) = self.post("/v1/runs", token, json!({"bundle": uploaded["id"]}));
        assert_eq!(status, 202, "{started}");
        started["id"].as_str().unwrap().to_owned()
    }

    pub(crate) fn upload(&self, token: &str, bytes: Vec<u8>) -> (u16, Value) {
        self.call("POST", "/v1/bundles", Some(token), Some(bytes))
    }

    /// Wait until the run has ended (the server records the end).
    pub(crate) fn finished(&self, token: &str, run: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, shown) = self.get(&format!("/v1/runs/{run}"), token);
            assert_eq!(status, 200, "{shown}");
            if shown["run"]["status"] != "running" && shown["run"]["live"] == false {
                return shown;
            }
            assert!(Instant::now() < deadline, "run {run} did not end: {shown}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` the server, then start it again on the same data.
    pub(crate) fn kill_and_restart(mut self) -> Self {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        drop(self);
        Self::start_in(dir)
    }

    /// Files stored for a tenant's bundles.
    pub(crate) fn stored_bundles(&self, tenant: &str) -> Vec<String> {
        std::fs::read_dir(
            self.dir
                .path()
                .join("data/tenants")
                .join(tenant)
                .join("bundles"),
        )
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn chain_bundle(name: &str) -> Vec<u8> {
    let p = Pipeline::new(&format!(
        "name = \"{name}\"\n\
         [steps.a]\ncomponent = \"{{wasm:echo}}\"\ninput = {{ n = 1 }}\n\
         [steps.b]\ncomponent = \"{{wasm:echo}}\"\ninput = {{ from = \"${{a.n}}\" }}\n",
    ));
    cairn::bundle::pack(p.dir.path()).unwrap()
}

#[test]
fn health_needs_no_token_and_every_other_route_refuses_bad_tokens_and_weak_roles() {
    let s = Served::start();
    let (status, health) = s.call("GET", "/healthz", None, None);
    assert_eq!((status, health), (200, json!({"status": "ok"})));

    let viewer = s.token("a", "viewer");
    let operator = s.token("a", "operator");
    let admin = s.token("a", "admin");
    let (_, revoked) = s.post(
        "/v1/tokens",
        &s.admin,
        json!({"tenant": "a", "role": "admin"}),
    );
    let (status, _) = s.post(
        &format!("/v1/tokens/{}/revoke", revoked["id"].as_str().unwrap()),
        &s.admin,
        json!({}),
    );
    assert_eq!(status, 200);
    let revoked = revoked["token"].as_str().unwrap().to_owned();
    let (status, expired) = s.post(
        "/v1/tokens",
        &s.admin,
        json!({"tenant": "a", "role": "admin", "expires": "0s"}),
    );
    assert_eq!(status, 201, "{expired}");
    let expired = expired["token"].as_str().unwrap().to_owned();
    let tokens_before = s.get("/v1/tokens", &s.admin).1.as_array().unwrap().len();

    let (status, doc) = s.get("/v1/openapi.json", &viewer);
    assert_eq!(status, 200, "{doc}");
    let mut walked = 0;
    for (path, methods) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace(
                "/v1/bundles/{id}",
                &format!("/v1/bundles/{}", "ab".repeat(32)),
            )
            .replace("{id}", "0123456789abcdef")
            .replace("{step}", "a");
        for (method, operation) in methods.as_object().unwrap() {
            let method = method.to_uppercase();
            let role = operation["tags"][0].as_str().unwrap();
            walked += 1;
            let garbage = format!("cairn_{}", "0".repeat(64));
            for (who, token) in [
                ("no token", None),
                ("a malformed token", Some("not-a-token")),
                ("an unknown token", Some(garbage.as_str())),
                ("a revoked token", Some(revoked.as_str())),
                ("an expired token", Some(expired.as_str())),
            ] {
                let (status, body) = s.call(&method, &concrete, token, Some(b"{}".to_vec()));
                if role == "public" {
                    assert_eq!(status, 200, "{method} {path} with {who}: {body}");
                } else {
                    assert_eq!(status, 401, "{method} {path} with {who}: {body}");
                    assert_eq!(body["error"], "unauthorized", "{body}");
                }
            }
            let weaker = match role {
                "operator" => Some(&viewer),
                "admin" => Some(&operator),
                // A tenant's admin is not the server's.
                "server-admin" => Some(&admin),
                _ => None,
            };
            if let Some(weak) = weaker {
                let (status, body) = s.call(&method, &concrete, Some(weak), Some(b"{}".to_vec()));
                assert_eq!(status, 403, "{method} {path} with a weaker role: {body}");
                assert_eq!(body["error"], "forbidden", "{body}");
            }
            // A server-wide admin token reads no tenant's data.
            if role == "viewer" || role == "operator" {
                let (status, body) =
                    s.call(&method, &concrete, Some(&s.admin), Some(b"{}".to_vec()));
                if !path.starts_with("/v1/openapi") {
                    assert_eq!(status, 403, "{method} {path} with the server admin: {body}");
                }
            }
        }
    }
    assert!(walked >= 15, "only {walked} operations in the document");

    // Nothing changed: no runs, no bundles, no new tokens.
    assert_eq!(s.get("/v1/runs", &admin).1["runs"], json!([]));
    assert_eq!(s.get("/v1/bundles", &admin).1, json!([]));
    assert_eq!(
        s.get("/v1/tokens", &s.admin).1.as_array().unwrap().len(),
        tokens_before
    );
    // The server's admin sees every tenant of the config, and its usage.
    let (status, tenants) = s.get("/v1/tenants", &s.admin);
    assert_eq!(status, 200, "{tenants}");
    let names: Vec<&str> = tenants
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tenant"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"a") && names.contains(&"tight"),
        "{tenants}"
    );
    let tight = tenants
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == "tight")
        .unwrap();
    assert_eq!(tight["quotas"]["runs_in_flight"], 1, "{tight}");
    assert_eq!(tight["usage"]["runs_in_flight"], 0, "{tight}");
    // Unknown routes and methods are JSON too.
    assert_eq!(s.get("/v1/nope", &viewer).0, 404);
    assert_eq!(s.call("POST", "/healthz", None, None).0, 405);
}

#[test]
fn tenants_cannot_see_each_others_runs_and_the_same_pipeline_runs_for_both() {
    let s = Served::start();
    let a = s.token("a", "operator");
    let b = s.token("b", "admin");
    let bundle = chain_bundle("shared");

    let (status, uploaded) = s.upload(&a, bundle.clone());
    assert_eq!(status, 201, "{uploaded}");
    let bundle_id = uploaded["id"].as_str().unwrap().to_owned();
    let (status, started) = s.post("/v1/runs", &a, json!({"bundle": bundle_id}));
    assert_eq!(status, 202, "{started}");
    let run = started["id"].as_str().unwrap().to_owned();
    let shown = s.finished(&a, &run);
    assert_eq!(shown["run"]["status"], "succeeded", "{shown}");
    assert_eq!(shown["steps"]["b"]["status"], "succeeded", "{shown}");
    let (status, output) = s.get(&format!("/v1/runs/{run}/output"), &a);
    assert_eq!(status, 200, "{output}");
    assert!(output.to_string().contains("\"from\":1"), "{output}");

    // B, even with A's ids: nothing to read, list, cancel or run.
    let not_found = |(status, body): (u16, Value)| {
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"], "not_found", "{body}");
    };
    not_found(s.get(&format!("/v1/runs/{run}"), &b));
    not_found(s.get(&format!("/v1/runs/{run}/logs"), &b));
    not_found(s.get(&format!("/v1/runs/{run}/output"), &b));
    not_found(s.get(&format!("/v1/runs/{run}/events"), &b));
    not_found(s.post(&format!("/v1/runs/{run}/cancel"), &b, json!({})));
    not_found(s.post(&format!("/v1/runs/{run}/resume"), &b, json!({})));
    not_found(s.get(&format!("/v1/bundles/{bundle_id}"), &b));
    not_found(s.post("/v1/runs", &b, json!({"bundle": bundle_id})));
    // The same answer as an id that never existed.
    not_found(s.get("/v1/runs/0000000000000000", &b));
    assert_eq!(s.get("/v1/runs", &b).1["runs"], json!([]));
    assert_eq!(s.get("/v1/bundles", &b).1, json!([]));
    let audit = s.get("/v1/audit", &b).1;
    assert!(
        !audit.to_string().contains(&run),
        "B's audit log names A's run: {audit}"
    );

    // The same pipeline run by B executes for B: no cache hit across tenants.
    let (status, _) = s.upload(&b, bundle);
    assert_eq!(status, 201);
    let (_, started) = s.post("/v1/runs", &b, json!({"bundle": bundle_id}));
    let theirs = started["id"].as_str().unwrap().to_owned();
    let shown = s.finished(&b, &theirs);
    assert_eq!(shown["run"]["status"], "succeeded", "{shown}");
    for step in ["a", "b"] {
        assert_eq!(
            shown["steps"][step]["status"], "succeeded",
            "step {step} came from another tenant's cache: {shown}"
        );
    }
    // A's runs are A's only.
    let listed = s.get("/v1/runs", &a).1;
    assert_eq!(listed["runs"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["runs"][0]["id"], run.as_str());
}

#[test]
fn hostile_uploads_get_a_clear_4xx_and_nothing_is_stored() {
    let s = Served::start();
    let a = s.token("a", "operator");
    let valid = chain_bundle("hostile");

    let refused = |tenant_token: &str, bytes: Vec<u8>, want: u16, needle: &str| {
        let (status, body) = s.upload(tenant_token, bytes);
        assert_eq!(status, want, "{body}");
        assert!(
            body["message"].as_str().unwrap().contains(needle),
            "{needle:?} not in {body}"
        );
    };
    refused(&a, Vec::new(), 400, "empty");
    refused(
        &a,
        b"this is not a bundle at all".to_vec(),
        422,
        "not a readable archive",
    );
    refused(&a, valid[..valid.len() / 2].to_vec(), 422, "refused");
    // A zstd bomb: a small file that unpacks past the cap.
    let bomb = {
        let encoder = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        let mut archive = tar::Builder::new(encoder);
        let mut header = tar::Header::new_gnu();
        header.set_size(300 << 20);
        header.set_mode(0o644);
        header.set_cksum();
        let zeros = std::io::Read::take(std::io::repeat(0), 300 << 20);
        archive
            .append_data(&mut header, "cairn.lock", zeros)
            .unwrap();
        archive.into_inner().unwrap().finish().unwrap()
    };
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    refused(&a, bomb, 422, "decompression bomb");

    // A pipeline asking for more than the tenant's policy allows.
    let greedy = Pipeline::new(
        "name = \"greedy\"\n[steps.peek]\ncomponent = \"{wasm:echo}\"\ngrants = { read = [\"/etc\"] }\n",
    );
    refused(
        &a,
        cairn::bundle::pack(greedy.dir.path()).unwrap(),
        422,
        "allow_read",
    );

    // Unsigned, where the tenant's policy requires signatures.
    let signed = s.token("signed", "operator");
    refused(&signed, valid.clone(), 422, "unsigned");

    // Over the tenant's upload cap: cut off, not buffered.
    let small = s.token("small", "operator");
    refused(&small, valid.clone(), 413, "limit");

    for tenant in ["a", "signed", "small"] {
        assert_eq!(s.stored_bundles(tenant), Vec::<String>::new(), "{tenant}");
    }
    // And a good one is stored, once, by its hash.
    let (status, first) = s.upload(&a, valid.clone());
    assert_eq!(status, 201, "{first}");
    let (status, again) = s.upload(&a, valid);
    assert_eq!((status, &again["id"]), (200, &first["id"]));
    assert_eq!(
        s.stored_bundles("a").len(),
        2,
        "the bundle and its description"
    );
}

#[test]
fn a_full_queue_answers_429_with_retry_after_and_cancel_leaves_runs_resumable() {
    let s = Served::start();
    let t = s.token("tight", "operator");
    let slow = endless_pipeline("");
    let (status, uploaded) = s.upload(&t, cairn::bundle::pack(slow.dir.path()).unwrap());
    assert_eq!(status, 201, "{uploaded}");
    let bundle = uploaded["id"].as_str().unwrap().to_owned();
    let mut runs = Vec::new();
    // One runs, one waits for the tenant's single slot; the third is over.
    for _ in 0..2 {
        let (status, started) = s.post("/v1/runs", &t, json!({"bundle": bundle}));
        assert_eq!(status, 202, "{started}");
        runs.push(started["id"].as_str().unwrap().to_owned());
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut over = agent
        .post(&format!("{}/v1/runs", s.url))
        .header("Authorization", &format!("Bearer {t}"))
        .send(json!({"bundle": bundle}).to_string())
        .unwrap();
    assert_eq!(over.status().as_u16(), 429);
    assert_eq!(over.headers()["retry-after"], "1");
    let body: Value = serde_json::from_str(&over.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(body["error"], "quota", "{body}");

    // Other tenants are not held up by this one's queue.
    let other = s.token("a", "operator");
    let (_, uploaded) = s.upload(&other, chain_bundle("beside"));
    let (status, started) = s.post("/v1/runs", &other, json!({"bundle": uploaded["id"]}));
    assert_eq!(status, 202, "{started}");
    let shown = s.finished(&other, started["id"].as_str().unwrap());
    assert_eq!(shown["run"]["status"], "succeeded");

    for run in &runs {
        let (status, body) = s.post(&format!("/v1/runs/{run}/cancel"), &t, json!({}));
        assert_eq!(status, 202, "{body}");
    }
    for run in &runs {
        let shown = s.finished(&t, run);
        assert_eq!(shown["run"]["status"], "cancelled", "{shown}");
    }
    // A finished run cannot be cancelled again.
    let (status, body) = s.post(&format!("/v1/runs/{}/cancel", runs[0]), &t, json!({}));
    assert_eq!(status, 409, "{body}");
    // The audit log has each action with the token and its outcome.
    let admin = s.token("tight", "admin");
    let audit = s.get("/v1/audit", &admin).1.to_string();
    for action in ["bundles.upload", "runs.start", "runs.cancel"] {
        assert!(audit.contains(action), "{action} not audited: {audit}");
    }
}

#[test]
fn cairn_token_creates_lists_and_revokes_through_the_server() {
    let s = Served::start();
    let cairn = |args: &[&str], token: &str| {
        crate::support::Run::from(
            Command::new(env!("CARGO_BIN_EXE_cairn"))
                .args(args)
                .env("CAIRN_SERVER", &s.url)
                .env("CAIRN_TOKEN", token)
                .output()
                .unwrap(),
        )
    };
    let created = cairn(
        &[
            "token",
            "create",
            "--tenant",
            "a",
            "--role",
            "viewer",
            "--expires",
            "30d",
        ],
        &s.admin,
    );
    assert_eq!(created.code, 0, "{}", created.stderr);
    let token = created.stdout.trim().to_owned();
    assert!(
        token.starts_with("cairn_") && !token.contains('\n'),
        "{:?}",
        created.stdout
    );
    assert_eq!(s.get("/v1/runs", &token).0, 200);

    let listed = cairn(&["token", "list", "--json"], &s.admin);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let list: Value = serde_json::from_str(&listed.stdout).unwrap();
    let mine = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == "a")
        .expect("the new token is listed");
    assert!(!listed.stdout.contains(&token[6..]), "a token in a listing");
    let id = mine["id"].as_str().unwrap();
    let revoked = cairn(&["token", "revoke", id], &s.admin);
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    assert_eq!(s.get("/v1/runs", &token).0, 401);

    // A viewer cannot make tokens; the error says why.
    let weak = cairn(
        &["token", "create", "--tenant", "a", "--role", "admin"],
        &token,
    );
    weak.assert_clean_error(1, "token was refused");
    let viewer = s.token("a", "viewer");
    let weak = cairn(
        &["token", "create", "--tenant", "a", "--role", "admin"],
        &viewer,
    );
    weak.assert_clean_error(1, "role is too weak");
    // No server there: a clear error.
    let gone = crate::support::Run::from(
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args([
                "token",
                "list",
                "--server",
                "http://127.0.0.1:9",
                "--token",
                "x",
            ])
            .output()
            .unwrap(),
    );
    gone.assert_clean_error(1, "cannot reach the server");
}

#[test]
fn a_server_admin_adds_a_tenant_that_runs_at_once_and_is_kept_across_restarts() {
    let s = Served::start();
    let cli = |args: &[&str], token: &str| s.cli(args, token);
    let added = cli(
        &[
            "tenant",
            "add",
            "newco",
            "--runs-in-flight",
            "2",
            "--upload",
            "2MiB",
            "--json",
        ],
        &s.admin,
    );
    assert_eq!(added.code, 0, "{}", added.stderr);
    let added: Value = serde_json::from_str(&added.stdout).unwrap();
    assert_eq!(added["tenant"], "newco", "{added}");
    assert_eq!(added["quotas"]["runs_in_flight"], 2, "{added}");
    assert_eq!(added["quotas"]["upload_bytes"], 2 << 20, "{added}");
    assert_eq!(added["quotas"]["queued_runs"], 100, "the default: {added}");

    // Its first token, then a run, with no restart in between.
    let newco = s.token("newco", "operator");
    let (status, uploaded) = s.upload(&newco, chain_bundle("fresh"));
    assert_eq!(status, 201, "{uploaded}");
    let (status, started) = s.post("/v1/runs", &newco, json!({"bundle": uploaded["id"]}));
    assert_eq!(status, 202, "{started}");
    let run = started["id"].as_str().unwrap().to_owned();
    assert_eq!(s.finished(&newco, &run)["run"]["status"], "succeeded");

    // Refused: a name taken, a name that is not one, quotas of zero, a
    // tenant's own admin; each a JSON 4xx, and no tenant made.
    let before = s.get("/v1/tenants", &s.admin).1;
    for (body, status, kind) in [
        (json!({"name": "a"}), 409, "conflict"),
        (json!({"name": "newco"}), 409, "conflict"),
        (json!({"name": "../etc"}), 422, "invalid"),
        (json!({"name": ""}), 422, "invalid"),
        (json!({"name": "n".repeat(10_000)}), 422, "invalid"),
        (
            json!({"name": "zero", "quotas": {"runs_in_flight": 0}}),
            422,
            "invalid",
        ),
        (
            json!({"name": "odd", "quotas": {"runs": 1}}),
            422,
            "invalid",
        ),
        (json!({"nom": "x"}), 422, "invalid"),
    ] {
        let (got, answer) = s.post("/v1/tenants", &s.admin, body.clone());
        assert_eq!(
            (got, answer["error"].as_str()),
            (status, Some(kind)),
            "{body}: {answer}"
        );
    }
    let tenant_admin = s.token("a", "admin");
    let (got, answer) = s.post("/v1/tenants", &tenant_admin, json!({"name": "mine"}));
    assert_eq!(got, 403, "{answer}");
    assert_eq!(
        s.get("/v1/tenants", &s.admin).1,
        before,
        "a refused add changed the tenants"
    );
    assert!(!s.dir.path().join("data/tenants/mine").exists());
    assert!(!s.dir.path().join("data/tenants/zero").exists());
    // The CLI says why, in a line.
    cli(&["tenant", "add", "a"], &s.admin).assert_clean_error(1, "already hosts a tenant");
    cli(&["tenant", "add", "x"], &tenant_admin).assert_clean_error(1, "role is too weak");

    // The add is in the server's audit log; the new tenant is kept.
    let audit = std::fs::read_to_string(s.dir.path().join("data/audit.jsonl")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("tenants.add") && l.contains("newco")),
        "{audit}"
    );
    let mut s = s;
    assert_eq!(s.terminate(), Some(0));
    let s = s.restart();
    let listed = s.cli(&["tenant", "list"], &s.admin);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let row = listed
        .stdout
        .lines()
        .find(|l| l.starts_with("newco "))
        .unwrap_or_else(|| panic!("newco is not listed after a restart:\n{}", listed.stdout));
    assert!(row.contains("0/2"), "{row}");
    let shown = s.get(&format!("/v1/runs/{run}"), &newco);
    assert_eq!(
        shown.0, 200,
        "newco's run and token outlive a restart: {}",
        shown.1
    );
    assert_eq!(shown.1["run"]["status"], "succeeded");
}

/// A chain of `n` steps, each burning a few milliseconds and depending on
/// the one before.
pub(crate) fn burn_chain(n: usize, rounds: u64) -> Vec<u8> {
    let mut manifest = String::from("name = \"burn-chain\"\n");
    for i in 0..n {
        let seed = if i == 0 {
            "1".to_owned()
        } else {
            format!("\"${{s{}.value}}\"", i - 1)
        };
        manifest.push_str(&format!(
            "[steps.s{i}]\ncomponent = \"{{wasm:burn}}\"\ninput = {{ rounds = {rounds}, seed = {seed} }}\n"
        ));
    }
    let p = Pipeline::new(&manifest);
    cairn::bundle::pack(p.dir.path()).unwrap()
}

#[test]
fn a_server_killed_mid_run_resumes_it_on_start_and_reruns_nothing_that_finished() {
    let s = Served::start();
    let a = s.token("a", "operator");
    // ~5 ms a step: the kill lands well before the end.
    let bundle = burn_chain(200, 2_000_000);
    let (status, uploaded) = s.upload(&a, bundle.clone());
    assert_eq!(status, 201, "{uploaded}");
    let (_, started) = s.post("/v1/runs", &a, json!({"bundle": uploaded["id"]}));
    let run = started["id"].as_str().unwrap().to_owned();
    // Wait until part of the chain is done, then kill -9.
    let deadline = Instant::now() + Duration::from_secs(120);
    let done_before = loop {
        let shown = s.get(&format!("/v1/runs/{run}"), &a).1;
        let done = shown["steps"].as_object().map_or(0, |steps| {
            steps
                .values()
                .filter(|v| v["status"] == "succeeded")
                .count()
        });
        if done >= 20 {
            break done;
        }
        assert!(
            shown["run"]["status"] == "running",
            "ended too soon: {shown}"
        );
        assert!(Instant::now() < deadline, "the chain does not progress");
        std::thread::sleep(Duration::from_millis(5));
    };
    let admin = s.admin.clone();
    let s = s.kill_and_restart();
    assert_eq!(s.admin, admin, "the admin token is not made again");
    let shown = s.finished(&a, &run);
    assert_eq!(shown["run"]["status"], "succeeded", "{shown}");
    let steps = shown["steps"].as_object().unwrap();
    assert_eq!(steps.len(), 200);
    let resumed = steps.values().filter(|v| v["status"] == "resumed").count();
    assert!(
        resumed >= done_before && resumed < 200,
        "{resumed} steps came from the journal; {done_before} were done before the kill"
    );
    let attempts: u64 = steps
        .values()
        .map(|v| v["attempts"].as_u64().unwrap())
        .sum();
    // A step whose result reached the store just before the kill, while
    // its journal lines were still queued, is a cache hit after the
    // restart: it ran once, but its attempt is not in the journal.
    let cached = steps.values().filter(|v| v["status"] == "cached").count() as u64;
    assert!(
        cached <= 1,
        "{cached} cache hits: only the step in flight can be one"
    );
    // A chain has one step in flight: at most one attempt is repeated.
    assert!(
        attempts <= 201 && attempts + cached >= 200,
        "{attempts} attempts and {cached} cache hits for 200 steps ({done_before} were done before the kill)"
    );

    // The outputs equal an uninterrupted run's (in another tenant, so
    // nothing comes from this one's cache).
    let b = s.token("b", "operator");
    let (_, uploaded) = s.upload(&b, bundle);
    let (_, again) = s.post("/v1/runs", &b, json!({"bundle": uploaded["id"]}));
    let clean = s.finished(&b, again["id"].as_str().unwrap());
    for (name, view) in steps {
        assert_eq!(
            view["output_hash"], clean["steps"][name]["output_hash"],
            "step {name} differs from an uninterrupted run"
        );
    }
}

/// `(id, event name, data)` of each event in a Server-Sent Events body.
fn sse(text: &str) -> Vec<(u64, String, Value)> {
    text.split("\n\n")
        .filter(|block| block.contains("data:"))
        .map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
                    .unwrap_or_default()
            };
            (
                field("id:").parse().unwrap(),
                field("event:"),
                serde_json::from_str(&field("data:")).unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_runs_event_stream_follows_it_live_and_resumes_after_last_event_id() {
    let s = Served::start();
    let a = s.token("a", "viewer");
    let op = s.token("a", "operator");
    let (_, uploaded) = s.upload(&op, burn_chain(30, 1_000_000));
    let (_, started) = s.post("/v1/runs", &op, json!({"bundle": uploaded["id"]}));
    let run = started["id"].as_str().unwrap().to_owned();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let events = |last: Option<u64>| {
        let mut request = agent
            .get(&format!("{}/v1/runs/{run}/events", s.url))
            .header("Authorization", &format!("Bearer {a}"));
        if let Some(last) = last {
            request = request.header("Last-Event-ID", &last.to_string());
        }
        let mut response = request.call().unwrap();
        assert_eq!(response.status().as_u16(), 200);
        sse(&response.body_mut().read_to_string().unwrap())
    };
    // Connected while the run goes: the stream ends with its end.
    let live = events(None);
    let ids: Vec<u64> = live.iter().map(|e| e.0).collect();
    assert_eq!(
        ids,
        (0..live.len() as u64).collect::<Vec<_>>(),
        "ids in order"
    );
    assert_eq!(live[0].1, "run-started");
    assert_eq!(live.last().unwrap().1, "run-finished");
    assert_eq!(live.last().unwrap().2["status"], "succeeded");
    let succeeded = live.iter().filter(|e| e.1 == "step-succeeded").count();
    assert_eq!(succeeded, 30);

    let rest = events(Some(9));
    assert_eq!(rest.first().map(|e| e.0), Some(10));
    assert_eq!(rest.len(), live.len() - 10);
    assert_eq!(rest[0].2, live[10].2);
    // Another tenant's token: the same 404 as for no such run.
    let b = s.token("b", "viewer");
    assert_eq!(s.get(&format!("/v1/runs/{run}/events"), &b).0, 404);
}

#[test]
fn cairn_run_against_the_server_gives_the_output_and_exit_code_of_a_local_run() {
    let s = Served::start();
    let operator = s.token("a", "operator");
    let remote = |args: &[&str], token: &str| {
        crate::support::Run::from(
            Command::new(env!("CARGO_BIN_EXE_cairn"))
                .args(args)
                .env("CAIRN_SERVER", &s.url)
                .env("CAIRN_TOKEN", token)
                .env("CAIRN_ARTIFACT_CACHE", "off")
                .output()
                .unwrap(),
        )
    };
    let local = crate::support::Cairn::new();
    let orders = crate::support::example("orders");
    let here = local.run(&["run", &orders]);
    assert_eq!(here.code, 0, "{}", here.stderr);
    let there = remote(&["run", &orders], &operator);
    assert_eq!(there.code, 0, "{}", there.stderr);
    assert_eq!(there.stdout, here.stdout, "the same output");
    assert!(
        there.stderr.contains("done   report in"),
        "{}",
        there.stderr
    );
    assert!(there.stderr.contains("start  parse"), "{}", there.stderr);
    // A mapped step's start line says its elements, as locally.
    let mapped = |stderr: &str| {
        stderr
            .lines()
            .find(|l| l.starts_with("start  by_product"))
            .map(str::to_owned)
    };
    assert_eq!(
        mapped(&there.stderr),
        mapped(&here.stderr),
        "{}",
        there.stderr
    );
    assert!(
        mapped(&there.stderr).is_some_and(|l| l.ends_with(" elements)")),
        "{}",
        there.stderr
    );
    // A retried attempt says so, a last one fails: the same lines as a
    // local run's, but for the (jittered) waits.
    let flaky = Pipeline::new(
        "name = \"flaky\"\n\
         [steps.broken]\ncomponent = \"{wasm:hostile}\"\ninput = { attack = \"panic\" }\n\
         retry = { attempts = 3, delay = \"10ms\", on = [\"trap\"] }\n",
    );
    let flaky = flaky.dir.path().to_str().unwrap();
    let (flaky_here, flaky_there) = (
        local.run(&["run", flaky]),
        remote(&["run", flaky], &operator),
    );
    assert_eq!(flaky_there.code, flaky_here.code, "{}", flaky_there.stderr);
    let failures = |stderr: &str| -> Vec<String> {
        stderr
            .lines()
            .filter(|l| l.starts_with("retry  ") || l.starts_with("fail   "))
            .map(|l| l.split("; retrying in").next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        failures(&flaky_there.stderr),
        failures(&flaky_here.stderr),
        "{}",
        flaky_there.stderr
    );
    assert_eq!(
        failures(&flaky_there.stderr).len(),
        3,
        "{}",
        flaky_there.stderr
    );
    assert!(
        flaky_there
            .stderr
            .contains("retry  broken attempt 1 failed: ")
            && flaky_there.stderr.contains("; retrying in "),
        "{}",
        flaky_there.stderr
    );
    assert!(
        there.stderr.contains("[parse] info: parsed 12 rows"),
        "task logs are shown: {}",
        there.stderr
    );
    // The same final table: steps, statuses, attempts, elements and fuel
    // (times differ; the server lists steps in dependency order).
    let table = |stderr: &str| -> Vec<(String, String, String, String, String)> {
        let mut rows: Vec<_> = stderr
            .lines()
            .skip_while(|l| !l.starts_with("step "))
            .skip(1)
            .take_while(|l| !l.starts_with("pipeline "))
            .filter(|l| !l.trim_start().starts_with('└'))
            .map(|l| {
                let c: Vec<&str> = l.split_whitespace().collect();
                let cell = |i: usize| c[i].to_owned();
                (cell(0), cell(1), cell(2), cell(3), cell(6))
            })
            .collect();
        rows.sort();
        rows
    };
    assert_eq!(
        table(&there.stderr),
        table(&here.stderr),
        "{}",
        there.stderr
    );
    assert_eq!(table(&there.stderr).len(), 6, "{}", there.stderr);
    assert!(
        there.stderr.contains("pipeline orders succeeded in"),
        "{}",
        there.stderr
    );

    // `--json`: the report a local run prints, field for field (times and
    // the run id aside). Both runs are second runs: both answer from cache.
    let report = |run: crate::support::Run| -> Value {
        assert_eq!(run.code, 0, "{}", run.stderr);
        let mut report = without_run_specifics(run.json());
        assert_eq!(
            report["run_id"].as_str().map(str::len),
            Some(16),
            "{report}"
        );
        let fields = report.as_object_mut().unwrap();
        for key in ["run_id", "duration_us"] {
            fields.remove(key);
        }
        for step in fields["steps"].as_array_mut().unwrap() {
            let step = step.as_object_mut().unwrap();
            for key in ["duration_us", "wait_us"] {
                assert!(step.remove(key).is_some(), "{key} missing");
            }
        }
        fields["steps"]
            .as_array_mut()
            .unwrap()
            .sort_by_key(|s| s["name"].as_str().unwrap().to_owned());
        report
    };
    let here = report(local.run(&["run", &orders, "--json"]));
    let there = report(remote(&["run", &orders, "--json"], &operator));
    assert_eq!(there, here, "the same --json report");
    assert_eq!(here["steps"][0]["source"], "cached", "{here}");

    let failing = Pipeline::new(
        "name = \"starved\"\n[steps.spin]\ncomponent = \"{wasm:burn}\"\ninput = { rounds = 100_000_000 }\nfuel = 1_000\n",
    );
    let here = local.run(&["run", failing.path()]);
    let there = remote(&["run", failing.path()], &operator);
    assert_eq!(
        (here.code, there.code),
        (3, 3),
        "{}\n{}",
        here.stderr,
        there.stderr
    );
    assert!(there.stderr.contains("fuel"), "{}", there.stderr);
    let here = local.run(&["run", failing.path(), "--json", "--refresh"]);
    let there = remote(&["run", failing.path(), "--json", "--refresh"], &operator);
    assert_eq!((here.code, there.code), (3, 3), "{}", there.stderr);
    let (here, there) = (here.json(), there.json());
    for key in ["status", "pipeline", "output"] {
        assert_eq!(there[key], here[key], "{key}: {there}");
    }
    for key in ["status", "class", "attempts", "name"] {
        assert_eq!(
            there["steps"][0][key], here["steps"][0][key],
            "{key}: {there}"
        );
    }
    assert_eq!(there["steps"][0]["class"], "out-of-fuel", "{there}");

    // Without a token, or with a weak one, the error says what to do.
    let viewer = s.token("a", "viewer");
    remote(&["run", &orders], &viewer).assert_clean_error(1, "role is too weak");
    let no_token = crate::support::Run::from(
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["run", &orders, "--server", &s.url])
            .env_remove("CAIRN_TOKEN")
            .output()
            .unwrap(),
    );
    no_token.assert_clean_error(1, "CAIRN_TOKEN");
}

#[test]
fn the_in_flight_quota_holds_under_50_concurrent_requests_and_a_small_tenant_is_not_starved() {
    let s = Served::start();
    let big = s.token("big", "operator");
    let tiny = s.token("tiny", "operator");
    let one_step = Pipeline::new(
        "name = \"chunk\"\n[steps.work]\ncomponent = \"{wasm:burn}\"\ninput = { rounds = 20_000_000 }\n",
    );
    let bytes = cairn::bundle::pack(one_step.dir.path()).unwrap();
    let big_bundle = s.upload(&big, bytes.clone()).1["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let tiny_bundle = s.upload(&tiny, bytes).1["id"].as_str().unwrap().to_owned();

    let started: Vec<(bool, String)> = std::thread::scope(|scope| {
        let requests: Vec<_> = (0..50)
            .map(|i| {
                let (token, bundle, is_tiny) = if i % 25 == 24 {
                    (&tiny, &tiny_bundle, true)
                } else {
                    (&big, &big_bundle, false)
                };
                let s = &s;
                scope.spawn(move || {
                    let (status, body) = s.post("/v1/runs", token, json!({"bundle": bundle}));
                    assert_eq!(status, 202, "{body}");
                    (is_tiny, body["id"].as_str().unwrap().to_owned())
                })
            })
            .collect();
        requests.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(started.iter().filter(|(t, _)| *t).count(), 2);

    // The small tenant's runs end while the big one's queue is still long.
    let big_admin = s.token("big", "viewer");
    let mut max_runs = 0;
    let mut max_sandboxes = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let usage = s.get("/v1/quota", &big_admin).1["usage"].clone();
        max_runs = max_runs.max(usage["runs_in_flight"].as_u64().unwrap());
        max_sandboxes = max_sandboxes.max(usage["sandboxes_in_flight"].as_u64().unwrap());
        let tiny_done = started.iter().filter(|(t, _)| *t).all(|(_, run)| {
            s.get(&format!("/v1/runs/{run}"), &tiny).1["run"]["status"] == "succeeded"
        });
        if tiny_done {
            assert!(
                usage["queued_runs"].as_u64().unwrap() > 0,
                "the small tenant finished only after the big one's queue drained: {usage}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the small tenant's runs never finished"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for (is_tiny, run) in &started {
        let token = if *is_tiny { &tiny } else { &big };
        assert_eq!(s.finished(token, run)["run"]["status"], "succeeded");
        let usage = s.get("/v1/quota", &big_admin).1["usage"].clone();
        max_runs = max_runs.max(usage["runs_in_flight"].as_u64().unwrap());
        max_sandboxes = max_sandboxes.max(usage["sandboxes_in_flight"].as_u64().unwrap());
    }
    assert!(
        max_runs <= 2,
        "{max_runs} runs executed at once over a quota of 2"
    );
    assert!(
        max_sandboxes <= 2,
        "{max_sandboxes} sandboxes at once over a quota of 2"
    );
    assert!(max_runs >= 1, "the usage was never seen");
}

/// Wait until `step` of `run` is running (its attempt has started).
fn wait_running(s: &Served, token: &str, run: &str, step: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.get(&format!("/v1/runs/{run}"), token).1["steps"][step]["status"] != "running" {
        assert!(Instant::now() < deadline, "step {step} never started");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Upload pipeline `p`, start it, and wait until `step` is running; the
/// run's id.
fn start_until_running(s: &Served, token: &str, p: &Pipeline, step: &str) -> String {
    let (status, uploaded) = s.upload(token, cairn::bundle::pack(p.dir.path()).unwrap());
    assert_eq!(status, 201, "{uploaded}");
    let (status, started) = s.post("/v1/runs", token, json!({"bundle": uploaded["id"]}));
    assert_eq!(status, 202, "{started}");
    let run = started["id"].as_str().unwrap().to_owned();
    wait_running(s, token, &run, step);
    run
}

#[test]
fn sigterm_past_the_grace_period_cancels_what_still_runs_and_leaves_it_resumable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.toml"), CONFIG).unwrap();
    std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    // Its stderr is closed once it listens: the server must not die of
    // SIGPIPE when it later reports what it cancels.
    let mut s = Served::start_in_with_args(dir, &[], &["--grace", "300ms"], true);
    let t = s.token("a", "operator");
    let run = start_until_running(&s, &t, &endless_pipeline(""), "slow");
    assert_eq!(
        s.terminate(),
        Some(0),
        "the server exits cleanly on SIGTERM"
    );

    let s = s.restart();
    let shown = s.get(&format!("/v1/runs/{run}"), &t).1;
    assert_eq!(shown["run"]["status"], "cancelled", "{shown}");
    assert_eq!(shown["steps"]["slow"]["status"], "cancelled", "{shown}");
    let (status, resumed) = s.post(&format!("/v1/runs/{run}/resume"), &t, json!({}));
    assert_eq!(status, 202, "{resumed}");
    let (status, _) = s.post(&format!("/v1/runs/{run}/cancel"), &t, json!({}));
    assert_eq!(status, 202);
    assert_eq!(s.finished(&t, &run)["run"]["status"], "cancelled");
}

#[test]
fn a_second_sigterm_cancels_at_once_what_the_grace_period_would_wait_for() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.toml"), CONFIG).unwrap();
    std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    let mut s = Served::start_in_with_args(dir, &[], &["--grace", "1h"], false);
    let t = s.token("a", "operator");
    let run = start_until_running(&s, &t, &endless_pipeline(""), "slow");
    let pid = s.child.id().to_string();
    let term = || {
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        )
    };
    term();
    // The first signal drains: the endless step keeps the server up.
    // Once it has said so, the second cancels.
    s.wait_for_line("send it again");
    term();
    let deadline = Instant::now() + Duration::from_secs(60);
    let exited = loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the server still waits for its 1 h grace period after a second SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exited.code(), Some(0));
    let s = s.restart();
    let shown = s.get(&format!("/v1/runs/{run}"), &t).1;
    assert_eq!(shown["run"]["status"], "cancelled", "{shown}");
}

#[test]
fn sigterm_lets_running_attempts_finish_starts_nothing_more_and_resume_reruns_nothing() {
    let mut s = Served::start();
    let t = s.token("a", "operator");
    // `first` computes for about a second; `second` waits for it.
    let p = Pipeline::new(
        "name = \"drain\"\n\
         [steps.first]\ncomponent = \"{wasm:burn}\"\ninput = { rounds = 500_000_000 }\n\
         fuel = 100_000_000_000\ntimeout = \"5m\"\n\
         [steps.second]\ncomponent = \"{wasm:echo}\"\ninput = { after = \"${first.value}\" }\n",
    );
    let run = start_until_running(&s, &t, &p, "first");
    // The default grace period (30 s) is far longer than `first` takes.
    assert_eq!(
        s.terminate(),
        Some(0),
        "the server exits cleanly on SIGTERM"
    );

    let s = s.restart();
    let shown = s.get(&format!("/v1/runs/{run}"), &t).1;
    assert_eq!(shown["run"]["status"], "cancelled", "{shown}");
    let first = &shown["steps"]["first"];
    assert_eq!(
        first["status"], "succeeded",
        "the running attempt finished: {shown}"
    );
    assert_eq!(first["attempts"], 1, "{shown}");
    assert_eq!(
        shown["steps"]["second"]["attempts"], 0,
        "nothing new started after SIGTERM: {shown}"
    );

    let (status, _) = s.post(&format!("/v1/runs/{run}/resume"), &t, json!({}));
    assert_eq!(status, 202);
    let shown = s.finished(&t, &run);
    assert_eq!(shown["run"]["status"], "succeeded", "{shown}");
    assert_eq!(shown["steps"]["first"]["status"], "resumed", "{shown}");
    assert_eq!(
        shown["steps"]["first"]["attempts"], 1,
        "first never ran again: {shown}"
    );
    assert_eq!(shown["steps"]["second"]["status"], "succeeded", "{shown}");
}

/// A value with the fields that differ between two runs of the same
/// pipeline (ids, times, durations) taken out.
fn without_run_specifics(mut value: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for key in ["eventTime", "runId", "duration_ms", "wait_ms"] {
                    map.remove(key);
                }
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut value);
    value
}

#[test]
fn the_cli_shows_a_servers_runs_logs_lineage_and_audit_as_it_shows_local_ones() {
    let s = Served::start();
    let operator = s.token("a", "operator");
    let viewer = s.token("a", "viewer");
    let admin = s.token("a", "admin");
    let local = crate::support::Cairn::new();
    let orders = crate::support::example("orders");
    assert_eq!(local.run(&["run", &orders]).code, 0);
    let there = s.cli(&["run", &orders], &operator);
    assert_eq!(there.code, 0, "{}", there.stderr);

    // runs list: the run, in the same table.
    let listed = s.cli(&["runs", "list"], &viewer);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let here = local.run(&["runs", "list"]);
    assert_eq!(
        listed.stdout.lines().next(),
        here.stdout.lines().next(),
        "the same columns"
    );
    assert!(
        listed.stdout.contains("orders") && listed.stdout.contains("succeeded"),
        "{}",
        listed.stdout
    );
    let runs: Value =
        serde_json::from_str(&s.cli(&["runs", "list", "--json"], &viewer).stdout).unwrap();
    let id = runs[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(runs.as_array().unwrap().len(), 1);
    // A run's record has the local record's fields, but the server's own
    // paths (where it keeps the bundle, the policy it was admitted under).
    let keys = |run: &Value| -> std::collections::BTreeSet<String> {
        run.as_object().unwrap().keys().cloned().collect()
    };
    let local_runs: Value =
        serde_json::from_str(&local.run(&["runs", "list", "--json"]).stdout).unwrap();
    let (there_keys, here_keys) = (keys(&runs[0]), keys(&local_runs[0]));
    let only_local: Vec<&String> = here_keys.difference(&there_keys).collect();
    let only_remote: Vec<&String> = there_keys.difference(&here_keys).collect();
    assert_eq!(only_local, ["admission", "manifest"], "{}", runs[0]);
    assert_eq!(only_remote, ["bundle", "tenant"], "{}", runs[0]);
    assert_eq!(runs[0]["status"], local_runs[0]["status"]);
    let none = s.cli(&["runs", "list", "--status", "interrupted"], &viewer);
    assert!(none.stdout.contains("no matching runs"), "{}", none.stdout);

    // runs show: the same steps, statuses, attempts and dependencies.
    let shown = s.cli(&["runs", "show", &id[..6], "--json"], &viewer);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let here = local.run(&["runs", "show", "last", "--json"]);
    assert_eq!(
        without_run_specifics(shown.json()["steps"].clone()),
        without_run_specifics(here.json()["steps"].clone()),
    );
    let text = s.cli(&["runs", "show", "last"], &viewer);
    let here = local.run(&["runs", "show", "last"]);
    let deps = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.starts_with("  "))
            .map(|l| l.split("attempts").nth(1).unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(deps(&text.stdout), deps(&here.stdout), "{}", text.stdout);
    assert!(
        text.stdout.contains("← "),
        "dependencies are drawn: {}",
        text.stdout
    );

    // runs logs and lineage: exactly what the local store gives.
    let logs = s.cli(&["runs", "logs", &id], &viewer);
    assert_eq!(logs.code, 0, "{}", logs.stderr);
    // Attempts of parallel steps finish in either order.
    let attempts = |out: &str| {
        let mut blocks: Vec<String> = out.split("== ").map(str::to_owned).collect();
        blocks.sort();
        blocks
    };
    assert_eq!(
        attempts(&logs.stdout),
        attempts(&local.run(&["runs", "logs", "last"]).stdout)
    );
    assert!(logs.stdout.contains("== "), "{}", logs.stdout);
    let lineage = s.cli(&["lineage", &id], &viewer);
    assert_eq!(lineage.code, 0, "{}", lineage.stderr);
    let remote_lineage: Value = serde_json::from_str(&lineage.stdout).unwrap();
    let local_lineage: Value =
        serde_json::from_str(&local.run(&["lineage", "last"]).stdout).unwrap();
    assert!(!remote_lineage.as_array().unwrap().is_empty());
    // Parallel steps finish in either order: compare by step.
    let by_step = |events: Value| {
        let mut events = without_run_specifics(events).as_array().unwrap().clone();
        events.sort_by_key(|e| e["job"]["name"].as_str().unwrap().to_owned());
        events
    };
    assert_eq!(
        by_step(remote_lineage),
        by_step(local_lineage),
        "the same components, inputs and outputs"
    );

    // audit: API actions, for the tenant's admins only.
    let audit = s.cli(&["audit", "--run", &id], &admin);
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    assert!(
        audit.stdout.contains("runs.start") && audit.stdout.contains(&id),
        "{}",
        audit.stdout
    );
    let all = s.cli(&["audit", "--json"], &admin);
    let entries: Value = serde_json::from_str(&all.stdout).unwrap();
    assert!(
        entries
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["capability"] == "runs.start" && e["tenant"] == "a"),
        "{entries}"
    );
    s.cli(&["audit"], &viewer)
        .assert_clean_error(1, "role is too weak");

    // Client errors say what to do.
    s.cli(&["runs", "show", "ffffffffffffffff"], &viewer)
        .assert_clean_error(1, "no such run");
    s.cli(&["runs", "show", "zz"], &viewer)
        .assert_clean_error(1, "not a run id");
    s.cli(&["runs", "list"], "cairn_nonsense")
        .assert_clean_error(1, "token was refused");
    let no_token = crate::support::Run::from(
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["runs", "list", "--server", &s.url])
            .env_remove("CAIRN_TOKEN")
            .output()
            .unwrap(),
    );
    no_token.assert_clean_error(1, "CAIRN_TOKEN");
    let gone = crate::support::Run::from(
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args([
                "runs",
                "list",
                "--server",
                "http://127.0.0.1:9",
                "--token",
                "x",
            ])
            .output()
            .unwrap(),
    );
    gone.assert_clean_error(1, "cannot reach the server");
}

#[test]
fn cancel_resume_replay_and_bundle_push_work_through_the_cli_against_the_server() {
    let s = Served::start();
    // `tight` runs one run at a time, so a second waits in the queue.
    let t = s.token("tight", "operator");
    let viewer = s.token("tight", "viewer");
    let slow = endless_pipeline("");
    let pushed = s.cli(&["bundle", "push", slow.path(), "--json"], &t);
    assert_eq!(pushed.code, 0, "{}", pushed.stderr);
    let endless = pushed.json()["id"].as_str().unwrap().to_owned();
    assert!(
        s.stored_bundles("tight")
            .contains(&format!("{endless}.cairn"))
    );
    let orders = crate::support::example("orders");
    let pushed = s.cli(&["bundle", "push", &orders], &t);
    assert_eq!(pushed.code, 0, "{}", pushed.stderr);
    let orders_bundle = pushed.stdout.trim().rsplit(' ').next().unwrap().to_owned();
    assert_eq!(orders_bundle.len(), 64, "{}", pushed.stdout);

    let (_, busy) = s.post("/v1/runs", &t, json!({"bundle": endless}));
    let busy = busy["id"].as_str().unwrap().to_owned();
    let (status, waiting) = s.post("/v1/runs", &t, json!({"bundle": orders_bundle}));
    assert_eq!(status, 202, "{waiting}");
    let waiting = waiting["id"].as_str().unwrap().to_owned();
    s.cli(&["cancel", &waiting], &viewer)
        .assert_clean_error(1, "role is too weak");
    for run in [&waiting, &busy] {
        let cancelled = s.cli(&["cancel", run], &t);
        assert_eq!(cancelled.code, 0, "{}", cancelled.stderr);
        assert_eq!(s.finished(&t, run)["run"]["status"], "cancelled");
    }
    s.cli(&["cancel", &busy], &t)
        .assert_clean_error(1, "not running");
    // Locally there is nothing to cancel this way; the error says how.
    crate::support::Cairn::new()
        .run(&["cancel", &busy])
        .assert_clean_error(1, "Ctrl-C");

    // resume: the queued run goes on and gives what a local run gives.
    let resumed = s.cli(&["resume", &waiting], &t);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    // Only the resume's own events are shown, not the cancelled start's.
    assert!(
        resumed.stderr.contains("done   report") && !resumed.stderr.contains("cancelled  "),
        "{}",
        resumed.stderr
    );
    let local = crate::support::Cairn::new();
    assert_eq!(resumed.stdout, local.run(&["run", &orders]).stdout);
    let again = s.cli(&["resume", &waiting], &t);
    again.assert_clean_error(1, "already succeeded");
    // --policy is the server's business, not the client's.
    s.cli(&["resume", &busy, "--policy", "x.toml"], &t)
        .assert_clean_error(1, "--policy");

    // replay --verify: identical outputs verify, with exit 0.
    let replayed = s.cli(&["replay", &waiting, "--verify"], &t);
    assert_eq!(replayed.code, 0, "{}", replayed.stderr);
    assert!(
        replayed.stderr.contains("verified: all"),
        "{}",
        replayed.stderr
    );
    assert_eq!(replayed.stdout, resumed.stdout);
    let list = s.cli(&["runs", "list"], &viewer);
    assert!(list.stdout.contains("(replay)"), "{}", list.stdout);

    // A step that reads the clock and randomness differs: exit 4, named.
    let w = s.token("wobbly", "operator");
    let p = Pipeline::new(
        "name = \"wobbly\"\n[steps.steady]\ncomponent = \"{wasm:clock_random}\"\n\
         [steps.wobbly]\ncomponent = \"{wasm:clock_random}\"\ngrants = { clock = true, random = true }\n",
    );
    let first = s.cli(&["run", p.path(), "--json"], &w);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let id = first.json()["run_id"].as_str().unwrap().to_owned();
    let replay = s.cli(&["replay", &id, "--verify", "--json"], &w);
    assert_eq!(replay.code, 4, "{}", replay.stderr);
    let verdict: Value = serde_json::from_str(replay.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(verdict["verified"], 2, "{verdict}");
    assert_eq!(verdict["nondeterministic"].as_array().unwrap().len(), 1);
    assert_eq!(verdict["nondeterministic"][0]["step"], "wobbly");
    // The same verdict through the API, for the replay run.
    let replay_id = s.get("/v1/runs?limit=1", &w).1["runs"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, v) = s.get(&format!("/v1/runs/{replay_id}/verification"), &w);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["original"].as_str(), v["compared"].as_u64()),
        (Some(id.as_str()), Some(2))
    );
    let (status, _) = s.get(&format!("/v1/runs/{id}/verification"), &w);
    assert_eq!(status, 409, "the original is not a replay");
}

#[test]
fn malformed_requests_get_a_json_4xx_never_a_500() {
    let s = Served::start();
    let op = s.token("a", "operator");
    let raw = |method: &str, path: &str, body: &[u8]| {
        s.call(method, path, Some(&op), Some(body.to_vec()))
    };
    for (method, path, body, want) in [
        ("POST", "/v1/runs", &b"{not json"[..], 422),
        ("POST", "/v1/runs", br#"{"bundle": 7}"#, 422),
        (
            "POST",
            "/v1/runs",
            br#"{"bundle": "x", "surprise": true}"#,
            422,
        ),
        (
            "POST",
            "/v1/runs",
            br#"{"bundle": "../../etc/passwd"}"#,
            404,
        ),
        ("POST", "/v1/runs", &[0xff, 0xfe, 0x00][..], 422),
        ("GET", "/v1/runs?limit=lots", b"", 400),
        ("GET", "/v1/runs?status=exploded", b"", 400),
        ("GET", "/v1/runs/..%2F..%2Fetc", b"", 404),
        ("GET", "/v1/runs/zzzzzzzzzzzzzzzz", b"", 404),
        ("GET", "/v1/bundles/not-a-hash", b"", 404),
    ] {
        let (status, answer) = raw(method, path, body);
        assert_eq!(status, want, "{method} {path}: {answer}");
        assert!(
            answer["error"].is_string() && answer["message"].is_string(),
            "{answer}"
        );
    }
    for body in [
        json!({"tenant": "a", "role": "emperor"}),
        json!({"tenant": "nobody", "role": "viewer"}),
        json!({"tenant": "a", "role": "viewer", "expires": "soonish"}),
    ] {
        let (status, answer) = s.post("/v1/tokens", &s.admin, body.clone());
        assert_eq!(status, 422, "{body}: {answer}");
    }
    // A JSON body over the cap is cut off.
    // (Read to the end, up to a bound, so the client sees the answer.)
    let huge = format!("{{\"bundle\": \"{}\"}}", "a".repeat(4 << 20));
    let (status, answer) = raw("POST", "/v1/runs", huge.as_bytes());
    assert_eq!(status, 413, "{answer}");
    // Last-Event-ID that is not an id.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .get(&format!("{}/v1/runs/0123456789abcdef/events", s.url))
        .header("Authorization", &format!("Bearer {op}"))
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let _ = response.body_mut().read_to_string();
    // The server is still up.
    assert_eq!(s.call("GET", "/healthz", None, None).0, 200);
}

#[test]
fn each_tenant_gets_its_own_secrets_and_never_the_servers_environment() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("server.toml"),
        "policy = \"policy.toml\"\n[tenants.a]\n[tenants.b]\n[tenants.none]\n\
         [secrets]\na = \"a.toml\"\nb = \"b.toml\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("policy.toml"),
        "[default]\nmax_memory = \"1GiB\"\nallow_secrets = [\"WAREHOUSE\"]\nallow_env = [\"WAREHOUSE\"]\n",
    )
    .unwrap();
    for (tenant, value) in [("a", "value-of-a-7f3e"), ("b", "value-of-b-91c2")] {
        let file = dir.path().join(format!("{tenant}.toml"));
        std::fs::write(&file, format!("WAREHOUSE = \"{value}\"\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let s = Served::start_in_with(dir, &[("WAREHOUSE", "the-servers-own-value")]);
    let p = Pipeline::new(
        "name = \"peek\"\n[steps.read]\ncomponent = \"{wasm:hostile}\"\n\
         input = { attack = \"read-env\", name = \"WAREHOUSE\" }\n\
         grants = { secrets = [\"WAREHOUSE\"] }\n",
    );
    let bundle = cairn::bundle::pack(p.dir.path()).unwrap();
    for (tenant, value) in [("a", "value-of-a-7f3e"), ("b", "value-of-b-91c2")] {
        let t = s.token(tenant, "operator");
        let (status, uploaded) = s.upload(&t, bundle.clone());
        assert_eq!(status, 201, "{uploaded}");
        let (_, started) = s.post("/v1/runs", &t, json!({"bundle": uploaded["id"]}));
        let run = started["id"].as_str().unwrap();
        assert_eq!(s.finished(&t, run)["run"]["status"], "succeeded");
        let (_, output) = s.get(&format!("/v1/runs/{run}/output"), &t);
        assert!(output.to_string().contains(value), "{tenant} got {output}");
        assert!(!output.to_string().contains("servers-own"), "{output}");
    }
    // A tenant with no secrets file is refused, although the server's
    // environment has the name.
    let t = s.token("none", "operator");
    let (status, refused) = s.upload(&t, bundle);
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("not one of tenant none's secrets"),
        "{refused}"
    );
    // Nor any of the server's environment variables, whatever the policy.
    let env = Pipeline::new(
        "name = \"env\"\n[steps.read]\ncomponent = \"{wasm:hostile}\"\n\
         input = { attack = \"read-env\", name = \"WAREHOUSE\" }\n\
         grants = { env = [\"WAREHOUSE\"] }\n",
    );
    let a = s.token("a", "operator");
    let (status, refused) = s.upload(&a, cairn::bundle::pack(env.dir.path()).unwrap());
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("no host environment variables"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn once_a_server_drains_no_run_starts() {
    let dir = tempfile::tempdir().unwrap();
    let config = cairn::server::ServerConfig::embedded(dir.path().join("data"));
    let server = cairn::server::Server::open(&config).unwrap().server;
    let tenant = server.tenants.get("default").expect("the default tenant");
    let bundle = tenant.bundles_dir().join("chain.cairn");
    std::fs::write(&bundle, chain_bundle("late")).unwrap();
    server.drain_all();
    let refused = tenant.start(cairn::runner::Launch::new(&bundle)).await;
    assert!(
        matches!(refused, Err(cairn::server::StartError::Stopping)),
        "{refused:?}"
    );
    assert_eq!(server.live_runs(), 0);
    assert!(
        tenant.runner.store().runs().unwrap().is_empty(),
        "nothing is recorded for a refused start"
    );
}

#[test]
fn a_steps_input_is_rebuilt_and_verified_and_its_cache_reason_names_what_changed() {
    let s = Served::start();
    let a = s.token("a", "operator");
    let run_of = |bundle: Vec<u8>| {
        // 201 the first time, 200 for the same bytes again.
        let (status, uploaded) = s.upload(&a, bundle);
        assert!(status == 201 || status == 200, "{status} {uploaded}");
        let (status, started) = s.post("/v1/runs", &a, json!({"bundle": uploaded["id"]}));
        assert_eq!(status, 202, "{started}");
        let run = started["id"].as_str().unwrap().to_owned();
        s.finished(&a, &run);
        run
    };
    let pipeline = |n: u32| {
        let p = Pipeline::new(&format!(
            "name = \"why\"\n\
             [steps.first]\ncomponent = \"{{wasm:echo}}\"\ninput = {{ n = {n}, list = [\"x\", \"y\"] }}\n\
             [steps.second]\ncomponent = \"{{wasm:echo}}\"\ninput = {{ from = \"${{first.n}}\", fixed = true }}\n\
             [steps.each]\ncomponent = \"{{wasm:echo}}\"\nmap = \"${{first.list}}\"\ninput = {{ i = \"${{index}}\", v = \"${{item}}\" }}\n",
        ));
        cairn::bundle::pack(p.dir.path()).unwrap()
    };
    let cache = |run: &str, step: &str| {
        let (status, body) = s.get(&format!("/v1/runs/{run}/steps/{step}/output"), &a);
        assert_eq!(status, 200, "{body}");
        body["cache"].as_str().unwrap().to_owned()
    };

    let first = run_of(pipeline(1));
    let (status, input) = s.get(&format!("/v1/runs/{first}/steps/second/input"), &a);
    assert_eq!(status, 200, "{input}");
    assert_eq!(input["input"], json!({"from": 1, "fixed": true}));
    assert_eq!(input["verified"], true, "the stored result's input hash");
    let (_, mapped) = s.get(&format!("/v1/runs/{first}/steps/each/input"), &a);
    assert_eq!(
        mapped["input"],
        json!([{"i": 0, "v": "x"}, {"i": 1, "v": "y"}]),
        "one input per element"
    );
    assert_eq!(mapped["verified"], true);
    let said = cache(&first, "second");
    assert!(said.contains("no earlier run of why"), "{said}");

    let again = run_of(pipeline(1));
    let said = cache(&again, "second");
    assert!(said.starts_with("A cache hit"), "{said}");
    // Run again with --refresh: the same key, run anyway.
    let (_, uploaded) = s.upload(&a, pipeline(1));
    let (status, refreshed) = s.post(
        "/v1/runs",
        &a,
        json!({"bundle": uploaded["id"], "refresh": true}),
    );
    assert_eq!(status, 202, "{refreshed}");
    let refreshed = refreshed["id"].as_str().unwrap().to_owned();
    s.finished(&a, &refreshed);
    let said = cache(&refreshed, "second");
    assert!(
        said.contains("though its key is the one it had in run") && said.contains("--refresh"),
        "{said}"
    );

    let changed = run_of(pipeline(2));
    let said = cache(&changed, "first");
    assert!(
        said.contains(&format!("since run {refreshed}, its input changed")),
        "{said}"
    );
    let (_, input) = s.get(&format!("/v1/runs/{changed}/steps/second/input"), &a);
    assert_eq!(input["input"], json!({"from": 2, "fixed": true}));

    // What is not there is a 404 with a JSON body; another tenant's run too.
    let (status, body) = s.get(&format!("/v1/runs/{first}/steps/nope/input"), &a);
    assert_eq!(status, 404, "{body}");
    assert!(body["message"].as_str().unwrap().contains("nope"), "{body}");
    let b = s.token("b", "admin");
    let (status, _) = s.get(&format!("/v1/runs/{first}/steps/second/input"), &b);
    assert_eq!(status, 404, "b does not see a's run");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_an_attempt_waiting_for_the_tenants_sandbox_share_before_it_starts() {
    // Two steps, each held at a loopback gate, and a share of one sandbox:
    // one runs, the other waits for the share, and is not started yet.
    let gate = crate::dashboard::Gate::start().await;
    let mut s = Served::start_with(
        "policy = \"policy.toml\"\n[tenants.a]\nsandboxes_in_flight = 1\n",
        &format!(
            "[default]\nmax_timeout = \"10m\"\nallow_http = [\"https://api.example.com\", \"http://{}\"]\n",
            gate.addr
        ),
    );
    let t = s.token("a", "operator");
    let step = |name: &str| {
        format!(
            "[steps.{name}]\ncomponent = \"{{wasm:http_probe}}\"\n\
             input = {{ url = \"http://{addr}/gate?{name}\" }}\ntimeout = \"10m\"\n\
             grants = {{ http = [\"https://api.example.com\", \"http://{addr}\"], http_limits = {{ first_byte_timeout = \"10m\" }} }}\n",
            addr = gate.addr
        )
    };
    let p = Pipeline::new(&format!(
        "name = \"shared\"\n{}{}",
        step("one"),
        step("two")
    ));
    let run = s.start_bundle(&t, cairn::bundle::pack(p.dir.path()).unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let (running, waiting) = loop {
        let shown = s.get(&format!("/v1/runs/{run}"), &t).1;
        let status = |step: &str| shown["steps"][step]["status"].clone();
        match (status("one") == "running", status("two") == "running") {
            (true, false) => break ("one", "two"),
            (false, true) => break ("two", "one"),
            (true, true) => panic!("both attempts started on a share of one: {shown}"),
            (false, false) => {}
        }
        assert!(Instant::now() < deadline, "no step started: {shown}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let shown = s.get(&format!("/v1/runs/{run}"), &t).1;
    assert_eq!(
        shown["steps"][waiting]["status"], "queued",
        "waiting for the share is not running: {shown}"
    );

    let pid = s.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    s.wait_for_line("send it again");
    // The held attempt may finish now; the waiting one must not start.
    gate.open();
    let status = tokio::task::spawn_blocking(move || {
        let code = s.child.wait().unwrap().code();
        (s, code)
    })
    .await
    .unwrap();
    let (s, code) = status;
    assert_eq!(code, Some(0), "the server exits cleanly on SIGTERM");

    let s = s.restart();
    let shown = s.get(&format!("/v1/runs/{run}"), &t).1;
    assert_eq!(shown["run"]["status"], "cancelled", "{shown}");
    assert_eq!(shown["steps"][running]["status"], "succeeded", "{shown}");
    assert_eq!(
        shown["steps"][waiting]["attempts"], 0,
        "the attempt waiting for the share never started: {shown}"
    );
    assert_eq!(shown["steps"][waiting]["status"], "cancelled", "{shown}");
}

#[test]
fn a_tenant_past_its_uploads_in_flight_gets_429_and_another_tenant_does_not_wait() {
    let s = Served::start_with(
        "policy = \"policy.toml\"\n[tenants.a]\nuploads_in_flight = 1\n[tenants.b]\n",
        POLICY,
    );
    let (a, b, viewer) = (
        s.token("a", "operator"),
        s.token("b", "operator"),
        s.token("a", "viewer"),
    );
    let in_flight = || s.get("/v1/quota", &viewer).1["usage"]["uploads_in_flight"].clone();
    let wait_in_flight = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while in_flight() != json!(n) {
            assert!(Instant::now() < deadline, "uploads in flight never {n}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    // An upload that sends its headers and a little of its body, then
    // nothing more: it holds the tenant's one upload slot.
    let addr = s.url.strip_prefix("http://").unwrap().to_owned();
    let mut held = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::Write;
    write!(
        held,
        "POST /v1/bundles HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {a}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
    )
    .unwrap();
    held.write_all(&[0u8; 1000]).unwrap();
    wait_in_flight(1);

    let bundle = burn_chain(1, 1);
    let (status, refused) = s.upload(&a, bundle.clone());
    assert_eq!(status, 429, "{refused}");
    assert_eq!(refused["error"], "quota", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("uploads_in_flight"),
        "{refused}"
    );
    assert_eq!(
        s.upload(&b, bundle.clone()).0,
        201,
        "another tenant's upload does not wait for a's"
    );
    // The held upload's client goes away: its slot comes back.
    drop(held);
    wait_in_flight(0);
    assert_eq!(s.upload(&a, bundle).0, 201);
}

#[test]
fn runs_gc_forgets_old_ended_runs_of_its_tenant_only_and_never_a_live_one() {
    let s = Served::start();
    let (admin, operator) = (s.token("a", "admin"), s.token("a", "operator"));
    let done = s.start_bundle(&operator, burn_chain(2, 1_000));
    assert_eq!(s.finished(&operator, &done)["run"]["status"], "succeeded");
    let cancelled = start_until_running(&s, &operator, &endless_pipeline(""), "slow");
    assert_eq!(
        s.post(
            &format!("/v1/runs/{cancelled}/cancel"),
            &operator,
            json!({})
        )
        .0,
        202
    );
    assert_eq!(
        s.finished(&operator, &cancelled)["run"]["status"],
        "cancelled"
    );
    let live = start_until_running(
        &s,
        &operator,
        &endless_pipeline("[steps.other]\ncomponent = \"{wasm:echo}\"\n"),
        "slow",
    );
    let b = s.token("b", "operator");
    let theirs = s.start_bundle(&b, burn_chain(2, 1_000));
    assert_eq!(s.finished(&b, &theirs)["run"]["status"], "succeeded");

    let gc = |token: &str, body: Value| s.post("/v1/runs/gc", token, body);
    let removed = |report: &Value| -> Vec<String> {
        report["removed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_str().unwrap().to_owned())
            .collect()
    };
    // Forgetting is for the tenant's admins; bad asks are 422s.
    assert_eq!(gc(&operator, json!({"older_than": "0s"})).0, 403);
    for bad in [
        json!({"older_than": "soon"}),
        json!({"older_than": "0s", "keep": 1}),
    ] {
        let (status, body) = gc(&admin, bad.clone());
        assert_eq!(status, 422, "{bad}: {body}");
    }
    // Nothing here ended an hour ago.
    let (status, report) = gc(&admin, json!({"older_than": "1h"}));
    assert_eq!(status, 200, "{report}");
    assert_eq!(removed(&report), Vec::<String>::new());

    // A dry run says which, and forgets nothing.
    let (_, report) = gc(&admin, json!({"older_than": "0s", "dry_run": true}));
    assert_eq!(removed(&report), vec![done.clone()], "{report}");
    assert_eq!(report["removed_runs"][0]["status"], "succeeded", "{report}");
    assert_eq!(report["kept_interrupted"], 1, "the cancelled run: {report}");
    assert_eq!(s.get(&format!("/v1/runs/{done}"), &operator).0, 200);
    // The CLI asks the server the same, and says it as for a local store.
    let said = s.cli(&["runs", "gc", "--older-than", "0s", "--dry-run"], &admin);
    assert_eq!(said.code, 0, "{}", said.stderr);
    assert!(
        said.stdout.contains("would forget 1 run older than 0s")
            && said.stdout.contains(&done)
            && said.stdout.contains("kept"),
        "{}",
        said.stdout
    );
    let said = s.cli(
        &["runs", "gc", "--older-than", "0s", "--dry-run"],
        &operator,
    );
    assert_ne!(said.code, 0, "an operator may not: {}", said.stdout);

    let (_, report) = gc(&admin, json!({"older_than": "0s"}));
    assert_eq!(removed(&report), vec![done.clone()], "{report}");
    assert!(report["freed_bytes"].as_u64().unwrap() > 0, "{report}");
    for path in ["", "/output", "/report", "/events"] {
        assert_eq!(
            s.get(&format!("/v1/runs/{done}{path}"), &operator).0,
            404,
            "{path}"
        );
    }
    let listed = s.get("/v1/runs", &operator).1.to_string();
    assert!(!listed.contains(&done), "{listed}");

    // Resumable runs go too when asked; the live one never does.
    let (_, report) = gc(
        &admin,
        json!({"older_than": "0s", "include_interrupted": true}),
    );
    assert_eq!(removed(&report), vec![cancelled.clone()], "{report}");
    let (status, shown) = s.get(&format!("/v1/runs/{live}"), &operator);
    assert_eq!(status, 200);
    assert_eq!(shown["run"]["live"], true, "{shown}");
    // Another tenant's runs are not this tenant's to forget.
    assert_eq!(s.get(&format!("/v1/runs/{theirs}"), &b).0, 200);

    let audit = s.get("/v1/audit", &admin).1.to_string();
    assert!(audit.contains("runs.gc"), "{audit}");
    assert_eq!(
        s.post(&format!("/v1/runs/{live}/cancel"), &operator, json!({}))
            .0,
        202
    );
    s.finished(&operator, &live);
}

#[test]
fn a_removed_tenant_loses_its_tokens_runs_and_data_and_its_name_starts_empty() {
    let s = Served::start();
    assert_eq!(
        s.post("/v1/tenants", &s.admin, json!({"name": "gone"})).0,
        201
    );
    let (operator, admin) = (s.token("gone", "operator"), s.token("gone", "admin"));
    let ended = s.start_bundle(&operator, burn_chain(2, 1_000));
    s.finished(&operator, &ended);
    let live = start_until_running(&s, &operator, &endless_pipeline(""), "slow");
    let a = s.token("a", "operator");
    let theirs = s.start_bundle(&a, burn_chain(2, 1_000));
    s.finished(&a, &theirs);

    // Refused: a tenant's own admin, a tenant of server.toml, no tenant.
    assert_eq!(
        s.call("DELETE", "/v1/tenants/gone", Some(&admin), None).0,
        403
    );
    let (status, answer) = s.call("DELETE", "/v1/tenants/a", Some(&s.admin), None);
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("server.toml"),
        "{answer}"
    );
    assert_eq!(
        s.call("DELETE", "/v1/tenants/nobody", Some(&s.admin), None)
            .0,
        404
    );

    // Its live run is cancelled and waited for; then it is gone.
    let removed = s.cli(&["tenant", "remove", "gone"], &s.admin);
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    for token in [&operator, &admin] {
        assert_eq!(s.get("/v1/runs", token).0, 401, "its tokens are gone");
    }
    assert!(!s.dir.path().join("data/tenants/gone").exists());
    let listed = s.get("/v1/tenants", &s.admin).1.to_string();
    assert!(!listed.contains("\"gone\""), "{listed}");
    let audit = std::fs::read_to_string(s.dir.path().join("data/audit.jsonl")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("tenants.remove") && l.contains("gone") && l.contains("removed")),
        "{audit}"
    );
    // Another tenant is untouched.
    assert_eq!(s.get(&format!("/v1/runs/{theirs}"), &a).0, 200);

    // The same name again: nothing of the old tenant, and across a restart.
    assert_eq!(
        s.post("/v1/tenants", &s.admin, json!({"name": "gone"})).0,
        201
    );
    let fresh = s.token("gone", "admin");
    let check = |s: &Served| {
        let (status, runs) = s.get("/v1/runs", &fresh);
        assert_eq!(status, 200, "{runs}");
        let text = runs.to_string();
        assert!(!text.contains(&ended) && !text.contains(&live), "{text}");
        assert_eq!(s.get(&format!("/v1/runs/{ended}"), &fresh).0, 404);
        assert_eq!(s.get("/v1/bundles", &fresh).1, json!([]));
        let tokens = s.get("/v1/tokens", &fresh).1;
        assert_eq!(
            tokens.as_array().unwrap().len(),
            1,
            "only the new tenant's own token: {tokens}"
        );
    };
    check(&s);
    let mut s = s;
    assert_eq!(s.terminate(), Some(0));
    let s = s.restart();
    check(&s);
    s.cli(&["tenant", "remove", "a"], &s.admin)
        .assert_clean_error(1, "declared in server.toml");
}

#[test]
fn a_tenant_taken_out_of_server_toml_is_not_inherited_by_a_new_tenant_of_its_name() {
    let mut s = Served::start();
    let old = s.token("b", "operator");
    let (status, _) = s.upload(&old, burn_chain(1, 1));
    assert_eq!(status, 201);
    assert_eq!(s.terminate(), Some(0));
    // The host takes `b` out of the config and restarts.
    std::fs::write(
        s.dir.path().join("server.toml"),
        CONFIG.replace("[tenants.b]\n", ""),
    )
    .unwrap();
    let s = s.restart();
    assert_eq!(s.get("/v1/bundles", &old).0, 401, "not hosted, not served");
    let (status, answer) = s.post("/v1/tenants", &s.admin, json!({"name": "b"}));
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("left its data"),
        "{answer}"
    );
    assert_eq!(s.get("/v1/bundles", &old).0, 401, "still nothing");
}

#[test]
fn a_tenants_keep_runs_forgets_its_old_ended_runs_when_the_server_starts() {
    let mut s = Served::start_with(
        "policy = \"policy.toml\"\n[tenants.a]\n[tenants.brief]\nkeep_runs = \"0s\"\n",
        POLICY,
    );
    let (brief, a) = (s.token("brief", "operator"), s.token("a", "operator"));
    assert_eq!(s.get("/v1/quota", &brief).1["quotas"]["keep_runs"], "0s");
    assert_eq!(s.get("/v1/quota", &a).1["quotas"]["keep_runs"], Value::Null);
    let run = |token: &str| {
        let id = s.start_bundle(token, burn_chain(2, 1_000));
        assert_eq!(s.finished(token, &id)["run"]["status"], "succeeded");
        id
    };
    let (ended, kept) = (run(&brief), run(&a));
    let cancelled = start_until_running(&s, &brief, &endless_pipeline(""), "slow");
    assert_eq!(
        s.post(&format!("/v1/runs/{cancelled}/cancel"), &brief, json!({}))
            .0,
        202
    );
    s.finished(&brief, &cancelled);
    assert_eq!(s.terminate(), Some(0));

    let s = s.restart();
    assert_eq!(s.get(&format!("/v1/runs/{ended}"), &brief).0, 404);
    assert_eq!(
        s.get(&format!("/v1/runs/{cancelled}"), &brief).0,
        200,
        "a resumable run is kept"
    );
    assert_eq!(
        s.get(&format!("/v1/runs/{kept}"), &a).0,
        200,
        "a tenant without keep_runs keeps its runs"
    );
    let (status, answer) = s.post(
        "/v1/tenants",
        &s.admin,
        json!({"name": "x", "quotas": {"keep_runs": "soon"}}),
    );
    assert_eq!(status, 422, "{answer}");
}
