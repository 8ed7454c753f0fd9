//! Every class of malformed file gives an error that says what is wrong, never a panic.

mod common;

use common::{fixtures, join, split};
use serde_json::json;
use torchless_format::{FormatError, FormatErrorKind, ModelFile};

fn valid_bytes() -> Vec<u8> {
    std::fs::read(fixtures().join("small-gqa-int8.bin")).unwrap()
}

fn open_err(bytes: &[u8]) -> FormatError {
    match ModelFile::from_bytes(bytes) {
        Ok(_) => panic!("malformed file was accepted"),
        Err(e) => {
            assert!(e.to_string().starts_with("<memory>: "), "{e}");
            e
        }
    }
}

/// Opens a copy of the valid file with its header edited by `edit`.
fn with_header(edit: impl FnOnce(&mut serde_json::Value)) -> Result<ModelFile, FormatError> {
    let (mut header, payload) = split(&valid_bytes());
    edit(&mut header);
    ModelFile::from_bytes(&join(&header, &payload))
}

fn header_err(edit: impl FnOnce(&mut serde_json::Value)) -> FormatError {
    match with_header(edit) {
        Ok(_) => panic!("malformed header was accepted"),
        Err(e) => e,
    }
}

const Q: &str = "model.layers.0.self_attn.q_proj.weight";

#[test]
fn unedited_copy_opens() {
    // The helpers themselves must not break a valid file.
    with_header(|_| {}).unwrap().validate_mistral().unwrap();
}

#[test]
fn file_too_short_for_the_length_prefix() {
    for len in 0..8 {
        let e = open_err(&valid_bytes()[..len]);
        assert!(matches!(e.kind(), FormatErrorKind::TooShort { .. }), "{e}");
    }
}

#[test]
fn absurd_header_length_is_refused_before_allocating() {
    let mut bytes = valid_bytes();
    bytes[..8].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
    let e = open_err(&bytes);
    assert!(
        matches!(e.kind(), FormatErrorKind::HeaderTooLarge { .. }),
        "{e}"
    );
    bytes[..8].copy_from_slice(&(1u64 << 31).to_le_bytes());
    let e = open_err(&bytes);
    assert!(
        matches!(e.kind(), FormatErrorKind::HeaderTooLarge { .. }),
        "{e}"
    );
}

