//! Perplexity of a text under the model, in chunks of `ctx` tokens:
//! `cargo run --release --example perplexity -- [MODEL] [TEXT_FILE]`.

use torchless_model::{EncodeOptions, Mistral};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .unwrap_or_else(|| "tests/fixtures/models/small-mqa-f32.bin".into());
    let text = match args.next() {
        Some(file) => std::fs::read_to_string(file)?,
        None => "The quick brown fox jumps over the lazy dog. ".repeat(8),
    };

    let model = Mistral::load(&path)?;
    let ids = model.tokenizer().encode(&text, EncodeOptions::default());
    let mut session = model.session()?;
    let result = session.perplexity(&ids, 64, |done, total| eprint!("\rchunk {done}/{total}"))?;
    eprintln!();
    println!(
        "{} tokens in {} chunks: mean NLL {:.4} nats, perplexity {:.3}",
        result.tokens, result.chunks, result.mean_nll, result.perplexity
    );
    Ok(())
}
