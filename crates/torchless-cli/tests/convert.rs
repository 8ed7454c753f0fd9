//! `torchless convert`: Hugging Face checkpoints into model files identical to the exporter's.
//!
//! The fixture checkpoint `tests/fixtures/models/small-gqa-hf` (transformers-5 config layout,
//! float32 safetensors) and the files the Python exporter reimplementation made from it
//! (`small-gqa-f32.bin`, `small-gqa-int8.bin`) are the references: every way of presenting the same
//! weights (sharded, unsharded, old config layout, bf16 / f16 holding the same values) must give
//! those bytes.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde_json::Value;
use torchless_model::format::quant::{quantize_group, GROUP_SIZE};
use torchless_model::format::{DType, ModelFile, TensorData};

/// A tensor of a checkpoint, owned.
#[derive(Clone)]
struct Tensor {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn fixture_dir() -> PathBuf {
    common::model("small-gqa-hf")
}

fn fixture_tensors() -> Vec<Tensor> {
    let bytes = std::fs::read(fixture_dir().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<Tensor> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| Tensor {
            name,
            dtype: view.dtype(),
            shape: view.shape().to_vec(),
            data: view.data().to_vec(),
        })
        .collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    tensors
}

fn write_safetensors(path: &Path, tensors: &[Tensor]) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// A checkpoint directory with the fixture's config.json and tokenizer.json (no weights yet).
fn checkpoint_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture_dir().join(file), dir.path().join(file)).unwrap();
    }
    dir
}

fn write_index(dir: &Path, entries: &[(&str, &str)]) {
    let body: Vec<String> = entries
        .iter()
        .map(|(name, file)| format!("    \"{name}\": \"{file}\""))
        .collect();
    let text = format!(
        "{{\n  \"metadata\": {{\"total_size\": 0}},\n  \"weight_map\": {{\n{}\n  }}\n}}\n",
        body.join(",\n")
    );
    std::fs::write(dir.join("model.safetensors.index.json"), text).unwrap();
}

/// Runs `torchless convert DIR OUT [--quant Q]`, expecting success; returns the output bytes.
fn convert(dir: &Path, quant: &str) -> Vec<u8> {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("model.bin");
    let result = common::run(
        common::torchless()
            .arg("convert")
            .arg(dir)
            .arg(&out)
            .args(["--quant", quant]),
    );
    assert_eq!(result.code, 0, "convert failed: {}", result.stderr);
    assert!(
        !out_dir.path().join("model.bin.partial").exists(),
        "partial file left behind"
    );
    std::fs::read(&out).unwrap()
}

fn expected(quant: &str) -> Vec<u8> {
    std::fs::read(common::model(&format!("small-gqa-{quant}.bin"))).unwrap()
}

/// Compares whole files (header, padding, payload), pointing at the first difference.
fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: files differ at byte {at} (lengths {} and {})",
            got.len(),
            want.len()
        );
    }
}

/// The JSON header of a model file.
fn header(bytes: &[u8]) -> Value {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let text = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    serde_json::from_str(text.trim_end_matches('\0')).unwrap()
}

fn header_tensor_order(bytes: &[u8]) -> Vec<String> {
    // serde_json sorts object keys, so read the order from the text itself.
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let text = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    let tensors = &text[text.find("\"tensors\": {").unwrap()..text.find("\"tokenizer\"").unwrap()];
    let names: Vec<String> = tensors
        .split("\": {\"dtype\"")
        .filter_map(|part| part.rsplit('"').next().map(str::to_string))
        .filter(|name| name.contains('.'))
        .collect();
    names
}

#[test]
fn fixture_converts_to_the_exporters_bytes() {
    for quant in ["f32", "int8"] {
        let got = convert(&fixture_dir(), quant);
        assert_same_bytes(&got, &expected(quant), quant);
    }
}

