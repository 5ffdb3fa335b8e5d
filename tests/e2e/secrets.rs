//! Secrets: taken from the engine's environment, handed to the task, and
//! masked everywhere the host writes what the task said — its logs, its
//! stderr, its progress, its error message — on the terminal, in `--json`
//! reports, in `--events` streams and in every file of the store.

use crate::support::{Cairn, Pipeline, Run, assert_failed, guest, step};

/// Long and unusual enough that finding it anywhere can only be a leak.
const VALUE: &str = "tok-5d1c9e77-never-print-me";
const NAME: &str = "CAIRN_E2E_WAREHOUSE_TOKEN";

fn spill_pipeline() -> Pipeline {
    Pipeline::new(&format!(
        r#"
        name = "spill"
        [steps.login]
        component = "{{wasm:hostile}}"
        input = {{ attack = "spill-env", name = "{NAME}" }}
        grants = {{ secrets = ["{NAME}"] }}
        "#
    ))
}

/// Every file below `dir` that holds `needle`.
pub fn files_holding(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_holding(&path, needle));
        } else if std::fs::read(&path)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
        {
            found.push(path);
        }
    }
    found
}

#[test]
fn a_task_run_sees_its_secret_but_its_logs_and_errors_do_not_show_it() {
    let cairn = Cairn::new();
    let hostile = guest("hostile");
    let task = |extra: &[&str]| {
        let mut cmd = cairn.command();
        cmd.env(NAME, VALUE).args([
            "task",
            "run",
            hostile.to_str().unwrap(),
            "--input",
            &format!(r#"{{"attack":"read-env","name":"{NAME}"}}"#),
        ]);
        Run::from(cmd.args(extra).output().unwrap())
    };
    // Positive control: the task really is handed the value.
    let granted = task(&["--secret", NAME, "--json"]);
    assert_eq!(granted.code, 0, "{}", granted.stderr);
    assert_eq!(granted.json()["output"], VALUE);
    // Without the grant it is not.
    let ungranted = task(&["--json"]);
    assert_failed(&ungranted.json(), &ungranted, "denied", 16);
    assert!(!ungranted.stdout.contains(VALUE), "{}", ungranted.stdout);

    let mut cmd = cairn.command();
    cmd.env(NAME, VALUE).args([
        "task",
        "run",
        hostile.to_str().unwrap(),
        "--secret",
        NAME,
        "--input",
        &format!(r#"{{"attack":"spill-env","name":"{NAME}"}}"#),
    ]);
    let spilled = Run::from(cmd.output().unwrap());
    assert_eq!(spilled.code, 10, "a fatal task error: {}", spilled.stderr);
    assert!(
        spilled
            .stderr
            .contains(&format!("connecting with {NAME}=***"))
            && spilled.stderr.contains("token is ***")
            && spilled.stderr.contains("progress: 1/2 using ***")
            && spilled.stderr.contains("login refused for ***"),
        "the log line, stderr, progress and the error are shown, masked:\n{}",
        spilled.stderr
    );
    assert!(!spilled.stderr.contains(VALUE), "{}", spilled.stderr);
    assert!(!spilled.stdout.contains(VALUE), "{}", spilled.stdout);
}

#[test]
fn a_pipeline_secret_never_reaches_the_report_the_journal_or_the_store() {
    let p = spill_pipeline();
    let cairn = Cairn::new();
    let run = |args: &[&str]| {
        Run::from(
            cairn
                .command()
                .env(NAME, VALUE)
                .args(args)
                .output()
                .unwrap(),
        )
    };

    let report_run = run(&["run", p.path(), "--json"]);
    assert_eq!(report_run.code, 3, "the step fails: {}", report_run.stderr);
    let report = report_run.json();
    let login = step(&report, "login");
    assert_eq!(login["status"], "failed");
    assert_eq!(
        login["message"], "the task failed (fatal): login refused for ***",
        "{login}"
    );
    assert!(!report_run.stdout.contains(VALUE), "{}", report_run.stdout);
    assert!(!report_run.stderr.contains(VALUE), "{}", report_run.stderr);

    let events = p.dir.path().join("events.jsonl");
    let plain = run(&["run", p.path(), "--events", events.to_str().unwrap()]);
    let streamed = std::fs::read_to_string(&events).unwrap();
    assert!(
        streamed.contains("login refused for ***") && !streamed.contains(VALUE),
        "{streamed}"
    );
    assert!(
        plain.stderr.contains("login refused for ***"),
        "{}",
        plain.stderr
    );
    assert!(!plain.stderr.contains(VALUE), "{}", plain.stderr);

    let id = report["run_id"].as_str().unwrap();
    let logs = run(&["runs", "logs", id]);
    assert_eq!(logs.code, 0, "{}", logs.stderr);
    assert!(
        logs.stdout
            .contains(&format!("info: connecting with {NAME}=***"))
            && logs.stdout.contains("stderr: debug: token is ***"),
        "{}",
        logs.stdout
    );

    let audit = run(&["audit", "--json"]);
    assert!(
        audit.stdout.contains(&format!("secret:{NAME}")),
        "{}",
        audit.stdout
    );
    // The strongest check: no byte sequence of the value in any store file
    // (journals, packs, sled, audit log, artifacts).
    assert_eq!(
        files_holding(cairn.store.path(), VALUE.as_bytes()),
        Vec::<std::path::PathBuf>::new()
    );
}

#[test]
fn secrets_are_named_in_manifests_never_written_and_must_be_set() {
    let cairn = Cairn::new();
    let inline = Pipeline::new(
        r#"
        name = "inline"
        [steps.login]
        component = "{wasm:echo}"
        grants = { secrets = ["TOKEN=abc123"] }
        "#,
    );
    let run = cairn.run(&["check", inline.path()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("step `login`") || run.stderr.contains("login"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("a secret's value cannot be written here"),
        "{}",
        run.stderr
    );

    let unset = spill_pipeline();
    let run = Run::from(
        cairn
            .command()
            .env_remove(NAME)
            .args(["check", unset.path()])
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("cannot grant secret \"{NAME}\""))
            && run.stderr.contains("export it there before running"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_policy_grants_only_the_secrets_it_lists() {
    let p = spill_pipeline();
    let cairn = Cairn::new();
    let policy = p.dir.path().join("policy.toml");
    std::fs::write(&policy, "[default]\nallow_secrets = [\"SOMETHING_ELSE\"]\n").unwrap();
    let run = Run::from(
        cairn
            .command()
            .env(NAME, VALUE)
            .args(["run", p.path(), "--policy", policy.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "secret {NAME} is not in allow_secrets ([default] of"
        )),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(VALUE), "{}", run.stderr);

    std::fs::write(
        &policy,
        format!("[default]\nallow_secrets = [\"{NAME}\"]\n"),
    )
    .unwrap();
    let (run, report) = {
        let out = cairn
            .command()
            .env(NAME, VALUE)
            .args([
                "run",
                p.path(),
                "--json",
                "--policy",
                policy.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let run = Run::from(out);
        let report = run.json();
        (run, report)
    };
    assert_eq!(
        run.code, 3,
        "allowed, so it runs (and fails as it means to)"
    );
    assert_eq!(
        step(&report, "login")["message"],
        "the task failed (fatal): login refused for ***"
    );
}

#[test]
fn a_bundle_names_the_secrets_it_asks_for_and_holds_no_value() {
    let p = spill_pipeline();
    let cairn = Cairn::new();
    let bundle = p.dir.path().join("spill.cairn");
    let packed = Run::from(
        cairn
            .command()
            .env(NAME, VALUE)
            .args(["bundle", "pack", p.path(), "-o", bundle.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    assert_eq!(packed.code, 0, "{}", packed.stderr);
    let inspected = cairn.run(&["bundle", "inspect", bundle.to_str().unwrap(), "--json"]);
    assert_eq!(inspected.code, 0, "{}", inspected.stderr);
    assert_eq!(
        step(&inspected.json(), "login")["capabilities"],
        serde_json::json!([format!("secret:{NAME}")]),
        "a host sees what a bundle asks for before it trusts it"
    );
    let bytes = std::fs::read(&bundle).unwrap();
    assert!(!bytes.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()));
}

#[test]
fn under_a_policy_a_tenant_cannot_probe_which_variables_the_host_has() {
    // One variable the engine has, one it has not: under a policy that
    // allows neither, both are refused alike, before planning looks them up.
    let p = Pipeline::new(&format!(
        r#"
        name = "probe"
        [steps.a]
        component = "{{wasm:echo}}"
        grants = {{ env = ["{NAME}"], secrets = ["CAIRN_E2E_SURELY_UNSET"] }}
        [steps.b]
        component = "{{wasm:echo}}"
        grants = {{ env = ["CAIRN_E2E_SURELY_UNSET"], secrets = ["{NAME}"] }}
        "#
    ));
    let policy = p.dir.path().join("policy.toml");
    std::fs::write(&policy, "[default]\nallow_env = [\"LANG\"]\n").unwrap();
    let cairn = Cairn::new();
    let run = Run::from(
        cairn
            .command()
            .env(NAME, VALUE)
            .env_remove("CAIRN_E2E_SURELY_UNSET")
            .args(["check", p.path(), "--policy", policy.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    for (step, env, secret) in [
        ("a", NAME, "CAIRN_E2E_SURELY_UNSET"),
        ("b", "CAIRN_E2E_SURELY_UNSET", NAME),
    ] {
        assert!(
            run.stderr.contains(&format!(
                "error: step `{step}`: environment variable {env} is not in allow_env"
            )) && run.stderr.contains(&format!(
                "error: step `{step}`: secret {secret} is not in allow_secrets"
            )),
            "{}",
            run.stderr
        );
    }
    assert!(
        !run.stderr.contains("engine's environment") && !run.stderr.contains("cannot grant"),
        "nothing says whether a variable is set: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("the policy refuses probe (4 problems)"),
        "{}",
        run.stderr
    );
}
