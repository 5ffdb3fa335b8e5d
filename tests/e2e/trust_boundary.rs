//! The host's trust boundary: a grant is checked against the policy, and
//! recorded in the audit log, as the directory it really reaches, never as
//! the path it was written with. Every way a path can be made to point
//! somewhere else is tried: `..`, absolute and relative symlinks under the
//! allowed prefix, a sibling whose name only starts like the prefix, and the
//! same inside a signed bundle under `require_signed`.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::support::{Cairn, Pipeline};

const SECRET: &str = "TOP-SECRET-HOST-FILE";

/// A host with `<root>/allowed` as the only readable prefix and a secret in
/// `<root>/outside`.
struct Host {
    cairn: Cairn,
    root: tempfile::TempDir,
}

impl Host {
    fn new() -> Self {
        let host = Self {
            cairn: Cairn::new(),
            root: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(host.at("allowed/real")).unwrap();
        std::fs::write(host.at("allowed/real/data.txt"), "inside").unwrap();
        std::fs::create_dir_all(host.at("outside")).unwrap();
        std::fs::write(host.at("outside/data.txt"), SECRET).unwrap();
        std::fs::write(
            host.at("policy.toml"),
            format!(
                "[default]\nmax_memory = \"1GiB\"\nmax_timeout = \"1m\"\nallow_read = [\"{}\"]\n",
                host.at("allowed").display()
            ),
        )
        .unwrap();
        host
    }

    /// `relative` under the (resolved) root.
    fn at(&self, relative: &str) -> PathBuf {
        self.root.path().canonicalize().unwrap().join(relative)
    }

    fn policy(&self) -> String {
        self.at("policy.toml").to_str().unwrap().to_owned()
    }

    /// A one-step pipeline that is granted `grant` and reads `data.txt` from
    /// where the grant resolves to.
    fn reader(&self, grant: &str, resolves_to: &Path) -> Pipeline {
        Pipeline::new(&format!(
            "name = \"reader\"\n[steps.peek]\ncomponent = \"{{wasm:hostile}}\"\n\
             input = {{ attack = \"read-file\", path = \"{}/data.txt\" }}\n\
             grants = {{ read = [\"{grant}\"] }}\n",
            resolves_to.display()
        ))
    }

    /// Run `target` under the policy and check that it was refused before
    /// anything ran, naming the resolved directory, and audited as such.
    fn assert_refused(&self, target: &str, resolved: &Path) {
        let run = self.cairn.run(&["run", target, "--policy", &self.policy()]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(
            !run.stdout.contains(SECRET) && !run.stderr.contains(SECRET),
            "the secret leaked: {}{}",
            run.stdout,
            run.stderr
        );
        let line = format!("read access to {} is not in allow_read", resolved.display());
        assert!(
            run.stderr.contains(&line),
            "expected {line:?} in {}",
            run.stderr
        );
        let audit = self.cairn.run(&["audit", "--json"]).json();
        let denial = audit
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event"] == "denied")
            .unwrap_or_else(|| panic!("no denial audited: {audit}"));
        assert_eq!(
            denial["capability"],
            format!("read:{}", resolved.display()),
            "the audit log records the resolved directory"
        );
    }
}

#[test]
fn a_dot_dot_grant_is_checked_where_it_resolves() {
    let host = Host::new();
    let grant = format!("{}/../outside", host.at("allowed").display());
    let p = host.reader(&grant, &host.at("outside"));
    host.assert_refused(p.path(), &host.at("outside"));
}

#[test]
fn an_absolute_symlink_under_the_prefix_is_checked_where_it_points() {
    let host = Host::new();
    symlink(host.at("outside"), host.at("allowed/link")).unwrap();
    let p = host.reader(
        host.at("allowed/link").to_str().unwrap(),
        &host.at("outside"),
    );
    host.assert_refused(p.path(), &host.at("outside"));
}

#[test]
fn a_relative_symlink_planted_deep_under_the_prefix_is_checked_where_it_points() {
    // The shape a task can leave behind in a directory it could write:
    // a link that is relative and climbs out once granted as a root.
    let host = Host::new();
    std::fs::create_dir_all(host.at("allowed/d")).unwrap();
    symlink("../../outside", host.at("allowed/d/deep")).unwrap();
    let p = host.reader(
        host.at("allowed/d/deep").to_str().unwrap(),
        &host.at("outside"),
    );
    host.assert_refused(p.path(), &host.at("outside"));
}

#[test]
fn a_sibling_whose_name_extends_the_prefix_is_not_under_it() {
    let host = Host::new();
    std::fs::create_dir_all(host.at("allowed-evil")).unwrap();
    std::fs::write(host.at("allowed-evil/data.txt"), SECRET).unwrap();
    let p = host.reader(
        host.at("allowed-evil").to_str().unwrap(),
        &host.at("allowed-evil"),
    );
    host.assert_refused(p.path(), &host.at("allowed-evil"));
}

#[test]
fn a_symlink_that_stays_under_the_prefix_is_granted_as_its_target() {
    let host = Host::new();
    symlink(host.at("allowed/real"), host.at("allowed/alias")).unwrap();
    let p = host.reader(
        host.at("allowed/alias").to_str().unwrap(),
        &host.at("allowed/real"),
    );
    let run = host
        .cairn
        .run(&["run", p.path(), "--policy", &host.policy(), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["output"]["peek"], "inside");
    let audit = host.cairn.run(&["audit", "--json"]).json();
    assert_eq!(audit[0]["event"], "granted", "{audit}");
    assert_eq!(
        audit[0]["capability"],
        format!("read:{}", host.at("allowed/real").display())
    );
}

#[test]
fn a_signed_bundle_cannot_reach_outside_the_prefix_through_a_symlink() {
    let host = Host::new();
    let key = host.at("author");
    let key = key.to_str().unwrap();
    assert_eq!(host.cairn.run(&["key", "gen", "--out", key]).code, 0);
    let public = std::fs::read_to_string(format!("{key}.pub")).unwrap();
    std::fs::write(
        host.policy(),
        format!(
            "[default]\nmax_memory = \"1GiB\"\nmax_timeout = \"1m\"\nallow_read = [\"{}\"]\n\
             require_signed = true\ntrusted_keys = [\"{}\"]\n",
            host.at("allowed").display(),
            public.trim()
        ),
    )
    .unwrap();
    // The bundle's grants are relative to the bundle file, here inside the
    // allowed prefix, next to a link that leads out of it.
    symlink(host.at("outside"), host.at("allowed/link")).unwrap();
    let p = host.reader("link", &host.at("outside"));
    let bundle = host.at("allowed/reader.cairn");
    let bundle = bundle.to_str().unwrap();
    let pack = host.cairn.run(&["bundle", "pack", p.path(), "-o", bundle]);
    assert_eq!(pack.code, 0, "{}", pack.stderr);
    let sign = host
        .cairn
        .run(&["bundle", "sign", bundle, "--key", &format!("{key}.key")]);
    assert_eq!(sign.code, 0, "{}", sign.stderr);
    host.assert_refused(bundle, &host.at("outside"));
}

/// A bundle of one step of the `hostile` task running `attack`, with
/// `grants` (TOML), packed from `src` to `out`.
fn pack_hostile(cairn: &Cairn, attack: &str, grants: &str, out: &Path) {
    let p = Pipeline::new(&format!(
        "name = \"tenant-job\"\n[steps.job]\ncomponent = \"{{wasm:hostile}}\"\n\
         input = {{ attack = \"{attack}\" }}\ngrants = {{ {grants} }}\n"
    ));
    let pack = cairn.run(&["bundle", "pack", p.path(), "-o", out.to_str().unwrap()]);
    assert_eq!(pack.code, 0, "{}", pack.stderr);
}

#[test]
fn resume_keeps_the_policy_and_tenant_and_refuses_a_swapped_bundle() {
    let host = Host::new();
    let key = host.at("author");
    let key = key.to_str().unwrap();
    assert_eq!(host.cairn.run(&["key", "gen", "--out", key]).code, 0);
    let public = std::fs::read_to_string(format!("{key}.pub")).unwrap();
    std::fs::write(
        host.policy(),
        format!(
            "[default]\nmax_memory = \"1GiB\"\nmax_timeout = \"1m\"\n\
             [tenants.acme]\nrequire_signed = true\ntrusted_keys = [\"{}\"]\n",
            public.trim()
        ),
    )
    .unwrap();
    let bundle = host.at("job.cairn");
    let shown = bundle.to_str().unwrap();
    // A signed bundle whose one step fails, leaving the run resumable.
    pack_hostile(&host.cairn, "panic", "", &bundle);
    let sign = host
        .cairn
        .run(&["bundle", "sign", shown, "--key", &format!("{key}.key")]);
    assert_eq!(sign.code, 0, "{}", sign.stderr);
    let run = host.cairn.run(&[
        "run",
        shown,
        "--policy",
        &host.policy(),
        "--tenant",
        "acme",
        "--json",
    ]);
    assert_ne!(run.code, 0, "the step fails: {}", run.stderr);
    let id = run.json()["run_id"].as_str().unwrap().to_owned();

    // Swapped for an unsigned bundle that reads the host's /etc.
    pack_hostile(&host.cairn, "read-passwd", "read = [\"/etc\"]", &bundle);
    let resumed = host.cairn.run(&["resume", &id]);
    assert_eq!(resumed.code, 1, "{}", resumed.stderr);
    assert!(
        resumed.stderr.contains("is not the one run") && resumed.stderr.contains("--allow-changed"),
        "{}",
        resumed.stderr
    );
    assert!(!resumed.stdout.contains("root:"), "{}", resumed.stdout);

    // Asked for explicitly, the new bundle is checked in full, under the
    // run's own policy and tenant.
    let forced = host.cairn.run(&["resume", &id, "--allow-changed"]);
    assert_eq!(forced.code, 1, "{}", forced.stderr);
    assert!(
        forced.stderr.contains("refusing an unsigned bundle"),
        "{}",
        forced.stderr
    );
    assert!(!forced.stdout.contains("root:"), "{}", forced.stdout);
    let audit = host.cairn.run(&["audit", "--json"]).json();
    let denials: Vec<_> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "denied")
        .collect();
    assert!(
        denials.iter().any(|d| d["capability"] == "signature"),
        "{audit}"
    );
    assert!(
        denials.iter().all(|d| d["tenant"] == "acme"),
        "every denial is the admitted tenant's: {audit}"
    );

    // Nor can the run be moved to a laxer policy or another tenant.
    let lax = host.at("lax.toml");
    std::fs::write(&lax, "[default]\nallow_read = [\"/etc\"]\n").unwrap();
    for args in [
        vec![
            "resume",
            &id,
            "--allow-changed",
            "--policy",
            lax.to_str().unwrap(),
        ],
        vec![
            "replay",
            &id,
            "--allow-changed",
            "--policy",
            lax.to_str().unwrap(),
        ],
        vec!["resume", &id, "--allow-changed", "--policy", &host.policy()],
    ] {
        let moved = host.cairn.run(&args);
        assert_eq!(moved.code, 1, "{args:?}: {}", moved.stderr);
        assert!(
            moved
                .stderr
                .contains("goes on only under the same policy and tenant"),
            "{args:?}: {}",
            moved.stderr
        );
        assert!(!moved.stdout.contains("root:"), "{}", moved.stdout);
    }
}

/// A pipeline: `write` puts a file in its scratch, then `look` (after it)
/// tries to read the same path from its own.
fn scratch_pipeline(scratch: &str, path: &str) -> Pipeline {
    Pipeline::new(&format!(
        "name = \"scratchy\"\n\
         [steps.write]\ncomponent = \"{{wasm:hostile}}\"\n\
         input = {{ attack = \"write-file\", path = \"{path}\" }}\ngrants = {{ scratch = {scratch} }}\n\
         [steps.look]\ncomponent = \"{{wasm:hostile}}\"\nafter = [\"write\"]\nallow_failure = true\n\
         input = {{ attack = \"read-file\", path = \"{path}\" }}\ngrants = {{ scratch = {scratch} }}\n"
    ))
}

#[test]
fn managed_scratch_is_fresh_for_each_attempt_and_removed_afterwards() {
    let host = Host::new();
    std::fs::write(
        host.policy(),
        "[default]\nmax_memory = \"1GiB\"\nallow_scratch = true\n",
    )
    .unwrap();
    let p = scratch_pipeline("true", "/scratch/note.txt");
    let run = host
        .cairn
        .run(&["run", p.path(), "--policy", &host.policy(), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(
        crate::support::step(&report, "write")["status"],
        "succeeded",
        "{report}"
    );
    assert_eq!(
        crate::support::step(&report, "look")["status"],
        "failed",
        "a later attempt does not see an earlier one's files: {report}"
    );
    let root = host.cairn.store.path().join("scratch");
    let left: Vec<_> = std::fs::read_dir(&root)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
    let audit = host.cairn.run(&["audit", "--json"]).json();
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "granted" && e["capability"] == "scratch"),
        "{audit}"
    );
}

#[test]
fn a_host_scratch_directory_needs_an_allow_scratch_prefix_it_resolves_under() {
    let host = Host::new();
    std::fs::create_dir_all(host.at("work/job")).unwrap();
    symlink(host.at("outside"), host.at("work/escape")).unwrap();
    let write = |policy: &str| {
        std::fs::write(
            host.policy(),
            format!("[default]\nmax_memory = \"1GiB\"\n{policy}\n"),
        )
        .unwrap()
    };
    let attempt = |dir: &Path| {
        let p = scratch_pipeline(&format!("\"{}\"", dir.display()), "/nowhere");
        host.cairn
            .run(&["check", p.path(), "--policy", &host.policy()])
    };

    // `true` is engine-managed scratch only: no host directory at all.
    write("allow_scratch = true");
    let run = attempt(&host.at("work/job"));
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("needs a prefix of it in allow_scratch")
            && run.stderr.contains("`scratch = true`"),
        "{}",
        run.stderr
    );

    write(&format!(
        "allow_scratch = [\"{}\"]",
        host.at("work").display()
    ));
    let run = attempt(&host.at("work/job"));
    assert_eq!(run.code, 0, "under the prefix: {}", run.stderr);
    let run = attempt(&host.at("work/escape"));
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "the host directory {} as scratch",
            host.at("outside").display()
        )),
        "checked where the link leads: {}",
        run.stderr
    );
    let run = attempt(&host.at("work/job/../../outside"));
    assert_eq!(run.code, 1, "{}", run.stderr);
}