#[test]
fn default_quant_is_f32_and_the_file_runs() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("m.bin");
    let result = common::run(
        common::torchless()
            .arg("convert")
            .arg(fixture_dir())
            .arg(&out),
    );
    assert_eq!(result.code, 0, "{}", result.stderr);
    assert!(result.stdout.is_empty(), "stdout: {}", result.stdout);
    assert_same_bytes(&std::fs::read(&out).unwrap(), &expected("f32"), "default");
    let gen = common::run(common::torchless().arg(&out).args([
        "The capital of France is",
        "-n",
        "4",
        "--temp",
        "0",
    ]));
    assert_eq!(gen.code, 0, "{}", gen.stderr);
}

#[test]
fn sharded_and_unindexed_checkpoints_give_the_same_bytes() {
    let tensors = fixture_tensors();
    let parts: Vec<&[Tensor]> = vec![&tensors[..5], &tensors[5..13], &tensors[13..]];
    let names = [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
    ];

    // Three shards with an index (alphabetical, as Hugging Face writes it).
    let dir = checkpoint_dir();
    let mut entries = Vec::new();
    for (part, file) in parts.iter().zip(names) {
        write_safetensors(&dir.path().join(file), part);
        entries.extend(part.iter().map(|t| (t.name.as_str(), file)));
    }
    write_index(dir.path(), &entries);
    for quant in ["f32", "int8"] {
        assert_same_bytes(
            &convert(dir.path(), quant),
            &expected(quant),
            &format!("sharded {quant}"),
        );
    }

    // The same shards without an index.
    std::fs::remove_file(dir.path().join("model.safetensors.index.json")).unwrap();
    assert_same_bytes(
        &convert(dir.path(), "int8"),
        &expected("int8"),
        "shards without index",
    );

    // One model.safetensors without an index.
    let single = checkpoint_dir();
    std::fs::copy(
        fixture_dir().join("model.safetensors"),
        single.path().join("model.safetensors"),
    )
    .unwrap();
    assert_same_bytes(
        &convert(single.path(), "f32"),
        &expected("f32"),
        "single file without index",
    );
}

#[test]
fn tensor_order_follows_the_index() {
    let tensors = fixture_tensors();
    let dir = checkpoint_dir();
    write_safetensors(&dir.path().join("model.safetensors"), &tensors);
    let mut order: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    order.reverse();
    order.swap(0, 7);
    let entries: Vec<(&str, &str)> = order.iter().map(|n| (*n, "model.safetensors")).collect();
    write_index(dir.path(), &entries);
    let got = convert(dir.path(), "int8");
    assert_eq!(header_tensor_order(&got), order);

    // Same tensors, same values, only placed differently.
    let dir_out = tempfile::tempdir().unwrap();
    let path = dir_out.path().join("m.bin");
    std::fs::write(&path, &got).unwrap();
    let reordered = ModelFile::open(&path).unwrap();
    let reference = ModelFile::open(common::model("small-gqa-int8.bin")).unwrap();
    for t in reference.tensors() {
        assert_eq!(
            reordered.tensor(&t.name).unwrap().to_f32_vec(),
            reference.tensor(&t.name).unwrap().to_f32_vec(),
            "{}",
            t.name
        );
    }
}

