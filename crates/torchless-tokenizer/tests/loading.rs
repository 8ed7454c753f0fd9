//! Loading: malformed inputs are rejected with an error that names the
//! problem; optional parts of tokenizer.json are honoured.

mod common;

use serde_json::{json, Value};
use torchless_tokenizer::{Tokenizer, TokenizerError};

/// A small valid tokenizer.json: byte fallback, `▁a`, `ab`.
fn base() -> Value {
    let mut vocab = serde_json::Map::new();
    for (piece, id) in [("<unk>", 0), ("<s>", 1), ("</s>", 2)] {
        vocab.insert(piece.into(), json!(id));
    }
    for byte in 0..256u32 {
        vocab.insert(format!("<0x{byte:02X}>"), json!(3 + byte));
    }
    for (i, piece) in ["▁", "a", "b", "▁a", "ab"].iter().enumerate() {
        vocab.insert((*piece).into(), json!(259 + i));
    }
    json!({
        "added_tokens": [
            {"id": 0, "content": "<unk>", "special": true},
            {"id": 1, "content": "<s>", "special": true},
            {"id": 2, "content": "</s>", "special": true}
        ],
        "model": {
            "type": "BPE",
            "unk_token": "<unk>",
            "byte_fallback": true,
            "vocab": vocab,
            "merges": ["▁ a", "a b"]
        }
    })
}

fn load(value: &Value) -> Result<Tokenizer, TokenizerError> {
    Tokenizer::from_tokenizer_json_str(&value.to_string())
}

fn error_of(value: &Value) -> TokenizerError {
    match load(value) {
        Ok(_) => panic!("expected an error for {value}"),
        Err(e) => e,
    }
}

#[test]
fn base_fixture_is_valid_and_merges_may_be_pairs() {
    let tokenizer = load(&base()).expect("valid");
    // "▁ab▁a": both `▁ a` (rank 0) merge first, leaving `b` alone.
    let ids = tokenizer.encode("ab a", Default::default());
    assert_eq!(ids, [1, 262, 261, 262]);
    let mut pairs = base();
    pairs["model"]["merges"] = json!([["▁", "a"], ["a", "b"]]);
    let tokenizer = load(&pairs).expect("pair merges are accepted");
    assert_eq!(tokenizer.encode("ab a", Default::default()), ids);
}

#[test]
fn not_json() {
    let error = Tokenizer::from_tokenizer_json_str("{\"model\": ").unwrap_err();
    assert!(matches!(error, TokenizerError::Json(_)), "{error}");
}

#[test]
fn missing_or_misshapen_fields() {
    type Edit = Box<dyn Fn(&mut Value)>;
    // (edit, field named in the error, text the problem must contain)
    let cases: Vec<(Edit, &str, &str)> = vec![
        (
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("model");
            }),
            "model",
            "missing",
        ),
        (Box::new(|v| v["model"] = json!(null)), "model", "missing"),
        (
            Box::new(|v| v["model"] = json!([])),
            "model",
            "invalid type",
        ),
        (
            Box::new(|v| {
                v["model"].as_object_mut().unwrap().remove("vocab");
            }),
            "model.vocab",
            "missing",
        ),
        (
            Box::new(|v| v["model"]["vocab"] = json!(["a"])),
            "model.vocab",
            "invalid type",
        ),
        (
            Box::new(|v| v["model"]["vocab"]["a"] = json!(-1)),
            "model.vocab",
            "piece \"a\"",
        ),
        (
            Box::new(|v| v["model"]["vocab"]["a"] = json!(1.5)),
            "model.vocab",
            "piece \"a\"",
        ),
        (
            Box::new(|v| {
                v["model"].as_object_mut().unwrap().remove("merges");
            }),
            "model.merges",
            "missing",
        ),
        (
            Box::new(|v| v["model"]["merges"] = json!("a b")),
            "model.merges",
            "invalid type",
        ),
        (
            Box::new(|v| v["model"]["merges"] = json!(["▁ a", 1])),
            "model.merges",
            "merge #1",
        ),
        (
            Box::new(|v| v["model"]["merges"] = json!([["a"]])),
            "model.merges",
            "merge #0",
        ),
        (
            Box::new(|v| v["model"]["merges"] = json!([["a", "b", "c"]])),
            "model.merges",
            "merge #0",
        ),
        (
            Box::new(|v| v["model"]["type"] = json!(7)),
            "model.type",
            "invalid type",
        ),
        (
            Box::new(|v| v["model"]["unk_token"] = json!(3)),
            "model.unk_token",
            "invalid type",
        ),
        (
            Box::new(|v| v["model"]["byte_fallback"] = json!("yes")),
            "model.byte_fallback",
            "invalid type",
        ),
        (
            Box::new(|v| v["added_tokens"] = json!({})),
            "added_tokens",
            "invalid type",
        ),
        (
            Box::new(|v| v["added_tokens"][0]["id"] = json!("0")),
            "added_tokens",
            "invalid type",
        ),
    ];
    for (edit, field, problem_part) in cases {
        let mut value = base();
        edit(&mut value);
        match error_of(&value) {
            TokenizerError::Field {
                field: got,
                problem,
            } => {
                assert_eq!(got, field, "{value}");
                assert!(
                    problem.contains(problem_part),
                    "{problem:?} lacks {problem_part:?}"
                );
            }
            other => panic!("expected a field error for {field}, got {other}"),
        }
    }
}

