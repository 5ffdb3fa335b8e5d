//! How fast the dashboard opens a 2 000-step run, in a real headless
//! Chromium against an in-process `cairn serve` on loopback (release build).
//!
//! One run of a 2 000-step pipeline (`s0`, then 1 999 steps after it), then
//! the run's page loaded afresh `ROUNDS` times, measured in the page:
//! - drawn: from navigation to the DAG (the wide layer closed as one node)
//!   and the whole steps table on the page (sign-in check, run, graph and
//!   journal fetched, everything drawn);
//! - opened: from a click on the closed layer to its 2 000 nodes drawn;
//! - panel: from a click on a node to its step panel showing its attempts.
//!
//! Needs the guests built, and `chromium` + `chromium-driver` installed:
//!   cargo build --release --target wasm32-wasip2 --manifest-path guest-examples/Cargo.toml
//! Run: cargo bench -p cairn-engine --bench dashboard

#[path = "../../tests/e2e/browser.rs"]
#[allow(dead_code)]
mod browser;

use std::path::PathBuf;
use std::time::Duration;

use cairn::server::{Role, ServerConfig};

const ROUNDS: usize = 10;
const STEPS: usize = 2000;

fn echo() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../guest-examples/target/wasm32-wasip2/release/echo.wasm");
    assert!(
        path.exists(),
        "{}: build the guest examples first",
        path.display()
    );
    path
}

fn wide_bundle(dir: &std::path::Path) -> Vec<u8> {
    let echo = echo();
    let echo = echo.display();
    let mut manifest =
        format!("name = \"wide\"\n[steps.s0]\ncomponent = \"{echo}\"\ninput = {{ n = 0 }}\n");
    for i in 1..STEPS {
        manifest.push_str(&format!(
            "[steps.s{i}]\ncomponent = \"{echo}\"\ninput = {{ n = \"${{s0.n}}\", i = {i} }}\n"
        ));
    }
    std::fs::write(dir.join("pipeline.toml"), manifest).unwrap();
    cairn::bundle::pack(dir).unwrap()
}

fn summary(name: &str, mut times: Vec<Duration>) {
    times.sort();
    println!(
        "dashboard/2000-steps/{name:<7} median {:>7.1} ms   min {:>7.1} ms   max {:>7.1} ms   ({} rounds)",
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        times.len()
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let config = ServerConfig::embedded(dir.path().join("data"));
        let server = cairn::server::Server::open(&config).unwrap().server;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(cairn::server::serve(
            server.clone(),
            listener,
            std::future::pending(),
            Duration::from_secs(1),
        ));
        let tenant = config.tenants.keys().next().cloned();
        let (_, token) = server
            .tokens
            .create(tenant, Role::Operator, None, 0)
            .unwrap();

        // Push and run the pipeline (blocking HTTP off the runtime's threads).
        let src = tempfile::tempdir().unwrap();
        let bytes = wide_bundle(src.path());
        let (base, auth) = (url.clone(), format!("Bearer {token}"));
        let run = tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
            let text = |mut r: ureq::http::Response<ureq::Body>| r.body_mut().read_to_string().unwrap();
            let pushed = text(
                agent
                    .post(&format!("{base}/v1/bundles"))
                    .header("Authorization", &auth)
                    .send(bytes)
                    .unwrap(),
            );
            let bundle: serde_json::Value = serde_json::from_str(&pushed).unwrap();
            let started = text(
                agent
                    .post(&format!("{base}/v1/runs"))
                    .header("Authorization", &auth)
                    .header("Content-Type", "application/json")
                    .send(serde_json::json!({"bundle": bundle["id"]}).to_string())
                    .unwrap(),
            );
            let started: serde_json::Value = serde_json::from_str(&started).unwrap();
            let run = started["id"].as_str().unwrap().to_owned();
            // The event stream ends with the run.
            let events = text(
                agent
                    .get(&format!("{base}/v1/runs/{run}/events"))
                    .header("Authorization", &auth)
                    .call()
                    .unwrap(),
            );
            assert!(events.contains("\"status\":\"succeeded\""), "{events}");
            run
        })
        .await
        .unwrap();

        let browser = browser::Browser::start().await;
        browser.sign_in(&url, &token).await;
        browser.wait("#runs").await;
        // Measured in the page (`performance.now()` counts from the
        // navigation's start; each check runs once a frame), so WebDriver's
        // polling is not in the figures.
        const UNTIL: &str = "const [css, done] = arguments; \
            const check = () => document.querySelector(css) ? done(performance.now()) : requestAnimationFrame(check); \
            check();";
        const CLICK_UNTIL: &str = "const [click, css, done] = arguments; \
            const t0 = performance.now(); \
            document.querySelector(click).dispatchEvent(new MouseEvent('click', { bubbles: true })); \
            const check = () => document.querySelector(css) ? done(performance.now() - t0) : requestAnimationFrame(check); \
            check();";
        let ms = |v: serde_json::Value| Duration::from_secs_f64(v.as_f64().unwrap() / 1e3);
        let (mut drawn, mut opened, mut panel) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..=ROUNDS {
            // A fresh page each round: nothing carried over but the cookie.
            browser.client.goto("about:blank").await.unwrap();
            browser.client.goto(&format!("{url}/#/runs/{run}")).await.unwrap();
            let last_row = format!("#steps tbody tr[data-step='s{}']", STEPS - 1);
            let t_drawn = ms(browser
                .client
                .execute_async(UNTIL, vec![last_row.into()])
                .await
                .unwrap());
            let t_opened = ms(browser
                .client
                .execute_async(
                    CLICK_UNTIL,
                    vec![
                        "#dag g.node.group[data-layer='1']".into(),
                        "#dag g.node[data-step='s1234']".into(),
                    ],
                )
                .await
                .unwrap());
            let t_panel = ms(browser
                .client
                .execute_async(
                    CLICK_UNTIL,
                    vec![
                        "#dag g.node[data-step='s1234']".into(),
                        "#step-panel #attempts tbody tr".into(),
                    ],
                )
                .await
                .unwrap());
            // The first round warms the server's caches and the browser's.
            if round > 0 {
                drawn.push(t_drawn);
                opened.push(t_opened);
                panel.push(t_panel);
            }
        }
        browser.end().await;
        summary("drawn", drawn);
        summary("opened", opened);
        summary("panel", panel);
    });
}
