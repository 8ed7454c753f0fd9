//! Fixture loading shared by the integration tests.

#![allow(dead_code)]

use std::sync::OnceLock;

use serde_json::Value;
use torchless_tokenizer::Tokenizer;

pub const TOKENIZER_JSON: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/tokenizer/mistral-v0.1-tokenizer.json"
);
pub const CASES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/tokenizer/cases.jsonl.gz"
);

/// A fixture's text; `.gz` files (the large case lists, kept compressed to hold the repository's
/// fixture budget) are decompressed.
pub fn read(path: &str) -> String {
    read_text(std::path::Path::new(path))
}

/// [`read`] for any path.
pub fn read_text(path: &std::path::Path) -> String {
    let bytes = std::fs::read(path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
    if path.extension().is_some_and(|e| e == "gz") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut text)
            .unwrap_or_else(|e| panic!("cannot decompress fixture {}: {e}", path.display()));
        text
    } else {
        String::from_utf8(bytes).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
    }
}

/// The tokenizer loaded from the tokenizer.json fixture (loaded once).
pub fn from_json() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| Tokenizer::from_file(TOKENIZER_JSON).expect("fixture tokenizer.json loads"))
}

/// The vocab and merges exactly as a torchless model header stores them
/// (`{"vocab": {piece: id}, "merges": ["left right", ...]}`), taken from the
/// same tokenizer.json.
pub fn header_vocab_and_merges() -> (Vec<(String, u32)>, Vec<String>) {
    let json: Value = serde_json::from_str(&read(TOKENIZER_JSON)).expect("fixture is JSON");
    let vocab = json["model"]["vocab"]
        .as_object()
        .expect("vocab object")
        .iter()
        .map(|(piece, id)| (piece.clone(), id.as_u64().expect("integer id") as u32))
        .collect();
    let merges = json["model"]["merges"]
        .as_array()
        .expect("merges array")
        .iter()
        .map(|m| m.as_str().expect("merge string").to_owned())
        .collect();
    (vocab, merges)
}

/// The tokenizer built from vocab + merges, as the model crate builds it
/// (built once).
pub fn from_header() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let (vocab, merges) = header_vocab_and_merges();
        Tokenizer::from_vocab_and_merges(vocab, merges).expect("vocab and merges load")
    })
}

/// All fixture lines of one kind.
pub fn cases(kind: &str) -> Vec<&'static Value> {
    static ALL: OnceLock<Vec<Value>> = OnceLock::new();
    let all = ALL.get_or_init(|| {
        read(CASES)
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).expect("fixture line is JSON"))
            .collect()
    });
    let cases: Vec<&Value> = all.iter().filter(|case| case["kind"] == kind).collect();
    assert!(!cases.is_empty(), "no {kind} cases in {CASES}");
    cases
}

pub fn ids_of(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("ids array")
        .iter()
        .map(|id| id.as_u64().expect("id") as u32)
        .collect()
}

pub fn str_of(value: &Value) -> &str {
    value.as_str().expect("string field")
}
