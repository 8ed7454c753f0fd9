//! Byte-level BPE against Hugging Face `tokenizers` on 2000 texts (many scripts, whitespace
//! runs, digits, code, emoji, control characters, special tokens in text), for SmolLM2's real
//! tokenizer and for trained Llama 3-style and GPT-2-style ones. Regenerate with
//! `scripts/fixtures/make_byte_level_fixtures.py`.

mod common;

use std::path::PathBuf;

use serde::Deserialize;
use torchless_tokenizer::{DecodeOptions, EncodeOptions, Pretokenizer, TokenKind, Tokenizer};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tokenizer/byte_level")
        .join(name)
}

#[derive(Deserialize)]
struct Expected {
    ids: Vec<u32>,
    plain: Option<Vec<u32>>,
    decoded: Option<String>,
    decoded_with_special: Option<String>,
    with_bos: Option<Vec<u32>>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    smollm2: Expected,
    #[serde(rename = "llama3-style")]
    llama3: Expected,
    #[serde(rename = "gpt2-style")]
    gpt2: Expected,
}

fn cases() -> Vec<Case> {
    let text = common::read_text(&fixture("cases.jsonl.gz"));
    text.lines()
        .map(|line| serde_json::from_str(line).expect("case parses"))
        .collect()
}

fn load(name: &str) -> Tokenizer {
    let json = common::read_text(&fixture(&format!("{name}-tokenizer.json.gz")));
    Tokenizer::from_tokenizer_json_str(&json).expect("tokenizer loads")
}

fn stream(tokenizer: &Tokenizer, ids: &[u32], skip_special: bool) -> String {
    let mut decoder = tokenizer.stream_decoder_with(DecodeOptions { skip_special });
    let mut out = String::new();
    for &id in ids {
        decoder.push_to(id, &mut out);
    }
    out + &decoder.finish()
}

