//! The published golden cases in ../shared/reference/tokenizer/cases.jsonl
//! (outside the repository, so behind the `shared-reference` feature):
//!
//! ```text
//! cargo test -p torchless-tokenizer --features shared-reference --test shared_reference
//! ```
//!
//! The shared folder is `$TORCHLESS_SHARED_DIR` if set, else `shared/` beside
//! the repository. A missing file fails the test.

#![cfg(feature = "shared-reference")]

mod common;

use std::path::PathBuf;

use common::{ids_of, str_of};
use serde_json::Value;
use torchless_tokenizer::{DecodeOptions, EncodeOptions};

fn shared_dir() -> PathBuf {
    match std::env::var_os("TORCHLESS_SHARED_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")),
    }
}

#[test]
fn published_cases_match() {
    let path = shared_dir().join("reference/tokenizer/cases.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); set TORCHLESS_SHARED_DIR to the shared folder",
            path.display()
        )
    });
    let cases: Vec<Value> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).expect("case is JSON"))
        .collect();
    assert!(
        cases.len() >= 200,
        "only {} cases in {}",
        cases.len(),
        path.display()
    );

    let json_path = shared_dir().join("reference/tokenizer/mistral-v0.1-tokenizer.json");
    let tokenizers = [
        (
            "shared tokenizer.json",
            torchless_tokenizer::Tokenizer::from_file(&json_path)
                .unwrap_or_else(|e| panic!("{}: {e}", json_path.display())),
        ),
        ("fixture vocab+merges", common::from_header().clone()),
    ];
    let mut failures = Vec::new();
    for (source, tokenizer) in &tokenizers {
        for case in &cases {
            let text = str_of(&case["text"]);
            let ids = ids_of(&case["ids"]);
            let got = tokenizer.encode(text, EncodeOptions::default());
            if got != ids {
                failures.push(format!("[{source}] ids for {text:?}: {ids:?} vs {got:?}"));
            }
            let pieces: Vec<&str> = got
                .iter()
                .filter_map(|&id| tokenizer.token_to_piece(id))
                .collect();
            let expected_pieces: Vec<&str> = case["pieces"]
                .as_array()
                .expect("pieces")
                .iter()
                .map(str_of)
                .collect();
            if pieces != expected_pieces {
                failures.push(format!(
                    "[{source}] pieces for {text:?}: {expected_pieces:?} vs {pieces:?}"
                ));
            }
            let decoded = tokenizer.decode(&ids[1..], DecodeOptions::default());
            if decoded != str_of(&case["decoded"]) {
                failures.push(format!(
                    "[{source}] decoded for {text:?}: {:?} vs {decoded:?}",
                    case["decoded"]
                ));
            }
            let mut stream = tokenizer.stream_decoder();
            let mut streamed: String = ids.iter().map(|&id| stream.push(id)).collect();
            streamed.push_str(&stream.finish());
            if streamed != str_of(&case["decoded"]) {
                failures.push(format!("[{source}] streamed for {text:?}: {streamed:?}"));
            }
            if case["roundtrip"] == true && decoded != text {
                failures.push(format!("[{source}] roundtrip for {text:?}: {decoded:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
}
