//! Arbitrary text through Mistral's real tokenizer: encode then decode gives the text back, with
//! every `▁` (U+2581) turned into a space, the SentencePiece rule the tokenizer documents (see
//! crates/torchless-tokenizer/tests/properties.rs). With `parse_special`, ids stay in range and
//! text without special-token strings encodes exactly as plain text.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use torchless_tokenizer::{DecodeOptions, EncodeOptions, Tokenizer};

const TOKENIZER_JSON: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/tokenizer/mistral-v0.1-tokenizer.json"
);

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| Tokenizer::from_file(TOKENIZER_JSON).expect("fixture tokenizer loads"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let tokenizer = tokenizer();
    let vocab = tokenizer.vocab_size();

    let plain = EncodeOptions {
        add_bos: true,
        parse_special: false,
    };
    let ids = tokenizer.encode(text, plain);
    assert_eq!(ids.first(), tokenizer.bos_id().as_ref());
    assert!(ids.iter().all(|&id| (id as usize) < vocab));
    assert!(ids[1..].iter().all(|&id| !tokenizer.is_special(id)));
    let expected = text.replace('\u{2581}', " ");
    assert_eq!(tokenizer.decode(&ids, DecodeOptions::default()), expected);
    let mut stream = tokenizer.stream_decoder();
    let mut streamed = String::new();
    for &id in &ids {
        streamed.push_str(&stream.push(id));
    }
    streamed.push_str(&stream.finish());
    assert_eq!(streamed, expected);

    let special = EncodeOptions {
        add_bos: false,
        parse_special: true,
    };
    let ids_special = tokenizer.encode(text, special);
    assert!(ids_special.iter().all(|&id| (id as usize) < vocab));
    let has_special_text = ["<s>", "</s>", "<unk>"].iter().any(|s| text.contains(s));
    if !has_special_text {
        assert_eq!(ids_special, ids[1..]);
        // Without special tokens in the ids, showing special pieces changes nothing.
        let shown = tokenizer.decode(
            &ids_special,
            DecodeOptions {
                skip_special: false,
            },
        );
        assert_eq!(shown, expected);
    }
});