#[test]
fn old_config_layout_converts_identically() {
    let dir = checkpoint_dir();
    std::fs::copy(
        fixture_dir().join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    // The layout of Mistral-7B-v0.1's own config.json: top-level rope_theta and torch_dtype.
    let mut config: serde_json::Map<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("config.json")).unwrap())
            .unwrap();
    let theta = config.remove("rope_parameters").unwrap()["rope_theta"].clone();
    assert_eq!(theta, serde_json::json!(10000.0));
    config.insert("rope_theta".into(), theta);
    config.insert("torch_dtype".into(), "float32".into());
    config.insert(
        "architectures".into(),
        serde_json::json!(["MistralForCausalLM"]),
    );
    config.remove("head_dim");
    let text = serde_json::to_string_pretty(&config).unwrap();
    std::fs::write(dir.path().join("config.json"), &text).unwrap();
    for quant in ["f32", "int8"] {
        assert_same_bytes(
            &convert(dir.path(), quant),
            &expected(quant),
            &format!("old layout {quant}"),
        );
    }

    // Python's str() of an integer rope_theta has no ".0"; the exporter writes it that way.
    let int_theta = text.replace("\"rope_theta\": 10000.0", "\"rope_theta\": 10000");
    assert_ne!(int_theta, text);
    std::fs::write(dir.path().join("config.json"), int_theta).unwrap();
    let got = convert(dir.path(), "f32");
    let h = header(&got);
    assert_eq!(h["metadata"]["rope_theta"], "10000");
    assert_eq!(h["metadata"]["norm_eps"], "1e-05");
    assert_eq!(h["metadata"]["sliding_window"], "12");

    // A config without a window says "None", like Python's str(None).
    let no_window = std::fs::read_to_string(dir.path().join("config.json"))
        .unwrap()
        .replace("\"sliding_window\": 12", "\"sliding_window\": null");
    std::fs::write(dir.path().join("config.json"), no_window).unwrap();
    let h = header(&convert(dir.path(), "f32"));
    assert_eq!(h["metadata"]["sliding_window"], "None");
}

/// Rounds f32 little-endian bytes to bf16 (round to nearest even) and returns the bf16 bytes.
fn to_bf16(data: &[u8]) -> Vec<u8> {
    data.chunks_exact(4)
        .flat_map(|b| {
            let x = f32::from_le_bytes(b.try_into().unwrap());
            half::bf16::from_f32(x).to_bits().to_le_bytes()
        })
        .collect()
}

fn bf16_to_f32(data: &[u8]) -> Vec<u8> {
    data.chunks_exact(2)
        .flat_map(|b| {
            let x = half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            x.to_le_bytes()
        })
        .collect()
}

#[test]
fn bf16_checkpoint_quantizes_in_f32_without_wrapping() {
    // 0.01171875 = 3/256 is exact in bf16. In bf16 arithmetic (the original exporter on a bf16
    // checkpoint) PyTorch evaluates 127 / m as reciprocal(m) * 127: 1/m = 85.33 rounds to 85.5,
    // times 127 = 10858.5 rounds to 10880; then m * 10880 = 127.5 (exact in bf16), round() (half
    // to even) gives 128, and the int8 cast wraps it to -128.
    let m = half::bf16::from_bits(0x3C40);
    assert_eq!(m.to_f32(), 0.01171875);
    let bf16 = |x: f32| half::bf16::from_f32(x).to_f32();
    let bf16_scale = bf16(bf16(1.0 / m.to_f32()) * 127.0);
    assert_eq!(bf16_scale, 10880.0);
    let bf16_product = bf16(m.to_f32() * bf16_scale);
    assert_eq!(bf16_product.round_ties_even(), 128.0);
    assert_eq!(bf16_product.round_ties_even() as i32 as i8, -128);

    let target = "model.layers.0.self_attn.q_proj.weight";
    let mut bf16_tensors = fixture_tensors();
    for t in &mut bf16_tensors {
        t.data = to_bf16(&t.data);
        t.dtype = Dtype::BF16;
        if t.name == target {
            // Group 0: the maximum m first, smaller values of both signs after it.
            for i in 0..GROUP_SIZE {
                let x = if i == 0 {
                    m
                } else {
                    half::bf16::from_f32(m.to_f32() * ((i as f32 / 64.0) - 0.6))
                };
                t.data[2 * i..2 * i + 2].copy_from_slice(&x.to_bits().to_le_bytes());
            }
        }
    }
    let bf16_dir = checkpoint_dir();
    write_safetensors(&bf16_dir.path().join("model.safetensors"), &bf16_tensors);

    // The same values as f32: the reference for what a correct conversion gives.
    let f32_tensors: Vec<Tensor> = bf16_tensors
        .iter()
        .map(|t| Tensor {
            dtype: Dtype::F32,
            data: bf16_to_f32(&t.data),
            ..t.clone()
        })
        .collect();
    let f32_dir = checkpoint_dir();
    write_safetensors(&f32_dir.path().join("model.safetensors"), &f32_tensors);

    for quant in ["f32", "int8"] {
        let from_bf16 = convert(bf16_dir.path(), quant);
        let from_f32 = convert(f32_dir.path(), quant);
        assert_same_bytes(&from_bf16, &from_f32, &format!("bf16 vs f32, {quant}"));
    }

    let out_dir = tempfile::tempdir().unwrap();
    let path = out_dir.path().join("bf16-int8.bin");
    std::fs::write(&path, convert(bf16_dir.path(), "int8")).unwrap();
    let model = ModelFile::open(&path).unwrap();
    let f32_values: HashMap<&str, Vec<f32>> = f32_tensors
        .iter()
        .map(|t| {
            let values = t
                .data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (t.name.as_str(), values)
        })
        .collect();
    let mut int8_tensors = 0;
    for info in model.tensors() {
        let values = &f32_values[info.name.as_str()];
        match model.tensor(&info.name).unwrap().data {
            TensorData::Int8(view) => {
                int8_tensors += 1;
                assert!(
                    view.values.iter().all(|&q| q != -128),
                    "{}: -128 found",
                    info.name
                );
                // Every group is the exact f32 quantization of the bf16 values.
                let mut q = [0i8; GROUP_SIZE];
                for (g, group) in values.chunks(GROUP_SIZE).enumerate() {
                    let q = &mut q[..group.len()];
                    let inv = quantize_group(group, q).unwrap();
                    assert_eq!(inv.to_bits(), view.inv_scales[g].to_bits());
                    assert_eq!(q, &view.values[g * GROUP_SIZE..][..group.len()]);
                }
                if info.name == target {
                    assert_eq!(view.values[0], 127, "the group maximum must be +127");
                    assert_eq!(view.inv_scales[0], (1.0 / m.to_f32()) * 127.0);
                }
            }
            TensorData::Int4(_) => panic!("{}: convert never writes int4", info.name),
            TensorData::Blocks(_) => panic!("{}: convert never writes ggml blocks", info.name),
            TensorData::F32(data) => {
                assert_eq!(info.dtype, DType::F32);
                assert_eq!(data, values.as_slice(), "{}", info.name);
            }
        }
    }
    assert_eq!(int8_tensors, 14);
}

