//! Endpoints, authentication and request logs.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use torchless_model::scheduler::{
    self, Event, EventSink, Failure, Finish, FinishReason, SubmitError,
};
use torchless_model::{
    ConstraintVocab, DecodeOptions, EncodeOptions, GenerateOptions, GeneratedToken, Grammar,
    KvTypes, Model, Residency, SchedulerHandle,
};
use tower::ServiceExt;

use super::api::{json_body, parse_object, ApiError, Fields, Prompt, ResponseFormat};
use super::metrics::{Metrics, Observation};

/// The scheduler running the requests, each answering into its response's channel.
pub type Engine = SchedulerHandle<ToResponse>;

/// Where the scheduler sends a request's events: the channel its HTTP response reads. A
/// response dropped with its connection closes the channel, which frees the slot at the
/// scheduler's next turn.
#[derive(Debug)]
pub struct ToResponse(UnboundedSender<Event>);

impl EventSink for ToResponse {
    fn send(&mut self, event: Event) -> bool {
        self.0.send(event).is_ok()
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

/// What every handler shares.
#[derive(Debug)]
pub struct AppState<R: Residency> {
    pub model: Arc<Model<R>>,
    pub engine: Arc<Engine>,
    pub name: String,
    pub api_key: Option<String>,
    pub max_body: usize,
    pub ctx: usize,
    /// How each slot's KV cache stores keys and values.
    pub kv_types: KvTypes,
    pub created: u64,
    pub json_logs: bool,
    /// `--metrics`: the counters behind `/metrics` (the endpoint is absent without it).
    pub metrics: Option<Arc<Metrics>>,
    /// The vocabulary as the structured-output library sees it: built once (in the background
    /// at start, see `constraint_vocab()`) and shared by every request's grammar.
    pub constraint_vocab: OnceLock<Result<ConstraintVocab, String>>,
}

impl<R: Residency> AppState<R> {
    /// The structured-output vocabulary, built by the first caller.
    pub fn constraint_vocab(&self) -> &Result<ConstraintVocab, String> {
        self.constraint_vocab
            .get_or_init(|| ConstraintVocab::new(self.model.tokenizer()).map_err(|e| e.to_string()))
    }
}

type Shared<R> = State<Arc<AppState<R>>>;

pub fn router<R: Residency>(state: Arc<AppState<R>>) -> Router {
    let mut router = Router::new();
    if state.metrics.is_some() {
        router = router.route("/metrics", get(metrics::<R>));
    }
    router
        .route("/health", get(health::<R>))
        .route("/slots", get(slots::<R>))
        .route("/v1/models", get(models::<R>))
        .route("/v1/completions", post(completions::<R>))
        .route("/v1/chat/completions", post(chat_completions::<R>))
        .route("/tokenize", post(tokenize::<R>))
        .route("/detokenize", post(detokenize::<R>))
        .route("/apply-template", post(apply_template::<R>))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "no such endpoint",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method not allowed on this endpoint",
            )
        })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            authenticate::<R>,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            log_request::<R>,
        ))
        .with_state(state)
}

