//! The analytics page in headless Chromium, through the proxy, across the whole
//! deploy: examples/analytics/tests/browser/deploy.mjs drives it with playwright-core.

use std::{path::PathBuf, process::Stdio, time::Duration};
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStdout, Command},
};

pub struct Page {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    deadline: Duration,
}

#[derive(Debug)]
pub struct PageResult {
    pub rows: usize,
    pub restarts: u64,
    pub reconnects: u64,
    pub states: Vec<String>,
    /// `nextHopProtocol` of the page's ended requests (`h2` over TLS).
    pub protocols: Vec<String>,
    /// Complete, with every row of the report once, in order.
    pub ok: bool,
}

/// Where deploy.mjs and its playwright-core live: beside the example's own
/// browser test (examples/analytics/tests/browser once the example is its
/// own package, tests/browser before).
fn browser_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("examples/analytics/tests/browser");
    if dir.join("package.json").exists() {
        dir
    } else {
        root.join("tests/browser")
    }
}

impl Page {
    /// Opens `url` (which starts the report) and returns once rows stream in.
    pub async fn start(url: &str, deadline: Duration) -> Result<Self, String> {
        let dir = browser_dir();
        if !dir.join("node_modules/playwright-core").exists() {
            return Err(format!(
                "no playwright-core in {}: run `npm ci --prefix examples/analytics/tests/browser` (scripts/rolling-deploy does), or pass --skip-browser",
                dir.display()
            ));
        }
        let mut child = Command::new("node")
            .arg(dir.join("deploy.mjs"))
            .arg(url)
            .arg(deadline.as_millis().to_string())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start node: {e}"))?;
        let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut page = Self {
            child,
            lines,
            deadline,
        };
        loop {
            match page.next_line(Duration::from_secs(60)).await?.as_str() {
                "STREAMING" => return Ok(page),
                line => println!("  browser: {line}"),
            }
        }
    }

    async fn next_line(&mut self, timeout: Duration) -> Result<String, String> {
        match tokio::time::timeout(timeout, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(_) => Err("the browser driver ended early".into()),
            Err(_) => Err(format!("the browser driver said nothing for {timeout:?}")),
        }
    }

    /// Waits for the page's final state and compares its rows with the report's.
    pub async fn result(
        mut self,
        expected_rows: &[serde_json::Value],
    ) -> Result<PageResult, String> {
        let json = loop {
            let line = self
                .next_line(self.deadline + Duration::from_secs(30))
                .await?;
            if let Some(json) = line.strip_prefix("RESULT ") {
                break json.to_owned();
            }
            if !line.starts_with("STATE ") && !line.starts_with("console: ") {
                println!("  browser: {line}");
            }
        };
        let _ = self.child.wait().await;
        let result: serde_json::Value =
            serde_json::from_str(&json).map_err(|e| format!("browser RESULT: {e}"))?;
        let rows = result["rows"].as_array().cloned().unwrap_or_default();
        Ok(PageResult {
            rows: rows.len(),
            restarts: result["restarts"].as_u64().unwrap_or(0),
            reconnects: result["reconnects"].as_u64().unwrap_or(0),
            states: result["states"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect(),
            protocols: result["protocols"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect(),
            ok: result["stateText"] == "complete" && rows == expected_rows,
        })
    }
}
