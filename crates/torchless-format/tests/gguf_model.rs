//! A GGUF file opened as a model (`ModelFile::open` on a `.gguf`): configuration from the
//! `llama.*` metadata, tensors under the model's names at their own types (zero copy), the
//! tokenizer from `tokenizer.ggml.*`, in memory and mapped; then lying files, each refused with
//! one error naming the key or the tensor.

mod common;

use std::path::PathBuf;

use common::gguf_writer::{RawGguf, RawTensor};
use torchless_format::gguf::{BlockFormat, GgufArray, GgufErrorKind, GgufFile, GgufValue};
use torchless_format::{
    read_tokenizer_data, DType, FileFormat, FormatErrorKind, ModelFile, Residency, RopeLayout,
    TensorData, TokenizerKind,
};

fn models() -> PathBuf {
    common::fixtures()
}

/// The tied Llama fixture: Q4_0 matrices, a Q8_0 embedding, F32 norms (written by gguf-py).
fn q4_0() -> PathBuf {
    models().join("llama-tied-q4_0.gguf")
}

#[test]
fn a_gguf_opens_as_the_model_it_holds() {
    let model = ModelFile::open(q4_0()).unwrap();
    assert_eq!(model.format(), FileFormat::Gguf { version: 3 });
    // The same model as the Python exporter's file of the same checkpoint.
    let exported = ModelFile::open(models().join("llama-tied-f32.bin")).unwrap();
    let mut want = exported.config().clone();
    want.rope_layout = RopeLayout::Adjacent;
    assert_eq!(model.config(), &want);
    assert!(model.config().tie_word_embeddings);
    model.validate_mistral().unwrap();

    let gguf = GgufFile::open(q4_0()).unwrap();
    assert_eq!(model.n_tensors(), gguf.tensors().len());
    assert_eq!(model.payload_start() as u64, gguf.data_start());
    for info in exported.tensors() {
        let ours = model.tensor(&info.name).unwrap();
        assert_eq!(ours.info.shape, info.shape, "{}", info.name);
        let stored = model.stored_name(&info.name);
        let raw = gguf.tensor(stored).unwrap();
        let want_dtype = match raw.ggml_type().name() {
            "F32" => DType::F32,
            "Q4_0" => DType::Blocks(BlockFormat::Q4_0),
            "Q8_0" => DType::Blocks(BlockFormat::Q8_0),
            other => panic!("{stored}: {other}"),
        };
        assert_eq!(ours.info.dtype, want_dtype, "{stored}");
        // Zero copy: the view is the file's bytes.
        match ours.data {
            TensorData::Blocks(view) => {
                assert_eq!(view.data, gguf.tensor_bytes(stored).unwrap(), "{stored}");
                assert_eq!(view.len(), info.n_elements);
            }
            TensorData::F32(values) => {
                assert_eq!(bytemuck_bytes(values), gguf.tensor_bytes(stored).unwrap())
            }
            other => panic!("{stored}: {other:?}"),
        }
        // Dequantized as gguf-py does (the reader's values are checked against it).
        let values = ours.to_f32_vec();
        let want = gguf.tensor_f32(stored).unwrap();
        assert!(
            values
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{stored}"
        );
    }
    assert_eq!(
        model.stored_name("model.layers.1.self_attn.q_proj.weight"),
        "blk.1.attn_q.weight"
    );
    assert_eq!(
        model.stored_name("model.embed_tokens.weight"),
        "token_embd.weight"
    );
    assert_eq!(
        model.chat_template(),
        exported.chat_template(),
        "tokenizer.chat_template"
    );
    assert_eq!(
        model
            .metadata()
            .get("general.architecture")
            .map(String::as_str),
        Some("llama")
    );
    assert_eq!(
        model
            .metadata()
            .get("tokenizer.ggml.tokens")
            .map(String::as_str),
        Some("[768 × STRING]")
    );
    assert!(model.gguf_metadata().is_some() && exported.gguf_metadata().is_none());
    assert_eq!(model.non_finite_tensors().unwrap(), vec![]);
}

