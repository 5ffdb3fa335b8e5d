//! The result cache, the journal, resume after `kill -9`, verified replay,
//! and a store shared by two processes — through the real binary.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::Stdio;

use serde_json::{Value, json};

use crate::support::{
    Cairn, Pipeline, Run, endless_pipeline, guest, repo_root, start_until, start_until_all, step,
};

fn run_json(cairn: &Cairn, path: &str, extra: &[&str]) -> Value {
    let mut args = vec!["run", path, "--json"];
    args.extend_from_slice(extra);
    let run = cairn.run(&args);
    assert!(run.code == 0 || run.code == 3, "{}", run.stderr);
    run.json()
}

fn executed(report: &Value) -> Vec<String> {
    let mut names: Vec<String> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["attempts"].as_u64().unwrap() > 0)
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn rerunning_an_unchanged_pipeline_executes_nothing_and_returns_the_same_bytes() {
    crate::support::guest("echo");
    let orders = repo_root().join("guest-examples/pipelines/orders");
    let cairn = Cairn::new();
    let first = run_json(&cairn, orders.to_str().unwrap(), &[]);
    let second = run_json(&cairn, orders.to_str().unwrap(), &[]);
    assert_eq!(executed(&first).len(), 6);
    assert_eq!(
        executed(&second),
        Vec::<String>::new(),
        "zero sandbox executions on a rerun"
    );
    for s in second["steps"].as_array().unwrap() {
        assert_eq!(s["source"], "cached", "{s}");
    }
    assert_eq!(first["output"], second["output"]);
    assert_eq!(
        step(&first, "report")["output_hash"],
        step(&second, "report")["output_hash"]
    );
    let refreshed = run_json(&cairn, orders.to_str().unwrap(), &["--refresh"]);
    assert_eq!(executed(&refreshed).len(), 6, "--refresh ignores hits");
}

fn two_documents() -> Pipeline {
    let p = Pipeline::new(
        r#"
        name = "two-docs"
        [steps.count_a]
        component = "{wasm:word_count}"
        input = { text = { "$file" = "a.txt" } }
        [steps.count_b]
        component = "{wasm:word_count}"
        input = { text = { "$file" = "b.txt" } }
        [steps.merge]
        component = "{wasm:merge_counts}"
        input = { counts = ["${count_a}", "${count_b}"] }
        [steps.about_b]
        component = "{wasm:echo}"
        input = { words_in_b = "${count_b.total_words}" }
        "#,
    );
    p.file("a.txt", "alpha beta gamma")
        .file("b.txt", "delta epsilon");
    p
}

#[test]
fn editing_one_data_file_reruns_exactly_its_downstream_steps() {
    let p = two_documents();
    let cairn = Cairn::new();
    assert_eq!(executed(&run_json(&cairn, p.path(), &[])).len(), 4);
    p.file("a.txt", "alpha beta gamma gamma");
    let report = run_json(&cairn, p.path(), &[]);
    assert_eq!(executed(&report), ["count_a", "merge"]);
    assert_eq!(report["output"]["merge"]["total_words"], 6);
}

#[test]
fn a_changed_element_of_a_map_reruns_only_that_element() {
    let p = Pipeline::new(
        r#"
        name = "docs"
        [steps.split]
        component = "{wasm:split_text}"
        input = { text = { "$file" = "corpus.txt" } }
        [steps.count]
        component = "{wasm:word_count}"
        map = "${split.documents}"
        input = { text = "${item}" }
        "#,
    );
    p.file("corpus.txt", "one\n---\ntwo two\n---\nthree three three\n");
    let cairn = Cairn::new();
    run_json(&cairn, p.path(), &[]);
    p.file(
        "corpus.txt",
        "one\n---\ntwo two CHANGED\n---\nthree three three\n",
    );
    let report = run_json(&cairn, p.path(), &[]);
    assert_eq!(step(&report, "count")["attempts"], 1, "one element ran");
    assert_eq!(
        step(&report, "count")["reused"],
        2,
        "two came from the cache"
    );
}

