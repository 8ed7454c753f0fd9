//! The published reference models (../shared/reference, present in CI, not in a user's clone).
//! Compiled only with `--features shared-reference`; a missing directory is a failure, not a skip.
#![cfg(feature = "shared-reference")]

mod common;

use std::path::PathBuf;

use common::read_safetensors;
use torchless_format::{DType, ModelFile, ModelWriter, TensorData, TensorSpec};

fn reference() -> PathBuf {
    let dir = std::env::var_os("TORCHLESS_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")))
        .join("reference/models");
    assert!(
        dir.is_dir(),
        "{} is missing (set TORCHLESS_SHARED_DIR)",
        dir.display()
    );
    dir
}

#[test]
fn every_reference_model_opens_and_validates() {
    for name in ["tiny", "tiny-mqa"] {
        for quant in ["f32", "int8"] {
            let model = ModelFile::open(reference().join(format!("{name}-{quant}.bin"))).unwrap();
            model.validate_mistral().unwrap();
            let tokenizer = model.tokenizer_data().unwrap();
            assert_eq!(tokenizer.vocab.len(), 32000);
        }
    }
}

#[test]
fn tiny_f32_equals_its_checkpoint_and_int8_is_its_exact_quantization() {
    let checkpoint = read_safetensors(&reference().join("tiny-hf/model.safetensors"));
    let f32_model = ModelFile::open(reference().join("tiny-f32.bin")).unwrap();
    let int8_model = ModelFile::open(reference().join("tiny-int8.bin")).unwrap();
    for (name, (shape, values)) in &checkpoint {
        let t = f32_model.tensor(name).unwrap();
        assert_eq!(&t.info.shape, shape);
        assert!(t
            .as_f32()
            .unwrap()
            .iter()
            .zip(values)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        let q = int8_model.tensor(name).unwrap();
        if let TensorData::Int8(view) = q.data {
            let mut buf = [0i8; 64];
            for (g, group) in values.chunks(64).enumerate() {
                let inv = torchless_format::quant::quantize_group(group, &mut buf[..group.len()])
                    .unwrap();
                assert_eq!(
                    inv.to_bits(),
                    view.inv_scales[g].to_bits(),
                    "{name} group {g}"
                );
                assert_eq!(
                    &buf[..group.len()],
                    &view.values[g * 64..][..group.len()],
                    "{name} group {g}"
                );
            }
        }
    }
}

#[test]
fn writer_reproduces_the_original_exporters_files_byte_for_byte() {
    for name in ["tiny", "tiny-mqa"] {
        let f32_model = ModelFile::open(reference().join(format!("{name}-f32.bin"))).unwrap();
        for quant in ["f32", "int8"] {
            let path = reference().join(format!("{name}-{quant}.bin"));
            let target = ModelFile::open(&path).unwrap();
            let specs: Vec<TensorSpec> = target
                .tensors()
                .map(|t| TensorSpec::new(t.name.clone(), t.dtype, t.shape.clone()))
                .collect();
            assert!(specs.iter().any(|s| s.dtype == DType::Int8) == (quant == "int8"));
            let tokenizer = target.tokenizer_data().unwrap();
            let mut writer = ModelWriter::new(
                Vec::new(),
                "<test>",
                &target.config().to_metadata(),
                specs.clone(),
                Some(&tokenizer),
            )
            .unwrap();
            for spec in &specs {
                let values = f32_model.tensor(&spec.name).unwrap().to_f32_vec();
                writer.write_tensor(&spec.name, &values).unwrap();
            }
            let bytes = writer.finish().unwrap();
            assert!(
                bytes == std::fs::read(&path).unwrap(),
                "{name}-{quant}.bin differs"
            );
        }
    }
}
