//! A headless Chromium (Debian's `chromium`, driven by its `chromedriver`
//! over WebDriver) for the dashboard's tests and its benchmark.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// How long the page may take to show what a test waits for. A bound, not a
/// pause: each wait returns as soon as the element is there.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

/// A chromedriver on a free loopback port and a headless Chromium session.
pub(crate) struct Browser {
    driver: Child,
    pub(crate) client: Client,
}

impl Browser {
    pub(crate) async fn start() -> Self {
        // A free port is only free until someone takes it: another test's
        // server may bind it between our probe and chromedriver's bind, and
        // chromedriver then exits. Such a start is tried again on another.
        let mut failures = Vec::new();
        for _ in 0..5 {
            match Self::try_start().await {
                Ok(browser) => return browser,
                Err(why) => failures.push(why),
            }
        }
        panic!("a Chromium session never started: {failures:#?}");
    }

    async fn try_start() -> Result<Self, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (apt-get install chromium chromium-driver)");
        // Wait for it to listen (bounded: it takes well under a second).
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(Some(status)) = driver.try_wait() {
                return Err(format!("chromedriver on port {port} exited: {status}"));
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--no-first-run",
                    "--disable-dev-shm-usage"],
            }),
        );
        let client =
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(capabilities)
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => client,
                Err(e) => {
                    let _ = driver.kill();
                    let _ = driver.wait();
                    return Err(format!("no session from port {port}: {e}"));
                }
            };
        client
            .set_window_size(1280, 900)
            .await
            .expect("the window takes a size");
        Ok(Self { driver, client })
    }

    /// Save what the window shows as `NAME.png` in `CAIRN_SCREENSHOTS` (the
    /// README's pictures are made with `CAIRN_SCREENSHOTS=docs/screenshots`),
    /// else in the test build's scratch directory.
    pub(crate) async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
        let dir = match std::env::var_os("CAIRN_SCREENSHOTS") {
            Some(dir) => std::path::PathBuf::from(dir),
            None => std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots"),
        };
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    pub(crate) async fn wait(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css} never appeared: {e}"))
    }

    /// Wait for an element the XPath `path` finds (for what CSS cannot
    /// say, such as an element's text).
    pub(crate) async fn wait_xpath(&self, path: &str) {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::XPath(path))
            .await
            .unwrap_or_else(|e| panic!("{path} never matched: {e}"));
    }

    pub(crate) async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// Click the element `css` names; found again if the page re-drew it
    /// between finding and clicking (a live page re-draws as events come).
    pub(crate) async fn click(&self, css: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let clicked = self.wait(css).await.click().await;
            match clicked {
                Ok(()) => return,
                Err(e) if Instant::now() < deadline && e.to_string().contains("stale") => continue,
                Err(e) => panic!("cannot click {css}: {e}"),
            }
        }
    }

    pub(crate) async fn sign_in(&self, url: &str, token: &str) {
        self.client.goto(url).await.unwrap();
        let input = self.wait("#token").await;
        input.send_keys(token).await.unwrap();
        self.client
            .find(Locator::Css("#sign-in button[type=submit]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    pub(crate) async fn script(&self, code: &str) -> serde_json::Value {
        self.client.execute(code, vec![]).await.unwrap()
    }

    pub(crate) async fn end(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