#[test]
fn nondeterministic_grants_are_not_cached_unless_the_step_opts_in() {
    let p = Pipeline::new(
        r#"
        name = "clocks"
        [steps.real_clock]
        component = "{wasm:clock_random}"
        grants = { clock = true }
        [steps.opted_in]
        component = "{wasm:clock_random}"
        input = { salt = 1 }
        grants = { clock = true }
        cache = "inputs"
        [steps.virtual_clock]
        component = "{wasm:clock_random}"
        input = { salt = 2 }
        "#,
    );
    let cairn = Cairn::new();
    run_json(&cairn, p.path(), &[]);
    assert_eq!(executed(&run_json(&cairn, p.path(), &[])), ["real_clock"]);
}

#[test]
fn cache_stats_gc_and_clear() {
    let p = two_documents();
    let cairn = Cairn::new();
    run_json(&cairn, p.path(), &[]);
    let stats = cairn.run(&["cache", "stats", "--json"]);
    assert_eq!(stats.code, 0, "{}", stats.stderr);
    assert_eq!(stats.json()["entries"], 4);
    let gc = cairn.run(&["cache", "gc", "--older-than", "1h"]);
    assert!(gc.stdout.contains("removed 0"), "{}", gc.stdout);
    assert!(
        executed(&run_json(&cairn, p.path(), &[])).is_empty(),
        "young results survive gc's compaction of the packs"
    );
    let clear = cairn.run(&["cache", "clear"]);
    assert!(clear.stdout.contains("removed 4"), "{}", clear.stdout);
    let packed: u64 = files_in(&cairn.store.path().join("packs"))
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert_eq!(packed, 0, "clear reclaims the packs' space");
    assert_eq!(
        cairn.run(&["cache", "stats", "--json"]).json()["entries"],
        0
    );
    assert_eq!(
        executed(&run_json(&cairn, p.path(), &[])).len(),
        4,
        "cleared results run again"
    );
}

fn chain(steps: usize) -> Pipeline {
    chain_of(steps, 60_000_000)
}

/// `steps` burn steps in a chain, each `rounds` long, uncached.
fn chain_of(steps: usize, rounds: u64) -> Pipeline {
    let mut manifest =
        String::from("name = \"chain\"\n[defaults]\nfuel = 100_000_000_000\ncache = \"off\"\n");
    for i in 0..steps {
        let input = if i == 0 {
            format!("{{ rounds = {rounds} }}")
        } else {
            format!("{{ rounds = {rounds}, seed = \"${{s{}.value}}\" }}", i - 1)
        };
        manifest.push_str(&format!(
            "[steps.s{i}]\ncomponent = \"{{wasm:burn}}\"\ninput = {input}\n"
        ));
    }
    Pipeline::new(&manifest)
}

/// Kill `cairn run` with SIGKILL once it has printed `lines`, when steps
/// `s0..finished` have been reported done, then resume the run.
fn crash_and_resume(lines: &[&str], finished: usize) {
    let p = chain(6);
    let cairn = Cairn::new();
    let (mut child, run_id) = start_until_all(&cairn, p.path(), lines);
    child.kill().unwrap(); // SIGKILL: no cleanup of any kind
    child.wait().unwrap();

    let listed = cairn.run(&["runs", "list", "--json"]);
    assert_eq!(
        listed.code, 0,
        "the store opens cleanly after kill -9: {}",
        listed.stderr
    );
    assert_eq!(
        listed.json()[0]["status"],
        "running",
        "an interrupted run still says running"
    );

    let resumed = cairn.run(&["resume", &run_id, "--json"]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    let report = resumed.json();
    for i in 0..6 {
        assert_eq!(step(&report, &format!("s{i}"))["status"], "succeeded");
    }
    for i in 0..finished {
        let s = step(&report, &format!("s{i}"));
        assert_eq!(
            s["attempts"], 0,
            "s{i} finished before the kill and must not run again: {s}"
        );
        assert_eq!(s["source"], "journal");
    }
    assert!(step(&report, "s5")["attempts"].as_u64().unwrap() >= 1);

    // Same answer as an uninterrupted run.
    let clean = run_json(&Cairn::new(), p.path(), &[]);
    assert_eq!(report["output"], clean["output"]);
    let shown = cairn.run(&["runs", "show", &run_id, "--json"]);
    assert_eq!(shown.json()["run"]["status"], "succeeded");
    let lineage = cairn.run(&["lineage", &run_id]).json();
    let mut jobs: Vec<&str> = lineage
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["job"]["name"].as_str().unwrap())
        .collect();
    jobs.sort_unstable();
    assert_eq!(
        jobs,
        ["s0", "s1", "s2", "s3", "s4", "s5"],
        "each step once in the lineage of a resumed run"
    );
}