/// The server while the model loads: `/health` answers 503 `{"status": "loading model"}` and
/// every other endpoint 503 in OpenAI's error shape (as llama-server); once `loaded` is set,
/// every request goes to that router.
pub fn loading_gate(loaded: Arc<OnceLock<Router>>) -> Router {
    Router::new().fallback(move |request: Request| {
        let loaded = loaded.clone();
        async move {
            if let Some(router) = loaded.get() {
                let router = router.clone();
                return match router.oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
            }
            if request.uri().path() == "/health" {
                let mut response = json_body(&json!({"status": "loading model"})).into_response();
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return response;
            }
            let mut error = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable_error",
                "the model is loading",
            );
            error.retry_after = Some(1);
            error.into_response()
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Authentication and logs.

/// Equal length and equal bytes, in time that depends only on the length.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| std::hint::black_box(acc | (x ^ y)));
    diff == 0
}

async fn authenticate<R: Residency>(
    State(state): Shared<R>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(key) = &state.api_key {
        if request.uri().path() != "/health" {
            let given = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !constant_time_eq(given.trim().as_bytes(), key.as_bytes()) {
                let mut response = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "authentication_error",
                    "invalid or missing API key (send `Authorization: Bearer KEY`)",
                )
                .with_code("invalid_api_key")
                .into_response();
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return response;
            }
        }
    }
    next.run(request).await
}

/// Token counts of a generation, filled in as it runs (the log line is written when the
/// response body ends, so a stream is logged with its final counts).
#[derive(Debug, Default, Clone)]
struct Usage {
    prompt_tokens: usize,
    cached_tokens: usize,
    completion_tokens: usize,
    finish: Option<&'static str>,
    time_to_first_token: Option<Duration>,
}

#[derive(Debug, Default, Clone)]
struct SharedUsage(Arc<Mutex<Usage>>);

impl SharedUsage {
    fn update(&self, f: impl FnOnce(&mut Usage)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }
    fn get(&self) -> Usage {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Writes the request's log line when dropped (the body sent, or the client gone).
struct LogLine {
    method: String,
    path: String,
    status: u16,
    started: Instant,
    usage: Option<SharedUsage>,
    json: bool,
    metrics: Option<Arc<Metrics>>,
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let ms = elapsed.as_secs_f64() * 1e3;
        let usage = self.usage.as_ref().map(SharedUsage::get);
        if let Some(metrics) = &self.metrics {
            metrics.record(Observation {
                path: &self.path,
                status: self.status,
                elapsed,
                tokens: usage
                    .as_ref()
                    .map(|u| (u.prompt_tokens, u.completion_tokens, u.time_to_first_token)),
            });
        }
        if self.json {
            let mut line = json!({
                "time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
                "method": self.method,
                "path": self.path,
                "status": self.status,
                "ms": (ms * 10.0).round() / 10.0,
            });
            if let Some(u) = usage {
                line["prompt_tokens"] = json!(u.prompt_tokens);
                line["cached_tokens"] = json!(u.cached_tokens);
                line["completion_tokens"] = json!(u.completion_tokens);
                line["finish_reason"] = json!(u.finish.unwrap_or("disconnected"));
                if let Some(t) = u.time_to_first_token {
                    line["ttft_ms"] = json!((t.as_secs_f64() * 1e4).round() / 10.0);
                }
            }
            eprintln!("{line}");
        } else {
            let tokens = usage.map_or(String::new(), |u| {
                format!(
                    " prompt={} cached={} completion={} finish={}",
                    u.prompt_tokens,
                    u.cached_tokens,
                    u.completion_tokens,
                    u.finish.unwrap_or("disconnected")
                )
            });
            eprintln!(
                "torchless serve: {} {} {} {ms:.1} ms{tokens}",
                self.method, self.path, self.status
            );
        }
    }
}

async fn log_request<R: Residency>(
    State(state): Shared<R>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let line = LogLine {
        method,
        path,
        status: response.status().as_u16(),
        started,
        usage: response.extensions().get::<SharedUsage>().cloned(),
        json: state.json_logs,
        metrics: state.metrics.clone(),
    };
    let (parts, body) = response.into_parts();
    // The line moves into the body stream and is written when the stream is dropped.
    let body = body.into_data_stream().map(move |chunk| {
        let _ = &line;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

// ---------------------------------------------------------------------------------------------
// Small endpoints.

async fn health<R: Residency>(State(state): Shared<R>) -> Response {
    let (waiting, busy) = (state.engine.waiting(), state.engine.busy());
    json_body(&json!({
        "status": "ok",
        "slots_idle": state.engine.slots().saturating_sub(busy),
        "slots_processing": busy,
        "requests_waiting": waiting,
        "tokens_generated": state.engine.tokens_generated(),
        "kv_cache": crate::commands::kv_cache_json(state.model.config(), state.kv_types, Some(state.ctx)),
    }))
    .into_response()
}

/// `GET /slots`: each slot's use and how many tokens its KV cache holds.
async fn slots<R: Residency>(State(state): Shared<R>) -> Response {
    let slots: Vec<Value> = state
        .engine
        .slot_states()
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "busy": s.busy,
                "n_ctx": s.context_len,
                "cached_tokens": s.cached_tokens,
                "reusable_tokens": s.reusable_tokens,
            })
        })
        .collect();
    json_body(&Value::Array(slots)).into_response()
}

/// `GET /metrics`: Prometheus text.
async fn metrics<R: Residency>(State(state): Shared<R>) -> Response {
    let Some(metrics) = &state.metrics else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let engine = &state.engine;
    let text = metrics.render(&engine.stats(), &engine.slot_states(), engine.waiting());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

async fn models<R: Residency>(State(state): Shared<R>) -> Response {
    let c = state.model.config();
    json_body(&json!({
        "object": "list",
        "data": [{
            "id": state.name,
            "object": "model",
            "created": state.created,
            "owned_by": "torchless",
            "meta": {
                "n_ctx": state.ctx,
                "n_vocab": c.vocab_size,
                "n_layers": c.n_layers,
                "quant": super::super::weight_types(state.model.file()),
            }
        }]
    }))
    .into_response()
}

async fn read_body<R: Residency>(state: &AppState<R>, request: Request) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(request.into_body(), state.max_body)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!(
                    "the request body is over the limit of {} bytes",
                    state.max_body
                ),
            )
        })
}