fn bytemuck_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The F32 GGUF of the same checkpoint holds the exporter's values: every tensor equal, the
/// query and key rows in llama.cpp's order (row `2i + j` of a head is Hugging Face's row
/// `j · head_dim / 2 + i`), which the model's adjacent-pair RoPE uses as they are.
#[test]
fn gguf_tensors_are_the_checkpoints_with_llama_cpp_rotary_rows() {
    let model = ModelFile::open(models().join("llama-tied-f32.gguf")).unwrap();
    let exported = ModelFile::open(models().join("llama-tied-f32.bin")).unwrap();
    let config = model.config();
    let hd = config.head_dim;
    let mut permuted = 0;
    for info in exported.tensors() {
        let want = exported.tensor(&info.name).unwrap().as_f32().unwrap();
        let got = model.tensor(&info.name).unwrap().as_f32().unwrap();
        if info.name.ends_with("q_proj.weight") || info.name.ends_with("k_proj.weight") {
            let cols = info.shape[1];
            for row in 0..info.shape[0] {
                let (head, within) = (row / hd, row % hd);
                let (i, j) = (within / 2, within % 2);
                let hf_row = head * hd + j * hd / 2 + i;
                assert_eq!(
                    got[row * cols..(row + 1) * cols],
                    want[hf_row * cols..(hf_row + 1) * cols],
                    "{} row {row}",
                    info.name
                );
            }
            permuted += 1;
        } else {
            assert_eq!(got, want, "{}", info.name);
        }
    }
    assert_eq!(permuted, 2 * config.n_layers);
}

#[test]
fn the_tokenizer_comes_from_the_metadata() {
    let model = ModelFile::open(q4_0()).unwrap();
    let exported = ModelFile::open(models().join("llama-tied-f32.bin")).unwrap();
    let ours = model.tokenizer_data().unwrap();
    let want = exported.tokenizer_data().unwrap();
    assert_eq!(ours.kind, TokenizerKind::GgufByteLevelBpe);
    assert_eq!(want.kind, TokenizerKind::ByteLevelBpe);
    assert_eq!(ours.pretokenizer.as_deref(), Some("smollm"));
    let mut a = ours.vocab.clone();
    let mut b = want.vocab.clone();
    a.sort_by_key(|e| e.1);
    b.sort_by_key(|e| e.1);
    assert_eq!(a, b);
    assert_eq!(ours.merges, want.merges);
    assert_eq!(ours.added_tokens, want.added_tokens);
    assert_eq!(
        (ours.bos_id, ours.eos_id, ours.add_bos),
        (want.bos_id, want.eos_id, want.add_bos)
    );
    // Without the weights (a vocabulary-only file), the same tokenizer.
    let mut vocab_only = RawGguf::open(&q4_0());
    vocab_only.tensors.clear();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vocab.gguf");
    std::fs::write(&path, vocab_only.to_bytes()).unwrap();
    assert_eq!(read_tokenizer_data(&path).unwrap(), ours);
    assert_eq!(read_tokenizer_data(q4_0()).unwrap(), ours);
    assert_eq!(
        read_tokenizer_data(models().join("llama-tied-f32.bin")).unwrap(),
        want
    );
    // ... which is not a model.
    let e = ModelFile::open(&path).unwrap_err();
    assert!(
        matches!(e.kind(), FormatErrorKind::MissingTensor { name } if name == "token_embd.weight"),
        "{e}"
    );
}

#[test]
fn sentencepiece_vocabularies_keep_scores_types_and_llama_cpp_defaults() {
    let mut raw = RawGguf::open(&q4_0());
    let n = 768;
    raw.set("tokenizer.ggml.model", GgufValue::String("llama".into()));
    raw.remove("tokenizer.ggml.merges");
    raw.remove("tokenizer.ggml.pre");
    raw.remove("tokenizer.ggml.add_bos_token");
    raw.remove("tokenizer.ggml.bos_token_id");
    raw.remove("tokenizer.ggml.eos_token_id");
    let scores: Vec<f32> = (0..n).map(|i| -(i as f32) / 8.0).collect();
    raw.set(
        "tokenizer.ggml.scores",
        GgufValue::Array(GgufArray::F32(scores.clone())),
    );
    let data = open_bytes(&raw).tokenizer_data().unwrap();
    assert_eq!(data.kind, TokenizerKind::ScoredSentencePiece);
    assert_eq!(data.scores, scores);
    assert_eq!(data.token_types.len(), n);
    assert_eq!(data.vocab.len(), n);
    assert!(data.merges.is_empty());
    // llama.cpp's default ids for a "llama" vocabulary; the flags are left to the tokenizer.
    assert_eq!(
        (
            data.bos_id,
            data.eos_id,
            data.unk_id,
            data.add_bos,
            data.add_space_prefix
        ),
        (Some(1), Some(2), Some(0), None, None)
    );
    raw.set("tokenizer.ggml.add_space_prefix", GgufValue::Bool(false));
    raw.set("tokenizer.ggml.unknown_token_id", GgufValue::U32(5));
    let data = open_bytes(&raw).tokenizer_data().unwrap();
    assert_eq!((data.unk_id, data.add_space_prefix), (Some(5), Some(false)));
}