/// Pipelined durability under fire: a chain is killed with SIGKILL again
/// and again, each time a few steps after it last reported one done, and
/// resumed. A step reported done is never lost (the journal has it after
/// the kill) and never runs again; every step is reported done once.
#[test]
fn a_chain_killed_again_and_again_loses_and_repeats_nothing_it_reported() {
    let steps = 24;
    let p = chain_of(steps, 2_000_000);
    let cairn = Cairn::new();
    let mut reported: HashSet<String> = HashSet::new();
    // Durable but killed before its report reached the terminal: taken
    // from the journal later, without running again.
    let mut from_journal: HashSet<String> = HashSet::new();
    let mut run_id: Option<String> = None;
    let mut kills = 0;
    for round in 0.. {
        assert!(round < 4 * steps, "the chain never finished");
        let mut command = cairn.command();
        match &run_id {
            None => command.args(["run", p.path()]),
            Some(id) => command.args(["resume", id]),
        };
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        // What a line says of the steps: none may start once reported
        // done, none may be reported done twice.
        let mut see = |line: &str| -> bool {
            let word = |rest: &str| rest.split_whitespace().next().unwrap_or("").to_owned();
            if let Some(rest) = line.strip_prefix("run ") {
                run_id.get_or_insert_with(|| word(rest));
            } else if let Some(rest) = line.strip_prefix("start  ") {
                let step = word(rest);
                assert!(
                    !reported.contains(&step),
                    "{step} ran again after it was reported done (round {round})"
                );
            } else if let Some(rest) = line.strip_prefix("done   ") {
                let step = word(rest);
                assert!(reported.insert(step.clone()), "{step} reported done twice");
                return true;
            } else if let Some(rest) = line.strip_prefix("resumed ") {
                from_journal.insert(word(rest));
            }
            false
        };
        // Kill after one, two or three fresh reports.
        let (want, mut fresh) = (1 + round % 3, 0);
        let mut line = String::new();
        let ended = loop {
            line.clear();
            if stderr.read_line(&mut line).unwrap() == 0 {
                break true;
            }
            if see(&line) {
                fresh += 1;
                if fresh == want {
                    break false;
                }
            }
        };
        if ended {
            assert!(child.wait().unwrap().success(), "round {round}");
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // What it reported before it died counts too.
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
        for line in rest.lines() {
            see(line);
        }
        kills += 1;
        let id = run_id.as_deref().unwrap();
        let shown = cairn.run(&["runs", "show", id, "--json"]).json();
        for step in &reported {
            let view = shown["steps"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| &s["name"] == step)
                .unwrap_or_else(|| panic!("{step} is not in the journal: {shown}"));
            assert!(
                view["status"] == "succeeded" || view["status"] == "resumed",
                "{step} was reported done but the journal lost it: {view}"
            );
        }
    }
    assert!(kills >= 5, "only {kills} kills");
    let all: HashSet<String> = (0..steps).map(|i| format!("s{i}")).collect();
    let done: HashSet<String> = reported.union(&from_journal).cloned().collect();
    assert_eq!(done, all, "every step ran to a report, or to the journal");
    let shown = cairn.run(&["runs", "show", run_id.as_deref().unwrap(), "--json"]);
    assert_eq!(shown.json()["run"]["status"], "succeeded");
}

#[test]
fn kill_9_after_the_first_step_then_resume() {
    crash_and_resume(&["done   s0 "], 1);
}

#[test]
fn kill_9_mid_pipeline_then_resume() {
    crash_and_resume(&["done   s2 "], 3);
}

#[test]
fn kill_9_while_a_step_runs_then_resume() {
    // s3 is in flight: it runs again, nothing before it does. (With
    // pipelined durability s3 may start before s2 is reported done; s2
    // counts as done once it is.)
    crash_and_resume(&["start  s3", "done   s2 "], 3);
}

#[test]
fn a_second_process_on_the_same_store_is_refused_clearly() {
    // A step that runs until it is cancelled: the second process's wait for
    // the lock (LOCK_WAIT) cannot outlast the first.
    let p = endless_pipeline("");
    let cairn = Cairn::new();
    let (first, run_id) = start_until(&cairn, p.path(), "start  slow");
    // A second run needs the store's index (read-only commands do not,
    // see watching.rs).
    let second = cairn.run(&["run", p.path()]);
    assert_eq!(second.code, 1);
    assert!(
        second.stderr.contains("in use by another cairn process"),
        "{}",
        second.stderr
    );
    // The first process is unharmed: it still answers Ctrl-C and records
    // its run properly.
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &first.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let out = first.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let listed = cairn.run(&["runs", "list", "--json"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert_eq!(listed.json()[0]["id"], run_id.as_str());
    assert_eq!(listed.json()[0]["status"], "cancelled");
}

#[test]
fn replay_verify_passes_on_deterministic_runs_and_flags_nondeterminism() {
    crate::support::guest("echo");
    let cairn = Cairn::new();
    let text = repo_root().join("guest-examples/pipelines/text");
    let run = cairn.run(&["run", text.to_str().unwrap(), "--json"]);
    let id = run.json()["run_id"].as_str().unwrap().to_owned();
    let replay = cairn.run(&["replay", &id, "--verify"]);
    assert_eq!(replay.code, 0, "{}", replay.stderr);
    assert!(
        replay.stderr.contains("verified: all 3 steps"),
        "{}",
        replay.stderr
    );

    let p = Pipeline::new(
        r#"
        name = "wobbly"
        [steps.steady]
        component = "{wasm:clock_random}"
        [steps.wobbly]
        component = "{wasm:clock_random}"
        grants = { clock = true, random = true }
        "#,
    );
    let run = cairn.run(&["run", p.path(), "--json"]);
    let id = run.json()["run_id"].as_str().unwrap().to_owned();
    let replay = cairn.run(&["replay", &id, "--verify", "--json"]);
    assert_eq!(replay.code, 4, "{}", replay.stderr);
    let verdict: Value = serde_json::from_str(replay.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(verdict["verified"], 2);
    assert_eq!(verdict["nondeterministic"].as_array().unwrap().len(), 1);
    assert_eq!(verdict["nondeterministic"][0]["step"], "wobbly");
}

#[test]
fn runs_show_logs_and_lineage_describe_a_run() {
    crate::support::guest("echo");
    let cairn = Cairn::new();
    let text = repo_root().join("guest-examples/pipelines/text");
    let run = cairn.run(&["run", text.to_str().unwrap(), "--json"]);
    let report = run.json();
    let id = report["run_id"].as_str().unwrap().to_owned();

    let shown = cairn.run(&["runs", "show", &id]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    assert!(shown.stdout.contains("✓ split"), "{}", shown.stdout);
    assert!(
        shown.stdout.contains("← split"),
        "dependencies are drawn: {}",
        shown.stdout
    );
    assert!(
        shown.stdout.contains("↷ long_corpus_note"),
        "{}",
        shown.stdout
    );

    let logs = cairn.run(&["runs", "logs", &id, "--step", "split"]);
    assert!(
        logs.stdout
            .contains("== split attempt 1\ninfo: split into 4 documents"),
        "{}",
        logs.stdout
    );

    let lineage = cairn.run(&["lineage", &id]);
    let events: Value = serde_json::from_str(&lineage.stdout).unwrap();
    let merge = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["job"]["name"] == "merge")
        .unwrap();
    assert_eq!(merge["eventType"], "COMPLETE");
    assert_eq!(merge["run"]["runId"], json!(id));
    let output = format!(
        "blake3:{}",
        step(&report, "merge")["output_hash"].as_str().unwrap()
    );
    assert_eq!(merge["outputs"][0]["name"], output);
    assert!(
        merge["inputs"][0]["name"]
            .as_str()
            .unwrap()
            .starts_with("blake3:")
    );
}

fn run_ids(cairn: &Cairn) -> Vec<String> {
    let listed = cairn.run(&["runs", "list", "--json"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let mut ids: Vec<String> = listed
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn journal_files(cairn: &Cairn) -> usize {
    std::fs::read_dir(cairn.store.path().join("journal"))
        .unwrap()
        .count()
}

#[test]
fn runs_gc_forgets_old_runs_keeps_interrupted_ones_and_the_cache() {
    let (docs, long) = (two_documents(), chain(2));
    let cairn = Cairn::new();
    let first = run_json(&cairn, docs.path(), &[])["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let second = run_json(&cairn, docs.path(), &[])["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (mut child, interrupted) = start_until(&cairn, long.path(), "done   s0 ");
    child.kill().unwrap();
    child.wait().unwrap();
    let mut all = vec![first.clone(), second.clone(), interrupted.clone()];
    all.sort();
    assert_eq!(run_ids(&cairn), all);
    assert_eq!(journal_files(&cairn), 3);

    // The default retention (30 days) keeps runs this young.
    let kept = cairn.run(&["runs", "gc", "--json"]);
    assert_eq!(kept.code, 0, "{}", kept.stderr);
    assert_eq!(kept.json()["removed"], json!([]));
    assert_eq!(run_ids(&cairn), all);

    // A dry run says what would go and removes nothing.
    let dry = cairn.run(&["runs", "gc", "--older-than", "0s", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(
        dry.stdout.contains("would forget 2 runs") && dry.stdout.contains(&first),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.contains("resumable runs (interrupted or cancelled) of that age kept, as `cairn resume` can still continue them (--include-interrupted forgets them too): 1"),
        "{}",
        dry.stdout
    );
    assert_eq!(run_ids(&cairn), all);

    let gc = cairn.run(&["runs", "gc", "--older-than", "0s", "--json"]);
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    let report = gc.json();
    let mut removed: Vec<String> = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    removed.sort();
    let mut finished = vec![first.clone(), second];
    finished.sort();
    assert_eq!(removed, finished);
    assert_eq!(report["kept_interrupted"], 1);
    assert!(report["freed_bytes"].as_u64().unwrap() > 0);
    assert_eq!(run_ids(&cairn), vec![interrupted.clone()]);
    assert_eq!(journal_files(&cairn), 1);
    let gone = cairn.run(&["runs", "show", &first]);
    assert_eq!(gone.code, 1);
    assert!(gone.stderr.contains("no run"), "{}", gone.stderr);

    // Results outlive the runs that made them.
    let rerun = run_json(&cairn, docs.path(), &[]);
    assert_eq!(executed(&rerun), Vec::<String>::new(), "{rerun}");

    let rerun_id = rerun["run_id"].as_str().unwrap().to_owned();
    let all_gone = cairn.run(&["runs", "gc", "--older-than", "0s", "--include-interrupted"]);
    assert_eq!(all_gone.code, 0, "{}", all_gone.stderr);
    assert!(
        all_gone
            .stdout
            .starts_with("forgot 2 runs older than 0s, freeing "),
        "{}",
        all_gone.stdout
    );
    assert_eq!(
        run_ids(&cairn),
        Vec::<String>::new(),
        "{rerun_id} and {interrupted} are gone"
    );
    assert_eq!(journal_files(&cairn), 0);
}

#[test]
fn a_damaged_store_is_reported_clearly() {
    let p = two_documents();
    let cairn = Cairn::new();
    run_json(&cairn, p.path(), &[]);
    let db = cairn.store.path().join("db");
    let files: Vec<_> = std::fs::read_dir(&db)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    // Several kinds of damage; each must be an error, never "no runs".
    for garbage in [&b"this is not a sled file"[..], b"x\n", b""] {
        for path in &files {
            std::fs::write(path, garbage).unwrap();
        }
        let run = cairn.run(&["runs", "list"]);
        assert_eq!(run.code, 1, "{:?}: {}{}", garbage, run.stdout, run.stderr);
        assert!(
            run.stderr.contains("cannot be read") && run.stderr.contains(".broken"),
            "{}",
            run.stderr
        );
        assert!(
            !run.stderr.contains("panicked") && !run.stderr.contains("internal error"),
            "{}",
            run.stderr
        );
    }
}

fn files_in(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn damaged_result_packs_are_recomputed_and_damaged_journals_named() {
    let p = two_documents();
    let cairn = Cairn::new();
    let first = run_json(&cairn, p.path(), &[]);
    let id = first["run_id"].as_str().unwrap().to_owned();

    // Results are recomputable: garbage in a pack means those steps run again.
    for pack in files_in(&cairn.store.path().join("packs")) {
        let mut bytes = std::fs::read(&pack).unwrap();
        for b in bytes.iter_mut().skip(30) {
            *b ^= 0x5a;
        }
        std::fs::write(&pack, bytes).unwrap();
    }
    let again = run_json(&cairn, p.path(), &[]);
    assert_eq!(executed(&again).len(), 4, "damaged results run again");
    assert_eq!(again["output"], first["output"]);
    let third = run_json(&cairn, p.path(), &[]);
    assert!(executed(&third).is_empty(), "and are cached afresh");

    // A journal cut short (a write the machine never finished) still reads.
    let journal = cairn.store.path().join("journal").join(format!("{id}.log"));
    let len = std::fs::metadata(&journal).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let shown = cairn.run(&["runs", "show", &id]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);

    // Damage inside a journal is an error that names the run.
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes[30] ^= 0xff;
    std::fs::write(&journal, bytes).unwrap();
    for args in [
        &["runs", "show", &id][..],
        &["resume", &id],
        &["lineage", &id],
    ] {
        let out = cairn.run(args);
        assert_eq!(out.code, 1, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr
                .contains(&format!("the journal of run {id} is damaged")),
            "{args:?}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
    let listed = cairn.run(&["runs", "list"]);
    assert_eq!(
        listed.code, 0,
        "other commands still work: {}",
        listed.stderr
    );
}

#[test]
fn runs_list_filters_by_pipeline_and_status_and_limits() {
    let (docs, broken) = (
        two_documents(),
        Pipeline::new(
            r#"
            name = "broken"
            [steps.panics]
            component = "{wasm:hostile}"
            input = { attack = "panic" }
            "#,
        ),
    );
    let cairn = Cairn::new();
    let id = |report: Value| report["run_id"].as_str().unwrap().to_owned();
    let older = id(run_json(&cairn, docs.path(), &[]));
    let newer = id(run_json(&cairn, docs.path(), &[]));
    let failed = id(run_json(&cairn, broken.path(), &[]));
    let listed = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["runs", "list", "--json"];
        all.extend_from_slice(args);
        let run = cairn.run(&all);
        assert_eq!(run.code, 0, "{}", run.stderr);
        run.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        listed(&[]),
        [failed.as_str(), &newer, &older],
        "newest first"
    );
    assert_eq!(
        listed(&["--pipeline", "two-docs"]),
        [newer.as_str(), &older]
    );
    assert_eq!(listed(&["--status", "failed"]), [failed.as_str()]);
    assert_eq!(listed(&["--status", "interrupted"]), Vec::<String>::new());
    assert_eq!(
        listed(&["--pipeline", "two-docs", "-n", "1"]),
        [newer.as_str()]
    );
    let none = cairn.run(&["runs", "list", "--pipeline", "nope"]);
    assert_eq!(
        none.stdout.trim(),
        format!("no matching runs in {}", cairn.store.path().display())
    );
    let bad = cairn.run(&["runs", "list", "--status", "exploded"]);
    assert_eq!(bad.code, 2, "a usage error: {}", bad.stderr);
    assert!(
        bad.stderr
            .contains("possible values: succeeded, failed, cancelled, interrupted"),
        "{}",
        bad.stderr
    );
}

#[test]
fn map_elements_reported_finished_are_not_run_again_after_kill_9() {
    let items: Vec<String> = (0..40).map(|i| i.to_string()).collect();
    let p = Pipeline::new(&format!(
        "name = \"mapped\"\n[defaults]\nfuel = 100_000_000_000\ncache = \"off\"\n\
         [steps.list]\ncomponent = \"{{wasm:echo}}\"\ninput = {{ items = [{}] }}\n\
         [steps.fan]\ncomponent = \"{{wasm:burn}}\"\nmap = \"${{list.items}}\"\n\
         input = {{ rounds = 30_000_000, seed = \"${{item}}\" }}\n",
        items.join(",")
    ));
    let cairn = Cairn::new();
    // The event stream on stdout: kill as soon as four elements are reported.
    let mut child = cairn
        .command()
        .args(["run", p.path(), "--jobs", "1", "--events", "/dev/stdout"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut events = BufReader::new(child.stdout.take().unwrap());
    let (mut run_id, mut reported) = (String::new(), 0);
    let mut line = String::new();
    while reported < 4 {
        line.clear();
        assert_ne!(
            events.read_line(&mut line).unwrap(),
            0,
            "the run ended early"
        );
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["event"] == "run-started" {
            run_id = event["run"].as_str().unwrap().to_owned();
        }
        if event["event"] == "item-finished" {
            reported += 1;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let resumed = cairn.run(&["resume", &run_id, "--json"]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    let report = resumed.json();
    let fan = step(&report, "fan");
    assert_eq!(fan["status"], "succeeded");
    assert!(
        fan["reused"].as_u64().unwrap() >= 4,
        "the {reported} elements reported before the kill ran again: {fan}"
    );
}

/// A run records the path of its pipeline as text; a path that is not
/// UTF-8 is refused up front with what to do, never a panic, and leaves no
/// run behind.
#[test]
#[cfg(unix)]
fn a_pipeline_path_that_is_not_utf8_is_refused_cleanly() {
    use std::os::unix::ffi::OsStrExt;
    let cairn = Cairn::new();
    let parent = tempfile::tempdir().expect("temp dir");
    let dir = parent.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    std::fs::create_dir(&dir).expect("create a non-UTF-8 directory");
    let manifest = format!(
        "name = \"latin1\"\n[steps.one]\ncomponent = \"{}\"\ninput = {{ text = \"hi\" }}\n",
        guest("echo").display()
    );
    std::fs::write(dir.join("pipeline.toml"), manifest).expect("write manifest");
    let run = Run::from(
        cairn
            .command()
            .arg("run")
            .arg(&dir)
            .output()
            .expect("cairn starts"),
    );
    run.assert_clean_error(1, "is not valid UTF-8");
    let listed = cairn.run(&["runs", "list", "--json"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert_eq!(listed.json(), json!([]), "no run is recorded");
}

#[test]
fn a_refreshed_rerun_stores_nothing_new_and_gc_reclaims_replaced_results() {
    // `steady` gives the same output every time; `wobbly` reads the real
    // clock and randomness, so each refreshed run replaces its result.
    let p = Pipeline::new(
        "name = \"refreshed\"\n\
         [steps.steady]\ncomponent = \"{wasm:echo}\"\ninput = { n = 1 }\n\
         [steps.wobbly]\ncomponent = \"{wasm:clock_random}\"\n\
         grants = { clock = true, random = true }\ncache = \"inputs\"\n",
    );
    let cairn = Cairn::new();
    let stats = || {
        let stats = cairn.run(&["cache", "stats", "--json"]);
        assert_eq!(stats.code, 0, "{}", stats.stderr);
        stats.json()
    };
    let packs = || -> u64 {
        files_in(&cairn.store.path().join("packs"))
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum()
    };
    run_json(&cairn, p.path(), &[]);
    let first = stats();
    assert_eq!(first["entries"], 2);
    assert_eq!(first["dead_bytes"], 0);
    let packed = packs();
    assert_eq!(first["live_bytes"], packed, "every packed byte is live");

    // Only `steady` this time: its identical result is not written again.
    let only_steady = Pipeline::new(
        "name = \"refreshed\"\n\
         [steps.steady]\ncomponent = \"{wasm:echo}\"\ninput = { n = 1 }\n",
    );
    for _ in 0..3 {
        let report = run_json(&cairn, only_steady.path(), &["--refresh"]);
        assert_eq!(executed(&report), ["steady"], "--refresh runs it");
    }
    assert_eq!(packs(), packed, "the packs did not grow");
    assert_eq!(stats()["dead_bytes"], 0);

    // A new output under the same key replaces the old, which is dead.
    run_json(&cairn, p.path(), &["--refresh"]);
    let replaced = stats();
    assert_eq!(replaced["entries"], 2);
    let dead = replaced["dead_bytes"].as_u64().unwrap();
    assert!(dead > 0, "{replaced}");
    assert_eq!(
        replaced["live_bytes"].as_u64().unwrap() + dead,
        packs(),
        "live and dead add up to the packs"
    );
    let shown = cairn.run(&["cache", "stats"]);
    assert!(shown.stdout.contains("dead "), "{}", shown.stdout);

    let gc = cairn.run(&["cache", "gc", "--older-than", "1h"]);
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    assert!(gc.stdout.contains("reclaimed"), "{}", gc.stdout);
    let after = stats();
    assert_eq!(after["dead_bytes"], 0, "{after}");
    assert_eq!(after["entries"], 2);
    assert_eq!(after["live_bytes"], replaced["live_bytes"]);
    assert_eq!(packs(), after["live_bytes"].as_u64().unwrap());
    assert!(
        executed(&run_json(&cairn, p.path(), &[])).is_empty(),
        "both results are still there after gc"
    );
}