async fn tokenize<R: Residency>(
    State(state): Shared<R>,
    request: Request,
) -> Result<Response, ApiError> {
    let body = parse_object(&read_body(&state, request).await?)?;
    let f = Fields(&body);
    let content = f
        .string("content")?
        .ok_or_else(|| ApiError::invalid("content", "`content` is required"))?;
    let add_special = f.bool("add_special")?.unwrap_or(false);
    let with_pieces = f.bool("with_pieces")?.unwrap_or(false);
    let tokenizer = state.model.tokenizer();
    let ids = tokenizer.encode(
        content,
        EncodeOptions {
            add_bos: add_special && tokenizer.adds_bos(),
            parse_special: f.bool("parse_special")?.unwrap_or(true),
        },
    );
    let tokens: Vec<Value> = if with_pieces {
        ids.iter()
            .map(|&id| json!({"id": id, "piece": token_text(&state.model, id)}))
            .collect()
    } else {
        ids.iter().map(|&id| json!(id)).collect()
    };
    Ok(json_body(&json!({ "tokens": tokens })).into_response())
}

/// A chat template that raised (`raise_exception`) or failed on these messages: a 400 that
/// names the template's message.
fn template_failure(e: torchless_model::ModelError) -> ApiError {
    ApiError::invalid("messages", format!("cannot apply the chat template: {e}"))
}

/// llama-server's `/apply-template`: the prompt text `messages` renders to in the model's
/// template (the text `/v1/chat/completions` tokenizes).
async fn apply_template<R: Residency>(
    State(state): Shared<R>,
    request: Request,
) -> Result<Response, ApiError> {
    let body = parse_object(&read_body(&state, request).await?)?;
    let f = Fields(&body);
    let messages = f.messages()?;
    let options = f.chat_options()?;
    let prompt = state
        .model
        .render_chat(&messages, &options)
        .map_err(template_failure)?;
    Ok(json_body(&json!({ "prompt": prompt })).into_response())
}

async fn detokenize<R: Residency>(
    State(state): Shared<R>,
    request: Request,
) -> Result<Response, ApiError> {
    let body = parse_object(&read_body(&state, request).await?)?;
    let vocab = state.model.config().vocab_size;
    let ids: Vec<u32> = match body.get("tokens") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_u64()
                    .filter(|&id| id < vocab as u64)
                    .map(|id| id as u32)
            })
            .collect::<Option<_>>()
            .ok_or_else(|| {
                ApiError::invalid(
                    "tokens",
                    format!("`tokens` must be token ids below {vocab}"),
                )
            })?,
        _ => {
            return Err(ApiError::invalid(
                "tokens",
                "`tokens` is required: an array of token ids",
            ))
        }
    };
    let content = state
        .model
        .tokenizer()
        .decode(&ids, DecodeOptions::default());
    Ok(json_body(&json!({ "content": content })).into_response())
}

/// A token's own text (its bytes, invalid UTF-8 replaced).
fn token_text<R: Residency>(model: &Model<R>, id: u32) -> String {
    model
        .tokenizer()
        .token_bytes(id)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Generation endpoints.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
}

/// What a handler needs to answer once the job is queued.
#[derive(Debug, Clone, Copy)]
struct Reply {
    kind: Kind,
    include_usage: bool,
    /// Whether the request asked for log-probabilities.
    logprobs: bool,
}

fn random_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
}

