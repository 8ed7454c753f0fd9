//! End-to-end tests of the `torchless` binary on the committed fixture models.

mod common;

use common::{
    check_greedy_cli, check_greedy_cli_with, check_perplexity_cli, fixtures, goldens, model, run,
    torchless,
};
use serde_json::Value;

#[test]
fn greedy_json_equals_the_goldens() {
    for name in ["small-gqa", "small-mqa", "small-mha"] {
        for quant in ["f32", "int8"] {
            check_greedy_cli(
                &model(&format!("{name}-{quant}.bin")),
                &model(&format!("{name}-goldens-{quant}.json")),
                false,
            );
        }
    }
}

#[test]
fn lazy_mode_gives_the_same_answers() {
    check_greedy_cli(
        &model("small-gqa-int8.bin"),
        &model("small-gqa-goldens-int8.json"),
        true,
    );
}

#[test]
fn a_model_read_into_memory_gives_the_same_answers() {
    check_greedy_cli_with(
        &model("small-gqa-int8.bin"),
        &model("small-gqa-goldens-int8.json"),
        &["--no-mmap"],
        2e-3,
    );
    // Reading everything into memory and keeping one layer resident exclude each other.
    let out = run(torchless()
        .arg(model("small-gqa-int8.bin"))
        .args(["--no-mmap", "--lazy", "hi"]));
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--no-mmap") && out.stderr.contains("--lazy"));
}

#[test]
fn perplexity_equals_the_golden_mean_nll() {
    check_perplexity_cli(
        &model("small-mqa-f32.bin"),
        &model("small-mqa-goldens-f32.json"),
    );
    check_perplexity_cli(
        &model("small-gqa-int8.bin"),
        &model("small-gqa-goldens-int8.json"),
    );
}