#[test]
fn f16_checkpoint_converts_exactly() {
    let mut tensors = fixture_tensors();
    for t in &mut tensors {
        t.data = t
            .data
            .chunks_exact(4)
            .flat_map(|b| {
                let x = f32::from_le_bytes(b.try_into().unwrap());
                half::f16::from_f32(x).to_bits().to_le_bytes()
            })
            .collect();
        t.dtype = Dtype::F16;
    }
    let f16_dir = checkpoint_dir();
    write_safetensors(&f16_dir.path().join("model.safetensors"), &tensors);
    let f32_dir = checkpoint_dir();
    let as_f32: Vec<Tensor> = tensors
        .iter()
        .map(|t| Tensor {
            dtype: Dtype::F32,
            data: t
                .data
                .chunks_exact(2)
                .flat_map(|b| {
                    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]]))
                        .to_f32()
                        .to_le_bytes()
                })
                .collect(),
            ..t.clone()
        })
        .collect();
    write_safetensors(&f32_dir.path().join("model.safetensors"), &as_f32);
    for quant in ["f32", "int8"] {
        assert_same_bytes(
            &convert(f16_dir.path(), quant),
            &convert(f32_dir.path(), quant),
            &format!("f16 vs f32, {quant}"),
        );
    }
}

#[test]
fn rotary_inv_freq_buffers_are_left_out() {
    let mut tensors = fixture_tensors();
    tensors.push(Tensor {
        name: "model.layers.0.self_attn.rotary_emb.inv_freq".into(),
        dtype: Dtype::F32,
        shape: vec![8],
        data: vec![0; 32],
    });
    let dir = checkpoint_dir();
    write_safetensors(&dir.path().join("model.safetensors"), &tensors);
    assert_same_bytes(
        &convert(dir.path(), "f32"),
        &expected("f32"),
        "with inv_freq",
    );
}

