//! The server over real HTTP on an ephemeral loopback port: API shape, every error code,
//! streaming, cancellation, overload, failover, graceful shutdown, metrics, determinism.

mod common;

use std::time::Duration;

use common::{eventually, TestServer};
use futures_util::StreamExt;
use serde_json::{json, Value};

const SIM_FAST: &[&str] = &[
    "--executor",
    "sim",
    "--sim-step-us",
    "0",
    "--max-wait-us",
    "200",
];

fn assert_error_shape(v: &Value, code: &str) {
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].as_str().is_some(), "{v}");
    assert_eq!(e["code"], code, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_has_the_openai_shape_and_ignores_unknown_fields() {
    let s = TestServer::start(SIM_FAST).await;
    let (status, v) = s
        .complete(
            json!({"prompt": "0", "max_tokens": 5, "temperature": 0, "n": 1,
                         "logit_bias": {}, "user": "someone", "echo": false}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], "freelane-byte");
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(v["choices"][0]["text"], "abcde");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_and_invalid_values_are_400() {
    let s = TestServer::start(SIM_FAST).await;
    for body in [
        "{\"prompt\": ",
        "not json",
        "[1, 2, 3]",
        "",
        "\u{0}\u{1}",
        r#"{"prompt": 5}"#,
        r#"{"max_tokens": 5}"#,
        r#"{"prompt": "x", "max_tokens": 0}"#,
        r#"{"prompt": "x", "max_tokens": 4097}"#,
        r#"{"prompt": "x", "max_tokens": "many"}"#,
        r#"{"prompt": "x", "temperature": -0.1}"#,
        r#"{"prompt": "x", "temperature": 2.01}"#,
        r#"{"prompt": "x", "seed": -1}"#,
        r#"{"prompt": "x", "stream": 1}"#,
    ] {
        let r = s.post_raw(body.to_string()).await;
        assert_eq!(r.status().as_u16(), 400, "body {body:?}");
        let v: Value = r.json().await.unwrap();
        let code = v["error"]["code"].as_str().unwrap().to_string();
        assert!(code == "invalid_json" || code == "invalid_value", "{v}");
        assert_error_shape(&v, &code);
    }
    // Invalid UTF-8 bytes in the body are malformed JSON, not a panic.
    let r = s.post_raw(vec![b'{', 0xff, 0xfe, b'}']).await;
    assert_eq!(r.status().as_u16(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_limit_is_413() {
    let mut flags = SIM_FAST.to_vec();
    flags.extend(["--body-limit", "1024"]);
    let s = TestServer::start(&flags).await;
    let big = json!({"prompt": "x".repeat(2000), "max_tokens": 1}).to_string();
    let r = s.post_raw(big).await;
    assert_eq!(r.status().as_u16(), 413);
    let v: Value = r.json().await.unwrap();
    assert_error_shape(&v, "body_too_large");
    // Just under the limit is fine.
    let (status, _) = s
        .complete(json!({"prompt": "x".repeat(900), "max_tokens": 1}))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_route_is_404_and_wrong_method_is_405() {
    let s = TestServer::start(SIM_FAST).await;
    let (status, body) = s.get("/v2/nothing").await;
    assert_eq!(status, 404);
    assert_error_shape(&serde_json::from_str(&body).unwrap(), "not_found");
    let (status, body) = s.get("/v1/completions").await;
    assert_eq!(status, 405);
    assert_error_shape(&serde_json::from_str(&body).unwrap(), "method_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_models_and_stats_answer_json() {
    let s = TestServer::start(&["--executor", "sim", "--gpus", "3", "--sim-step-us", "0"]).await;
    let (status, v) = s.get_json("/health").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["usable_gpus"], 3);
    assert_eq!(v["executor"], "sim");
    let (status, v) = s.get_json("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(v["data"][0]["id"], "freelane-byte");
    let (status, v) = s.get_json("/stats").await;
    assert_eq!(status, 200);
    assert_eq!(v["gpus"].as_array().map(Vec::len), Some(3), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_full_is_429_with_retry_after_while_every_accepted_request_is_answered() {
    let s = TestServer::start(&[
        "--executor",
        "sim",
        "--gpus",
        "1",
        "--max-queue",
        "4",
        "--max-batch-size",
        "2",
        "--sim-step-us",
        "3000",
    ])
    .await;
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let client = s.client.clone();
        let url = s.url("/v1/completions");
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"prompt": "0", "max_tokens": 4}))
                .send()
                .await
                .expect("every request gets a response");
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|h| h.to_str().unwrap().to_string());
            let v: Value = r.json().await.unwrap();
            (status, retry, v)
        }));
    }
    let (mut ok, mut full) = (0, 0);
    for t in tasks {
        let (status, retry, v) = t.await.unwrap();
        match status {
            200 => {
                assert_eq!(v["choices"][0]["text"], "abcd");
                ok += 1;
            }
            429 => {
                assert_eq!(retry.as_deref(), Some("1"));
                assert_error_shape(&v, "queue_full");
                full += 1;
            }
            other => panic!("unexpected status {other}: {v}"),
        }
    }
    assert!(ok >= 4, "ok {ok}, full {full}");
    assert!(full >= 1, "ok {ok}, full {full}");
    assert_eq!(
        s.metric("freelane_requests_total{status=\"200\"}").await,
        Some(ok as f64)
    );
    assert_eq!(
        s.metric("freelane_requests_total{status=\"429\"}").await,
        Some(full as f64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_passed_is_504() {
    let s = TestServer::start(&[
        "--executor",
        "sim",
        "--gpus",
        "1",
        "--sim-step-us",
        "10000",
        "--request-timeout-ms",
        "100",
    ])
    .await;
    let (status, v) = s.complete(json!({"prompt": "0", "max_tokens": 200})).await;
    assert_eq!(status, 504, "{v}");
    assert_error_shape(&v, "deadline_exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_usable_gpu_is_503_and_health_says_so() {
    let s = TestServer::start(&[
        "--executor",
        "sim",
        "--gpus",
        "1",
        "--sim-fail-gpu",
        "0",
        "--sim-fail-after",
        "0",
        "--sim-step-us",
        "0",
    ])
    .await;
    // The only GPU fails on its first step; the request cannot be moved anywhere.
    let (status, v) = s.complete(json!({"prompt": "0", "max_tokens": 2})).await;
    assert!(status == 503 || status == 500, "{status} {v}");
    // Once the health table marks it unusable, admission answers 503 up front.
    let unhealthy = eventually(Duration::from_secs(10), async || {
        let (status, _) = s.complete(json!({"prompt": "0", "max_tokens": 2})).await;
        let (health, _) = s.get("/health").await;
        status == 503 && health == 503
    })
    .await;
    assert!(unhealthy, "gpu 0 never became unusable");
    let (status, v) = s.complete(json!({"prompt": "0", "max_tokens": 2})).await;
    if status == 503 {
        assert_error_shape(&v, "no_usable_gpu");
    }
}

/// Parses an SSE body into its `data:` payloads.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|ev| {
            let data: Vec<&str> = ev
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_sends_chunks_then_done_and_matches_the_plain_response() {
    let s = TestServer::start(&["--executor", "cpu", "--max-wait-us", "200"]).await;
    let req = json!({"prompt": "Hello", "max_tokens": 40, "temperature": 0.7, "seed": 11});
    let (status, plain) = s.complete(req.clone()).await;
    assert_eq!(status, 200);
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let r = s.post_raw(sreq.to_string()).await;
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let body = r.text().await.unwrap();
    let data = sse_data(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{body}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks.len() >= 2, "{body}");
    let mut text = String::new();
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c["object"], "text_completion");
        assert_eq!(c["id"], chunks[0]["id"]);
        text.push_str(c["choices"][0]["text"].as_str().unwrap());
        let fin = &c["choices"][0]["finish_reason"];
        if i + 1 < chunks.len() {
            assert!(fin.is_null(), "{c}");
        } else {
            assert_eq!(*fin, plain["choices"][0]["finish_reason"]);
        }
    }
    assert_eq!(text, plain["choices"][0]["text"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_cancels_a_queued_request_before_it_runs() {
    let s = TestServer::start(&[
        "--executor",
        "sim",
        "--gpus",
        "1",
        "--max-batch-size",
        "1",
        "--sim-step-us",
        "2000",
        "--max-wait-us",
        "100",
    ])
    .await;
    // A occupies the only slot for ~100 steps.
    let a = {
        let client = s.client.clone();
        let url = s.url("/v1/completions");
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"prompt": "0", "max_tokens": 100}))
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    // B is queued behind A; its client gives up after 30 ms.
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(30))
        .build()
        .unwrap();
    let b = quick
        .post(s.url("/v1/completions"))
        .json(&json!({"prompt": "0", "max_tokens": 100}))
        .send()
        .await;
    assert!(b.is_err(), "b should have timed out client-side");
    let ra = a.await.unwrap().unwrap();
    assert_eq!(ra.status().as_u16(), 200);
    // Let the lane look at B, then check it was never executed.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cancelled = eventually(Duration::from_secs(5), async || {
        s.metric("freelane_requests_answered_total{outcome=\"cancelled\"}")
            .await
            == Some(1.0)
    })
    .await;
    assert!(cancelled, "b was not answered cancelled");
    assert_eq!(
        s.metric("freelane_generated_tokens_total").await,
        Some(100.0)
    );
    assert_eq!(
        s.metric("freelane_requests_total{status=\"499\"}").await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_stops_a_running_stream() {
    let s = TestServer::start(&["--executor", "sim", "--gpus", "1", "--sim-step-us", "1000"]).await;
    let r = s
        .post_raw(json!({"prompt": "0", "max_tokens": 4096, "stream": true}).to_string())
        .await;
    assert_eq!(r.status().as_u16(), 200);
    let mut body = r.bytes_stream();
    let first = body.next().await.expect("a first chunk").unwrap();
    assert!(!first.is_empty());
    drop(body); // the client goes away mid-stream
    let stopped = eventually(Duration::from_secs(5), async || {
        s.metric("freelane_requests_answered_total{outcome=\"cancelled\"}")
            .await
            == Some(1.0)
    })
    .await;
    assert!(stopped, "the running stream was not cancelled");
    let tokens = s.metric("freelane_generated_tokens_total").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        s.metric("freelane_generated_tokens_total").await.unwrap(),
        tokens
    );
    assert!(tokens < 4096.0, "{tokens}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_with_a_failing_sim_gpu_loses_nothing() {
    let s = TestServer::start(&[
        "--executor",
        "sim",
        "--gpus",
        "2",
        "--sim-fail-gpu",
        "1",
        "--sim-fail-after",
        "5",
        "--sim-step-us",
        "1000",
        "--max-batch-size",
        "4",
        "--policy",
        "round-robin",
    ])
    .await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        let client = s.client.clone();
        let url = s.url("/v1/completions");
        let stream = i % 3 == 0;
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"prompt": "0", "max_tokens": 8, "stream": stream}))
                .send()
                .await
                .expect("response");
            (r.status().as_u16(), stream, r.text().await.unwrap())
        }));
    }
    for t in tasks {
        let (status, stream, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        let text = if stream {
            let data = sse_data(&body);
            assert_eq!(data.last().unwrap(), "[DONE]");
            data[..data.len() - 1]
                .iter()
                .map(|d| {
                    let v: Value = serde_json::from_str(d).unwrap();
                    assert!(v.get("error").is_none(), "{v}");
                    v["choices"][0]["text"].as_str().unwrap().to_string()
                })
                .collect::<String>()
        } else {
            let v: Value = serde_json::from_str(&body).unwrap();
            v["choices"][0]["text"].as_str().unwrap().to_string()
        };
        // Each token exactly once, even for streams that moved to the other GPU mid-way.
        assert_eq!(text, "abcdefgh");
    }
    let (_, stats) = s.get_json("/stats").await;
    assert_ne!(stats["gpus"][1]["state"], "healthy", "{stats}");
    assert_eq!(stats["gpus"][0]["state"], "healthy", "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_answers_every_in_flight_request() {
    let mut s = TestServer::start(&[
        "--executor",
        "sim",
        "--gpus",
        "1",
        "--max-batch-size",
        "4",
        "--sim-step-us",
        "2000",
    ])
    .await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = s.client.clone();
        let url = s.url("/v1/completions");
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"prompt": "0", "max_tokens": 60}))
                .send()
                .await;
            let r = r.expect("in-flight request answered");
            (r.status().as_u16(), r.text().await.unwrap())
        }));
    }
    // Shut down only once all eight are accepted (in flight), however slow the machine is.
    let accepted = eventually(Duration::from_secs(10), async || {
        s.get_json("/stats").await.1["accepted"] == 8
    })
    .await;
    assert!(accepted, "requests were not accepted");
    let served = s.begin_shutdown();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    served
        .await
        .unwrap()
        .expect("serve returns Ok after draining");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_name_every_required_series() {
    let s = TestServer::start(SIM_FAST).await;
    for _ in 0..5 {
        let (status, _) = s.complete(json!({"prompt": "0", "max_tokens": 3})).await;
        assert_eq!(status, 200);
    }
    let _ = s.complete(json!({"prompt": 1})).await;
    let (status, text) = s.get("/metrics").await;
    assert_eq!(status, 200);
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses");
    let names: std::collections::HashSet<&str> =
        scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for required in [
        "freelane_requests_total",
        "freelane_request_duration_seconds",
        "freelane_queue_seconds",
        "freelane_exec_seconds",
        "freelane_batch_size",
        "freelane_queue_depth",
        "freelane_gpu_in_flight",
        "freelane_gpu_state",
        "freelane_log_dropped_total",
    ] {
        assert!(
            names.contains(required) || names.contains(format!("{required}_count").as_str()),
            "missing {required} in:\n{text}"
        );
    }
    // Strict checks the lenient parser does not make: every sample line is `name{labels} value`,
    // every family has HELP and TYPE before its samples, histogram buckets are cumulative and end
    // in +Inf equal to _count.
    let mut declared = std::collections::HashSet::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            declared.insert(rest.split(' ').next().unwrap().to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        assert!(
            value.parse::<f64>().is_ok() || value == "+Inf",
            "bad value in {line:?}"
        );
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suf| name.strip_suffix(suf).filter(|f| declared.contains(*f)))
            .unwrap_or(name);
        assert!(
            declared.contains(family),
            "sample before its TYPE: {line:?}"
        );
    }
    let buckets: Vec<(String, f64)> = text
        .lines()
        .filter(|l| l.starts_with("freelane_request_duration_seconds_bucket"))
        .map(|l| {
            let (series, v) = l.rsplit_once(' ').unwrap();
            (series.to_string(), v.parse().unwrap())
        })
        .collect();
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert!(buckets.last().unwrap().0.contains("le=\"+Inf\""));
    let total: f64 = buckets.last().unwrap().1;
    assert_eq!(total, 6.0, "5 completions and 1 bad request");
}