fn request_id(kind: Kind) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = match kind {
        Kind::Completion => "cmpl",
        Kind::Chat => "chatcmpl",
    };
    format!(
        "{prefix}-{:x}{:06x}",
        random_seed() & 0xffff_ffff,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn completions<R: Residency>(
    State(state): Shared<R>,
    request: Request,
) -> Result<Response, ApiError> {
    generate(state, Kind::Completion, request).await
}

async fn chat_completions<R: Residency>(
    State(state): Shared<R>,
    request: Request,
) -> Result<Response, ApiError> {
    generate(state, Kind::Chat, request).await
}

async fn generate<R: Residency>(
    state: Arc<AppState<R>>,
    kind: Kind,
    request: Request,
) -> Result<Response, ApiError> {
    let body = parse_object(&read_body(&state, request).await?)?;
    let f = Fields(&body);
    let model = &state.model;
    let tokenizer = model.tokenizer();
    let (prompt, mut stop_tokens) = match kind {
        Kind::Completion => {
            let prompt = match f.prompt()? {
                Prompt::Text(text) => tokenizer.encode(&text, tokenizer.prompt_options()),
                Prompt::Ids(ids) => {
                    let vocab = model.config().vocab_size;
                    if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                        return Err(ApiError::invalid(
                            "prompt",
                            format!("token id {bad} is outside the vocabulary of {vocab}"),
                        ));
                    }
                    ids
                }
            };
            (prompt, tokenizer.eos_id().into_iter().collect::<Vec<u32>>())
        }
        Kind::Chat => {
            let messages = f.messages()?;
            let options = f.chat_options()?;
            let prompt = model
                .encode_chat_with(&messages, &options)
                .map_err(template_failure)?;
            (prompt, model.end_of_turn_ids())
        }
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid(
            "prompt",
            "the prompt is empty (no tokens)",
        ));
    }
    if prompt.len() >= state.ctx {
        return Err(ApiError::invalid(
            if kind == Kind::Chat {
                "messages"
            } else {
                "prompt"
            },
            format!(
                "the prompt has {} tokens; the context holds {} (prompt and completion together)",
                prompt.len(),
                state.ctx
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let room = state.ctx - prompt.len();
    let max_tokens = f
        .integer("max_completion_tokens", 1, u32::MAX as u64)?
        .or(f.integer("max_tokens", 1, u32::MAX as u64)?)
        .map(|n| n as usize)
        // OpenAI's defaults: 16 for completions, until the end of the turn for chat.
        .unwrap_or(if kind == Kind::Completion { 16 } else { room })
        .min(room);
    if f.bool("ignore_eos")?.unwrap_or(false) && kind == Kind::Completion {
        stop_tokens.clear();
    }
    let logprobs = match kind {
        Kind::Completion => match body.get("logprobs") {
            Some(Value::Bool(true)) => Some(0),
            Some(Value::Bool(false)) => None,
            _ => f.integer("logprobs", 0, 20)?.map(|n| n as usize),
        },
        Kind::Chat => match f.bool("logprobs")? {
            Some(true) => Some(f.integer("top_logprobs", 0, 20)?.unwrap_or(0) as usize),
            _ => None,
        },
    };
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match body.get("stream_options") {
        Some(Value::Object(o)) => Fields(o).bool("include_usage")?.unwrap_or(false),
        Some(Value::Null) | None => false,
        Some(_) => {
            return Err(ApiError::invalid(
                "stream_options",
                "`stream_options` must be an object",
            ))
        }
    };
    let sampling = f.sampling(random_seed())?;
    sampling
        .validate()
        .map_err(|e| ApiError::invalid("temperature", e.to_string()))?;
    let stop = f.stop()?;
    let grammar = match f.response_format()? {
        ResponseFormat::Text => None,
        ResponseFormat::Schema(schema) => Some(compile_grammar(&state, schema).await?),
    };
    // llama-server's field: reuse a slot's cached prefix of this prompt (the output is the same).
    let cache_prompt = f.bool("cache_prompt")?.unwrap_or(true);

    let (events, receiver) = unbounded_channel();
    let prompt_tokens = prompt.len();
    let job = scheduler::Request {
        prompt,
        options: GenerateOptions {
            max_tokens,
            sampling,
            // EOS is among `stop_tokens` unless the request ignores it.
            stop_at_eos: false,
            logprobs: logprobs.unwrap_or(0),
            stop_tokens,
            grammar,
        },
        stop_texts: stop,
        cache_prompt,
        events: ToResponse(events),
    };
    state.engine.submit(job).map_err(|e| match e {
        SubmitError::QueueFull => ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "the server is busy: every slot is generating and the queue is full; retry later",
            )
            .with_code("server_busy")
        },
        SubmitError::ShuttingDown => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the server is shutting down",
        ),
    })?;
    let usage = SharedUsage::default();
    usage.update(|u| u.prompt_tokens = prompt_tokens);
    let shape = Reply {
        kind,
        include_usage,
        logprobs: logprobs.is_some(),
    };
    let mut response = if stream {
        stream_response(state, shape, receiver, usage.clone())
    } else {
        collect_response(&state, &shape, receiver, &usage).await?
    };
    response.extensions_mut().insert(usage);
    Ok(response)
}