#[test]
fn a_link_a_task_planted_in_its_scratch_is_checked_where_it_points_when_granted_later() {
    let host = Host::new();
    let work = host.at("allowed/work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(
        host.policy(),
        format!(
            "[default]\nmax_memory = \"1GiB\"\nallow_read = [\"{}\"]\nallow_scratch = [\"{}\"]\n",
            host.at("allowed").display(),
            work.display()
        ),
    )
    .unwrap();
    // Run 1: a task with the host scratch plants a relative link that
    // climbs out of the allowed prefix once it is granted as a root.
    let plant = Pipeline::new(&format!(
        "name = \"plant\"\n[steps.plant]\ncomponent = \"{{wasm:hostile}}\"\n\
         input = {{ attack = \"symlink\", target = \"../../outside\", link = \"{}/escape\" }}\n\
         grants = {{ scratch = \"{}\" }}\n",
        work.display(),
        work.display()
    ));
    let run = host
        .cairn
        .run(&["run", plant.path(), "--policy", &host.policy()]);
    // The sandbox lets a task make such a link (it guards what the task
    // reaches through links, not what they say), so it is there now.
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        std::fs::read_link(work.join("escape")).unwrap(),
        Path::new("../../outside")
    );
    // Run 2: another pipeline asks to read through it.
    let p = host.reader(work.join("escape").to_str().unwrap(), &host.at("outside"));
    host.assert_refused(p.path(), &host.at("outside"));
}
