//! The live display on a real terminal: `cairn run` inside tmux, the screen
//! read back with `capture-pane`. A queued step has no line and no clock,
//! a running one has; when the run ends (here by Ctrl-C) no progress line
//! is left behind, and every step's end is on screen.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{Cairn, Pipeline};

/// A tmux server of this test's own (its own socket), killed on drop.
struct Terminal {
    socket: String,
}

impl Terminal {
    /// Start `command` in a detached 150×50 terminal.
    fn start(command: &str, store: &Path) -> Self {
        let socket = format!(
            "cairn-e2e-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        )
        .replace(['(', ')'], "");
        let term = Terminal { socket };
        let status = term
            .tmux()
            .args(["new-session", "-d", "-s", "run", "-x", "150", "-y", "50"])
            .arg("-e")
            .arg(format!("CAIRN_HOME={}", store.display()))
            .args(["-e", "CAIRN_ARTIFACT_CACHE=off"])
            .arg(command)
            .status()
            .expect("tmux starts (install the tmux package)");
        assert!(status.success(), "tmux new-session failed");
        term
    }

    fn tmux(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &self.socket]);
        cmd
    }

    /// What the terminal shows now.
    fn screen(&self) -> String {
        let out = self
            .tmux()
            .args(["capture-pane", "-p", "-t", "run"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Wait until the screen satisfies `ready` (re-reading it as it
    /// changes), and return it.
    fn wait_for(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let screen = self.screen();
            if ready(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed {what}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn keys(&self, keys: &str) {
        let status = self
            .tmux()
            .args(["send-keys", "-t", "run", keys])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").status();
    }
}

/// A progress line of `step`: two spaces, a spinner glyph, the name.
fn progress_line<'s>(screen: &'s str, step: &str) -> Option<&'s str> {
    screen.lines().find(|line| {
        let mut words = line.split_whitespace();
        line.starts_with("  ")
            && words.next().is_some_and(|glyph| glyph.chars().count() == 1)
            && words.next() == Some(step)
    })
}

#[test]
fn queued_steps_wait_without_a_clock_and_nothing_stale_stays_on_screen() {
    let burn = |name: &str| {
        format!(
            r#"
[steps.{name}]
component = "{{wasm:burn}}"
input = {{ rounds = 100_000_000_000 }}
fuel = 10_000_000_000_000
timeout = "10m"
after = ["quick"]
"#
        )
    };
    let pipeline = Pipeline::new(&format!(
        r#"
name = "screen"
[steps.quick]
component = "{{wasm:echo}}"
input = {{ hello = "terminal" }}
{}{}"#,
        burn("left"),
        burn("right")
    ));
    let cairn = Cairn::new();
    let command = format!(
        "{} run {} --jobs 1; echo exit=$?; sleep 600",
        env!("CARGO_BIN_EXE_cairn"),
        pipeline.path()
    );
    let term = Terminal::start(&command, cairn.store.path());

    // One job slot, two steps ready: one runs with a line and a clock, the
    // other is only counted as queued.
    // (`quick` is reported done once its record is durable, which may be
    // a moment after the next step started on its output.)
    let screen = term.wait_for("quick done and one step running", |s| {
        s.contains("done   quick")
            && (progress_line(s, "left").is_some() || progress_line(s, "right").is_some())
    });
    let running = ["left", "right"]
        .into_iter()
        .filter(|step| progress_line(&screen, step).is_some())
        .count();
    assert_eq!(
        running, 1,
        "exactly one step has a progress line:\n{screen}"
    );
    assert!(screen.contains("done   quick"), "{screen}");
    let screen = term.wait_for("the counts on the total bar", |s| {
        s.contains("1 running, 1 queued")
    });
    assert!(screen.contains("1/3 steps"), "{screen}");
    assert!(
        !screen.contains("start  "),
        "a terminal shows lines, not start events:\n{screen}"
    );

    term.keys("C-c");
    let screen = term.wait_for("the run's end", |s| s.contains("exit=130"));
    for step in ["left", "right"] {
        assert!(
            progress_line(&screen, step).is_none(),
            "no progress line is left behind for {step}:\n{screen}"
        );
        assert!(
            screen.contains(&format!("cancelled  {step}")),
            "the end of {step} is on screen:\n{screen}"
        );
    }
    assert!(
        !screen.contains("/3 steps"),
        "no total bar is left:\n{screen}"
    );
    assert!(screen.contains("done   quick"), "{screen}");
    assert!(screen.contains("pipeline screen cancelled in"), "{screen}");
    let summary: Vec<&str> = screen
        .lines()
        .filter(|l| l.starts_with("left ") || l.starts_with("right "))
        .collect();
    assert_eq!(summary.len(), 2, "{screen}");
    // The step that never ran waited for the whole run and ran for none
    // of it; its attempts are zero.
    let queued = summary
        .iter()
        .find(|l| l.split_whitespace().nth(2) == Some("0"))
        .unwrap_or_else(|| panic!("one step never ran:\n{screen}"));
    assert!(queued.contains("cancelled"), "{queued}");
}
