//! A bare axum "hello" server: the ceiling for the load test in docs/OPERATIONS.md.
//!
//! `cargo run --release -p freelane-server --example hello -- 127.0.0.1:8090`

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".to_string());
    let app = axum::Router::new().route(
        "/v1/completions",
        axum::routing::post(|body: axum::body::Bytes| async move {
            // Parse the body like the real handler does, then answer a fixed completion.
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            axum::Json(serde_json::json!({
                "object": "text_completion",
                "choices": [{"index": 0, "text": "a", "finish_reason": "length"}],
                "echo": v.get("max_tokens").cloned().unwrap_or_default(),
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("hello listening on {addr}");
    axum::serve(listener, app).await
}
