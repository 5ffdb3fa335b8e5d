//! Read-only commands in a second terminal while a run holds the store,
//! and read-only commands where there is no store.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Cairn, endless_pipeline, start_until};

#[test]
fn runs_list_show_and_logs_work_while_a_run_holds_the_store() {
    let p = endless_pipeline(
        r#"
        [steps.after]
        component = "{wasm:echo}"
        input = { x = "${slow}" }
        "#,
    );
    let cairn = Cairn::new();
    let (child, run_id) = start_until(&cairn, p.path(), "start  slow");

    // The journal shows the step running once the run writes it out (it
    // does when idle); wait for that, not for a fixed time.
    let deadline = Instant::now() + Duration::from_secs(60);
    let shown = loop {
        let shown = cairn.run(&["runs", "show", "last", "--json"]);
        assert_eq!(shown.code, 0, "runs show during a run: {}", shown.stderr);
        let view = shown.json();
        let slow = view["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "slow")
            .cloned()
            .unwrap_or(Value::Null);
        if slow["status"] == "running" {
            break view;
        }
        assert!(
            Instant::now() < deadline,
            "slow never showed as running: {view}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(shown["run"]["id"], run_id.as_str());
    assert_eq!(shown["run"]["status"], "live", "{shown}");

    let listed = cairn.run(&["runs", "list"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert!(
        listed
            .stdout
            .lines()
            .any(|l| l.starts_with(&run_id) && l.contains("running")),
        "the live run is listed as running, not interrupted:\n{}",
        listed.stdout
    );
    let live = cairn.run(&["runs", "list", "--status", "running", "--json"]);
    assert_eq!(live.json().as_array().unwrap().len(), 1, "{}", live.stdout);
    let logs = cairn.run(&["runs", "logs", &run_id]);
    assert_eq!(logs.code, 0, "{}", logs.stderr);

    // What needs the index says the store is busy, clearly.
    let stats = cairn.run(&["cache", "stats"]);
    assert_eq!(stats.code, 1);
    assert!(
        stats.stderr.contains("in use by another cairn process"),
        "{}",
        stats.stderr
    );

    let killed = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    child.wait_with_output().unwrap();
    let after = cairn.run(&["runs", "list", "--json"]);
    assert_eq!(after.json()[0]["status"], "cancelled", "{}", after.stdout);
    let active = cairn.store.path().join("active");
    assert_eq!(
        std::fs::read_dir(&active).map(|d| d.count()).unwrap_or(0),
        0,
        "the live marker is gone with the run"
    );
}

#[test]
fn a_killed_run_reads_as_interrupted_while_another_holds_the_store() {
    let p = endless_pipeline("");
    let cairn = Cairn::new();
    let (mut first, killed) = start_until(&cairn, p.path(), "start  slow");
    first.kill().unwrap(); // its live marker stays behind, naming a dead pid
    first.wait().unwrap();
    let (mut second, live) = start_until(&cairn, p.path(), "start  slow");
    let listed = cairn.run(&["runs", "list", "--json"]).json();
    let status = |id: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .map(|r| r["status"].clone())
    };
    assert_eq!(status(&killed), Some("running".into()), "{listed}");
    assert_eq!(status(&live), Some("live".into()), "{listed}");
    second.kill().unwrap();
    second.wait().unwrap();
}

#[test]
fn read_only_commands_do_not_create_a_store() {
    let cairn = Cairn::new();
    let nowhere = cairn.store.path().join("not-here");
    let store = nowhere.to_str().unwrap();
    let list = cairn.run(&["--store", store, "runs", "list"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(
        list.stderr.contains("there is no Cairn store at"),
        "{}",
        list.stderr
    );
    let show = cairn.run(&["--store", store, "runs", "show", "0123"]);
    show.assert_clean_error(1, "there is no Cairn store at");
    assert!(!nowhere.exists(), "no store was created");

    // In a store that exists, a missing run names the store looked in.
    let cairn = Cairn::new();
    std::fs::create_dir_all(cairn.store.path().join("journal")).unwrap();
    let show = cairn.run(&["runs", "show", "0123"]);
    show.assert_clean_error(
        1,
        &format!(
            "no run 0123 in the store at {}",
            cairn.store.path().display()
        ),
    );
}
