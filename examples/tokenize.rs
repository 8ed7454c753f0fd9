//! Tokenize and decode, from a model file or a `tokenizer.json`:
//! `cargo run --example tokenize -- [MODEL_OR_TOKENIZER_JSON] [TEXT]`.

use torchless_model::{load_tokenizer, DecodeOptions, EncodeOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let source = args
        .next()
        .unwrap_or_else(|| "tests/fixtures/tokenizer/mistral-v0.1-tokenizer.json".into());
    let text = args
        .next()
        .unwrap_or_else(|| "Hello world! Ça va? 你好 🙂".into());

    // A model file's own tokenizer (SentencePiece or byte-level), or a tokenizer.json.
    let tokenizer = load_tokenizer(&source)?;

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