#[test]
fn unsupported_model_type() {
    let mut value = base();
    value["model"]["type"] = json!("Unigram");
    let error = error_of(&value);
    assert!(
        matches!(&error, TokenizerError::UnsupportedModel(t) if t == "Unigram"),
        "{error}"
    );
    assert!(error.to_string().contains("Unigram"));
}

#[test]
fn duplicate_id() {
    let mut value = base();
    value["model"]["vocab"]["zz"] = json!(260);
    let error = error_of(&value);
    match &error {
        TokenizerError::DuplicateId { id, first, second } => {
            assert_eq!(*id, 260);
            let mut both = [first.as_str(), second.as_str()];
            both.sort_unstable();
            assert_eq!(both, ["a", "zz"]);
        }
        other => panic!("{other}"),
    }
    assert!(error.to_string().contains("260"));
}

#[test]
fn gap_in_ids() {
    let mut value = base();
    value["model"]["vocab"]["zz"] = json!(300);
    match error_of(&value) {
        TokenizerError::MissingId { missing, size } => {
            assert_eq!((missing, size), (264, 265));
        }
        other => panic!("{other}"),
    }
}

#[test]
fn id_out_of_range() {
    let mut value = base();
    value["model"]["vocab"]["zz"] = json!(1u64 << 40);
    let error = error_of(&value);
    assert!(
        matches!(&error, TokenizerError::IdOutOfRange { piece, .. } if piece == "zz"),
        "{error}"
    );
}

#[test]
fn merge_with_unknown_piece() {
    for (merge, missing) in [("a c", "c"), ("q b", "q"), ("b a", "ba")] {
        let mut value = base();
        value["model"]["merges"] = json!(["▁ a", merge]);
        let error = error_of(&value);
        match &error {
            TokenizerError::MergeUnknownPiece {
                rank,
                merge: m,
                piece,
            } => {
                assert_eq!((*rank, m.as_str(), piece.as_str()), (1, merge, missing));
            }
            other => panic!("{other}"),
        }
        assert!(
            error.to_string().contains(&format!("{missing:?}")),
            "{error}"
        );
    }
}

#[test]
fn malformed_merge() {
    for merge in ["ab", "a  b", "a b c", " a", ""] {
        let mut value = base();
        value["model"]["merges"] = json!([merge]);
        match error_of(&value) {
            TokenizerError::MalformedMerge { rank: 0, merge: m } => assert_eq!(m, merge),
            other => panic!("{merge:?}: {other}"),
        }
    }
}

#[test]
fn missing_byte_token() {
    let mut value = base();
    let vocab = value["model"]["vocab"].as_object_mut().unwrap();
    vocab.remove("<0x7F>");
    vocab.insert("filler".into(), json!(3 + 0x7F));
    let error = error_of(&value);
    assert!(
        matches!(error, TokenizerError::MissingByteToken { byte: 0x7F }),
        "{error}"
    );
    assert!(error.to_string().contains("<0x7F>"));
}

#[test]
fn missing_unknown_token_without_byte_fallback() {
    let mut value = base();
    value["model"]["byte_fallback"] = json!(false);
    value["model"]["unk_token"] = json!("<nope>");
    let error = error_of(&value);
    assert!(
        matches!(&error, TokenizerError::MissingUnknownToken(p) if p == "<nope>"),
        "{error}"
    );

    // Without byte fallback, unknown characters become one fused <unk>.
    value["model"]["unk_token"] = json!("<unk>");
    let tokenizer = load(&value).expect("valid");
    assert_eq!(
        tokenizer.encode("a中文a", Default::default()),
        [1, 262, 0, 260]
    );
}

#[test]
fn added_token_disagreeing_with_vocab() {
    let mut value = base();
    value["added_tokens"][1]["id"] = json!(5);
    let error = error_of(&value);
    assert!(
        matches!(&error, TokenizerError::AddedToken { content, id: 5, .. } if content == "<s>"),
        "{error}"
    );
}

#[test]
fn empty_vocab() {
    let error = Tokenizer::from_vocab_and_merges(Vec::<(String, u32)>::new(), Vec::<String>::new())
        .unwrap_err();
    assert!(matches!(error, TokenizerError::EmptyVocab), "{error}");
}

