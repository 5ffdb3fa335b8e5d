//! Signing, host policy and the audit log through the real binary.

use crate::support::{Cairn, Pipeline, example};

struct Host {
    cairn: Cairn,
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Self {
        Self {
            cairn: Cairn::new(),
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }
    fn ok(&self, args: &[&str]) -> crate::support::Run {
        let run = self.cairn.run(args);
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        run
    }
    fn key(&self, name: &str) -> String {
        self.ok(&["key", "gen", "--out", &self.path(name)]);
        std::fs::read_to_string(self.path(&format!("{name}.pub")))
            .unwrap()
            .trim()
            .to_owned()
    }
    fn policy(&self, text: &str) -> String {
        let path = self.path("policy.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

const ROOMY: &str = "max_memory = \"1GiB\"\nmax_timeout = \"1m\"\n";

#[test]
fn pack_sign_verify_run_under_a_policy_that_requires_signatures() {
    let host = Host::new();
    let public = host.key("author");
    let bundle = host.path("text.cairn");
    host.ok(&["bundle", "pack", &example("text"), "-o", &bundle]);
    let id_before = host.ok(&["bundle", "inspect", &bundle, "--json"]).json()["id"].clone();
    host.ok(&["bundle", "sign", &bundle, "--key", &host.path("author.key")]);
    let verify = host.ok(&["bundle", "verify", &bundle]);
    assert!(
        verify.stdout.contains("1 valid signature"),
        "{}",
        verify.stdout
    );
    let info = host.ok(&["bundle", "inspect", &bundle, "--json"]).json();
    assert_eq!(
        info["id"], id_before,
        "signing does not change the bundle id"
    );
    assert_eq!(info["signatures"][0]["public_key"], public.as_str());

    let policy = host.policy(&format!(
        "[default]\n{ROOMY}require_signed = true\ntrusted_keys = [\"{public}\"]\n"
    ));
    let run = host.ok(&["run", &bundle, "--policy", &policy, "--json"]);
    assert_eq!(run.json()["output"]["documents"], 4);
}

#[test]
fn unsigned_and_untrusted_bundles_are_refused_when_signatures_are_required() {
    let host = Host::new();
    let trusted = host.key("trusted");
    host.key("stranger");
    let bundle = host.path("text.cairn");
    host.ok(&["bundle", "pack", &example("text"), "-o", &bundle]);
    let policy = host.policy(&format!(
        "[default]\n{ROOMY}require_signed = true\ntrusted_keys = [\"{trusted}\"]\n"
    ));

    let run = host.cairn.run(&["run", &bundle, "--policy", &policy]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("refusing an unsigned bundle"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("start "),
        "nothing ran: {}",
        run.stderr
    );

    host.ok(&[
        "bundle",
        "sign",
        &bundle,
        "--key",
        &host.path("stranger.key"),
    ]);
    let run = host.cairn.run(&["run", &bundle, "--policy", &policy]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("signed only by untrusted keys"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_signature_moved_to_another_bundle_is_refused() {
    let host = Host::new();
    host.key("k");
    let (text, orders) = (host.path("text.cairn"), host.path("orders.cairn"));
    host.ok(&["bundle", "pack", &example("text"), "-o", &text]);
    host.ok(&["bundle", "pack", &example("orders"), "-o", &orders]);
    host.ok(&["bundle", "sign", &text, "--key", &host.path("k.key")]);

    // Rebuild `orders` with text's signature member added.
    let read = |path: &str| {
        let mut archive = tar::Archive::new(
            zstd::stream::read::Decoder::new(std::fs::File::open(path).unwrap()).unwrap(),
        );
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().to_str().unwrap().to_owned();
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut data).unwrap();
                (name, data)
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let mut members = read(&orders);
    let (sig_name, sig) = read(&text)
        .into_iter()
        .find(|(n, _)| n.starts_with("signatures/"))
        .unwrap();
    members.insert(sig_name, sig);
    let forged = host.path("forged.cairn");
    {
        let gz = zstd::stream::write::Encoder::new(std::fs::File::create(&forged).unwrap(), 1)
            .unwrap()
            .auto_finish();
        let mut tar = tar::Builder::new(gz);
        for (name, data) in &members {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            tar.append_data(&mut header, name, data.as_slice()).unwrap();
        }
        drop(tar.into_inner().unwrap());
    }
    let run = host.cairn.run(&["bundle", "verify", &forged]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("does not verify against this bundle's id"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_step_asking_for_a_forbidden_read_dir_is_refused_at_plan_time_and_audited() {
    let host = Host::new();
    let data = tempfile::tempdir().unwrap();
    let p = Pipeline::new(&format!(
        "name = \"reader\"\n[steps.peek]\ncomponent = \"{{wasm:hostile}}\"\ninput = {{ attack = \"read-passwd\" }}\ngrants = {{ read = [\"{}\"] }}\n",
        data.path().display()
    ));
    let policy = host.policy(&format!(
        "[default]\n{ROOMY}allow_read = [\"/srv/allowed\"]\n[tenants.acme]\nallow_env = []\n"
    ));
    let run = host
        .cairn
        .run(&["run", p.path(), "--policy", &policy, "--tenant", "acme"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let line = format!(
        "error: step `peek`: read access to {} is not in allow_read ([default] of {policy})",
        data.path().display()
    );
    assert!(
        run.stderr.contains(&line),
        "expected {line:?} in {}",
        run.stderr
    );

    let audit = host.ok(&["audit", "--json"]).json();
    let denial = &audit[0];
    assert_eq!(denial["event"], "denied");
    assert_eq!(denial["tenant"], "acme");
    assert_eq!(denial["step"], "peek");
    assert_eq!(
        denial["capability"],
        format!("read:{}", data.path().display())
    );
}

#[test]
fn grants_used_by_a_run_are_audited_with_run_and_step() {
    let host = Host::new();
    let p = Pipeline::new(
        "name = \"env\"\n[steps.say]\ncomponent = \"{wasm:hostile}\"\ninput = { attack = \"read-env\" }\ngrants = { env = [\"GREETING=hello\"] }\n",
    );
    let policy = host.policy(&format!("[default]\n{ROOMY}allow_env = [\"GREETING\"]\n"));
    let run = host.ok(&["run", p.path(), "--policy", &policy, "--json"]);
    let run_id = run.json()["run_id"].as_str().unwrap().to_owned();
    let audit = host.ok(&["audit", "--json", "--run", &run_id]).json();
    assert_eq!(audit.as_array().unwrap().len(), 1, "{audit}");
    assert_eq!(audit[0]["event"], "granted");
    assert_eq!(audit[0]["capability"], "env:GREETING");
    assert_eq!(audit[0]["step"], "say");
    assert_eq!(audit[0]["run"], run_id.as_str());
}

#[test]
fn policy_limits_are_enforced_per_tenant() {
    let host = Host::new();
    let policy =
        host.policy("[default]\nmax_fuel = 1_000_000_000_000\n[tenants.small]\nmax_fuel = 1_000\n");
    host.ok(&["check", &example("text"), "--policy", &policy]);
    let run = host.cairn.run(&[
        "check",
        &example("text"),
        "--policy",
        &policy,
        "--tenant",
        "small",
    ]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("exceeds max_fuel = 1000 ([tenants.small] of"),
        "{}",
        run.stderr
    );
    let run = host.cairn.run(&[
        "check",
        &example("text"),
        "--policy",
        &policy,
        "--tenant",
        "nobody",
    ]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("no [tenants.nobody] (tenants: small)"),
        "{}",
        run.stderr
    );
}