fn open_bytes(raw: &RawGguf) -> ModelFile {
    ModelFile::from_bytes(&raw.to_bytes()).unwrap()
}

#[test]
fn in_memory_and_paged_views_are_the_mapped_ones() {
    let mapped = ModelFile::open(q4_0()).unwrap();
    let copied = ModelFile::read_into_memory(q4_0(), None).unwrap();
    assert!(copied.is_in_memory());
    assert_eq!(copied.format(), mapped.format());
    assert_eq!(copied.config(), mapped.config());
    for info in mapped.tensors() {
        let (a, b) = (
            mapped.tensor(&info.name).unwrap(),
            copied.tensor(&info.name).unwrap(),
        );
        assert_eq!(a.to_f32_vec(), b.to_f32_vec(), "{}", info.name);
    }
    // The copy puts the data section on a page boundary.
    let first = copied
        .tensors()
        .min_by_key(|t| t.offset)
        .map(|t| t.name.clone())
        .unwrap();
    let ptr = match copied.tensor(&first).unwrap().data {
        TensorData::Blocks(v) => v.data.as_ptr() as usize,
        TensorData::F32(v) => v.as_ptr() as usize,
        _ => unreachable!(),
    };
    assert_eq!(ptr % 4096, 0);
    // Lazy paging advice works over GGUF tensors (by their model names).
    let layer: Vec<String> = mapped
        .tensors()
        .filter(|t| t.name.starts_with("model.layers.0."))
        .map(|t| t.name.clone())
        .collect();
    let names: Vec<&str> = layer.iter().map(String::as_str).collect();
    assert_eq!(names.len(), 9);
    for advice in [
        Residency::Populate,
        Residency::DontNeed,
        Residency::WillNeed,
    ] {
        mapped.set_group_residency(&names, advice).unwrap();
        mapped
            .set_rows_residency("model.embed_tokens.weight", 3..700, advice)
            .unwrap();
        copied.set_group_residency(&names, advice).unwrap();
    }
    assert_eq!(
        mapped.tensor(names[1]).unwrap().to_f32_vec(),
        copied.tensor(names[1]).unwrap().to_f32_vec()
    );
    let from_bytes = ModelFile::from_bytes(&std::fs::read(q4_0()).unwrap()).unwrap();
    assert_eq!(from_bytes.config(), mapped.config());
}

/// What a mutated file gives: the error of `ModelFile::from_bytes` (open), else of
/// `tokenizer_data`.
fn refusal(raw: &RawGguf) -> torchless_format::FormatError {
    match ModelFile::from_bytes(&raw.to_bytes()) {
        Err(e) => e,
        Ok(file) => file
            .tokenizer_data()
            .expect_err("the mutated file was accepted"),
    }
}