/// Compares every case for one tokenizer and reports all mismatches at once.
fn check(name: &str, pick: impl Fn(&Case) -> &Expected) {
    let tokenizer = load(name);
    assert!(tokenizer.is_byte_level());
    let cases = cases();
    assert!(cases.len() >= 2000, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let expected = pick(case);
        let text = &case.text;
        let parsed = tokenizer.encode(
            text,
            EncodeOptions {
                add_bos: false,
                parse_special: true,
            },
        );
        if parsed != expected.ids {
            failures.push(format!(
                "{text:?}: ids {parsed:?}, tokenizers {:?}",
                expected.ids
            ));
        }
        let plain = tokenizer.encode(
            text,
            EncodeOptions {
                add_bos: false,
                parse_special: false,
            },
        );
        let want_plain = expected.plain.as_ref().unwrap_or(&expected.ids);
        if &plain != want_plain {
            failures.push(format!(
                "{text:?}: plain ids {plain:?}, tokenizers {want_plain:?}"
            ));
        }
        for (skip_special, want) in [
            (true, &expected.decoded),
            (false, &expected.decoded_with_special),
        ] {
            let want = want.as_deref().unwrap_or(text);
            let options = DecodeOptions { skip_special };
            let decoded = tokenizer.decode(&expected.ids, options);
            if decoded != want {
                failures.push(format!(
                    "{text:?}: decode(skip_special={skip_special}) {decoded:?}, tokenizers {want:?}"
                ));
            }
            let streamed = stream(&tokenizer, &expected.ids, skip_special);
            if streamed != want {
                failures.push(format!(
                    "{text:?}: stream decode(skip_special={skip_special}) {streamed:?}, want {want:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} checks differ from tokenizers, first ones:\n{}",
        failures.len(),
        cases.len() * 6,
        failures[..failures.len().min(12)].join("\n")
    );
}

#[test]
fn smollm2_matches_hugging_face_tokenizers() {
    check("smollm2", |c| &c.smollm2);
    let tokenizer = load("smollm2");
    assert_eq!(tokenizer.pretokenizer(), Some(Pretokenizer::SmolLm));
    assert_eq!(tokenizer.vocab_size(), 49152);
    assert_eq!(tokenizer.piece_to_id("<|im_start|>"), Some(1));
    assert_eq!(tokenizer.token_kind(1), Some(TokenKind::Control));
    assert_eq!(tokenizer.added_tokens().len(), 17);
    // tokenizer.json carries no BOS rule: SmolLM2 prompts start without one.
    assert!(!tokenizer.adds_bos());
}

#[test]
fn llama3_style_matches_hugging_face_tokenizers() {
    check("llama3-style", |c| &c.llama3);
    let tokenizer = load("llama3-style");
    assert_eq!(tokenizer.pretokenizer(), Some(Pretokenizer::Llama3));
    // BOS comes from the TemplateProcessing post-processor, as Hugging Face adds it.
    let bos = cases()[0].llama3.with_bos.clone().expect("with_bos");
    assert_eq!(tokenizer.bos_id(), Some(bos[0]));
    assert!(tokenizer.adds_bos());
    let ids = tokenizer.encode("hi", tokenizer.prompt_options());
    assert_eq!(ids[0], bos[0]);
}

#[test]
fn gpt2_style_matches_hugging_face_tokenizers() {
    check("gpt2-style", |c| &c.gpt2);
    assert_eq!(load("gpt2-style").pretokenizer(), Some(Pretokenizer::Gpt2));
}

#[test]
fn stream_decoding_is_utf8_safe_for_split_characters() {
    // "😀" is four bytes: byte-level tokens can split it anywhere. Feed its bytes one token at
    // a time: nothing is printed until the character is complete, and a broken sequence gives
    // one U+FFFD per ill-formed run, as `String::from_utf8_lossy` of the whole does.
    let tokenizer = load("gpt2-style");
    let byte_id = |b: u8| {
        (0..tokenizer.vocab_size() as u32)
            .find(|&id| tokenizer.token_bytes(id).as_deref() == Some(&[b][..]))
            .expect("every byte has a piece")
    };
    let smile: Vec<u32> = "😀".bytes().map(byte_id).collect();
    let mut decoder = tokenizer.stream_decoder();
    let pieces: Vec<String> = smile.iter().map(|&id| decoder.push(id)).collect();
    assert_eq!(pieces, ["", "", "", "😀"]);
    assert_eq!(decoder.finish(), "");

    let broken = [smile[0], smile[1], byte_id(b'a'), smile[0]];
    let whole = tokenizer.decode(&broken, DecodeOptions::default());
    assert_eq!(whole, "\u{FFFD}a\u{FFFD}");
    assert_eq!(stream(&tokenizer, &broken, true), whole);
}

#[test]
fn refuses_settings_it_would_get_wrong() {
    let base: serde_json::Value =
        serde_json::from_str(&common::read_text(&fixture("gpt2-style-tokenizer.json.gz"))).unwrap();
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v = base.clone();
        edit(&mut v);
        Tokenizer::from_tokenizer_json_str(&v.to_string())
            .unwrap_err()
            .to_string()
    };
    let e = with(&|v| v["normalizer"] = serde_json::json!({"type": "NFC"}));
    assert!(e.contains("normalizer"), "{e}");
    let e = with(&|v| v["pre_tokenizer"]["add_prefix_space"] = true.into());
    assert!(e.contains("pre_tokenizer"), "{e}");
    let e = with(&|v| v["model"]["ignore_merges"] = true.into());
    assert!(e.contains("ignore_merges"), "{e}");
    let e = with(&|v| v["model"]["merges"][0] = "Ġ zzzz".into());
    assert!(e.contains("zzzz"), "{e}");
    let e = with(&|v| v["added_tokens"][0]["id"] = 5.into());
    assert!(e.contains("added token"), "{e}");
}
