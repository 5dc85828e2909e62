//! The axum router and handlers.
//!
//! Every handler answers with JSON (or SSE for `stream: true`); every error is an [`ApiError`]
//! with a JSON body. A client that disconnects drops the handler's future, which drops the
//! request's [`Handle`](freelane::Handle) and so cancels the request (a queued request is never
//! executed; a running one leaves its batch at the next step).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde_json::json;

use crate::api::{
    parse_completion, ApiError, Choice, Completion, CompletionRequest, FinishReason, Usage,
    Utf8Stream,
};
use crate::backend::Backend;
use crate::executor::decode::{Generation, Job, TokenSink};
use crate::model::SplitMix64;

/// Shared state of the handlers.
#[derive(Debug)]
pub struct AppState {
    /// The coordinator and its executors.
    pub backend: Backend,
    /// Model name reported to clients.
    pub model_name: String,
    /// Body limit (for the 413 message).
    pub body_limit: usize,
    /// Seed source for requests without a seed.
    seeds: AtomicU64,
}

impl AppState {
    /// State over a backend.
    pub fn new(backend: Backend, model_name: String, body_limit: usize) -> Self {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        AppState {
            backend,
            model_name,
            body_limit,
            seeds: AtomicU64::new(t),
        }
    }

    fn fresh_seed(&self) -> u64 {
        // Relaxed: only uniqueness of the counter value matters; nothing is published with it.
        let n = self.seeds.fetch_add(1, Ordering::Relaxed);
        SplitMix64::new(n).next_u64()
    }
}

/// Builds the router over shared state.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.body_limit;
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/stats", get(stats))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn completion_id(seed: u64) -> String {
    format!(
        "cmpl-{:016x}",
        SplitMix64::new(seed ^ 0x636d_706c).next_u64()
    )
}

/// Counts a completion request whose client went away before the response (status 499) when
/// the handler's future is dropped unfinished.
struct Abandoned<'a> {
    state: &'a AppState,
    started: Instant,
    done: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.done {
            let status = StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST);
            self.state
                .backend
                .record_response(status, self.started.elapsed());
        }
    }
}

async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let mut abandoned = Abandoned {
        state: &state,
        started,
        done: false,
    };
    let resp = match body {
        Ok(body) => match parse_completion(&body) {
            Ok(req) => serve_completion(&state, req).await,
            Err(e) => e.into_response(),
        },
        Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::too_large(state.body_limit).into_response()
        }
        Err(rej) => {
            ApiError::bad_request("invalid_body", rej.body_text().to_lowercase()).into_response()
        }
    };
    abandoned.done = true;
    state
        .backend
        .record_response(resp.status(), started.elapsed());
    resp
}

async fn serve_completion(state: &Arc<AppState>, req: CompletionRequest) -> Response {
    let seed = req.seed.unwrap_or_else(|| state.fresh_seed());
    let id = completion_id(seed);
    let created = unix_now();
    let prompt_tokens = req.prompt.len() as u64;
    let (sink, tokens_rx) = if req.stream {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Some(TokenSink::new(tx)), Some(rx))
    } else {
        (None, None)
    };
    let job = Job {
        prompt: req.prompt,
        max_tokens: req.max_tokens,
        temperature: req.temperature,
        seed,
        sink,
    };
    let handle = match state.backend.submit(job) {
        Ok(h) => h,
        Err(e) => return e.into_response(),
    };
    match tokens_rx {
        None => match Backend::finish(handle.await) {
            Ok(gen) => {
                let body = completion_body(state, id, created, prompt_tokens, &gen);
                Json(body).into_response()
            }
            Err(e) => e.into_response(),
        },
        Some(mut rx) => {
            // The response head goes out with the first event, not at acceptance: a request
            // that fails before its first token (deadline while queued, no usable GPU after a
            // failover, shutdown, a GPU error) gets its real status code (504, 503, 500) instead
            // of a 200 with an error event. Time to first token is unchanged.
            let mut handle = handle;
            let (first, outcome) = tokio::select! {
                biased;
                tok = rx.recv() => (tok, None),
                outcome = &mut handle => (None, Some(outcome)),
            };
            let outcome = match (first, outcome) {
                // The token sender is gone without a token: the answer is on its way.
                (None, None) => Some((&mut handle).await),
                (_, outcome) => outcome,
            };
            let ready = match outcome.map(Backend::finish) {
                Some(Err(e)) => return e.into_response(),
                other => other,
            };
            let meta = StreamMeta {
                id,
                created,
                model: state.model_name.clone(),
            };
            let stream = sse_stream(meta, handle, rx, first, ready);
            Sse::new(stream)
                .keep_alive(KeepAlive::default())
                .into_response()
        }
    }
}

