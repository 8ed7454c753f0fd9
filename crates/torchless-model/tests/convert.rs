//! `torchless_model::convert` from library code: the fixture checkpoint and GGUF files convert
//! to the files the Python exporter (and gguf-py's layout) made, byte for byte or tensor for
//! tensor; progress is reported in order; errors name the file and the tensor; synthetic models
//! do not depend on the thread count; and a model file's tokenizer gives the goldens' ids.
#![cfg(feature = "convert")]

mod common;

use std::path::{Path, PathBuf};

use common::{fixtures, read_goldens};
use torchless_model::convert::{
    convert, convert_checkpoint, synth, ConvertError, ConvertOptions, ConvertProgress,
    ConvertedFrom, Shape, SourceDType, Storage, SynthOptions,
};
use torchless_model::format::{ModelFile, QuantKind};
use torchless_model::{load_tokenizer, tokenizer_for};

fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

fn storage(weights: QuantKind) -> Storage {
    Storage::new(weights, QuantKind::F32)
}

#[test]
fn checkpoint_converts_to_the_exporters_bytes_with_ordered_progress() {
    let dir = tempfile::tempdir().unwrap();
    for (quant, name) in [
        (QuantKind::F32, "small-gqa-f32.bin"),
        (QuantKind::Int8, "small-gqa-int8.bin"),
    ] {
        let out = dir.path().join(name);
        let mut events = Vec::new();
        let mut record = |p: ConvertProgress| events.push(p);
        let report = convert(
            &fixture("small-gqa-hf"),
            &out,
            ConvertOptions {
                storage: storage(quant),
                progress: Some(&mut record),
                ..ConvertOptions::default()
            },
        )
        .unwrap();
        let want = std::fs::read(fixture(name)).unwrap();
        assert!(std::fs::read(&out).unwrap() == want, "{name} differs");
        assert_eq!(report.output_bytes, want.len() as u64);
        let reference = ModelFile::open(fixture("small-gqa-f32.bin")).unwrap();
        let tensors = reference.n_tensors();
        // The checkpoint holds f32 tensors only.
        let bytes: u64 = reference.tensors().map(|t| 4 * t.n_elements as u64).sum();
        assert_eq!(
            report.from,
            ConvertedFrom::Checkpoint {
                tensors,
                dtypes: vec![SourceDType::F32],
                bytes,
                skipped: Vec::new(),
            }
        );

        // Started, then each tensor in order with its bytes, then Finishing.
        assert_eq!(
            events.first(),
            Some(&ConvertProgress::Started { tensors, bytes })
        );
        assert_eq!(events.last(), Some(&ConvertProgress::Finishing));
        let (mut indices, mut done) = (Vec::new(), Vec::new());
        for event in &events {
            match *event {
                ConvertProgress::Tensor { index } => indices.push(index),
                ConvertProgress::Bytes { done: bytes } => done.push(bytes),
                _ => {}
            }
        }
        assert_eq!(indices, (0..tensors).collect::<Vec<_>>());
        assert!(done.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(done.last(), Some(&bytes));
    }
}

#[test]
fn gguf_converts_to_the_exported_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tied.bin");
    let report = convert(
        &fixture("llama-tied-f32.gguf"),
        &out,
        ConvertOptions::default(),
    )
    .unwrap();
    let ours = ModelFile::open(&out).unwrap();
    let reference = ModelFile::open(fixture("llama-tied-f32.bin")).unwrap();
    assert_eq!(ours.config(), reference.config());
    let file_bytes = std::fs::metadata(fixture("llama-tied-f32.gguf"))
        .unwrap()
        .len();
    assert_eq!(
        report.from,
        ConvertedFrom::Gguf {
            version: 3,
            tensors: reference.n_tensors(),
            types: vec!["F32"],
            file_bytes,
            copied: reference.n_tensors(),
            dequantized: vec![],
        }
    );
    for info in reference.tensors() {
        let (a, b) = (
            ours.tensor(&info.name).unwrap().to_f32_vec(),
            reference.tensor(&info.name).unwrap().to_f32_vec(),
        );
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()) && a.len() == b.len(),
            "{}",
            info.name
        );
    }
    assert_eq!(
        ours.tokenizer_data().unwrap(),
        reference.tokenizer_data().unwrap()
    );
}

