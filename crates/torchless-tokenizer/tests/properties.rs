//! Property tests: nothing panics on arbitrary input, streaming decode always
//! concatenates to the one-shot decode, and encode/decode round-trips the way
//! SentencePiece does (every `▁` in the text comes back as a space).

mod common;

use proptest::prelude::*;
use torchless_tokenizer::{DecodeOptions, EncodeOptions, Tokenizer};

fn tokenizer() -> &'static Tokenizer {
    common::from_header()
}

const PLAIN: EncodeOptions = EncodeOptions {
    add_bos: true,
    parse_special: false,
};

/// Text biased towards what stresses the tokenizer: whitespace runs, `▁`,
/// special-token lookalikes, digits, multi-byte and unassigned characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ \t\n\r▁a-c0-9]{0,120}",
        proptest::collection::vec(
            prop_oneof![
                Just(" ".to_string()),
                Just("  ".to_string()),
                Just("\t".to_string()),
                Just("\r\n".to_string()),
                Just("▁".to_string()),
                Just("<s>".to_string()),
                Just("</s>".to_string()),
                Just("<unk>".to_string()),
                Just("[INST]".to_string()),
                Just("the".to_string()),
                Just("中文".to_string()),
                Just("👩‍💻".to_string()),
                Just("\u{E000}".to_string()),
                Just("\u{10FFFF}".to_string()),
                Just("e\u{301}".to_string()),
                "[a-zA-Z]{1,8}",
                "\\PC{1,4}",
            ],
            0..40,
        )
        .prop_map(|parts| parts.concat()),
    ]
}

/// Id sequences biased towards byte pieces (to build valid, truncated and
/// invalid UTF-8), control tokens, `▁`-pieces and out-of-range ids.
fn ids() -> impl Strategy<Value = Vec<u32>> {
    proptest::collection::vec(
        prop_oneof![
            4 => 3u32..259,
            1 => 0u32..3,
            1 => Just(28705u32),
            1 => Just(259u32),
            3 => 259u32..32000,
            1 => 32000u32..=u32::MAX,
        ],
        0..64,
    )
}

fn streamed(tokenizer: &Tokenizer, ids: &[u32], options: DecodeOptions) -> String {
    let mut decoder = tokenizer.stream_decoder_with(options);
    let mut out = String::new();
    for &id in ids {
        out.push_str(&decoder.push(id));
    }
    out + &decoder.finish()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn encode_decode_roundtrips_like_sentencepiece(text in text()) {
        let tokenizer = tokenizer();
        let ids = tokenizer.encode(&text, PLAIN);
        prop_assert_eq!(ids[0], 1);
        prop_assert!(ids.iter().all(|&id| (id as usize) < tokenizer.vocab_size()));
        prop_assert!(ids[1..].iter().all(|&id| !tokenizer.is_special(id)));
        let expected = text.replace('\u{2581}', " ");
        prop_assert_eq!(tokenizer.decode(&ids, DecodeOptions::default()), expected.clone());
        prop_assert_eq!(streamed(tokenizer, &ids, DecodeOptions::default()), expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let tokenizer = tokenizer();
        let text = String::from_utf8_lossy(&bytes);
        for parse_special in [false, true] {
            let ids = tokenizer.encode(&text, EncodeOptions { add_bos: false, parse_special });
            prop_assert!(ids.iter().all(|&id| (id as usize) < tokenizer.vocab_size()));
        }
    }

    #[test]
    fn parse_special_only_differs_where_special_strings_occur(text in text()) {
        let tokenizer = tokenizer();
        let special = EncodeOptions { add_bos: true, parse_special: true };
        let ids = tokenizer.encode(&text, special);
        prop_assert!(ids.iter().all(|&id| (id as usize) < tokenizer.vocab_size()));
        if !["<s>", "</s>", "<unk>"].iter().any(|s| text.contains(s)) {
            prop_assert_eq!(ids, tokenizer.encode(&text, PLAIN));
        }
    }

    #[test]
    fn streaming_decode_concatenates_to_decode(ids in ids()) {
        let tokenizer = tokenizer();
        for skip_special in [true, false] {
            let options = DecodeOptions { skip_special };
            prop_assert_eq!(streamed(tokenizer, &ids, options), tokenizer.decode(&ids, options));
        }
    }

    #[test]
    fn stream_outputs_are_never_split_characters(ids in ids()) {
        // Each push returns whole characters: cutting the one-shot decode at the
        // push boundaries never lands inside a character, and a U+FFFD appears
        // only where the one-shot decode has one.
        let tokenizer = tokenizer();
        let full = tokenizer.decode(&ids, DecodeOptions::default());
        let mut decoder = tokenizer.stream_decoder();
        let mut offset = 0;
        for &id in &ids {
            offset += decoder.push(id).len();
            prop_assert!(full.is_char_boundary(offset));
        }
        prop_assert_eq!(offset + decoder.finish().len(), full.len());
    }
}

#[test]
fn pathological_long_inputs_are_fast_and_exact() {
    // A quadratic merge loop would take hours on these; the budget is generous
    // so the test only fails on a complexity regression.
    let tokenizer = tokenizer();
    let inputs = [
        "a".repeat(1 << 20),
        " ".repeat(1 << 20),
        "\n".repeat(1 << 19),
        "ab".repeat(1 << 19),
        "的".repeat(1 << 18),
        "1 ".repeat(1 << 19),
        format!("{}x{}", " ".repeat(300_000), "\t ".repeat(200_000)),
    ];
    let start = std::time::Instant::now();
    for text in &inputs {
        let ids = tokenizer.encode(text, PLAIN);
        assert_eq!(&tokenizer.decode(&ids, DecodeOptions::default()), text);
    }
    let elapsed = start.elapsed();
    assert!(elapsed.as_secs() < 20, "took {elapsed:?}");
}

#[test]
fn long_runs_split_like_sentencepiece() {
    // SentencePiece output for a run of spaces is the leftmost greedy
    // 16-space pieces (`▁` × 16 is the longest whitespace piece, id 359),
    // whatever the run's length.
    let tokenizer = tokenizer();
    let ids = tokenizer.encode(&" ".repeat(1599), PLAIN);
    assert_eq!(ids.len(), 1 + 100);
    assert!(ids[1..].iter().all(|&id| id == 359), "{:?}", &ids[..5]);
}