fn completion_body(
    state: &AppState,
    id: String,
    created: u64,
    prompt_tokens: u64,
    gen: &Generation,
) -> Completion {
    let completion_tokens = gen.tokens.len() as u64;
    Completion {
        id,
        object: "text_completion",
        created,
        model: state.model_name.clone(),
        choices: vec![Choice {
            index: 0,
            text: String::from_utf8_lossy(&gen.tokens).into_owned(),
            finish_reason: Some(gen.finish),
        }],
        usage: Some(Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }),
    }
}

struct StreamMeta {
    id: String,
    created: u64,
    model: String,
}

impl StreamMeta {
    fn chunk(&self, text: String, finish: Option<FinishReason>) -> Event {
        let c = Completion {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices: vec![Choice {
                index: 0,
                text,
                finish_reason: finish,
            }],
            usage: None,
        };
        Event::default().data(serde_json::to_string(&c).unwrap_or_default())
    }
}

/// The SSE body: one chunk per decoded piece of text, a final chunk with `finish_reason`, then
/// `data: [DONE]`. On a failure after the first token, one `data: {"error": ...}` event and
/// then `[DONE]`. Dropping the stream (client gone) drops the handle, which cancels the request.
/// `first` is a token byte the handler already took from `rx` (`None` if the sender closed);
/// `ready` is the successful outcome when it arrived before any token.
fn sse_stream(
    meta: StreamMeta,
    handle: freelane::Handle<Generation>,
    rx: tokio::sync::mpsc::UnboundedReceiver<u8>,
    first: Option<u8>,
    ready: Option<Result<Generation, ApiError>>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    struct SseState {
        meta: StreamMeta,
        handle: Option<freelane::Handle<Generation>>,
        rx: tokio::sync::mpsc::UnboundedReceiver<u8>,
        rx_open: bool,
        utf8: Utf8Stream,
        pending: Option<u8>,
        ready: Option<Result<Generation, ApiError>>,
        done_sent: bool,
    }
    let st = SseState {
        meta,
        handle: Some(handle),
        // Without a first token the stream only drains `rx` after `ready`.
        rx_open: first.is_some(),
        rx,
        utf8: Utf8Stream::default(),
        pending: first,
        ready,
        done_sent: false,
    };
    futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(b) = st.pending.take() {
                let text = st.utf8.push(&[b]);
                if !text.is_empty() {
                    let ev = st.meta.chunk(text, None);
                    return Some((Ok(ev), st));
                }
            }
            if let Some(result) = st.ready.take() {
                st.handle = None;
                // Every token was sent before the answer; drain what is still buffered.
                let mut rest = Vec::new();
                while let Ok(b) = st.rx.try_recv() {
                    rest.push(b);
                }
                let mut text = st.utf8.push(&rest);
                text.push_str(&st.utf8.finish());
                let last = match result {
                    Ok(gen) => st.meta.chunk(text, Some(gen.finish)),
                    Err(e) => Event::default().data(e.body().to_string()),
                };
                return Some((Ok(last), st));
            }
            let Some(handle) = st.handle.as_mut() else {
                if st.done_sent {
                    return None;
                }
                st.done_sent = true;
                return Some((Ok(Event::default().data("[DONE]")), st));
            };
            tokio::select! {
                biased;
                // A token is handled by the `pending` step at the top of the loop.
                tok = st.rx.recv(), if st.rx_open => match tok {
                    Some(b) => st.pending = Some(b),
                    None => st.rx_open = false,
                },
                // Handled by the `ready` step at the top of the loop.
                outcome = handle => st.ready = Some(Backend::finish(outcome)),
            }
        }
    })
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let (usable, lanes) = state.backend.usable_lanes();
    let status = if usable > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if usable > 0 { "ok" } else { "unavailable" },
        "usable_gpus": usable,
        "gpus": lanes,
        "executor": state.backend.executor_name(),
    });
    (status, Json(body)).into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "freelane",
        }],
    }))
    .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.backend.render_metrics(),
    )
        .into_response()
}

async fn stats(State(state): State<Arc<AppState>>) -> Response {
    Json(state.backend.stats_json()).into_response()
}

async fn not_found(uri: Uri) -> Response {
    ApiError::not_found(uri.path()).into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::method_not_allowed().into_response()
}
