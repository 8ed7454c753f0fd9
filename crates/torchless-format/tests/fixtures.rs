//! The committed fixture models (written by scripts/fixtures/make_model_fixtures.py, an independent
//! Python implementation of the original exporter) read back exactly, and the Rust writer reproduces
//! them byte for byte.

mod common;

use common::{fixtures, read_safetensors, MODELS};
use torchless_format::quant::GROUP_SIZE;
use torchless_format::{
    DType, ModelFile, ModelWriter, QuantKind, Residency, TensorData, TensorSpec,
};

#[test]
fn every_fixture_model_opens_and_is_a_complete_mistral() {
    for name in MODELS {
        for quant in ["f32", "int8"] {
            let path = fixtures().join(format!("{name}-{quant}.bin"));
            let model = ModelFile::open(&path).unwrap();
            model.validate_mistral().unwrap();
            let expected = 3 + 9 * model.config().n_layers;
            assert_eq!(model.n_tensors(), expected, "{}", path.display());
            let want_quant = if quant == "f32" {
                QuantKind::F32
            } else {
                QuantKind::Int8
            };
            assert_eq!(model.config().quant, want_quant);
            assert_eq!(model.payload_start() % 64, 0);
        }
    }
}

#[test]
fn config_agrees_with_the_hugging_face_config() {
    let hf: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("small-gqa-hf/config.json")).unwrap(),
    )
    .unwrap();
    let model = ModelFile::open(fixtures().join("small-gqa-f32.bin")).unwrap();
    let c = model.config();
    let get = |k: &str| hf[k].as_u64().unwrap() as usize;
    assert_eq!(c.hidden_size, get("hidden_size"));
    assert_eq!(c.intermediate_size, get("intermediate_size"));
    assert_eq!(c.n_layers, get("num_hidden_layers"));
    assert_eq!(c.n_heads, get("num_attention_heads"));
    assert_eq!(c.n_kv_heads, get("num_key_value_heads"));
    assert_eq!(c.vocab_size, get("vocab_size"));
    assert_eq!(c.max_position_embeddings, get("max_position_embeddings"));
    assert_eq!(c.sliding_window, Some(get("sliding_window")));
    assert_eq!(c.head_dim, get("head_dim"));
    assert_eq!(
        c.rope_theta,
        hf["rope_parameters"]["rope_theta"].as_f64().unwrap()
    );
    assert_eq!(c.norm_eps, hf["rms_norm_eps"].as_f64().unwrap());

    let mqa = ModelFile::open(fixtures().join("small-mqa-f32.bin")).unwrap();
    assert_eq!(mqa.config().sliding_window, None);
    assert_eq!(mqa.config().n_queries_per_kv(), 6);
}

#[test]
fn f32_tensors_equal_the_checkpoint_bit_for_bit() {
    let checkpoint = read_safetensors(&fixtures().join("small-gqa-hf/model.safetensors"));
    let model = ModelFile::open(fixtures().join("small-gqa-f32.bin")).unwrap();
    assert_eq!(model.n_tensors(), checkpoint.len());
    for (name, (shape, values)) in &checkpoint {
        let tensor = model.tensor(name).unwrap();
        assert_eq!(&tensor.info.shape, shape, "{name}");
        let data = tensor.as_f32().unwrap();
        let same_bits = data
            .iter()
            .zip(values)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same_bits && data.len() == values.len(), "{name} differs");
    }
}

#[test]
fn int8_tensors_are_the_exporters_quantization_of_the_checkpoint() {
    let checkpoint = read_safetensors(&fixtures().join("small-gqa-hf/model.safetensors"));
    let model = ModelFile::open(fixtures().join("small-gqa-int8.bin")).unwrap();
    let mut n_int8 = 0;
    for (name, (_, values)) in &checkpoint {
        let tensor = model.tensor(name).unwrap();
        match tensor.data {
            TensorData::Int8(view) => {
                assert!(name.contains("_proj"), "{name} should not be int8");
                n_int8 += 1;
                assert_eq!(view.inv_scales.len(), values.len().div_ceil(GROUP_SIZE));
                // Rust quantization of the f32 checkpoint equals torch's, bit for bit.
                let mut q = [0i8; GROUP_SIZE];
                for (g, group) in values.chunks(GROUP_SIZE).enumerate() {
                    let inv = torchless_format::quant::quantize_group(group, &mut q[..group.len()])
                        .unwrap();
                    assert_eq!(
                        inv.to_bits(),
                        view.inv_scales[g].to_bits(),
                        "{name} group {g}"
                    );
                    assert_eq!(
                        &q[..group.len()],
                        &view.values[g * GROUP_SIZE..][..group.len()]
                    );
                }
                // Dequantized values lie within half a quantization step of the originals.
                let dequantized = tensor.to_f32_vec();
                for (i, (d, x)) in dequantized.iter().zip(values).enumerate() {
                    let step = 1.0 / view.inv_scales[i / GROUP_SIZE];
                    assert!((d - x).abs() <= 0.5 * step * 1.0001, "{name}[{i}]");
                    assert_eq!(Some(*d), view.get(i));
                }
            }
            TensorData::Int4(_) => panic!("{name}: the int8 fixture has no int4 tensor"),
            TensorData::Blocks(_) => panic!("{name}: the int8 fixture has no ggml blocks"),
            TensorData::F32(data) => {
                assert!(!name.contains("_proj"), "{name} should be int8");
                assert_eq!(data, values.as_slice());
            }
        }
    }
    assert_eq!(n_int8, 7 * model.config().n_layers);
}