/// Runs convert expecting failure: exit 1, a single `error:` line mentioning `needle`, no
/// output file (nor a partial one) left behind.
fn assert_convert_fails(dir: &Path, needle: &str) {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out.bin");
    let result = common::run(
        common::torchless()
            .arg("convert")
            .arg(dir)
            .arg(&out)
            .args(["--quant", "int8"]),
    );
    assert_eq!(result.code, 1, "stderr: {}", result.stderr);
    let lines: Vec<&str> = result.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr: {}", result.stderr);
    assert!(lines[0].starts_with("error: "), "stderr: {}", result.stderr);
    assert!(
        lines[0].contains(needle),
        "expected {needle:?} in: {}",
        lines[0]
    );
    assert!(!out.exists(), "output written despite the error");
    assert_eq!(
        std::fs::read_dir(out_dir.path()).unwrap().count(),
        0,
        "files left behind"
    );
}

/// A complete copy of the fixture checkpoint, to be broken by a test.
fn full_copy() -> tempfile::TempDir {
    let dir = checkpoint_dir();
    for file in ["model.safetensors", "model.safetensors.index.json"] {
        std::fs::copy(fixture_dir().join(file), dir.path().join(file)).unwrap();
    }
    dir
}

fn edit_config(dir: &Path, from: &str, to: &str) {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from:?} not in config.json");
    std::fs::write(&path, text.replace(from, to)).unwrap();
}

#[test]
fn missing_files_are_clear_errors() {
    let missing_dir = tempfile::tempdir().unwrap();
    assert_convert_fails(&missing_dir.path().join("nope"), "is not a directory");

    let dir = full_copy();
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    assert_convert_fails(dir.path(), "config.json is missing");

    let dir = full_copy();
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    assert_convert_fails(dir.path(), "tokenizer.json is missing");

    let dir = checkpoint_dir();
    assert_convert_fails(dir.path(), "no weights");

    let dir = full_copy();
    let index = dir.path().join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).unwrap();
    std::fs::write(
        &index,
        text.replacen(
            "\"model.safetensors\"",
            "\"model-00002-of-00002.safetensors\"",
            1,
        ),
    )
    .unwrap();
    assert_convert_fails(
        dir.path(),
        "model-00002-of-00002.safetensors, which is missing",
    );
}

#[test]
fn non_mistral_checkpoints_are_refused() {
    let dir = full_copy();
    edit_config(
        dir.path(),
        "\"model_type\": \"mistral\"",
        "\"architectures\": [\"GemmaForCausalLM\"], \"model_type\": \"gemma\"",
    );
    assert_convert_fails(dir.path(), "GemmaForCausalLM is not supported");

    let dir = full_copy();
    edit_config(
        dir.path(),
        "\"model_type\": \"mistral\"",
        "\"model_type\": \"qwen2\"",
    );
    assert_convert_fails(dir.path(), "model_type \"qwen2\" is not supported");

    let dir = full_copy();
    edit_config(
        dir.path(),
        "\"hidden_act\": \"silu\"",
        "\"hidden_act\": \"gelu\"",
    );
    assert_convert_fails(dir.path(), "hidden_act");

    let dir = full_copy();
    edit_config(
        dir.path(),
        "\"num_key_value_heads\": 2",
        "\"num_key_value_heads\": 3",
    );
    assert_convert_fails(dir.path(), "config.json");
}