#[test]
fn kl_int8_activations_reports_the_exact_nll_and_a_divergence() {
    let g = goldens(&model("small-gqa-goldens-int8.json"));
    let prompt = &g["prompts"][4];
    let ids = prompt["ids"].as_array().unwrap();
    let ids_arg: Vec<String> = ids.iter().map(|v| v.to_string()).collect();
    let out = run(torchless()
        .arg("perplexity")
        .arg(model("small-gqa-int8.bin"))
        .args(["--prompt-ids", &ids_arg.join(",")])
        .args(["--kl-int8-activations", "--json"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    // The exact side is the reference model's NLL; the integer side differs from it a little.
    let want = prompt["nll"]["mean"].as_f64().unwrap();
    let exact = v["mean_nll_exact"].as_f64().unwrap();
    let fast = v["mean_nll_int8_activations"].as_f64().unwrap();
    assert!(
        (exact - want).abs() <= 1e-4 * want.abs(),
        "{exact} vs {want}"
    );
    assert!(fast != exact && (fast - want).abs() <= 0.05 * want.abs());
    assert_eq!(v["positions"].as_u64().unwrap() as usize, ids.len());
    let (mean, max) = (
        v["mean_kl"].as_f64().unwrap(),
        v["max_kl"].as_f64().unwrap(),
    );
    assert!(mean > 0.0 && mean <= max, "KL mean {mean} max {max}");
    let agreement = v["top1_agreement"].as_f64().unwrap();
    assert!((0.5..=1.0).contains(&agreement), "{agreement}");
}

#[test]
fn one_generated_token_has_no_generation_rate() {
    // The only token comes from the prompt's forward pass: there is no rate to report, not 0.
    let m = model("small-gqa-int8.bin");
    let out = run(torchless().arg(&m).args(["Hi", "-n", "1", "--temp", "0"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("generation 1 tokens, - tok/s"),
        "{}",
        out.stderr
    );
    let out = run(torchless()
        .arg(&m)
        .args(["Hi", "-n", "1", "--temp", "0", "--json"]));
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert!(v["timings"]["generation_tokens_per_s"].is_null(), "{v}");
    let out = run(torchless()
        .arg(&m)
        .args(["Hi", "-n", "3", "--temp", "0", "--json"]));
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert!(
        v["timings"]["generation_tokens_per_s"].as_f64().unwrap() > 0.0,
        "{v}"
    );
}

#[test]
fn text_prompt_is_tokenized_like_the_reference() {
    // The goldens' ids came from Hugging Face `tokenizers` on the fixture tokenizer.
    let g = goldens(&model("small-gqa-goldens-f32.json"));
    let prompt = &g["prompts"][2];
    let greedy = prompt["greedy"]["ids"].as_array().unwrap();
    let out = run(torchless()
        .arg(model("small-gqa-f32.bin"))
        .arg(prompt["text"].as_str().unwrap())
        .args([
            "-n",
            &greedy.len().to_string(),
            "--temp",
            "0",
            "--ignore-eos",
            "--json",
        ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(&v["prompt_ids"], &prompt["ids"]);
    assert_eq!(v["generated_ids"].as_array().unwrap(), greedy);
}

#[test]
fn stdout_holds_only_the_generated_text() {
    let args = [
        "--prompt-ids",
        "1,415,565,302",
        "-n",
        "16",
        "--temp",
        "0",
        "--ignore-eos",
    ];
    let json = run(torchless()
        .arg(model("small-mha-int8.bin"))
        .args(args)
        .arg("--json"));
    let v: Value = serde_json::from_str(json.stdout.trim()).unwrap();
    let plain = run(torchless().arg(model("small-mha-int8.bin")).args(args));
    assert_eq!(plain.code, 0);
    assert_eq!(plain.stdout, v["text"].as_str().unwrap());
    // One statistics line on stderr.
    assert!(plain.stderr.contains("tok/s"), "{}", plain.stderr);
    assert_eq!(plain.stderr.lines().count(), 1, "{}", plain.stderr);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let run_with_seed = |seed: &str| {
        let out = run(torchless().arg(model("small-mqa-int8.bin")).args([
            "Once upon a time",
            "-n",
            "20",
            "--temp",
            "1.0",
            "--seed",
            seed,
            "--json",
        ]));
        assert_eq!(out.code, 0, "{}", out.stderr);
        let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
        v["generated_ids"].clone()
    };
    assert_eq!(run_with_seed("42"), run_with_seed("42"));
    assert_ne!(run_with_seed("42"), run_with_seed("43"));
}

#[test]
fn chat_of_three_piped_turns_gives_three_answers() {
    let out = run(torchless()
        .args(["chat"])
        .arg(model("small-gqa-int8.bin"))
        .args(["-n", "8", "--temp", "0", "--json"])
        .write_stdin("Hello there\nWhat is two plus two?\n\nTell me a story\n"));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let turns: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(turns.len(), 3, "{}", out.stdout);
    for (i, turn) in turns.iter().enumerate() {
        assert_eq!(turn["turn"].as_u64(), Some(i as u64 + 1));
        assert!(!turn["generated_ids"].as_array().unwrap().is_empty());
    }
    assert_eq!(turns[2]["user"], "Tell me a story");

    let plain = run(torchless()
        .args(["chat"])
        .arg(model("small-gqa-int8.bin"))
        .args(["-n", "4", "--temp", "0"])
        .write_stdin("one\ntwo\nthree\n"));
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    assert!(!plain.stdout.is_empty());
}

#[test]
fn chat_keeps_the_cache_across_turns() {
    // Turn 2 must see turn 1: the same second message after a different first one gives a
    // different answer distribution (greedy ids differ for these random models).
    let answers = |first: &str| {
        let out = run(torchless()
            .args(["chat"])
            .arg(model("small-mqa-f32.bin"))
            .args(["-n", "6", "--temp", "0", "--json"])
            .write_stdin(format!("{first}\nand then?\n")));
        let lines: Vec<Value> = out
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        lines[1]["generated_ids"].clone()
    };
    assert_ne!(answers("The weather is nice"), answers("Numbers 1 2 3"));
}

#[test]
fn tokenize_prints_ids_and_reads_stdin_verbatim() {
    let tokenizer = fixtures().join("tokenizer/mistral-v0.1-tokenizer.json");
    let out = run(torchless()
        .arg("tokenize")
        .arg(&tokenizer)
        .arg("Hello world"));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "1 22557 1526");
    // stdin keeps its final newline: `<0x0A>` is id 13.
    let out = run(torchless()
        .arg("tokenize")
        .arg(&tokenizer)
        .args(["--json", "--no-bos"])
        .write_stdin("Hello\n"));
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["ids"], serde_json::json!([22557, 13]));
    assert_eq!(v["decoded"], "Hello\n");
    // A model file's embedded tokenizer works too.
    let out = run(torchless()
        .arg("tokenize")
        .arg(model("small-gqa-f32.bin"))
        .arg("Hi"));
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// `tokenize`, `generate --json` and `perplexity` turn a text into the ids Hugging Face
/// `tokenizers` gives (recorded in the goldens), on a SentencePiece (Mistral) and a byte-level
/// (Llama) model file: every command builds the file's own tokenizer.
#[test]
fn every_command_tokenizes_like_the_reference() {
    for (name, goldens_name) in [
        ("small-gqa-f32.bin", "small-gqa-goldens-f32.json"),
        ("llama-untied-f32.bin", "llama-untied-goldens-f32.json"),
    ] {
        let m = model(name);
        let g = goldens(&model(goldens_name));
        for prompt in g["prompts"].as_array().unwrap() {
            let text = prompt["text"].as_str().unwrap();
            let want = &prompt["ids"];
            // The reference parses special tokens in text (ChatML markers); prompts do not.
            let has_specials = text.contains("<|");
            let mut tokenize = torchless();
            tokenize.arg("tokenize").arg(&m).arg(text).arg("--json");
            if has_specials {
                tokenize.arg("--parse-special");
            }
            let out = run(&mut tokenize);
            assert_eq!(out.code, 0, "{name}: {}", out.stderr);
            let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
            assert_eq!(&v["ids"], want, "{name}: tokenize {text:?}");
            if has_specials {
                continue;
            }

            let out = run(torchless()
                .arg(&m)
                .arg(text)
                .args(["-n", "1", "--temp", "0", "--json"]));
            assert_eq!(out.code, 0, "{name}: {}", out.stderr);
            let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
            assert_eq!(&v["prompt_ids"], want, "{name}: generate {text:?}");

            let n = want.as_array().unwrap().len();
            if n < 2 {
                continue;
            }
            let out = run(torchless().arg("perplexity").arg(&m).args([
                "--text",
                text,
                "--ctx",
                &n.to_string(),
                "--json",
            ]));
            assert_eq!(out.code, 0, "{name}: {}", out.stderr);
            let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
            assert_eq!(
                v["tokens"].as_u64().unwrap() as usize,
                n - 1,
                "{name}: {text:?}"
            );
            // The golden NLL of exactly these ids.
            let want_nll = prompt["nll"]["mean"].as_f64().unwrap();
            let got = v["mean_nll"].as_f64().unwrap();
            assert!(
                (got - want_nll).abs() <= 1e-4 * want_nll.abs(),
                "{name}: perplexity {text:?}: {got} vs {want_nll}"
            );
        }
    }
}

#[test]
fn info_reports_config_tensors_and_sizes() {
    let out = run(torchless()
        .arg("info")
        .arg(model("small-mqa-int8.bin"))
        .arg("--json"));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["config"]["n_kv_heads"], 1);
    assert_eq!(v["config"]["sliding_window"], Value::Null);
    assert_eq!(v["n_tensors"], 3 + 9 * 3);
    assert_eq!(v["dtypes"]["int8"]["tensors"], 7 * 3);
    let text = run(torchless()
        .arg("info")
        .arg(model("small-mqa-int8.bin"))
        .arg("--check"));
    assert_eq!(text.code, 0);
    assert!(
        text.stdout.contains("all weights finite"),
        "{}",
        text.stdout
    );
}

#[test]
fn cache_types_size_the_cache_and_run() {
    // small-mha: head_dim 32, so Q8_0 blocks fit; sizes from the reference config.
    let g = goldens(&model("small-mha-goldens-f32.json"));
    let c = &g["config"];
    let kv_dim = c["num_key_value_heads"].as_u64().unwrap() * c["head_dim"].as_u64().unwrap();
    let layers = c["num_hidden_layers"].as_u64().unwrap();
    for (k, v, bytes_k, bytes_v) in [
        ("f32", "f32", 4 * kv_dim, 4 * kv_dim),
        ("f16", "f16", 2 * kv_dim, 2 * kv_dim),
        ("q8_0", "f16", kv_dim / 32 * 34, 2 * kv_dim),
    ] {
        let out = run(torchless()
            .arg("info")
            .arg(model("small-mha-f32.bin"))
            .args(["--json", "-ctk", k, "--cache-type-v", v]));
        assert_eq!(out.code, 0, "{}", out.stderr);
        let info: Value = serde_json::from_str(out.stdout.trim()).unwrap();
        assert_eq!(info["kv_cache"]["type_k"], k);
        assert_eq!(info["kv_cache"]["type_v"], v);
        assert_eq!(
            info["kv_cache"]["bytes_per_token"],
            layers * (bytes_k + bytes_v),
            "{k}/{v}"
        );
        // Generation runs with the types (the model tests check the logits).
        let out = run(torchless()
            .arg(model("small-mha-f32.bin"))
            .args(["hello", "-n", "4", "--temp", "0", "-ctk", k, "-ctv", v]));
        assert_eq!(out.code, 0, "{k}/{v}: {}", out.stderr);
    }
    // head_dim 16: Q8_0 is refused with one clear line, unknown types by the parser.
    let out = run(torchless()
        .arg(model("small-gqa-f32.bin"))
        .args(["hello", "-ctk", "q8_0"]));
    assert_clean_error(&out, 1, "multiple of 32");
    let out = run(torchless()
        .arg(model("small-gqa-f32.bin"))
        .args(["hello", "-ctv", "q4_0"]));
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("q8_0"), "{}", out.stderr);
}

#[test]
fn info_check_reports_non_finite_weights() {
    use torchless_model::format::{DType, ModelFile, ModelWriter, TensorSpec};
    let source = ModelFile::open(model("small-gqa-f32.bin")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nan.bin");
    let specs: Vec<TensorSpec> = source
        .tensors()
        .map(|t| TensorSpec::new(t.name.clone(), DType::F32, t.shape.clone()))
        .collect();
    let tokenizer = source.tokenizer_data().unwrap();
    let mut writer = ModelWriter::create(
        &path,
        &source.config().to_metadata(),
        specs.clone(),
        Some(&tokenizer),
    )
    .unwrap();
    for spec in &specs {
        let mut values = source.tensor(&spec.name).unwrap().to_f32_vec();
        if spec.name == "model.layers.1.mlp.up_proj.weight" {
            values[7] = f32::NAN;
        }
        writer.write_tensor(&spec.name, &values).unwrap();
    }
    writer.finish().unwrap();
    let out = run(torchless().arg("info").arg(&path).arg("--check"));
    assert_eq!(out.code, 1);
    assert!(
        out.stdout
            .contains("model.layers.1.mlp.up_proj.weight: 1 NaN"),
        "{}",
        out.stdout
    );
    assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
}

fn assert_clean_error(out: &common::Output, code: i32, needle: &str) {
    assert_eq!(
        out.code, code,
        "stdout {} stderr {}",
        out.stdout, out.stderr
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(out.stderr.starts_with("error"), "{}", out.stderr);
    assert!(
        out.stderr.contains(needle),
        "{} lacks {needle:?}",
        out.stderr
    );
    if code == 1 {
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    }
}

#[test]
fn bad_inputs_give_one_line_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.bin");
    std::fs::write(&garbage, b"this is not a model file at all, just some text").unwrap();
    let m = model("small-gqa-int8.bin");

    assert_clean_error(
        &run(torchless().arg("/no/such/model.bin").arg("hi")),
        1,
        "No such file",
    );
    assert_clean_error(&run(torchless().arg(&garbage).arg("hi")), 1, "garbage.bin");
    assert_clean_error(
        &run(torchless().arg(&garbage).arg("--json").arg("hi")),
        1,
        "header",
    );
    // A prompt longer than the context.
    let long = "word ".repeat(100);
    assert_clean_error(
        &run(torchless().arg(&m).arg(&long).args(["--ctx-size", "16"])),
        1,
        "context",
    );
    assert_clean_error(&run(torchless().arg(&m).arg(&long)), 1, "context");
    // Bad values.
    assert_clean_error(
        &run(torchless().arg(&m).arg("hi").args(["--temp=-1"])),
        1,
        "temperature",
    );
    assert_clean_error(
        &run(torchless().arg(&m).arg("hi").args(["--top-p", "0"])),
        1,
        "top_p",
    );
    assert_clean_error(
        &run(torchless().arg(&m).args(["--prompt-ids", "1,99999"])),
        1,
        "99999",
    );
    assert_clean_error(&run(torchless().arg(&m)), 1, "no prompt");
    // Usage errors exit with 2.
    assert_clean_error(
        &run(torchless().arg(&m).arg("hi").arg("--no-such-flag")),
        2,
        "no-such-flag",
    );
    assert_clean_error(
        &run(torchless().arg(&m).args(["--prompt-ids", "a,b"])),
        2,
        "prompt-ids",
    );
    assert_clean_error(
        &run(torchless().arg(&m).arg("hi").args(["-n", "many"])),
        2,
        "many",
    );
    assert_clean_error(
        &run(torchless().args(["perplexity"]).arg(&m)),
        1,
        "nothing to evaluate",
    );
    assert_clean_error(&run(torchless().args(["info", "/no/such"])), 1, "/no/such");
    assert_clean_error(
        &run(torchless().args(["tokenize", "/no/such.json", "x"])),
        1,
        "/no/such.json",
    );
}

#[test]
fn every_subcommand_has_help() {
    for sub in [
        "generate",
        "chat",
        "perplexity",
        "bench",
        "info",
        "tokenize",
        "convert",
        "synth",
        "serve",
    ] {
        let out = run(torchless().arg(sub).arg("--help"));
        assert_eq!(out.code, 0, "{sub}");
        assert!(
            out.stdout.contains("Usage: torchless"),
            "{sub}: {}",
            out.stdout
        );
    }
    let out = run(torchless().arg("--help"));
    assert!(out.stdout.contains("perplexity") && out.stdout.contains("MODEL \"PROMPT\""));
    let out = run(torchless().arg("generate").arg("--help"));
    for flag in [
        "--max-tokens",
        "--temp",
        "--top-k",
        "--top-p",
        "--min-p",
        "--repeat-penalty",
        "--seed",
        "--threads",
        "--lazy",
        "--debug",
        "--prompt-ids",
        "--logprobs",
        "--ignore-eos",
        "--json",
    ] {
        assert!(out.stdout.contains(flag), "generate --help lacks {flag}");
    }
}

#[test]
fn bench_reports_json_figures() {
    let out = run(torchless()
        .arg("bench")
        .arg(model("small-mha-int8.bin"))
        .args([
            "-p",
            "16",
            "-n",
            "8",
            "-r",
            "2",
            "--probe-mib",
            "16",
            "--json",
        ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    for key in [
        "pp_tokens_per_s",
        "tg_tokens_per_s",
        "gb_per_s",
        "bandwidth_fraction",
    ] {
        assert!(v[key].as_f64().unwrap() > 0.0, "{key}");
    }
    // Bytes per token: every tensor but the embedding, plus one embedding row.
    let info = run(torchless()
        .arg("info")
        .arg(model("small-mha-int8.bin"))
        .args(["--json", "--tensors"]));
    let info: Value = serde_json::from_str(info.stdout.trim()).unwrap();
    let total: u64 = info["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] != "model.embed_tokens.weight")
        .map(|t| t["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(v["bytes_per_token"].as_u64().unwrap(), total + 128 * 4);

    // Several sequences per step: aggregate tokens/s, the step's bytes shared among them.
    let out = run(torchless()
        .arg("bench")
        .arg(model("small-mha-int8.bin"))
        .args([
            "-p",
            "4",
            "-n",
            "8",
            "-r",
            "1",
            "--probe-mib",
            "0",
            "--parallel",
            "3",
            "--json",
        ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let p: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(p["parallel"], 3);
    assert!(p["tg_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(
        p["bytes_per_token"].as_u64().unwrap(),
        v["bytes_per_token"].as_u64().unwrap() / 3
    );
}

#[test]
fn lower_crates_never_depend_upward() {
    // format, tokenizer and kernels depend on no torchless crate; model on those three; cli on model.
    let allowed: &[(&str, &[&str])] = &[
        ("torchless-format", &[]),
        ("torchless-tokenizer", &[]),
        ("torchless-kernels", &[]),
        (
            "torchless-model",
            &[
                "torchless-format",
                "torchless-tokenizer",
                "torchless-kernels",
            ],
        ),
        ("torchless-cli", &["torchless-model"]),
        ("torchless-examples", &["torchless-model"]),
    ];
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    assert_eq!(packages.len(), allowed.len());
    for package in packages {
        let name = package["name"].as_str().unwrap();
        let (_, ok) = allowed.iter().find(|(n, _)| *n == name).unwrap();
        for dep in package["dependencies"].as_array().unwrap() {
            let dep_name = dep["name"].as_str().unwrap();
            if dep_name.starts_with("torchless") {
                assert!(
                    ok.contains(&dep_name),
                    "{name} must not depend on {dep_name}"
                );
            }
        }
    }
}

#[test]
fn info_lists_every_tensor_with_its_stored_dtype() {
    // An int4 file (int8 output): the listing names each tensor's dtype as the file stores it,
    // which the format crate reads from the header.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("int4.bin");
    let out = run(torchless()
        .arg("convert")
        .arg(model("llama-tied-q4_0.gguf"))
        .arg(&path)
        .args(["--quant", "int4", "--quant-output", "int8"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = run(torchless().arg("info").arg(&path).arg("--tensors"));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let file = torchless_model::format::ModelFile::open(&path).unwrap();
    let mut dtypes = std::collections::BTreeSet::new();
    for tensor in file.tensors() {
        let line = out
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(tensor.name.as_str()))
            .unwrap_or_else(|| panic!("{} not listed:\n{}", tensor.name, out.stdout));
        assert_eq!(
            line.split_whitespace().nth(1),
            Some(tensor.dtype.as_str()),
            "{line}"
        );
        dtypes.insert(tensor.dtype.as_str());
    }
    assert_eq!(dtypes, ["f32", "int4", "int8"].into());
}

/// `chat --chat-template-file`: the first turn's prompt is jinja2's rendering of the
/// conversation in that template (tests/fixtures/chat-templates, written by Python jinja2),
/// tokenized as `torchless tokenize --parse-special` tokenizes it.
#[test]
fn chat_uses_the_chat_template_file() {
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("chat-templates/smollm2.json")).unwrap(),
    )
    .unwrap();
    let case = &fixture["cases"][0];
    assert_eq!(case["name"], "single");
    let question = case["messages"][0]["content"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("smollm2.jinja");
    std::fs::write(&template, fixture["template"].as_str().unwrap()).unwrap();
    let out = run(torchless()
        .args(["chat"])
        .arg(model("small-gqa-int8.bin"))
        .args(["-n", "2", "--temp", "0", "--json", "--chat-template-file"])
        .arg(&template)
        .write_stdin(format!("{question}\n")));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let turn: Value = serde_json::from_str(out.stdout.lines().next().unwrap()).unwrap();
    let tokens = run(torchless()
        .args(["tokenize"])
        .arg(model("small-gqa-int8.bin"))
        .args(["--parse-special", "--json"])
        .write_stdin(case["expected"].as_str().unwrap()));
    assert_eq!(tokens.code, 0, "{}", tokens.stderr);
    let ids: Value = serde_json::from_str(&tokens.stdout).unwrap();
    assert_eq!(
        turn["timings"]["prompt_tokens"].as_u64().unwrap() as usize,
        ids["ids"].as_array().unwrap().len(),
        "{turn}"
    );
}

#[test]
fn recache_reports_each_file_and_a_missing_one_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy.bin");
    std::fs::copy(model("small-gqa-int8.bin"), &copy).unwrap();
    let out = run(torchless().args(["recache"]).arg(&copy));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
    assert!(
        out.stdout.contains("copy.bin: dropped from the page cache"),
        "{}",
        out.stdout
    );
    // The file is unchanged and still loads.
    let tokens = run(torchless().args(["tokenize"]).arg(&copy).arg("hello"));
    assert_eq!(tokens.code, 0, "{}", tokens.stderr);
    let missing = run(torchless()
        .args(["recache"])
        .arg(dir.path().join("none.gguf")));
    assert_clean_error(&missing, 1, "none.gguf");
}
