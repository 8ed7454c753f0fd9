//! Arbitrary ids (valid, control, byte pieces and out of range) through Mistral's tokenizer:
//! decoding never panics, streaming decode concatenates to the one-shot decode, and every streamed
//! piece is whole characters.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use torchless_tokenizer::{DecodeOptions, Tokenizer};

const TOKENIZER_JSON: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/tokenizer/mistral-v0.1-tokenizer.json"
);

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| Tokenizer::from_file(TOKENIZER_JSON).expect("fixture tokenizer loads"))
}

/// Four bytes per id. With the top bit clear the id is taken modulo 33,000 (mostly valid ids,
/// some just past the 32,000-piece vocabulary); with it set, the raw value (far out of range).
fn ids(data: &[u8]) -> Vec<u32> {
    data.chunks_exact(4)
        .map(|c| {
            let raw = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            if raw & 0x8000_0000 == 0 {
                raw % 33_000
            } else {
                raw
            }
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let tokenizer = tokenizer();
    let ids = ids(rest);
    let options = DecodeOptions {
        skip_special: flags & 1 == 0,
    };
    let full = tokenizer.decode(&ids, options);
    let mut decoder = tokenizer.stream_decoder_with(options);
    let mut streamed = String::new();
    for &id in &ids {
        streamed.push_str(&decoder.push(id));
        assert!(full.is_char_boundary(streamed.len().min(full.len())));
    }
    streamed.push_str(&decoder.finish());
    assert_eq!(streamed, full);
    for &id in &ids {
        let in_range = (id as usize) < tokenizer.vocab_size();
        assert_eq!(tokenizer.token_to_piece(id).is_some(), in_range);
        assert_eq!(tokenizer.token_kind(id).is_some(), in_range);
    }
});