#[test]
fn header_running_past_the_end_of_a_truncated_file() {
    let bytes = valid_bytes();
    let e = open_err(&bytes[..4096]);
    assert!(
        matches!(e.kind(), FormatErrorKind::HeaderBeyondFile { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn header_not_utf8() {
    let mut bytes = valid_bytes();
    bytes[20] = 0xff;
    let e = open_err(&bytes);
    assert!(
        matches!(e.kind(), FormatErrorKind::HeaderNotUtf8 { offset: 12 }),
        "{e}"
    );
}

#[test]
fn header_not_json() {
    let mut bytes = valid_bytes();
    bytes[8] = b'x';
    let e = open_err(&bytes);
    assert!(
        matches!(e.kind(), FormatErrorKind::HeaderJson { .. }),
        "{e}"
    );
    // Valid JSON of the wrong shape is refused too.
    let e = open_err(&join(&json!([1, 2, 3]), &[]));
    assert!(
        matches!(e.kind(), FormatErrorKind::HeaderJson { .. }),
        "{e}"
    );
}

#[test]
fn missing_metadata() {
    let e = header_err(|h| {
        h["metadata"].as_object_mut().unwrap().remove("n_kv_heads");
    });
    assert!(
        matches!(e.kind(), FormatErrorKind::MissingMetadata { key } if key == "n_kv_heads"),
        "{e}"
    );
}

#[test]
fn non_numeric_or_out_of_range_metadata() {
    for (key, value) in [
        ("hidden_size", "sixty-four"),
        ("n_layers", "-2"),
        ("n_heads", "0"),
        ("vocab_size", "99999999999999"),
        ("rope_theta", "nan"),
        ("norm_eps", "-1e-5"),
        ("sliding_window", "wide"),
        ("act_type", "gelu"),
        ("quant", "int2"),
    ] {
        let e = header_err(|h| h["metadata"][key] = json!(value));
        assert!(
            matches!(e.kind(), FormatErrorKind::BadMetadata { key: k, .. } if k == key),
            "{key}: {e}"
        );
        assert!(e.to_string().contains(value), "{e}");
    }
}

#[test]
fn inconsistent_configuration() {
    let e = header_err(|h| h["metadata"]["n_kv_heads"] = json!("3"));
    assert!(
        matches!(e.kind(), FormatErrorKind::InvalidConfig { .. }),
        "{e}"
    );
    let e = header_err(|h| h["metadata"]["n_heads"] = json!("5"));
    assert!(
        matches!(e.kind(), FormatErrorKind::InvalidConfig { .. }),
        "{e}"
    );
}

#[test]
fn unknown_dtype() {
    let e = header_err(|h| h["tensors"][Q]["dtype"] = json!("bf16"));
    assert!(
        matches!(e.kind(), FormatErrorKind::UnknownDtype { tensor, dtype } if tensor == Q && dtype == "bf16"),
        "{e}"
    );
}

#[test]
fn shape_product_overflowing() {
    let e = header_err(|h| h["tensors"][Q]["shape"] = json!([1u64 << 40, 1u64 << 40]));
    assert!(
        matches!(e.kind(), FormatErrorKind::ShapeOverflow { .. }),
        "{e}"
    );
    let e = header_err(|h| h["tensors"]["model.norm.weight"]["shape"] = json!([u64::MAX / 2]));
    assert!(
        matches!(e.kind(), FormatErrorKind::ShapeOverflow { .. }),
        "{e}"
    );
}

#[test]
fn tensor_outside_the_payload() {
    let e = header_err(|h| h["tensors"][Q]["offset"] = json!(1u64 << 40));
    assert!(
        matches!(e.kind(), FormatErrorKind::OutOfBounds { what: "data", tensor, .. } if tensor == Q),
        "{e}"
    );
    let e = header_err(|h| h["tensors"][Q]["offset"] = json!(u64::MAX - 10));
    assert!(
        matches!(e.kind(), FormatErrorKind::OutOfBounds { .. }),
        "{e}"
    );
    let e = header_err(|h| h["tensors"]["lm_head.weight"]["shape"] = json!([1024, 6400]));
    assert!(
        matches!(e.kind(), FormatErrorKind::OutOfBounds { .. }),
        "{e}"
    );
}

#[test]
fn scales_outside_the_payload_or_wrong_count() {
    let e = header_err(|h| h["tensors"][Q]["scale_offset"] = json!(1u64 << 33));
    assert!(
        matches!(
            e.kind(),
            FormatErrorKind::OutOfBounds { what: "scales", .. }
        ),
        "{e}"
    );
    let e = header_err(|h| h["tensors"][Q]["scale_size"] = json!(3));
    assert!(matches!(e.kind(), FormatErrorKind::BadScales { .. }), "{e}");
    let e = header_err(|h| {
        h["tensors"][Q]
            .as_object_mut()
            .unwrap()
            .remove("scale_offset");
    });
    assert!(matches!(e.kind(), FormatErrorKind::BadScales { .. }), "{e}");
}

#[test]
fn misaligned_data() {
    let e = header_err(|h| {
        let norm = "model.layers.0.input_layernorm.weight";
        let offset = h["tensors"][norm]["offset"].as_u64().unwrap();
        h["tensors"][norm]["offset"] = json!(offset + 2);
    });
    assert!(
        matches!(e.kind(), FormatErrorKind::Misaligned { align: 4, .. }),
        "{e}"
    );
    let e = header_err(|h| {
        let offset = h["tensors"][Q]["scale_offset"].as_u64().unwrap();
        h["tensors"][Q]["scale_offset"] = json!(offset + 1);
    });
    assert!(
        matches!(e.kind(), FormatErrorKind::Misaligned { what: "scales", .. }),
        "{e}"
    );
}

#[test]
fn truncated_payload() {
    let bytes = valid_bytes();
    let e = open_err(&bytes[..bytes.len() - 100]);
    assert!(
        matches!(e.kind(), FormatErrorKind::OutOfBounds { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn missing_tensor_wrong_shape_or_dtype_fail_validation() {
    let model = with_header(|h| {
        h["tensors"].as_object_mut().unwrap().remove(Q);
    })
    .unwrap();
    let e = model.validate_mistral().unwrap_err();
    assert!(
        matches!(e.kind(), FormatErrorKind::MissingTensor { name } if name == Q),
        "{e}"
    );
    assert!(model.tensor(Q).is_err());

    let norm = "model.layers.1.post_attention_layernorm.weight";
    let model = with_header(|h| h["tensors"][norm]["shape"] = json!([32])).unwrap();
    let e = model.validate_mistral().unwrap_err();
    assert!(
        matches!(e.kind(), FormatErrorKind::WrongShape { .. }),
        "{e}"
    );

    // vocab_size must equal the embedding rows.
    let model = with_header(|h| h["metadata"]["vocab_size"] = json!("1000")).unwrap();
    let e = model.validate_mistral().unwrap_err();
    assert!(
        matches!(e.kind(), FormatErrorKind::WrongShape { .. }),
        "{e}"
    );

    // A norm weight stored as int8 is refused.
    let model = with_header(|h| {
        let q = h["tensors"][Q].clone();
        h["tensors"]["model.norm.weight"] = json!({
            "dtype": "int8", "shape": [64], "offset": q["offset"],
            "scale_offset": q["scale_offset"], "scale_size": 1,
        });
    })
    .unwrap();
    let e = model.validate_mistral().unwrap_err();
    assert!(
        matches!(e.kind(), FormatErrorKind::WrongDtype { .. }),
        "{e}"
    );
}

#[test]
fn malformed_vocab_or_merges() {
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|h| h["tokenizer"]["vocab"]["hello"] = json!(5000)),
            "outside",
        ),
        (
            Box::new(|h| h["tokenizer"]["vocab"]["hello"] = json!(7)),
            "two pieces",
        ),
        (
            Box::new(|h| h["tokenizer"]["vocab"]["hello"] = json!("seven")),
            "invalid type",
        ),
        (
            Box::new(|h| h["tokenizer"]["merges"][0] = json!("nospace")),
            "merge #0",
        ),
        (
            Box::new(|h| h["tokenizer"]["merges"] = json!({})),
            "invalid type",
        ),
        (
            Box::new(|h| {
                h.as_object_mut().unwrap().remove("tokenizer");
            }),
            "no `tokenizer`",
        ),
    ];
    for (edit, needle) in cases {
        let model = with_header(edit).unwrap();
        let e = model.tokenizer_data().unwrap_err();
        assert!(
            matches!(e.kind(), FormatErrorKind::BadTokenizer { .. }),
            "{e}"
        );
        assert!(e.to_string().contains(needle), "{e} lacks {needle:?}");
    }
}

#[test]
fn missing_file_names_the_path() {
    let e = ModelFile::open("/no/such/model.bin").unwrap_err();
    assert!(matches!(e.kind(), FormatErrorKind::Io(_)));
    assert!(e.to_string().starts_with("/no/such/model.bin: "), "{e}");
}

#[test]
fn random_corruptions_never_panic() {
    // A cheap deterministic mutation sweep (the full one lives with the model's reliability tests).
    let original = valid_bytes();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let header_end = 8 + u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    for _ in 0..300 {
        let mut bytes = original.clone();
        let flips = 1 + next() % 4;
        for _ in 0..flips {
            let at = (next() as usize) % header_end.min(4096);
            bytes[at] ^= 1 << (next() % 8);
        }
        if let Ok(model) = ModelFile::from_bytes(&bytes) {
            let _ = model.validate_mistral();
            let _ = model.tokenizer_data();
            for info in model.tensors() {
                let _ = model.tensor(&info.name).map(|t| t.to_f32_vec());
            }
        }
    }
}
