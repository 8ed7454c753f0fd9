//! Arbitrary bytes as a GGUF model, the whole load path: the GGUF reader, the model view of it
//! (configuration from the metadata, tensors under the model's names at their own types, every
//! check), the tokenizer from `tokenizer.ggml.*`, and (for small configurations) the model
//! loaded and run for one token on both arithmetic paths (activations quantized per block as
//! llama.cpp does, and exact). Every step must answer `Err` or a result; nothing may panic,
//! abort, allocate absurdly or read out of bounds. Seeds: the small GGUF fixtures.
#![no_main]

use libfuzzer_sys::fuzz_target;
use torchless_format::{FileFormat, ModelFile, Residency, TensorData};
use torchless_model::{LazyMistral, Mistral, Model, SessionOptions};
use torchless_tokenizer::{DecodeOptions, EncodeOptions};

fuzz_target!(|data: &[u8]| {
    // Every input takes the GGUF path (a torchless file is `model_file`'s).
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(data.get(4..).unwrap_or_default());
    let Ok(file) = ModelFile::from_bytes(&bytes) else {
        return;
    };
    assert!(matches!(file.format(), FileFormat::Gguf { .. }));
    let config = file.config().clone();
    let names: Vec<String> = file.tensors().map(|t| t.name.clone()).collect();
    for name in &names {
        let info = file.tensor_info(name).expect("listed tensor");
        assert!(file.payload_start() + info.offset + info.data_len() <= file.file_len());
        let tensor = file.tensor(name).expect("a checked tensor has a view");
        match tensor.data {
            TensorData::F32(values) => assert_eq!(values.len(), info.n_elements),
            TensorData::Blocks(view) => {
                assert_eq!(view.len(), info.n_elements);
                let _ = view.get(info.n_elements.saturating_sub(1));
                assert!(view.get(info.n_elements).is_none());
            }
            other => panic!("a GGUF tensor as {other:?}"),
        }
        assert!(!file.stored_name(name).is_empty());
        for advice in [Residency::WillNeed, Residency::DontNeed] {
            let _ = file.set_residency(name, advice);
        }
    }
    file.validate_mistral().expect("a GGUF model is complete once opened");
    let _ = file.chat_template();

    if let Ok(tokenizer) = torchless_model::tokenizer_for(&file) {
        let ids = tokenizer.encode(
            "Hello <s> wor\u{2581}ld \u{4e2d}! <|im_end|>",
            EncodeOptions::default(),
        );
        assert!(ids.iter().all(|&id| (id as usize) < tokenizer.vocab_size()));
        let _ = tokenizer.decode(&ids, DecodeOptions::default());
    }

    // Keep executions fast: only run small models (and not the checks of every value, which
    // are bounded by the file's size but slow for large ones).
    let rope_floats = config.head_dim / 2 * config.max_position_embeddings;
    let small = config.hidden_size * config.vocab_size < 10_000_000
        && config.hidden_size * config.intermediate_size < 10_000_000
        && config.q_dim() * config.hidden_size < 10_000_000
        && config.n_layers <= 64
        && rope_floats <= 1 << 20;
    if !small {
        return;
    }
    let _ = file.non_finite_tensors();
    if data.len() % 2 == 0 {
        run::<torchless_model::Resident>(Mistral::from_file(file), config.vocab_size);
    } else {
        run::<torchless_model::Lazy>(LazyMistral::from_file(file), config.vocab_size);
    }
});

fn run<R: torchless_model::Residency>(model: torchless_model::Result<Model<R>>, vocab: usize) {
    let Ok(model) = model else {
        return;
    };
    let context = model.config().max_position_embeddings.min(4);
    for exact in [false, true] {
        let options = SessionOptions {
            context_len: Some(context),
            exact_activations: exact,
            ..Default::default()
        };
        let Ok(mut session) = model.session_with(options) else {
            return;
        };
        if let Ok(logits) = session.step(0) {
            assert_eq!(logits.len(), vocab);
        }
        if session.step(vocab as u32).is_ok() {
            panic!("token id {vocab} is outside the vocabulary and must be refused");
        }
    }
}
