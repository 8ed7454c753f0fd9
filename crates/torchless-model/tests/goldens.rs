//! The committed fixture models agree with Hugging Face `transformers` (goldens made by
//! scripts/fixtures/make_model_fixtures.py): logits, NLL and greedy continuations, for f32 and
//! int8 files, GQA / MQA / MHA, with and without a sliding window shorter than the prompts.

mod common;

use common::{check_model, check_model_with, fixtures, read_goldens};
use torchless_model::{LazyMistral, LoadOptions, Mistral, SessionOptions};

fn check(name: &str, quant: &str) {
    let model = Mistral::load(fixtures().join(format!("{name}-{quant}.bin"))).unwrap();
    let goldens = read_goldens(&fixtures().join(format!("{name}-goldens-{quant}.json")));
    let checks = check_model(&model, &goldens);
    assert!(checks > 500, "only {checks} checks");
}

#[test]
fn gqa_window_f32() {
    check("small-gqa", "f32");
}

#[test]
fn gqa_window_int8() {
    check("small-gqa", "int8");
}

#[test]
fn mqa_no_window_f32() {
    check("small-mqa", "f32");
}

#[test]
fn mqa_no_window_int8() {
    check("small-mqa", "int8");
}

#[test]
fn mha_short_window_f32() {
    check("small-mha", "f32");
}

#[test]
fn mha_short_window_int8() {
    check("small-mha", "int8");
}

/// With one prefill thread, prompts of 31 tokens and more are attended in blocks of up to 12
/// tokens (two small matrix products per block and KV head) whatever the machine's core count;
/// the windowed model's later batches also take the per-token loop (wrapped cache).
#[test]
fn token_blocked_prefill_attention_matches_goldens() {
    let options = SessionOptions {
        batch_threads: 1,
        ..SessionOptions::default()
    };
    for name in ["small-gqa", "small-mqa"] {
        let model = Mistral::load(fixtures().join(format!("{name}-f32.bin"))).unwrap();
        let goldens = read_goldens(&fixtures().join(format!("{name}-goldens-f32.json")));
        let checks = check_model_with(&model, &goldens, options.clone());
        assert!(checks > 500, "{name}: only {checks} checks");
    }
}

#[test]
fn lazy_model_gives_bit_identical_logits() {
    for name in ["small-gqa-int8", "small-mha-f32"] {
        let path = fixtures().join(format!("{name}.bin"));
        let eager = Mistral::load(&path).unwrap();
        let lazy = LazyMistral::load(&path).unwrap();
        let ids: Vec<u32> = (0..100).map(|i| (i * 37 + 11) % 1024).collect();
        let a = common::all_logits(&eager, &ids);
        let b = common::all_logits(&lazy, &ids);
        for (t, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()),
                "{name} position {t}"
            );
        }
    }
}

#[test]
fn a_model_read_into_memory_gives_bit_identical_logits_and_lazy_refuses_it() {
    let path = fixtures().join("small-gqa-int8.bin");
    let options = || LoadOptions {
        read_into_memory: true,
        ..LoadOptions::default()
    };
    let mapped = Mistral::load(&path).unwrap();
    let copied = Mistral::load_with(&path, options()).unwrap();
    assert_eq!(
        (mapped.residency(), copied.residency()),
        ("resident", "resident (read into memory)")
    );
    let ids: Vec<u32> = (0..60).map(|i| (i * 29 + 5) % 1024).collect();
    let (a, b) = (
        common::all_logits(&mapped, &ids),
        common::all_logits(&copied, &ids),
    );
    assert!(a
        .iter()
        .flatten()
        .zip(b.iter().flatten())
        .all(|(p, q)| p.to_bits() == q.to_bits()));
    let err = LazyMistral::load_with(&path, options()).unwrap_err();
    assert!(err.to_string().contains("read_into_memory"), "{err}");
}
