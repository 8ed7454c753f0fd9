//! Tokenize and decode, from a model file or a `tokenizer.json`:
//! `cargo run --example tokenize -- [MODEL_OR_TOKENIZER_JSON] [TEXT]`.

use torchless_model::format::ModelFile;
use torchless_model::{DecodeOptions, EncodeOptions, Tokenizer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let source = args
        .next()
        .unwrap_or_else(|| "tests/fixtures/tokenizer/mistral-v0.1-tokenizer.json".into());
    let text = args
        .next()
        .unwrap_or_else(|| "Hello world! Ça va? 你好 🙂".into());

    let tokenizer = if source.ends_with(".json") {
        Tokenizer::from_file(&source)?
    } else {
        let data = ModelFile::open(&source)?.tokenizer_data()?;
        Tokenizer::from_vocab_and_merges(data.vocab, data.merges)?
    };

    let ids = tokenizer.encode(&text, EncodeOptions::default());
    for &id in &ids {
        println!("{id:>6}  {:?}", tokenizer.token_to_piece(id).unwrap_or("?"));
    }

    // Streaming decode gives the same text as decoding all at once.
    let mut decoder = tokenizer.stream_decoder();
    let mut streamed = String::new();
    for &id in &ids {
        streamed.push_str(&decoder.push(id));
    }
    streamed.push_str(&decoder.finish());
    let decoded = tokenizer.decode(&ids, DecodeOptions::default());
    assert_eq!(streamed, decoded);
    println!("decoded: {decoded:?}");
    Ok(())
}
