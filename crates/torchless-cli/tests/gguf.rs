//! Every command on a GGUF file, as people download them: `torchless MODEL.gguf`, `chat`,
//! `perplexity` (also llama-perplexity's scoring), `bench`, `info`, `tokenize` (also of a
//! vocabulary-only GGUF) and `convert`. The GGUF fixture is the tied Llama model quantized by
//! gguf-py (Q4_0 matrices, a Q8_0 embedding); its goldens are `transformers` on gguf-py's
//! dequantization of it, which the exact path (`--exact`) matches to f32 rounding.
//! (`serve` on a GGUF is in `serve.rs`.)

mod common;

use common::{check_greedy_cli_with, goldens, ids_arg, model, run, torchless};
use serde_json::Value;

fn q4_0() -> std::path::PathBuf {
    model("llama-tied-q4_0.gguf")
}

fn q4_0_goldens() -> Value {
    goldens(&model("llama-tied-q4_0-goldens-f32.json"))
}

#[test]
fn generate_on_the_exact_path_equals_the_goldens_mapped_lazy_and_read_in() {
    let g = model("llama-tied-q4_0-goldens-f32.json");
    for flags in [
        &["--exact"][..],
        &["--exact", "--lazy"],
        &["--exact", "--no-mmap"],
    ] {
        check_greedy_cli_with(&q4_0(), &g, flags, 2e-3);
    }
    // The F32 and Q8_0 files of the same checkpoint, against their own goldens.
    check_greedy_cli_with(
        &model("llama-tied-f32.gguf"),
        &model("llama-tied-goldens-f32.json"),
        &[],
        2e-3,
    );
    check_greedy_cli_with(
        &model("llama-tied-q8_0.gguf"),
        &model("llama-tied-q8_0-goldens-f32.json"),
        &["--exact"],
        2e-3,
    );
}