#[test]
fn lying_files_name_the_key_or_the_tensor() {
    type Mutation = (&'static str, Box<dyn Fn(&mut RawGguf)>, &'static str);
    let s = |v: &str| GgufValue::String(v.into());
    let cases: Vec<Mutation> = vec![
        (
            "no architecture",
            Box::new(|r| r.remove("general.architecture")),
            "metadata key `general.architecture` is missing",
        ),
        (
            "another architecture",
            Box::new(move |r| r.set("general.architecture", s("qwen2"))),
            "architecture \"qwen2\" (general.architecture) is not supported",
        ),
        (
            "a block count as text",
            Box::new(move |r| r.set("llama.block_count", s("2"))),
            "metadata `llama.block_count` = \"STRING \\\"2\\\"\" is invalid: expected a non-negative integer",
        ),
        (
            "an epsilon as an integer",
            Box::new(|r| r.set("llama.attention.layer_norm_rms_epsilon", GgufValue::U32(1))),
            "`llama.attention.layer_norm_rms_epsilon` = \"UINT32 1\" is invalid: expected a FLOAT32",
        ),
        (
            "no epsilon",
            Box::new(|r| r.remove("llama.attention.layer_norm_rms_epsilon")),
            "metadata key `llama.attention.layer_norm_rms_epsilon` is missing",
        ),
        (
            "no context length",
            Box::new(|r| r.remove("llama.context_length")),
            "metadata key `llama.context_length` is missing",
        ),
        (
            "zero heads",
            Box::new(|r| r.set("llama.attention.head_count", GgufValue::U32(0))),
            "`llama.attention.head_count` = \"UINT32 0\" is invalid: expected a whole number between 1 and 16777216",
        ),
        (
            "heads not dividing the width",
            Box::new(|r| r.set("llama.attention.head_count", GgufValue::U32(3))),
            "llama.embedding_length 64 is not divisible by llama.attention.head_count 3",
        ),
        (
            "kv heads not dividing the heads",
            Box::new(|r| r.set("llama.attention.head_count_kv", GgufValue::U32(3))),
            "n_heads 4 is not a multiple of n_kv_heads 3",
        ),
        (
            "a mixture of experts",
            Box::new(|r| r.set("llama.expert_count", GgufValue::U32(8))),
            "a mixture of experts (llama.expert_count = 8, as in Mixtral) is not supported",
        ),
        (
            "partial rotary",
            Box::new(|r| r.set("llama.rope.dimension_count", GgufValue::U32(8))),
            "partial rotary embeddings (llama.rope.dimension_count 8, head dim 16) is not supported",
        ),
        (
            "RoPE scaling",
            Box::new(move |r| r.set("llama.rope.scaling.type", s("yarn"))),
            "RoPE scaling \"yarn\" (llama.rope.scaling.type) is not supported",
        ),
        (
            "a vocabulary size that is not the embedding's",
            Box::new(|r| r.set("llama.vocab_size", GgufValue::U32(769))),
            "`llama.vocab_size` = \"769\" is invalid: expected 768, the rows of token_embd.weight",
        ),
        (
            "more blocks than the file has",
            Box::new(|r| r.set("llama.block_count", GgufValue::U32(3))),
            "tensor `blk.2.attn_norm.weight` is missing",
        ),
        (
            "an absurd block count",
            Box::new(|r| r.set("llama.block_count", GgufValue::U32(1 << 24))),
            "tensor `blk.2.attn_norm.weight` is missing",
        ),
        (
            "fewer blocks than the file has",
            Box::new(|r| r.set("llama.block_count", GgufValue::U32(1))),
            "tensor `blk.1.",
        ),
        (
            "a missing tensor",
            Box::new(|r| r.remove_tensor("blk.1.ffn_up.weight")),
            "tensor `blk.1.ffn_up.weight` is missing",
        ),
        (
            "a tensor the model has no place for",
            Box::new(|r| {
                r.tensors.push(RawTensor {
                    name: "blk.0.attn_q.bias".into(),
                    dims: vec![64],
                    type_id: 0,
                    data: vec![0; 256],
                })
            }),
            "tensor `blk.0.attn_q.bias` has no place in a llama model",
        ),
        (
            "RoPE frequency factors",
            Box::new(|r| {
                r.tensors.push(RawTensor {
                    name: "rope_freqs.weight".into(),
                    dims: vec![8],
                    type_id: 0,
                    data: vec![0; 32],
                })
            }),
            "RoPE frequency factors (tensor rope_freqs.weight",
        ),
        (
            "a type torchless does not compute with",
            // IQ4_NL blocks have Q4_0's size: only the type changes.
            Box::new(|r| r.tensor_mut("blk.0.attn_v.weight").type_id = 20),
            "tensor `blk.0.attn_v.weight` has ggml type IQ4_NL, which torchless does not compute with",
        ),
        (
            "a matrix of the wrong shape",
            Box::new(|r| {
                let t = r.tensor_mut("blk.0.ffn_gate.weight");
                t.dims = vec![64, 128];
                t.data.truncate(128 * 2 * 18);
            }),
            "tensor `blk.0.ffn_gate.weight` has shape [128, 64], expected [160, 64]",
        ),
        (
            "a norm that is not F32",
            Box::new(|r| {
                let t = r.tensor_mut("output_norm.weight");
                t.type_id = 1;
                t.data.truncate(128);
            }),
            "tensor `output_norm.weight` has dtype F16, expected F32 (a norm's weights)",
        ),
        (
            "a file cut inside the data",
            Box::new(|r| r.tensors.last_mut().unwrap().data.truncate(10)),
            "lies outside its",
        ),
        (
            "a chat template that is a number",
            Box::new(|r| r.set("tokenizer.chat_template", GgufValue::U32(7))),
            "`tokenizer.chat_template` = \"UINT32 7\" is invalid: expected a STRING",
        ),
        (
            "fewer pieces than embedding rows",
            Box::new(|r| {
                let Some(GgufValue::Array(GgufArray::String(t))) =
                    r.get("tokenizer.ggml.tokens").cloned()
                else {
                    unreachable!()
                };
                r.set(
                    "tokenizer.ggml.tokens",
                    GgufValue::Array(GgufArray::String(t[..700].to_vec())),
                );
            }),
            "tokenizer.ggml.tokens has 700 pieces but token_embd.weight has 768 rows",
        ),
        (
            "pieces that are not strings",
            Box::new(|r| {
                r.set(
                    "tokenizer.ggml.tokens",
                    GgufValue::Array(GgufArray::I32(vec![0; 768])),
                )
            }),
            "`tokenizer.ggml.tokens` = \"an ARRAY of 768 INT32\" is invalid: expected an ARRAY of STRING",
        ),
        (
            "token types with holes",
            Box::new(|r| {
                r.set(
                    "tokenizer.ggml.token_type",
                    GgufValue::Array(GgufArray::I32(vec![1; 767])),
                )
            }),
            "tokenizer.ggml.token_type has 767 entries for the 768 pieces",
        ),
        (
            "a BOS outside the vocabulary",
            Box::new(|r| r.set("tokenizer.ggml.bos_token_id", GgufValue::U32(768))),
            "tokenizer.ggml.bos_token_id = 768 is outside the vocabulary of 768 pieces",
        ),
        (
            "an unknown tokenizer model",
            Box::new(move |r| r.set("tokenizer.ggml.model", s("t5"))),
            "tokenizer.ggml.model \"t5\" is not supported",
        ),
        (
            "no merges",
            Box::new(|r| r.remove("tokenizer.ggml.merges")),
            "metadata key `tokenizer.ggml.merges` is missing",
        ),
        (
            "no tokenizer",
            Box::new(|r| r.remove("tokenizer.ggml.model")),
            "metadata key `tokenizer.ggml.model` is missing",
        ),
        (
            "add_bos that is not a bool",
            Box::new(|r| r.set("tokenizer.ggml.add_bos_token", GgufValue::U8(1))),
            "`tokenizer.ggml.add_bos_token` = \"UINT8 1\" is invalid: expected a BOOL",
        ),
    ];
    let base = RawGguf::open(&q4_0());
    for (what, mutate, message) in cases {
        let mut raw = base.clone();
        mutate(&mut raw);
        let e = refusal(&raw);
        assert!(e.to_string().contains(message), "{what}: {e}");
        assert!(e.to_string().starts_with("<memory>: "), "{what}: {e}");
    }
}