#[test]
fn duplicate_piece_in_header_vocab() {
    let (mut vocab, merges) = common::header_vocab_and_merges();
    vocab.push(("▁Hello".into(), 32000));
    let error = Tokenizer::from_vocab_and_merges(vocab, merges).unwrap_err();
    assert!(
        matches!(&error, TokenizerError::DuplicatePiece { piece, second: 32000, .. } if piece == "▁Hello"),
        "{error}"
    );
}

#[test]
fn header_vocab_without_byte_pieces() {
    let (vocab, merges) = common::header_vocab_and_merges();
    let vocab: Vec<(String, u32)> = vocab
        .into_iter()
        .map(|(piece, id)| {
            if piece == "<0x00>" {
                ("not-a-byte".into(), id)
            } else {
                (piece, id)
            }
        })
        .collect();
    let error = Tokenizer::from_vocab_and_merges(vocab, merges).unwrap_err();
    assert!(
        matches!(error, TokenizerError::MissingByteToken { byte: 0 }),
        "{error}"
    );
}

#[test]
fn unreadable_file() {
    let error = Tokenizer::from_file("/nonexistent/tokenizer.json").unwrap_err();
    assert!(matches!(&error, TokenizerError::Io { path, .. } if path.ends_with("tokenizer.json")));
    assert!(error.to_string().contains("/nonexistent/tokenizer.json"));
}

#[test]
fn control_pieces_are_inferred_from_vocab_and_merges() {
    // A newer-style vocabulary: `[INST]` is in the vocabulary but no merge
    // produces it, so it is a control token: plain text by default, its id
    // with parse_special, invisible when decoding.
    let mut vocab: Vec<(String, u32)> = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]
        .iter()
        .enumerate()
        .map(|(i, p)| (p.to_string(), i as u32))
        .collect();
    vocab.extend((0..256u32).map(|b| (format!("<0x{b:02X}>"), 5 + b)));
    let pieces = [
        "▁", "[", "]", "I", "N", "S", "T", "IN", "ST", "INST", "▁[", "h", "i", "hi", "▁hi",
    ];
    vocab.extend(
        pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.to_string(), 261 + i as u32)),
    );
    let merges = ["I N", "S T", "IN ST", "▁ [", "h i", "▁ hi"];
    let tokenizer = Tokenizer::from_vocab_and_merges(vocab, merges).expect("valid");
    let specials: Vec<u32> = (0..tokenizer.vocab_size() as u32)
        .filter(|&id| tokenizer.is_special(id))
        .collect();
    assert_eq!(specials, [0, 1, 2, 3, 4]);

    let text = "[INST] hi [/INST]";
    let plain = tokenizer.encode(text, Default::default());
    assert!(
        plain[1..].iter().all(|&id| !tokenizer.is_special(id)),
        "{plain:?}"
    );
    let parsed = tokenizer.encode(
        text,
        torchless_tokenizer::EncodeOptions {
            add_bos: true,
            parse_special: true,
        },
    );
    let hi = tokenizer.piece_to_id("▁hi").unwrap();
    let space = tokenizer.piece_to_id("▁").unwrap();
    assert_eq!(parsed, [1, 3, space, hi, space, 4]);
    // Control tokens are invisible, so the first `▁` still loses its space.
    let decoded = tokenizer.decode(&parsed, Default::default());
    assert_eq!(decoded, " hi ");
}

#[test]
fn metaspace_prepend_scheme_decides_the_prefix_after_special_tokens() {
    // Hugging Face (tokenizers 0.23) with the Mistral vocabulary, normalizer
    // null and pre_tokenizer Metaspace(prepend_scheme): "a<s>b" -> first:
    // [1, ▁a, <s>, b], never: [1, a, <s>, b]; "<s>a" -> first: [1, <s>, a].
    let json = common::read(common::TOKENIZER_JSON);
    let mut value: Value = serde_json::from_str(&json).expect("fixture");
    value["normalizer"] = Value::Null;
    let options = torchless_tokenizer::EncodeOptions {
        add_bos: true,
        parse_special: true,
    };
    let with_scheme = |value: &mut Value, scheme: &str| {
        value["pre_tokenizer"] = json!({
            "type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme, "split": false
        });
        load(value).expect("valid")
    };
    let first = with_scheme(&mut value, "first");
    assert_eq!(first.encode("a<s>b", options), [1, 264, 1, 28726]);
    assert_eq!(first.encode("<s>a", options), [1, 1, 28708]);
    let never = with_scheme(&mut value, "never");
    assert_eq!(never.encode("a<s>b", options), [1, 28708, 1, 28726]);
    let always = with_scheme(&mut value, "always");
    assert_eq!(always.encode("<s>a", options), [1, 1, 264]);
}
