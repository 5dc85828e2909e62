//! Shared helpers: an in-process server on an ephemeral loopback port.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use freelane_server::config::{Args, Config};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// Parses flags as the binary would (plus `--port 0`), ignoring FREELANE_* from the environment.
pub fn config(flags: &[&str]) -> Config {
    let mut args = vec!["freelane-server", "--port", "0", "--host", "127.0.0.1"];
    args.extend_from_slice(flags);
    Args::try_parse_from(args)
        .expect("flags parse")
        .validate()
        .expect("flags are valid")
}

impl TestServer {
    pub async fn start(flags: &[&str]) -> TestServer {
        Self::start_config(config(flags)).await
    }

    pub async fn start_config(config: Config) -> TestServer {
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        let app = freelane_server::build_app(&config).expect("app builds");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.serve(listener, async move {
            let _ = rx.await;
        }));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        TestServer {
            addr,
            client,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// POSTs a raw body to /v1/completions.
    pub async fn post_raw(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url("/v1/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    /// POSTs a JSON value; returns status and parsed body.
    pub async fn complete(&self, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self.post_raw(body.to_string()).await;
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not json ({e}): {text}"));
        (status, v)
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = self.client.get(self.url(path)).send().await.expect("get");
        (r.status().as_u16(), r.text().await.unwrap())
    }

    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let (s, t) = self.get(path).await;
        (
            s,
            serde_json::from_str(&t).unwrap_or_else(|e| panic!("not json ({e}): {t}")),
        )
    }

    /// The value of one sample in /metrics (`name{labels}` exactly as rendered), if present.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics").await;
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
    }

    /// Triggers graceful shutdown and waits for `serve` to return.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.take().unwrap().await.expect("serve task")
    }

    /// Triggers graceful shutdown without waiting.
    pub fn begin_shutdown(&mut self) -> JoinHandle<std::io::Result<()>> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.take().unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}
