//! The optional metadata of Llama-family files: architecture, tied embeddings, tokenizer
//! settings, added tokens and the chat template; unknown keys are refused by name.

mod common;

use common::{fixtures, join, split};
use serde_json::json;
use torchless_format::{
    AddedTokenData, Architecture, FormatErrorKind, ModelFile, ModelWriter, TensorSpec,
    TokenizerKind,
};

fn edited(
    edit: impl FnOnce(&mut serde_json::Value),
) -> Result<ModelFile, torchless_format::FormatError> {
    let bytes = std::fs::read(fixtures().join("small-gqa-f32.bin")).unwrap();
    let (mut header, payload) = split(&bytes);
    edit(&mut header);
    ModelFile::from_bytes(&join(&header, &payload))
}

#[test]
fn exporter_files_read_as_mistral_with_sentencepiece_defaults() {
    let file = ModelFile::open(fixtures().join("small-gqa-int8.bin")).unwrap();
    assert_eq!(file.config().architecture, Architecture::Mistral);
    assert!(!file.config().tie_word_embeddings);
    assert_eq!(file.config().output_tensor_name(), "lm_head.weight");
    assert_eq!(file.chat_template(), None);
    let tokenizer = file.tokenizer_data().unwrap();
    assert_eq!(tokenizer.kind, TokenizerKind::SentencePiece);
    assert!(tokenizer.added_tokens.is_empty());
    assert_eq!(
        (tokenizer.bos_id, tokenizer.eos_id, tokenizer.add_bos),
        (None, None, None)
    );
    assert!(tokenizer.metadata_entries().is_empty());
}

#[test]
fn unknown_metadata_keys_are_named() {
    let err = edited(|h| {
        h["metadata"]["rope_scaling"] = json!("yarn");
        h["metadata"]["attention_bias"] = json!("true");
    })
    .unwrap_err();
    match err.kind() {
        FormatErrorKind::UnknownMetadata { keys } => {
            assert_eq!(keys, &["attention_bias", "rope_scaling"])
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("rope_scaling"), "{err}");
}

#[test]
fn bad_values_of_the_new_keys_are_refused() {
    for (key, value) in [("architecture", "gpt2"), ("tie_word_embeddings", "maybe")] {
        let err = edited(|h| h["metadata"][key] = json!(value)).unwrap_err();
        assert!(err.to_string().contains(key), "{err}");
    }
    for (key, value) in [
        ("tokenizer_kind", "wordpiece"),
        ("bos_token_id", "1024"),
        ("eos_token_id", "x"),
        ("add_bos_token", "yes"),
    ] {
        let file = edited(|h| h["metadata"][key] = json!(value)).unwrap();
        let err = file.tokenizer_data().unwrap_err();
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
    let file = edited(|h| {
        h["tokenizer"]["added_tokens"] = json!([{"id": 5000, "content": "<x>", "special": true}])
    })
    .unwrap();
    assert!(file.tokenizer_data().is_err());
}

/// A tied-embedding Llama file written by the writer: no `lm_head.weight`, the settings read
/// back as written, and the added tokens survive.
#[test]
fn tied_llama_file_round_trips() {
    let source = ModelFile::open(fixtures().join("small-mqa-f32.bin")).unwrap();
    let mut config = source.config().clone();
    config.architecture = Architecture::Llama;
    config.tie_word_embeddings = true;
    let mut tokenizer = source.tokenizer_data().unwrap();
    tokenizer.added_tokens = vec![AddedTokenData {
        id: 3,
        content: "<|im_end|>".into(),
        special: true,
    }];
    tokenizer.bos_id = Some(1);
    tokenizer.eos_id = Some(2);
    tokenizer.add_bos = Some(false);
    let template =
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}";
    let mut metadata = config.to_metadata();
    metadata.push(("chat_template".into(), template.into()));
    let expected = config.expected_tensors();
    assert!(!expected.iter().any(|t| t.name == "lm_head.weight"));
    let specs: Vec<TensorSpec> = expected
        .iter()
        .map(|t| {
            TensorSpec::new(
                t.name.clone(),
                source.tensor_info(&t.name).unwrap().dtype,
                t.shape.clone(),
            )
        })
        .collect();
    let mut writer =
        ModelWriter::new(Vec::new(), "<tied>", &metadata, specs, Some(&tokenizer)).unwrap();
    for t in &expected {
        writer
            .write_tensor(&t.name, &source.tensor(&t.name).unwrap().to_f32_vec())
            .unwrap();
    }
    let bytes = writer.finish().unwrap();
    let file = ModelFile::from_bytes(&bytes).unwrap();
    file.validate_mistral().unwrap();
    assert!(file.tensor_info("lm_head.weight").is_err());
    assert_eq!(file.config(), &config);
    assert_eq!(
        file.config().output_tensor_name(),
        "model.embed_tokens.weight"
    );
    assert_eq!(file.chat_template(), Some(template));
    assert_eq!(file.tokenizer_data().unwrap(), tokenizer);
    assert_eq!(file.metadata()["architecture"], "llama");
    assert_eq!(file.metadata()["add_bos_token"], "false");
}
