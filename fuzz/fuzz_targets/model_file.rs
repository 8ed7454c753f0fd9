//! Arbitrary bytes as a torchless model file: header parsing, the tensor table, every view, the
//! embedded tokenizer and (for small configurations) a loaded model running one token. Every step
//! must answer `Err` or a result; nothing may panic, abort or read out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use torchless_format::{ModelFile, Residency, TensorData};
use torchless_model::{LazyMistral, Mistral, Model, SessionOptions};
use torchless_tokenizer::{DecodeOptions, EncodeOptions};

fuzz_target!(|data: &[u8]| {
    let Ok(file) = ModelFile::from_bytes(data) else {
        return;
    };
    let config = file.config().clone();
    assert!(file.payload_start() <= file.file_len());

    let names: Vec<String> = file.tensors().map(|t| t.name.clone()).collect();
    for name in &names {
        let info = file.tensor_info(name).expect("listed tensor");
        assert!(file.payload_start() + info.offset + info.data_len() <= file.file_len());
        if let Ok(tensor) = file.tensor(name) {
            match tensor.data {
                TensorData::F32(values) => assert_eq!(values.len(), info.n_elements),
                TensorData::Int8(view) => {
                    assert_eq!(view.values.len(), info.n_elements);
                    assert_eq!(view.inv_scales.len(), info.n_elements.div_ceil(64));
                    let _ = view.get(info.n_elements.saturating_sub(1));
                    assert!(view.get(info.n_elements).is_none());
                }
                TensorData::Int4(view) => {
                    assert_eq!(view.packed.len() * 2, info.n_elements);
                    assert_eq!(view.scales.len(), info.n_elements / 32);
                    let _ = view.get(info.n_elements.saturating_sub(1));
                    assert!(view.get(info.n_elements).is_none());
                }
                TensorData::Blocks(view) => {
                    assert_eq!(view.len(), info.n_elements);
                    let _ = view.get(info.n_elements.saturating_sub(1));
                    assert!(view.get(info.n_elements).is_none());
                }
            }
            assert_eq!(tensor.to_f32_vec().len(), info.n_elements);
        }
        for advice in [Residency::WillNeed, Residency::DontNeed] {
            let _ = file.set_residency(name, advice);
        }
    }
    let _ = file.non_finite_tensors();

    if let Ok(tokenizer) = torchless_model::tokenizer_for(&file) {
        let ids = tokenizer.encode(
            "Hello <s> wor\u{2581}ld \u{4e2d}!",
            EncodeOptions::default(),
        );
        assert!(ids.iter().all(|&id| (id as usize) < tokenizer.vocab_size()));
        let _ = tokenizer.decode(&ids, DecodeOptions::default());
    }

    if file.validate_mistral().is_err() {
        return;
    }
    // Keep executions fast: only run small models. (Large-but-valid configurations are exercised
    // by the mutation and resource-limit tests in crates/torchless-model/tests/mutation.rs.)
    let rope_floats = config.head_dim / 2 * config.max_position_embeddings;
    let small = config.hidden_size * config.vocab_size < 10_000_000
        && config.hidden_size * config.intermediate_size < 10_000_000
        && config.q_dim() * config.hidden_size < 10_000_000
        && config.n_layers <= 64
        && rope_floats <= 1 << 20;
    if !small {
        return;
    }
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
    let options = SessionOptions {
        context_len: Some(context),
        ..Default::default()
    };
    let Ok(mut session) = model.session_with(options) else {
        return;
    };
    if let Ok(logits) = session.step(1) {
        assert_eq!(logits.len(), vocab);
    }
    if session.step(vocab as u32).is_ok() {
        panic!("token id {vocab} is outside the vocabulary and must be refused");
    }
}