#[test]
fn a_text_prompt_on_a_gguf_streams_text() {
    let out = run(torchless()
        .arg(q4_0())
        .arg("The capital of France is")
        .args(["-n", "4", "--temp", "0", "--json"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    // The prompt is tokenized by the GGUF's own vocabulary as `transformers` does.
    assert_eq!(v["prompt_ids"], q4_0_goldens()["prompts"][0]["ids"]);
    assert_eq!(v["generated_ids"].as_array().unwrap().len(), 4);
    // Plain text to stdout.
    let out = run(torchless()
        .arg(q4_0())
        .arg("Hello")
        .args(["-n", "3", "--temp", "0"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stdout.is_empty());
}

#[test]
fn perplexity_on_a_gguf_equals_the_golden_nll_and_scores_like_llama_perplexity() {
    let g = q4_0_goldens();
    let prompt = &g["prompts"][0];
    let ids = prompt["ids"].as_array().unwrap();
    let n = ids.len();
    let perplexity = |extra: &[&str]| {
        let out = run(torchless()
            .arg("perplexity")
            .arg(q4_0())
            .args(["--prompt-ids", &ids_arg(ids), "--json", "--exact"])
            .args(extra));
        assert_eq!(out.code, 0, "{}", out.stderr);
        serde_json::from_str::<Value>(out.stdout.trim()).unwrap()
    };
    let per_token: Vec<f64> = prompt["nll"]["per_token"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let v = perplexity(&["--ctx", &n.to_string()]);
    let want = prompt["nll"]["mean"].as_f64().unwrap();
    let got = v["mean_nll"].as_f64().unwrap();
    assert!((got - want).abs() <= 1e-4 * want, "{got} vs {want}");
    // llama-perplexity's scoring: one window of 8 tokens (this vocabulary adds no BOS), the
    // predictions made at positions 4..7 scored: the golden NLLs of tokens 5, 6 and 7 (the
    // window is a prefix of the golden sequence, and attention is causal).
    let v = perplexity(&["--ctx", "8", "--llama-compat"]);
    assert_eq!(v["tokens"], 3);
    assert_eq!(v["chunks"], 1);
    assert_eq!(v["scoring"], "llama-perplexity");
    let want = per_token[4..7].iter().sum::<f64>() / 3.0;
    let got = v["mean_nll"].as_f64().unwrap();
    assert!((got - want).abs() <= 1e-4 * want, "{got} vs {want}");
}

#[test]
fn kl_against_another_gguf_and_against_the_exact_path() {
    let g = q4_0_goldens();
    let ids = g["prompts"][0]["ids"].as_array().unwrap();
    // The Q4_0 file against the F32 file of the same checkpoint.
    let out = run(torchless()
        .arg("perplexity")
        .arg(q4_0())
        .args(["--prompt-ids", &ids_arg(ids), "--json", "--exact"])
        .arg("--kl-reference")
        .arg(model("llama-tied-f32.gguf")));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let reference = goldens(&model("llama-tied-goldens-f32.json"));
    let want = reference["prompts"][0]["nll"]["mean"].as_f64().unwrap();
    let got = v["mean_nll_reference"].as_f64().unwrap();
    assert!((got - want).abs() <= 1e-4 * want, "{got} vs {want}");
    assert!(v["mean_kl"].as_f64().unwrap() > 0.0);
    assert_eq!(v["positions"].as_u64().unwrap() as usize, ids.len());
    // The default path (activations quantized per block) against the exact one.
    let out = run(torchless().arg("perplexity").arg(q4_0()).args([
        "--prompt-ids",
        &ids_arg(ids),
        "--json",
        "--kl-exact",
    ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let exact = v["mean_nll_exact"].as_f64().unwrap();
    let want = g["prompts"][0]["nll"]["mean"].as_f64().unwrap();
    assert!((exact - want).abs() <= 1e-4 * want, "{exact} vs {want}");
    assert!(v["mean_nll_quantized_activations"]
        .as_f64()
        .unwrap()
        .is_finite());
}

#[test]
fn chat_and_bench_run_on_a_gguf() {
    let out = run(torchless()
        .arg("chat")
        .arg(q4_0())
        .args(["-n", "4", "--temp", "0"])
        .write_stdin("Hello\nAnd again?\n"));
    assert_eq!(out.code, 0, "{}", out.stderr);

    let out = run(torchless().arg("bench").arg(q4_0()).args([
        "-p",
        "8",
        "-n",
        "4",
        "-r",
        "1",
        "--json",
        "--probe-mib",
        "0",
    ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert!(v["quant"].as_str().unwrap().starts_with("Q4_0"), "{v}");
    // Bytes of blocks: the file's tensors, all of them (the embedding is the output matrix).
    let gguf = torchless_model::format::gguf::GgufFile::open(q4_0()).unwrap();
    let bytes: u64 = gguf.tensors().iter().map(|t| t.byte_size()).sum();
    assert_eq!(v["bytes_per_token"].as_u64().unwrap(), bytes);
    assert!(v["tg_tokens_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn info_shows_gguf_types_and_metadata() {
    let out = run(torchless().arg("info").arg(q4_0()).arg("--tensors"));
    assert_eq!(out.code, 0, "{}", out.stderr);
    for needle in [
        "GGUF v3",
        "name            torchless llama-tied fixture",
        "tokenizer       byte-level BPE (gpt2, pre smollm), 768 pieces",
        "weights         Q4_0 ×14, F32 ×5, Q8_0 ×1",
        "blk.0.attn_q.weight",
        "Q4_0",
        "token_embd.weight",
    ] {
        assert!(out.stdout.contains(needle), "{needle:?} in\n{}", out.stdout);
    }
    let out = run(torchless()
        .arg("info")
        .arg(q4_0())
        .args(["--json", "--tensors"]));
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["format"], "gguf");
    assert_eq!(v["gguf_version"], 3);
    assert_eq!(v["dtypes"]["Q4_0"]["tensors"], 14);
    assert_eq!(v["metadata"]["general.architecture"], "llama");
    let q = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "blk.0.attn_q.weight")
        .unwrap();
    assert_eq!(q["dtype"], "Q4_0");
    assert_eq!(q["model_name"], "model.layers.0.self_attn.q_proj.weight");
    // --check scans the blocks too.
    let out = run(torchless().arg("info").arg(q4_0()).arg("--check"));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("all weights finite"));
}

#[test]
fn tokenize_reads_a_gguf_and_a_vocabulary_only_gguf() {
    let g = q4_0_goldens();
    let text = g["prompts"][0]["text"].as_str().unwrap();
    let want = &g["prompts"][0]["ids"];
    let out = run(torchless()
        .arg("tokenize")
        .arg(q4_0())
        .arg(text)
        .arg("--json"));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(&v["ids"], want);
    assert_eq!(v["decoded"], text);

    // The same file with no tensors: a vocabulary-only GGUF (what `convert_hf_to_gguf.py
    // --vocab-only` writes), cut from the fixture at its tensor table.
    let dir = tempfile::tempdir().unwrap();
    let vocab = dir.path().join("vocab.gguf");
    std::fs::write(&vocab, vocab_only(&std::fs::read(q4_0()).unwrap())).unwrap();
    let out = run(torchless()
        .arg("tokenize")
        .arg(&vocab)
        .arg(text)
        .arg("--json"));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(&v["ids"], want);
    // ... which does not run.
    let out = run(torchless().arg(&vocab).arg("hi"));
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("token_embd.weight"), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
}

/// A GGUF file's header and metadata with its tensor count set to 0 (tensor infos and data
/// dropped): metadata entries end where the first tensor info's name starts.
fn vocab_only(gguf: &[u8]) -> Vec<u8> {
    let file = torchless_model::format::gguf::GgufFile::from_bytes(gguf).unwrap();
    let first = &file.tensors()[0];
    let mut needle = (first.name().len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(first.name().as_bytes());
    let infos = gguf
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .unwrap();
    let mut out = gguf[..infos].to_vec();
    out[8..16].copy_from_slice(&0u64.to_le_bytes());
    out
}

#[test]
fn convert_says_what_it_copies_and_what_it_dequantizes() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("q4.bin");
    let out = run(torchless().arg("convert").arg(q4_0()).arg(&out_path).args([
        "--quant",
        "int4",
        "--quant-output",
        "int8",
    ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    // 14 Q4_0 matrices copied into int4, 5 F32 norms... stored f32, bit for bit; the Q8_0
    // embedding dequantized and quantized again to int8.
    assert!(
        out.stderr
            .contains("19 copied as they are, 1 dequantized from Q8_0"),
        "{}",
        out.stderr
    );
    let help = run(torchless().args(["convert", "--help"]));
    assert!(
        help.stdout.contains("dequantizes") && help.stdout.contains("Q4_0 as int4"),
        "{}",
        help.stdout
    );
}

#[test]
fn bad_gguf_files_give_one_line() {
    let bytes = std::fs::read(q4_0()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, data, needle) in [
        (
            "cut.gguf",
            bytes[..bytes.len() - 64].to_vec(),
            "lies outside",
        ),
        ("magic.gguf", b"GGUF\x09\0\0\0".to_vec(), "version 9"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, data).unwrap();
        for (command, rest) in [
            ("generate", &["hi"][..]),
            ("perplexity", &["--text", "hi"]),
            ("info", &[]),
            ("tokenize", &["hi"]),
        ] {
            let out = run(torchless().arg(command).arg(&path).args(rest));
            assert_eq!(out.code, 1, "{command:?} {name}: {}", out.stderr);
            assert!(
                out.stderr.contains(needle),
                "{command:?} {name}: {}",
                out.stderr
            );
            assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
        }
    }
}
