//! `torchless serve MODEL`: an OpenAI-compatible HTTP server (the endpoints and field names of
//! OpenAI's API and llama.cpp's `llama-server`) over one shared model. The requests run on the
//! library's scheduler (`torchless_model::scheduler`: `--parallel` slots decoded together by
//! continuous batching, on a thread of its own); this module is the HTTP side.

mod api;
mod metrics;
mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use torchless_model::{
    Lazy, Model, Residency, Resident, SchedulerHandle, SchedulerOptions, SessionOptions,
};

use crate::options::{KvCacheArgs, ModelArgs};

/// `torchless serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Model file: a llama.cpp GGUF file (used as it is) or a torchless model file.
    pub model: PathBuf,
    /// Address to listen on (keep 127.0.0.1 unless the port is protected, e.g. by --api-key).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port; the address is printed on stdout).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Requests generated at the same time (slots, each with its own KV cache); their decode
    /// steps run as one batched forward pass.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub parallel: usize,
    /// Context length of each slot: prompt plus generated tokens [default: the model's
    /// max_position_embeddings, at most 4096].
    #[arg(short = 'c', long = "ctx-size", alias = "ctx", value_name = "N")]
    pub ctx_size: Option<usize>,
    /// Prompt tokens processed per engine turn: one chunk of one prompt runs between decode
    /// steps. While other slots are generating a chunk takes at most 64 tokens (where the
    /// model's kernels make chunk sizes give the same bits), so a long prompt stalls the running
    /// streams ~1.5 s at a time for a 7B int4 model on two cores; a prompt alone takes whole
    /// batches. The prompt cache reuses any prefix prefill computed (where chunk sizes change
    /// the rounding: BLAS, a sliding window shorter than the context, row-aligned int8 under
    /// 34, chunks stay whole batches and only whole batches are reused).
    #[arg(
        short = 'b',
        long = "batch-size",
        value_name = "N",
        default_value_t = 256
    )]
    pub batch_size: usize,
    /// Requests that may wait for a free slot; beyond that the server answers 503 with
    /// Retry-After.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub queue: usize,
    /// Largest request body accepted, in bytes (413 beyond).
    #[arg(long = "max-body", value_name = "BYTES", default_value_t = 1 << 20)]
    pub max_body: usize,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health.
    #[arg(long = "api-key", value_name = "KEY")]
    pub api_key: Option<String>,
    /// The model name reported by /v1/models and in responses [default: the file name].
    #[arg(long = "model-name", value_name = "NAME")]
    pub model_name: Option<String>,
    /// Threads for the forward passes [default: one per core].
    #[arg(short = 't', long, value_name = "N")]
    pub threads: Option<usize>,
    /// Low-memory mode: keep only the layer being computed resident.
    #[arg(long)]
    pub lazy: bool,
    /// Read the whole model file into memory instead of mapping it (as llama.cpp's --no-mmap).
    #[arg(long = "no-mmap", conflicts_with = "lazy")]
    pub no_mmap: bool,
    /// GGUF weights: multiply exactly (f32 activations) instead of quantizing the activations
    /// per block as llama.cpp does.
    #[arg(long)]
    pub exact: bool,
    #[command(flatten)]
    pub cache: KvCacheArgs,
    /// Request logs on stderr as one JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// A Jinja chat template to use instead of the file's (a Hugging Face `chat_template`).
    #[arg(long = "chat-template-file", value_name = "PATH")]
    pub chat_template_file: Option<PathBuf>,
    /// Serve Prometheus metrics at /metrics.
    #[arg(long)]
    pub metrics: bool,
}

/// Milliseconds to wait before loading the model: lets tests (and load-balancer drills) watch
/// /health answer 503 while a server loads.
const LOAD_DELAY_VAR: &str = "TORCHLESS_SERVE_LOAD_DELAY_MS";

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    if args.parallel == 0 {
        anyhow::bail!("--parallel must be at least 1");
    }
    if args.lazy {
        run_with::<Lazy>(args)
    } else {
        run_with::<Resident>(args)
    }
}

