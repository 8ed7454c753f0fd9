//! `torchless synth`: random-weight models with real shapes, valid for every other command.

mod common;

use std::path::{Path, PathBuf};

use serde_json::Value;
use torchless_model::format::int4::Int4Method;
use torchless_model::format::{DType, ModelFile, ModelWriter, TensorSpec};

fn synth(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let result = common::run(common::torchless().arg("synth").args(args).arg(&out));
    assert_eq!(result.code, 0, "synth {args:?}: {}", result.stderr);
    assert!(result.stdout.is_empty(), "stdout: {}", result.stdout);
    out
}

fn info_json(path: &Path) -> Value {
    let result = common::run(
        common::torchless()
            .args(["info", "--json", "--check"])
            .arg(path),
    );
    assert_eq!(result.code, 0, "info: {}", result.stderr);
    serde_json::from_str(&result.stdout).unwrap()
}

#[test]
fn tiny_models_are_valid_reproducible_and_run() {
    let dir = tempfile::tempdir().unwrap();
    for quant in ["f32", "int8", "int4"] {
        let args = ["--shape", "tiny", "--quant", quant, "--seed", "7"];
        let a = synth(dir.path(), &format!("a-{quant}.bin"), &args);
        let b = synth(dir.path(), &format!("b-{quant}.bin"), &args);
        let c = synth(
            dir.path(),
            &format!("c-{quant}.bin"),
            &["--shape", "tiny", "--quant", quant, "--seed", "8"],
        );
        let (a_bytes, b_bytes, c_bytes) = (
            std::fs::read(&a).unwrap(),
            std::fs::read(&b).unwrap(),
            std::fs::read(&c).unwrap(),
        );
        assert!(a_bytes == b_bytes, "same seed, different bytes ({quant})");
        assert_eq!(a_bytes.len(), c_bytes.len());
        assert!(a_bytes != c_bytes, "different seeds, same bytes ({quant})");

        // Thread count does not change the bytes.
        let one = synth(
            dir.path(),
            &format!("t1-{quant}.bin"),
            &[
                "--shape", "tiny", "--quant", quant, "--seed", "7", "-t", "1",
            ],
        );
        assert!(
            std::fs::read(one).unwrap() == a_bytes,
            "-t 1 differs ({quant})"
        );

        let info = info_json(&a);
        assert_eq!(info["config"]["hidden_size"], 64);
        assert_eq!(info["config"]["n_layers"], 2);
        assert_eq!(info["config"]["n_kv_heads"], 2);
        assert_eq!(info["config"]["vocab_size"], 1024);
        assert_eq!(info["config"]["quant"], quant);
        assert_eq!(info["metadata"]["rope_theta"], "10000.0");
        assert_eq!(info["metadata"]["norm_eps"], "1e-05");

        let tokens = common::run(common::torchless().arg("tokenize").arg(&a).arg("hello"));
        assert_eq!(tokens.code, 0, "{}", tokens.stderr);
        assert!(tokens.stdout.trim().starts_with('1'), "{}", tokens.stdout);

        let generated = common::run(common::torchless().arg(&a).args([
            "hi",
            "-n",
            "4",
            "--temp",
            "0",
            "--ignore-eos",
            "--json",
        ]));
        assert_eq!(generated.code, 0, "{}", generated.stderr);
        let json: Value = serde_json::from_str(&generated.stdout).unwrap();
        let ids = json["generated_ids"].as_array().unwrap();
        assert_eq!(ids.len(), 4, "{json}");
        assert!(ids.iter().all(|id| id.as_u64().unwrap() < 1024), "{json}");
    }
}

#[test]
fn weights_have_the_intended_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let path = synth(dir.path(), "m.bin", &["--shape", "tiny", "--seed", "3"]);
    let model = ModelFile::open(&path).unwrap();
    for info in model.tensors() {
        let values = model.tensor(&info.name).unwrap().to_f32_vec();
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let std = (values
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        let want_mean = if info.name.ends_with("norm.weight") {
            1.0
        } else {
            0.0
        };
        // Four standard errors (norm weights have only 64 values).
        let mean_tol = 4.0 * 0.02 / n.sqrt();
        let std_tol = 4.0 * 0.02 / (2.0 * n).sqrt() + 0.0005;
        assert!(
            (mean - want_mean).abs() < mean_tol,
            "{}: mean {mean}",
            info.name
        );
        assert!((std - 0.02).abs() < std_tol, "{}: std {std}", info.name);
    }
}