#[test]
fn embedded_tokenizer_equals_the_tokenizer_json() {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("small-gqa-hf/tokenizer.json")).unwrap(),
    )
    .unwrap();
    let model = ModelFile::open(fixtures().join("small-gqa-int8.bin")).unwrap();
    let data = model.tokenizer_data().unwrap();
    let vocab = json["model"]["vocab"].as_object().unwrap();
    assert_eq!(data.vocab.len(), vocab.len());
    for (piece, id) in &data.vocab {
        assert_eq!(vocab[piece].as_u64(), Some(u64::from(*id)), "{piece}");
    }
    let merges: Vec<&str> = json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(data.merges, merges);
}

/// Rewrites `source` with the Rust writer, taking the tensors' f32 values (dequantized for int8)
/// and the given storage for `*_proj` tensors.
fn rewrite(source: &ModelFile, f32_source: &ModelFile, proj_dtype: DType, chunk: usize) -> Vec<u8> {
    let specs: Vec<TensorSpec> = source
        .tensors()
        .map(|t| {
            let dtype = if t.name.contains("_proj") {
                proj_dtype
            } else {
                DType::F32
            };
            TensorSpec::new(t.name.clone(), dtype, t.shape.clone())
        })
        .collect();
    let metadata: Vec<(String, String)> = source.config().to_metadata();
    let tokenizer = source.tokenizer_data().unwrap();
    let mut writer = ModelWriter::new(
        Vec::new(),
        "<test>",
        &metadata,
        specs.clone(),
        Some(&tokenizer),
    )
    .unwrap();
    for spec in &specs {
        let values = f32_source.tensor(&spec.name).unwrap().to_f32_vec();
        writer.begin_tensor(&spec.name).unwrap();
        for piece in values.chunks(chunk) {
            writer.push(piece).unwrap();
        }
        writer.end_tensor().unwrap();
    }
    writer.finish().unwrap()
}

#[test]
fn writer_reproduces_the_exporters_files_byte_for_byte() {
    for name in MODELS {
        let f32_path = fixtures().join(format!("{name}-f32.bin"));
        let int8_path = fixtures().join(format!("{name}-int8.bin"));
        let f32_model = ModelFile::open(&f32_path).unwrap();
        let int8_model = ModelFile::open(&int8_path).unwrap();

        let f32_bytes = rewrite(&f32_model, &f32_model, DType::F32, usize::MAX);
        assert!(f32_bytes == std::fs::read(&f32_path).unwrap(), "{name} f32");

        // Streaming in odd-sized chunks (groups straddle pushes) changes nothing.
        for chunk in [usize::MAX, 37, 64, 1000] {
            let int8_bytes = rewrite(&int8_model, &f32_model, DType::Int8, chunk);
            let expected = std::fs::read(&int8_path).unwrap();
            assert!(int8_bytes == expected, "{name} int8, chunk {chunk}");
        }
    }
}

#[test]
fn residency_advice_keeps_data_intact() {
    let model = ModelFile::open(fixtures().join("small-mqa-int8.bin")).unwrap();
    for info in model.tensors() {
        let before = model.tensor(&info.name).unwrap().to_f32_vec();
        model
            .set_residency(&info.name, Residency::WillNeed)
            .unwrap();
        model
            .set_residency(&info.name, Residency::DontNeed)
            .unwrap();
        let after = model.tensor(&info.name).unwrap().to_f32_vec();
        assert_eq!(before, after, "{}", info.name);
    }
}