#[test]
fn unaligned_f32_data_is_refused_not_misread() {
    // With `general.alignment` 2, some padding of the metadata puts the first F32 tensor off a
    // 4-byte boundary.
    let mut found = false;
    for pad in 0..4 {
        let mut raw = RawGguf::open(&q4_0());
        raw.alignment = 2;
        raw.set("general.alignment", GgufValue::U32(2));
        raw.set("test.pad", GgufValue::String("x".repeat(pad)));
        match ModelFile::from_bytes(&raw.to_bytes()) {
            Ok(_) => {}
            Err(e) => {
                assert!(
                    matches!(e.kind(), FormatErrorKind::Misaligned { tensor, align: 4, .. }
                        if tensor.ends_with("norm.weight")),
                    "{e}"
                );
                found = true;
            }
        }
    }
    assert!(found);
}

#[test]
fn structural_errors_keep_the_readers_words() {
    let bytes = std::fs::read(q4_0()).unwrap();
    let e = ModelFile::from_bytes(&bytes[..bytes.len() / 2]).unwrap_err();
    assert!(
        matches!(
            e.kind(),
            FormatErrorKind::Gguf(GgufErrorKind::OutOfBounds { .. })
        ),
        "{e}"
    );
    let e = ModelFile::from_bytes(&bytes[..100]).unwrap_err();
    assert!(
        matches!(
            e.kind(),
            FormatErrorKind::Gguf(GgufErrorKind::CountTooLarge { .. })
        ),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gguf");
    std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    let e = ModelFile::open(&path).unwrap_err();
    assert!(
        e.to_string().starts_with(&path.display().to_string()),
        "{e}"
    );
    let e = read_tokenizer_data(&path).unwrap_err();
    assert!(e.to_string().contains("lies outside"), "{e}");
}