/// The grammar of a `response_format` schema, off the async threads (building the vocabulary
/// the first time and compiling a large schema take a while). A schema that does not compile
/// is a 400 naming the problem.
async fn compile_grammar<R: Residency>(
    state: &Arc<AppState<R>>,
    schema: Value,
) -> Result<Grammar, ApiError> {
    let state = state.clone();
    let compiled = tokio::task::spawn_blocking(move || {
        let vocab = state.constraint_vocab().as_ref().map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.clone())
        })?;
        Grammar::json_schema(vocab, &schema)
            .map_err(|e| ApiError::invalid("response_format", e.to_string()))
    })
    .await;
    compiled.unwrap_or_else(|e| {
        Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            format!("compiling the schema failed: {e}"),
        ))
    })
}

/// OpenAI's `usage`, with how many prompt tokens came from the prompt cache.
fn usage_json(finish: &Finish) -> Value {
    json!({
        "prompt_tokens": finish.prompt_tokens,
        "completion_tokens": finish.completion_tokens,
        "total_tokens": finish.prompt_tokens + finish.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": finish.cached_tokens},
    })
}

/// Log-probabilities of some tokens, in the endpoint's format.
fn logprobs_json<R: Residency>(
    model: &Model<R>,
    kind: Kind,
    tokens: &[GeneratedToken],
    offset: usize,
) -> Value {
    match kind {
        Kind::Completion => {
            let mut text_offset = Vec::new();
            let mut at = offset;
            for t in tokens {
                text_offset.push(at);
                at += token_text(model, t.id).len();
            }
            json!({
                "tokens": tokens.iter().map(|t| token_text(model, t.id)).collect::<Vec<_>>(),
                "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
                "top_logprobs": tokens.iter().map(|t| {
                    let mut m = serde_json::Map::new();
                    for &(id, lp) in &t.top_logprobs {
                        m.insert(token_text(model, id), json!(lp));
                    }
                    Value::Object(m)
                }).collect::<Vec<_>>(),
                "text_offset": text_offset,
            })
        }
        Kind::Chat => {
            let entry = |id: u32, logprob: f64| {
                let text = token_text(model, id);
                json!({
                    "token": text,
                    "logprob": logprob,
                    "bytes": model.tokenizer().token_bytes(id).unwrap_or_default(),
                })
            };
            json!({
                "content": tokens.iter().map(|t| {
                    let mut e = entry(t.id, t.logprob);
                    e["top_logprobs"] = Value::Array(t.top_logprobs.iter().map(|&(id, lp)| entry(id, lp)).collect());
                    e
                }).collect::<Vec<_>>()
            })
        }
    }
}

fn failure(failure: Failure) -> ApiError {
    match failure {
        Failure::ShuttingDown => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the server is shutting down",
        ),
        other => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            other.to_string(),
        ),
    }
}

/// OpenAI's names: a stop token or text is `stop`, a limit `length`.
fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::EndOfSequence | FinishReason::StopText => "stop",
        FinishReason::MaxTokens | FinishReason::ContextFull => "length",
    }
}

async fn collect_response<R: Residency>(
    state: &AppState<R>,
    shape: &Reply,
    mut receiver: UnboundedReceiver<Event>,
    usage: &SharedUsage,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    let mut tokens = Vec::new();
    let finish: Finish = loop {
        match receiver.recv().await {
            Some(Event::Token(token)) => {
                text.push_str(&token.text);
                if shape.logprobs {
                    tokens.push(token);
                }
            }
            Some(Event::Done(finish)) => break finish,
            Some(Event::Failed(f)) => return Err(failure(f)),
            None => return Err(failure(Failure::Error("the engine stopped".into()))),
        }
    };
    record(usage, &finish);
    let logprobs =
        (!tokens.is_empty()).then(|| logprobs_json(&state.model, shape.kind, &tokens, 0));
    let id = request_id(shape.kind);
    let created = now();
    let body = match shape.kind {
        Kind::Completion => json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": state.name,
            "choices": [{
                "index": 0,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": finish_reason(finish.reason),
            }],
            "usage": usage_json(&finish),
        }),
        Kind::Chat => json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": state.name,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
                "finish_reason": finish_reason(finish.reason),
            }],
            "usage": usage_json(&finish),
        }),
    };
    Ok(json_body(&body).into_response())
}