fn run_with<R: Residency>(args: ServeArgs) -> anyhow::Result<()> {
    let template = super::read_chat_template(args.chat_template_file.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Listen first, so that /health can say "loading model" (503) until the model is ready,
    // as llama-server does: a load balancer or an orchestrator then sees a live, loading server.
    let address = format!("{}:{}", args.host, args.port);
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&address))
        .with_context(|| format!("cannot listen on {address}"))?;
    let local: SocketAddr = listener.local_addr()?;
    // On stdout, for scripts and tests that started the server on port 0.
    println!("listening on http://{local}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let loaded: Arc<OnceLock<axum::Router>> = Arc::default();
    let engine_slot: Arc<OnceLock<Arc<routes::Engine>>> = Arc::default();
    let stop_engine = engine_slot.clone();
    let serve = axum::serve(listener, routes::loading_gate(loaded.clone())).with_graceful_shutdown(
        async move {
            shutdown_signal().await;
            eprintln!("torchless serve: shutting down");
            if let Some(engine) = stop_engine.get() {
                engine.shutdown();
            }
        },
    );
    let server = runtime.spawn(async move { serve.await });

    if let Some(ms) = std::env::var(LOAD_DELAY_VAR)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
    let model_args = ModelArgs {
        model: args.model.clone(),
        lazy: args.lazy,
        no_mmap: args.no_mmap,
        threads: args.threads,
        batch_threads: None,
        ctx_size: None,
        batch_size: args.batch_size,
        int8_activations: false,
        exact: args.exact,
        cache: args.cache.clone(),
        json: false,
        debug: false,
    };
    let mut model = super::load_model::<R>(&model_args)?;
    if template.is_some() {
        model.set_chat_template(template)?;
    }
    let model: Arc<Model<R>> = Arc::new(model);
    let max_positions = model.config().max_position_embeddings;
    let ctx = args.ctx_size.unwrap_or(max_positions.min(4096));
    let session = SessionOptions {
        context_len: Some(ctx),
        batch_size: args.batch_size,
        threads: args.threads.unwrap_or(0),
        batch_threads: 0,
        int8_activations: false,
        exact_activations: args.exact,
        cache_type_k: args.cache.cache_type_k,
        cache_type_v: args.cache.cache_type_v,
    };
    let (engine, engine_thread) = SchedulerHandle::spawn(
        model.clone(),
        SchedulerOptions {
            slots: args.parallel,
            queue_limit: args.queue,
            session,
        },
    )
    .context("cannot start the inference engine")?;
    let engine: Arc<routes::Engine> = Arc::new(engine);
    let name = args.model_name.clone().unwrap_or_else(|| {
        args.model
            .file_name()
            .map_or("model".into(), |n| n.to_string_lossy().into_owned())
    });
    let state = Arc::new(routes::AppState {
        model,
        engine: engine.clone(),
        name,
        api_key: args.api_key.clone(),
        max_body: args.max_body,
        ctx,
        kv_types: args.cache.types(),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        json_logs: args.json,
        metrics: args.metrics.then(Arc::default),
        constraint_vocab: OnceLock::new(),
    });
    // The structured-output vocabulary is built in the background now (0.1-0.2 s on a 50k
    // vocabulary), not by the first request that has a `response_format`.
    let warm = state.clone();
    std::thread::spawn(move || {
        warm.constraint_vocab();
    });
    eprintln!(
        "torchless serve: {} ({} slots, context {ctx}, queue {}, {})",
        args.model.display(),
        args.parallel,
        args.queue,
        torchless_model::kernels::cpu_path()
    );
    let _ = engine_slot.set(engine.clone());
    let _ = loaded.set(routes::router(state));
    let result = match runtime.block_on(server) {
        Ok(served) => served.context("server error"),
        Err(e) => Err(anyhow::anyhow!("server task failed: {e}")),
    };
    engine.shutdown();
    let _ = engine_thread.join();
    result
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
