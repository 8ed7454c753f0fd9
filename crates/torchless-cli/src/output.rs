//! What goes to stderr: errors, statistics, progress; and the interrupt flag for Ctrl-C.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use torchless_model::{GenerationStats, LoadProgress};

/// Prints `error: ...` as one line (causes joined with `: `).
pub fn print_error(error: &anyhow::Error) {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message.push_str(": ");
            message.push_str(&cause);
        }
    }
    eprintln!("error: {}", message.replace('\n', " "));
}

/// The one-line summary printed after a run. The generation rate needs two generated tokens (the
/// first comes from the prompt's forward pass), so with fewer it reads "-" instead of 0.
pub fn stats_line(stats: &GenerationStats) -> String {
    let generation_rate = if stats.generated_tokens >= 2 {
        format!("{:.2}", stats.generation_tokens_per_second())
    } else {
        "-".to_string()
    };
    format!(
        "load {:.2} s | prompt {} tokens, {:.1} tok/s | generation {} tokens, {generation_rate} tok/s | {:?}",
        stats.load_time.as_secs_f64(),
        stats.prompt_tokens,
        stats.prompt_tokens_per_second(),
        stats.generated_tokens,
        stats.stop_reason,
    )
}

/// Timings as JSON, with rates.
pub fn stats_json(stats: &GenerationStats) -> serde_json::Value {
    serde_json::json!({
        "load_s": stats.load_time.as_secs_f64(),
        "prompt_tokens": stats.prompt_tokens,
        "prompt_s": stats.prompt_time.as_secs_f64(),
        "prompt_tokens_per_s": stats.prompt_tokens_per_second(),
        "generated_tokens": stats.generated_tokens,
        "generation_s": stats.generation_time.as_secs_f64(),
        "generation_tokens_per_s": (stats.generated_tokens >= 2)
            .then(|| stats.generation_tokens_per_second()),
    })
}

/// A progress bar on stderr (drawn only when stderr is a terminal).
pub fn progress_bar(total: u64, message: &str, bytes: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let template = if bytes {
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})"
    } else {
        "{msg} [{bar:30}] {pos}/{len} ({eta})"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message.to_string());
    bar
}

/// A load-progress callback that drives a bar: bytes while the file is read into memory
/// (`--no-mmap`), then the steps validation, tokenizer, done.
pub fn load_progress() -> (ProgressBar, impl FnMut(LoadProgress)) {
    let bar = progress_bar(3, "loading", false);
    let handle = bar.clone();
    let mut reading = false;
    let callback = move |p: LoadProgress| match p {
        LoadProgress::Reading { done, total } => {
            if !reading {
                reading = true;
                let bytes = progress_bar(total, "reading", true);
                handle.set_style(bytes.style());
                handle.set_message("reading");
                handle.set_length(total);
            }
            handle.set_position(done);
        }
        LoadProgress::Validated { .. } => {
            if reading {
                handle.set_style(progress_bar(3, "loading", false).style());
                handle.set_message("loading");
                handle.set_length(3);
            }
            handle.set_position(1);
        }
        LoadProgress::TokenizerReady => handle.set_position(2),
        LoadProgress::Done => handle.finish_and_clear(),
        _ => {}
    };
    (bar, callback)
}

/// Set by the first Ctrl-C (generation stops cleanly and statistics are still printed); a
/// second Ctrl-C exits at once.
pub fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let handler_flag = flag.clone();
    let _ = ctrlc::set_handler(move || {
        if handler_flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
    flag
}
