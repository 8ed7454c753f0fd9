//! Streaming completion: `cargo run --release --example generate -- [MODEL] [PROMPT]`.
//!
//! Defaults to the small model bundled in the repository.

use std::io::Write;
use std::ops::ControlFlow;

use torchless_model::{EncodeOptions, GenerateOptions, Mistral, SamplingParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .unwrap_or_else(|| "tests/fixtures/models/small-gqa-int8.bin".into());
    let prompt = args
        .next()
        .unwrap_or_else(|| "The capital of France is".into());

    let model = Mistral::load(&path)?;
    let mut session = model.session()?;
    let prompt_ids = model.tokenizer().encode(&prompt, EncodeOptions::default());
    let options = GenerateOptions {
        max_tokens: 32,
        sampling: SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            seed: 42,
            ..SamplingParams::default()
        },
        ..GenerateOptions::default()
    };

    print!("{prompt}");
    let generation = session.generate(&prompt_ids, options, |token| {
        print!("{}", token.text);
        let _ = std::io::stdout().flush();
        ControlFlow::Continue(())
    })?;
    println!();
    let stats = generation.stats;
    eprintln!(
        "{} prompt tokens at {:.1} tok/s, {} generated at {:.1} tok/s ({:?})",
        stats.prompt_tokens,
        stats.prompt_tokens_per_second(),
        stats.generated_tokens,
        stats.generation_tokens_per_second(),
        stats.stop_reason
    );
    Ok(())
}
