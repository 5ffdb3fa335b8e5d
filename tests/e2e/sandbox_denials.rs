//! No ambient authority: files, directories, environment and sockets are
//! denied unless granted. Each denial has a positive control showing that the
//! same attack succeeds once granted, so the test would catch a leak.

use crate::support::{Cairn, assert_failed, guest};

#[test]
fn etc_passwd_is_denied_and_readable_only_when_granted() {
    let cairn = Cairn::new();
    let (run, report) = cairn.task_json(&guest("hostile"), r#"{"attack":"read-passwd"}"#, &[]);
    assert_failed(&report, &run, "denied", 16);
    assert!(
        !run.stdout.contains("root:"),
        "leaked /etc/passwd: {}",
        run.stdout
    );

    let (run, report) = cairn.task_json(
        &guest("hostile"),
        r#"{"attack":"read-passwd"}"#,
        &["--allow-read", "/etc"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(report["output"].as_str().unwrap().contains("root:"));
}

#[test]
fn root_directory_cannot_be_listed() {
    let cairn = Cairn::new();
    let (run, report) = cairn.task_json(&guest("hostile"), r#"{"attack":"list-root"}"#, &[]);
    assert_failed(&report, &run, "denied", 16);
    for host_dir in ["etc", "usr", "proc"] {
        assert!(
            !run.stdout.contains(&format!("\"{host_dir}\"")),
            "leaked / listing: {}",
            run.stdout
        );
    }
}

#[test]
fn environment_is_empty_unless_a_variable_is_granted() {
    let cairn = Cairn::new();
    let run = cairn
        .command()
        .env("CAIRN_E2E_SECRET", "hunter2")
        .args([
            "task",
            "run",
            guest("hostile").to_str().unwrap(),
            "--json",
            "--input",
            r#"{"attack":"read-env"}"#,
        ])
        .output()
        .unwrap();
    let run = crate::support::Run::from(run);
    let report = run.json();
    assert_failed(&report, &run, "denied", 16);
    assert!(!run.stdout.contains("hunter2"));

    let run = cairn
        .command()
        .env("CAIRN_E2E_SECRET", "hunter2")
        .args([
            "task",
            "run",
            guest("hostile").to_str().unwrap(),
            "--json",
            "--env",
            "CAIRN_E2E_SECRET",
        ])
        .args(["--input", r#"{"attack":"read-env"}"#])
        .output()
        .unwrap();
    let run = crate::support::Run::from(run);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.json()["output"],
        serde_json::json!(["CAIRN_E2E_SECRET=hunter2"]),
        "only the granted variable"
    );
}

#[test]
fn sockets_are_denied() {
    let cairn = Cairn::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let input = format!(r#"{{"attack":"socket","addr":"{addr}"}}"#);
    let (run, report) = cairn.task_json(&guest("hostile"), &input, &[]);
    assert_failed(&report, &run, "denied", 16);
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "the task reached a host socket");
}

#[test]
fn files_are_written_only_inside_the_scratch_grant() {
    let cairn = Cairn::new();
    let scratch = tempfile::tempdir().unwrap();
    let target = scratch.path().join("out.txt");
    let input = format!(r#"{{"attack":"write-file","path":"{}"}}"#, target.display());

    let (run, _) = cairn.task_json(
        &guest("hostile"),
        &input,
        &["--allow-read", scratch.path().to_str().unwrap()],
    );
    assert_ne!(run.code, 0, "a read-only grant must not allow writes");
    assert!(!target.exists());

    let (run, _) = cairn.task_json(
        &guest("hostile"),
        &input,
        &["--scratch", scratch.path().to_str().unwrap()],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "written from inside the sandbox"
    );
}

#[test]
fn granted_directories_cannot_be_escaped_with_dot_dot() {
    let cairn = Cairn::new();
    let dir = tempfile::tempdir().unwrap();
    let granted = dir.path().join("granted");
    std::fs::create_dir(&granted).unwrap();
    std::fs::write(dir.path().join("secret.txt"), "outside").unwrap();
    let input = format!(
        r#"{{"attack":"read-file","path":"{}/../secret.txt"}}"#,
        granted.display()
    );
    let (run, _) = cairn.task_json(
        &guest("hostile"),
        &input,
        &["--allow-read", granted.to_str().unwrap()],
    );
    assert_ne!(run.code, 0);
    assert!(
        !run.stdout.contains("outside"),
        "escaped the grant: {}",
        run.stdout
    );
}
