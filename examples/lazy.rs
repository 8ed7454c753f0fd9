//! Low-memory mode: `LazyMistral` keeps only the layer being computed resident. Prints the
//! process's resident memory (Linux) after loading and after generating:
//! `cargo run --release --example lazy -- [MODEL]`.

use std::ops::ControlFlow;

use torchless_model::{EncodeOptions, GenerateOptions, LazyMistral};

/// Resident set size in MiB from /proc/self/status (Linux), or `None` elsewhere.
fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tests/fixtures/models/small-mha-int8.bin".into());
    let file_mib = std::fs::metadata(&path)?.len() as f64 / (1 << 20) as f64;

    let model = LazyMistral::load(&path)?;
    println!(
        "file {file_mib:.1} MiB; RSS after load {:.1} MiB",
        rss_mib().unwrap_or(f64::NAN)
    );

    let mut session = model.session()?;
    let prompt = model
        .tokenizer()
        .encode("Once upon a time", EncodeOptions::default());
    let generation = session.generate(&prompt, GenerateOptions::default(), |_| {
        ControlFlow::Continue(())
    })?;
    println!(
        "generated {} tokens; RSS after generating {:.1} MiB",
        generation.ids.len(),
        rss_mib().unwrap_or(f64::NAN)
    );
    Ok(())
}