#[test]
fn row_residency_keeps_data_intact_and_rejects_bad_ranges() {
    for file in ["small-mqa-int8.bin", "small-mqa-f32.bin"] {
        let model = ModelFile::open(fixtures().join(file)).unwrap();
        let name = "lm_head.weight";
        let rows = model.tensor_info(name).unwrap().shape[0];
        let before = model.tensor(name).unwrap().to_f32_vec();
        for chunk in [0..1, 1..7, 7..rows / 2, rows / 2..rows, rows..rows] {
            for advice in [Residency::Populate, Residency::DontNeed] {
                model
                    .set_rows_residency(name, chunk.clone(), advice)
                    .unwrap();
            }
        }
        assert_eq!(before, model.tensor(name).unwrap().to_f32_vec(), "{file}");

        for (tensor, bad) in [
            (name, 0..rows + 1),
            (name, std::ops::Range { start: 5, end: 4 }),
            ("model.norm.weight", 0..1),
        ] {
            let err = model
                .set_rows_residency(tensor, bad.clone(), Residency::Populate)
                .unwrap_err()
                .to_string();
            let expected = format!("rows {}..{} of tensor `{tensor}`", bad.start, bad.end);
            assert!(err.contains(&expected), "{err}");
        }
    }
}

#[test]
fn non_finite_weights_are_reported() {
    let clean = ModelFile::open(fixtures().join("small-gqa-f32.bin")).unwrap();
    assert!(clean.non_finite_tensors().unwrap().is_empty());

    let specs: Vec<TensorSpec> = clean
        .tensors()
        .map(|t| TensorSpec::new(t.name.clone(), DType::F32, t.shape.clone()))
        .collect();
    let mut writer = ModelWriter::new(
        Vec::new(),
        "<test>",
        &clean.config().to_metadata(),
        specs.clone(),
        None,
    )
    .unwrap();
    for spec in &specs {
        let mut values = clean.tensor(&spec.name).unwrap().to_f32_vec();
        if spec.name == "model.norm.weight" {
            values[3] = f32::NAN;
            values[5] = f32::INFINITY;
        }
        writer.write_tensor(&spec.name, &values).unwrap();
    }
    let bytes = writer.finish().unwrap();
    let model = ModelFile::from_bytes(&bytes).unwrap();
    assert_eq!(
        model.non_finite_tensors().unwrap(),
        vec![("model.norm.weight".to_string(), 2)]
    );
}

#[test]
fn a_file_read_into_memory_holds_the_checkpoint_and_survives_dont_need() {
    // The copy is the file's bytes: f32 tensors bit-identical to the Hugging Face checkpoint,
    // as from the mapping. Giving pages back (what a lazy model does) must not touch anonymous
    // memory, where MADV_DONTNEED would zero them.
    let path = fixtures().join("small-gqa-f32.bin");
    let total = std::fs::metadata(&path).unwrap().len();
    let mut calls = Vec::new();
    let mut progress = |done: u64, of: u64| calls.push((done, of));
    let model = ModelFile::read_into_memory(&path, Some(&mut progress)).unwrap();
    assert!(model.is_in_memory() && !ModelFile::open(&path).unwrap().is_in_memory());
    assert_eq!(model.path(), Some(path.as_path()));
    assert_eq!(calls.last(), Some(&(total, total)));
    assert!(calls.windows(2).all(|w| w[0].0 < w[1].0));
    // The file aligns its payload to 64 bytes only; the copy puts it on a page boundary, so a
    // tensor's address is its payload offset modulo the page size.
    let mapped = ModelFile::open(&path).unwrap();
    assert_ne!(mapped.payload_start() % 4096, 0);
    for info in model.tensors() {
        let tensor = model.tensor(&info.name).unwrap();
        let address = tensor.as_f32().unwrap().as_ptr() as usize;
        assert_eq!(address % 4096, info.offset % 4096, "{}", info.name);
    }
    let checkpoint = read_safetensors(&fixtures().join("small-gqa-hf/model.safetensors"));
    for name in checkpoint.keys() {
        model.set_residency(name, Residency::DontNeed).unwrap();
    }
    for (name, (_, values)) in &checkpoint {
        let data = model.tensor(name).unwrap().as_f32().unwrap().to_vec();
        let same = data.len() == values.len()
            && data
                .iter()
                .zip(values)
                .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{name} differs after reading into memory");
    }
}

#[test]
fn reading_into_memory_reports_bad_files_like_open() {
    let missing = fixtures().join("no-such-model.bin");
    let e = ModelFile::read_into_memory(&missing, None).unwrap_err();
    assert!(e.to_string().contains("no-such-model.bin"), "{e}");
    // A truncated file is refused by the validation that runs before anything is allocated.
    let dir =
        std::env::temp_dir().join(format!("torchless-read-into-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = std::fs::read(fixtures().join("small-gqa-int8.bin")).unwrap();
    let cut = dir.join("cut.bin");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let (from_open, from_read) = (
        ModelFile::open(&cut).unwrap_err().to_string(),
        ModelFile::read_into_memory(&cut, None)
            .unwrap_err()
            .to_string(),
    );
    assert_eq!(from_open, from_read);
    std::fs::remove_dir_all(&dir).unwrap();
}
