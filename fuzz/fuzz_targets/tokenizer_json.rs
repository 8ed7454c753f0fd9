//! Arbitrary bytes as a `tokenizer.json`: the tokenizer crate's loader and the converter's
//! (`torchless convert` reads the same file) answer `Err` or a tokenizer that works.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use torchless_tokenizer::{DecodeOptions, EncodeOptions, Tokenizer};

const TEXT: &str = "Hello <s> [INST] wor\u{2581}ld\n\t\u{4e2d}\u{6587} \u{1F469}\u{200D}\u{1F4BB}!";

fn exercise(tokenizer: &Tokenizer) {
    let vocab = tokenizer.vocab_size();
    for parse_special in [false, true] {
        let options = EncodeOptions {
            add_bos: true,
            parse_special,
        };
        let ids = tokenizer.encode(TEXT, options);
        assert!(ids.iter().all(|&id| (id as usize) < vocab));
        for skip_special in [true, false] {
            let options = DecodeOptions { skip_special };
            let text = tokenizer.decode(&ids, options);
            let mut stream = tokenizer.stream_decoder_with(options);
            let mut streamed: String = ids.iter().map(|&id| stream.push(id)).collect();
            streamed.push_str(&stream.finish());
            assert_eq!(streamed, text);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(json) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(tokenizer) = Tokenizer::from_tokenizer_json_str(json) {
        exercise(&tokenizer);
    }
    let path = Path::new("tokenizer.json");
    if let Ok(data) = torchless_model::convert::parse_tokenizer_json(json, path) {
        // The converter checked that torchless accepts the vocabulary; it must build again here.
        let tokenizer = torchless_model::tokenizer_from_data(data)
            .expect("the converter accepted this vocabulary");
        exercise(&tokenizer);
    }
});