/// A copy of the fixture checkpoint with `config.json` edited.
fn edited_checkpoint(from: &str, to: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "model.safetensors.index.json",
    ] {
        std::fs::copy(fixture("small-gqa-hf").join(file), dir.path().join(file)).unwrap();
    }
    let config = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains(from));
    std::fs::write(&config, text.replace(from, to)).unwrap();
    dir
}

fn assert_nothing_written(out: &Path) {
    assert!(!out.exists());
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    assert!(!Path::new(&partial).exists());
}

#[test]
fn errors_name_the_file_and_the_tensor() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out.bin");

    let missing = out_dir.path().join("nope");
    let e = convert(&missing, &out, ConvertOptions::default()).unwrap_err();
    assert!(
        matches!(&e, ConvertError::Input { path, .. } if *path == missing),
        "{e:?}"
    );
    assert_nothing_written(&out);

    // A configuration that disagrees with the weights: the tensor, expected and found shapes.
    let dir = edited_checkpoint("\"intermediate_size\": 176", "\"intermediate_size\": 128");
    let e = convert_checkpoint(dir.path(), &out, ConvertOptions::default()).unwrap_err();
    match &e {
        ConvertError::Shape {
            path,
            tensor,
            expected,
            found,
        } => {
            assert_eq!(path, &dir.path().join("model.safetensors"));
            assert!(tensor.ends_with("mlp.down_proj.weight"), "{tensor}");
            assert_eq!(
                (expected.as_slice(), found.as_slice()),
                ([64, 128].as_slice(), [64, 176].as_slice())
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        e.to_string().contains("config.json implies [64, 128]"),
        "{e}"
    );
    assert_nothing_written(&out);

    let dir = edited_checkpoint("\"model_type\": \"mistral\"", "\"model_type\": \"qwen2\"");
    let e = convert_checkpoint(dir.path(), &out, ConvertOptions::default()).unwrap_err();
    assert_eq!(e.path(), Some(dir.path().join("config.json").as_path()));
    assert!(
        e.to_string()
            .contains("model_type \"qwen2\" is not supported"),
        "{e}"
    );
    assert_nothing_written(&out);
}

#[test]
fn synthetic_models_do_not_depend_on_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for threads in [1, 3] {
        let out = dir.path().join(format!("t{threads}.bin"));
        let report = synth(
            &out,
            SynthOptions {
                storage: Storage::new(QuantKind::Int8, QuantKind::Int4),
                seed: 11,
                threads,
                ..SynthOptions::new(Shape::Tiny)
            },
        )
        .unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(report.bytes, bytes.len() as u64);
        files.push(bytes);
    }
    assert!(files[0] == files[1]);
    let model = ModelFile::open(dir.path().join("t1.bin")).unwrap();
    assert_eq!(model.config().quant, QuantKind::Int8);
    assert_eq!(Shape::from_name("tiny"), Some(Shape::Tiny));
}

/// The model files' own tokenizers (SentencePiece and byte-level) give the goldens' ids, which
/// Hugging Face `tokenizers` computed.
#[test]
fn model_files_tokenize_like_the_reference() {
    for (name, goldens) in [
        ("small-gqa-int8.bin", "small-gqa-goldens-int8.json"),
        ("llama-untied-f32.bin", "llama-untied-goldens-f32.json"),
    ] {
        let from_path = load_tokenizer(fixture(name)).unwrap();
        let from_file = tokenizer_for(&ModelFile::open(fixture(name)).unwrap()).unwrap();
        for prompt in read_goldens(&fixture(goldens)).prompts {
            let mut options = from_path.prompt_options();
            options.parse_special = prompt.text.contains("<|");
            assert_eq!(
                from_path.encode(&prompt.text, options),
                prompt.ids,
                "{name}"
            );
            assert_eq!(
                from_file.encode(&prompt.text, options),
                prompt.ids,
                "{name}"
            );
        }
    }
}