#[test]
fn missing_and_misshapen_tensors_are_named() {
    // A tensor missing from the checkpoint (no index: the shard's tensors are the checkpoint).
    let tensors: Vec<Tensor> = fixture_tensors()
        .into_iter()
        .filter(|t| t.name != "model.layers.1.mlp.up_proj.weight")
        .collect();
    let dir = checkpoint_dir();
    write_safetensors(&dir.path().join("model.safetensors"), &tensors);
    assert_convert_fails(dir.path(), "no tensor `model.layers.1.mlp.up_proj.weight`");

    // The index names a tensor its shard does not hold.
    let dir = checkpoint_dir();
    write_safetensors(&dir.path().join("model.safetensors"), &tensors);
    std::fs::copy(
        fixture_dir().join("model.safetensors.index.json"),
        dir.path().join("model.safetensors.index.json"),
    )
    .unwrap();
    assert_convert_fails(
        dir.path(),
        "does not contain tensor `model.layers.1.mlp.up_proj.weight`",
    );

    // A wrong shape.
    let mut tensors = fixture_tensors();
    let t = tensors
        .iter_mut()
        .find(|t| t.name == "model.layers.0.self_attn.k_proj.weight")
        .unwrap();
    t.shape = vec![t.shape[1], t.shape[0]];
    let dir = checkpoint_dir();
    write_safetensors(&dir.path().join("model.safetensors"), &tensors);
    assert_convert_fails(
        dir.path(),
        "`model.layers.0.self_attn.k_proj.weight` has shape [64, 32]",
    );

    // A config that disagrees with the weights.
    let dir = full_copy();
    edit_config(
        dir.path(),
        "\"intermediate_size\": 176",
        "\"intermediate_size\": 128",
    );
    assert_convert_fails(dir.path(), "has shape");

    // A tensor that is not part of Mistral (a bias).
    let mut tensors = fixture_tensors();
    tensors.push(Tensor {
        name: "model.layers.0.self_attn.q_proj.bias".into(),
        dtype: Dtype::F32,
        shape: vec![64],
        data: vec![0; 256],
    });
    let dir = checkpoint_dir();
    write_safetensors(&dir.path().join("model.safetensors"), &tensors);
    assert_convert_fails(
        dir.path(),
        "unexpected tensor `model.layers.0.self_attn.q_proj.bias`",
    );
}

#[test]
fn truncated_shards_and_bad_dtypes_are_refused() {
    let dir = full_copy();
    let shard = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 100]).unwrap();
    assert_convert_fails(dir.path(), "model.safetensors is truncated or corrupt");

    // Cut inside the header.
    std::fs::write(&shard, &bytes[..100]).unwrap();
    assert_convert_fails(dir.path(), "model.safetensors is truncated");

    // Not a safetensors file at all.
    std::fs::write(&shard, b"\x05\0\0\0\0\0\0\0hello").unwrap();
    assert_convert_fails(
        dir.path(),
        "model.safetensors is not a valid safetensors file",
    );

    // An integer tensor.
    let mut tensors = fixture_tensors();
    let t = tensors
        .iter_mut()
        .find(|t| t.name == "model.norm.weight")
        .unwrap();
    t.dtype = Dtype::I64;
    t.data = vec![0; t.shape.iter().product::<usize>() * 8];
    let dir = checkpoint_dir();
    write_safetensors(&dir.path().join("model.safetensors"), &tensors);
    assert_convert_fails(dir.path(), "`model.norm.weight` has dtype I64");
}

#[test]
fn non_finite_weights_cannot_be_quantized() {
    // A NaN in the first q_proj: f32 output keeps it (like the exporter), int8 refuses it
    // half-way through the stream, naming the tensor, and leaves no file behind.
    let mut tensors = fixture_tensors();
    let t = tensors
        .iter_mut()
        .find(|t| t.name == "model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    t.data[400..404].copy_from_slice(&f32::NAN.to_le_bytes());
    let dir = checkpoint_dir();
    write_safetensors(&dir.path().join("model.safetensors"), &tensors);
    assert_convert_fails(dir.path(), "model.layers.0.self_attn.q_proj.weight");
    assert_eq!(convert(dir.path(), "f32").len(), expected("f32").len());
}

#[test]
fn unusable_tokenizers_are_refused() {
    let dir = full_copy();
    let path = dir.path().join("tokenizer.json");
    let text = std::fs::read_to_string(&path).unwrap();
    // Drop the byte piece <0x41>: byte fallback needs all 256.
    let broken = text.replace("\"<0x41>\"", "\"<0x41x>\"");
    assert_ne!(broken, text);
    std::fs::write(&path, broken).unwrap();
    assert_convert_fails(dir.path(), "tokenizer.json");
}