/// The synthetic int8 and int4 files are exactly what the format crate's writer makes from the
/// synthetic f32 values of the same seed: same layout, same quantization (int4 rounded to
/// nearest; a matrix whose rows are not whole groups of 32, tiny's `down_proj`, falls back to
/// int8), also with `--quant-output` for `lm_head` and the embedding.
#[test]
fn layout_and_quantization_are_the_writers() {
    let dir = tempfile::tempdir().unwrap();
    let f32_path = synth(dir.path(), "f32.bin", &["--shape", "tiny", "--seed", "5"]);
    let source = ModelFile::open(&f32_path).unwrap();
    let tokenizer = source.tokenizer_data().unwrap();
    let cases = [
        ("f32", "f32", DType::F32, DType::F32),
        ("int8", "f32", DType::Int8, DType::F32),
        ("int4", "f32", DType::Int4, DType::F32),
        ("int4", "int8", DType::Int4, DType::Int8),
        ("int8", "int4", DType::Int8, DType::Int4),
    ];
    let mut int4_fallbacks = 0;
    for (quant, output, proj_dtype, output_dtype) in cases {
        let path = synth(
            dir.path(),
            &format!("{quant}-{output}.bin"),
            &[
                "--shape",
                "tiny",
                "--seed",
                "5",
                "--quant",
                quant,
                "--quant-output",
                output,
            ],
        );
        let mut metadata: Vec<(String, String)> = source.config().to_metadata();
        for (key, value) in &mut metadata {
            if key == "quant" {
                *value = quant.to_string();
            }
        }
        let names: Vec<String> = source.tensors().map(|t| t.name.clone()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(
            names, sorted,
            "tensors in the exporter's (alphabetical) order"
        );
        let specs: Vec<TensorSpec> = source
            .tensors()
            .map(|t| {
                let mut dtype = if t.name.contains("_proj") {
                    proj_dtype
                } else if t.name == "lm_head.weight" || t.name == "model.embed_tokens.weight" {
                    output_dtype
                } else {
                    DType::F32
                };
                if dtype == DType::Int4 && t.shape[1] % 32 != 0 {
                    dtype = DType::Int8;
                    int4_fallbacks += 1;
                }
                TensorSpec::new(t.name.clone(), dtype, t.shape.clone())
            })
            .collect();
        let mut writer =
            ModelWriter::new(Vec::new(), "<memory>", &metadata, specs, Some(&tokenizer))
                .unwrap()
                .with_int4_method(Int4Method::RoundToNearest);
        for name in &names {
            writer
                .write_tensor(name, source.tensor(name).unwrap().as_f32().unwrap())
                .unwrap();
        }
        let rewritten = writer.finish().unwrap();
        assert!(
            rewritten == std::fs::read(&path).unwrap(),
            "--quant {quant} --quant-output {output}: synth output differs from the writer's"
        );
    }
    // tiny's two down_proj matrices (176 columns), in the two --quant int4 cases.
    assert_eq!(int4_fallbacks, 4);
}

#[test]
fn a_given_tokenizer_is_embedded_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer_json = common::fixtures().join("models/small-tokenizer.json");
    let tokenizer_arg = tokenizer_json.to_str().unwrap();
    let path = synth(
        dir.path(),
        "m.bin",
        &[
            "--shape",
            "tiny",
            "--quant",
            "int8",
            "--tokenizer",
            tokenizer_arg,
        ],
    );
    let model = ModelFile::open(&path).unwrap();
    let embedded = model.tokenizer_data().unwrap();
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(&tokenizer_json).unwrap()).unwrap();
    assert_eq!(model.config().vocab_size, embedded.vocab.len());
    assert_eq!(
        embedded.merges.len(),
        file["model"]["merges"].as_array().unwrap().len()
    );
    for text in ["Hello world", "def add(a, b):\n    return a + b"] {
        let from_model = common::run(common::torchless().arg("tokenize").arg(&path).arg(text));
        let from_json = common::run(
            common::torchless()
                .arg("tokenize")
                .arg(&tokenizer_json)
                .arg(text),
        );
        assert_eq!(from_model.code, 0, "{}", from_model.stderr);
        assert_eq!(from_model.stdout, from_json.stdout, "{text:?}");
    }
}

#[test]
fn bad_arguments_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let result = common::run(
        common::torchless()
            .args(["synth", "--shape", "tiny", "--tokenizer"])
            .arg(dir.path().join("missing.json"))
            .arg(dir.path().join("m.bin")),
    );
    assert_eq!(result.code, 1, "{}", result.stderr);
    assert_eq!(result.stderr.lines().count(), 1, "{}", result.stderr);
    assert!(result.stderr.starts_with("error: ") && result.stderr.contains("missing.json"));

    let result = common::run(
        common::torchless()
            .args(["synth", "--shape", "tiny"])
            .arg(dir.path().join("no/such/dir/m.bin")),
    );
    assert_eq!(result.code, 1, "{}", result.stderr);
    assert_eq!(result.stderr.lines().count(), 1, "{}", result.stderr);
    assert!(
        result.stderr.starts_with("error: cannot create"),
        "{}",
        result.stderr
    );

    let result = common::run(common::torchless().args(["synth", "--shape", "huge", "x.bin"]));
    assert_eq!(result.code, 2, "{}", result.stderr);
}