fn record(usage: &SharedUsage, finish: &Finish) {
    usage.update(|u| {
        u.prompt_tokens = finish.prompt_tokens;
        u.cached_tokens = finish.cached_tokens;
        u.completion_tokens = finish.completion_tokens;
        u.finish = Some(finish_reason(finish.reason));
        u.time_to_first_token = Some(finish.time_to_first_token);
    });
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Server-sent events: one chunk per piece of text, a last chunk with `finish_reason` and
/// `usage`, then `data: [DONE]`.
fn stream_response<R: Residency>(
    state: Arc<AppState<R>>,
    shape: Reply,
    receiver: UnboundedReceiver<Event>,
    usage: SharedUsage,
) -> Response {
    let id = request_id(shape.kind);
    let created = now();
    let object = match shape.kind {
        Kind::Completion => "text_completion",
        Kind::Chat => "chat.completion.chunk",
    };
    let name = state.name.clone();
    let model = state.model.clone();
    let chunk = move |choice: Value, usage: Option<Value>| -> Value {
        let mut c = json!({
            "id": id,
            "object": object,
            "created": created,
            "model": name,
            "choices": if choice.is_null() { json!([]) } else { json!([choice]) },
        });
        if let Some(u) = usage {
            c["usage"] = u;
        }
        c
    };
    enum Phase {
        Start,
        Running,
        Finished,
    }
    let initial = (receiver, Phase::Start, 0usize);
    let stream = futures_util::stream::unfold(initial, move |(mut receiver, phase, offset)| {
        let chunk = chunk.clone();
        let usage = usage.clone();
        let model = model.clone();
        async move {
            let events: Vec<SseEvent>;
            let next_phase;
            let mut offset = offset;
            match phase {
                Phase::Finished => return None,
                Phase::Start if shape.kind == Kind::Chat => {
                    let first = json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null});
                    return Some((vec![data(&chunk(first, None))], (receiver, Phase::Running, offset)));
                }
                _ => {}
            }
            match receiver.recv().await {
                Some(Event::Token(mut token)) => {
                    let text = std::mem::take(&mut token.text);
                    let tokens: Vec<GeneratedToken> = shape.logprobs.then_some(token).into_iter().collect();
                    if text.is_empty() && tokens.is_empty() {
                        return Some((Vec::new(), (receiver, Phase::Running, offset)));
                    }
                    let logprobs = (!tokens.is_empty()).then(|| logprobs_json(&model, shape.kind, &tokens, offset));
                    offset += text.len();
                    let choice = match shape.kind {
                        Kind::Completion => json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": null}),
                        Kind::Chat => json!({"index": 0, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": null}),
                    };
                    events = vec![data(&chunk(choice, None))];
                    next_phase = Phase::Running;
                }
                Some(Event::Done(finish)) => {
                    record(&usage, &finish);
                    let totals = usage_json(&finish);
                    let reason = finish_reason(finish.reason);
                    let choice = match shape.kind {
                        Kind::Completion => json!({"index": 0, "text": "", "logprobs": null, "finish_reason": reason}),
                        Kind::Chat => json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": reason}),
                    };
                    let mut out = vec![data(&chunk(choice, Some(totals.clone())))];
                    if shape.include_usage {
                        out.push(data(&chunk(Value::Null, Some(totals))));
                    }
                    out.push(SseEvent::default().data("[DONE]"));
                    events = out;
                    next_phase = Phase::Finished;
                }
                Some(Event::Failed(f)) => {
                    events = vec![
                        data(&failure(f).body()),
                        SseEvent::default().data("[DONE]"),
                    ];
                    next_phase = Phase::Finished;
                }
                None => return None,
            }
            Some((events, (receiver, next_phase, offset)))
        }
    })
    .flat_map(|events| futures_util::stream::iter(events.into_iter().map(Ok::<_, Infallible>)));
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn data(value: &Value) -> SseEvent {
    SseEvent::default().data(value.to_string())
}