async fn texts(s: &TestServer, prompts: &[&str], concurrent: bool) -> Vec<String> {
    let req = |p: &str| json!({"prompt": p, "max_tokens": 48, "temperature": 0});
    if concurrent {
        let futs = prompts.iter().map(|p| s.complete(req(p)));
        futures_util::future::join_all(futs)
            .await
            .into_iter()
            .map(|(st, v)| {
                assert_eq!(st, 200);
                v["choices"][0]["text"].as_str().unwrap().to_string()
            })
            .collect()
    } else {
        let mut out = Vec::new();
        for p in prompts {
            let (st, v) = s.complete(req(p)).await;
            assert_eq!(st, 200);
            out.push(v["choices"][0]["text"].as_str().unwrap().to_string());
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_model_is_deterministic_for_a_seed_at_temperature_zero() {
    let prompts = [
        "Hello",
        "The quick brown fox",
        "",
        "0123456789",
        "zzz",
        "Once upon a time",
    ];
    let a =
        TestServer::start(&["--executor", "cpu", "--seed", "42", "--max-wait-us", "5000"]).await;
    let solo = texts(&a, &prompts, false).await;
    assert_eq!(
        texts(&a, &prompts, false).await,
        solo,
        "same server, same answers"
    );
    // Batched together (iteration-level joins) the answers do not change.
    assert_eq!(
        texts(&a, &prompts, true).await,
        solo,
        "batched answers differ from solo"
    );

    // The same weights loaded from a safetensors file give the same answers.
    let dir = std::env::temp_dir().join(format!("freelane-weights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("w42.safetensors");
    freelane_server::model::Weights::generate(42)
        .save(&file)
        .unwrap();
    let b = TestServer::start(&["--executor", "cpu", "--weights", file.to_str().unwrap()]).await;
    assert_eq!(
        texts(&b, &prompts, false).await,
        solo,
        "weights file differs from --seed 42"
    );
    let _ = std::fs::remove_dir_all(&dir);

    // Another seed is another model.
    let c = TestServer::start(&["--executor", "cpu", "--seed", "43"]).await;
    assert_ne!(texts(&c, &prompts, false).await, solo);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_fails_before_its_first_token_gets_a_real_status() {
    // The only GPU fails its first step: nothing is ever generated.
    let s = TestServer::start(&[
        "--executor",
        "sim",
        "--gpus",
        "1",
        "--sim-fail-gpu",
        "0",
        "--sim-fail-after",
        "0",
        "--sim-step-us",
        "0",
    ])
    .await;
    let r = s
        .post_raw(json!({"prompt": "0", "max_tokens": 4, "stream": true}).to_string())
        .await;
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap();
    // The same answer as without streaming: an error status with a JSON error body, no SSE.
    assert!(status == 500 || status == 503, "{status}: {body}");
    assert!(body["error"]["code"].is_string(), "{body}");
    assert_eq!(
        s.metric("freelane_requests_total{status=\"200\"}").await,
        Some(0.0)
    );
}
