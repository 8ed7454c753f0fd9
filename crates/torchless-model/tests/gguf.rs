//! GGUF files made by llama.cpp's own tools (`tests/fixtures/gguf-models/`, from
//! `scripts/fixtures/make_gguf_model_fixtures.py`: `convert_hf_to_gguf.py`, then
//! `llama-quantize`), run as they are: every weight type, on both arithmetic paths, eager, lazy
//! and read into memory, against `transformers` on the same file (which dequantizes with
//! gguf-py) and against llama.cpp's own answer recorded with it.
//!
//! # Tolerances, and where they come from
//!
//! Logits are compared at the last position of each prompt (all of them: the vocabularies are
//! small), relative to the spread of that position's logits (`std`, 10-17 on these models).
//!
//! **Exact path** (`SessionOptions::exact_activations`): the weights are dequantized exactly (each
//! value is one product of a half scale and a small integer, plus at most one rounded addition:
//! gguf-py's values bit for bit) and multiplied with f32 activations, so the only difference from
//! `transformers` is the order of f32 sums: a dot product of length `n` is off by at most about
//! `n · 2^-24 · Σ|w x|` (typically `√n · 2^-24`), `n ≤ 256` here, over `P = 7 · layers + 1`
//! products, softmax and norms. That is ~1e-5 of the spread; the tolerance is **1e-4 × std**
//! (`EXACT`), with greedy ids equal to the goldens' at every step (the fixtures' seeds were
//! re-drawn until every greedy gap is ≥ 0.01, over 100 times the measured error).
//!
//! **Default path** (activations quantized per block, as llama.cpp): each product's input `x` is
//! rounded per block of `b` values to `d · q`, `d = max|x| / 127`, `q` an integer (Q8_0, `b = 32`,
//! for Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 weights; Q8_K, `b = 256`, for Q4_K/Q5_K/Q6_K). The rounding error
//! of one value is uniform on `±d/2` (Q8_0's half-precision `d` adds at most `127 · 2^-11 · d`), so
//! its RMS is `d / √12` and, relative to the RMS of the block, `ε_b = c_b / (127 · √12)`, where
//! `c_b = max|x| / rms(x)` is the block's crest factor: about 2.3 for 32 Gaussian values and 3.0
//! for 256, taken 1.5 times larger for the heavier tails of real activations (SwiGLU outputs):
//! `c_32 = 3.4`, `c_256 = 4.5`, so `ε_32 = 0.0077`, `ε_256 = 0.0102`. A product `w · x` inherits
//! that relative error (it is a weighted sum of independent roundings), and the logits sum the
//! independent errors of the `P` products on the way, `√P · ε_b` relative to their spread. The
//! tolerance is `z = 8` such standard deviations, **`8 · √P · ε_b × std`** (`default_tolerance`),
//! for the largest of hundreds of logits (~3.5 σ) and the amplification of the non-linear steps
//! (attention's softmax, SwiGLU: about 2×). Files mixing block sizes (Q4_K_M) take `b = 256`.
//! F32/F16/BF16 weights meet f32 activations on both paths: their default path is the exact one.
//! The same bound must hold for llama.cpp's own deviation from `transformers`, recorded in the
//! goldens (it runs this arithmetic): the test checks it does, so the bound is not tailored to
//! torchless.
//!
//! Greedy ids on the default path are compared with llama.cpp's (the same arithmetic) while the
//! margins of both runs exceed twice the tolerance against llama.cpp, derived the same way from
//! the one place the two may differ: f32 summation order, which can move an activation across a
//! rounding boundary of the next quantization (a one-step flip, `d` on one value). With flips
//! rare (`~127 · 2^-24 · n` per value) and each worth `ε_b · √(12 / n)` of a product, the
//! difference stays far below the activation rounding itself: **`LLAMA_CPP = 0.02 × std`**
//! (Q4_1/Q5_1: see `llama_cpp_tolerance`).

mod common;

use std::path::PathBuf;

use serde_json::Value;
use torchless_model::format::{DType, FileFormat};
use torchless_model::sampling::{argmax, logsumexp};
use torchless_model::{
    LazyMistral, LoadOptions, Mistral, Model, Residency, Session, SessionOptions,
};

fn dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/gguf-models"
    ))
}

/// Every fixture file with its goldens.
fn fixtures() -> Vec<(String, Value)> {
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap())
            .unwrap();
    let mut files: Vec<(String, Value)> = manifest["files"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(file, entry)| {
            let goldens = dir().join(entry["goldens"].as_str().unwrap());
            let text = std::fs::read_to_string(goldens).unwrap();
            (file.clone(), serde_json::from_str(&text).unwrap())
        })
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(files.len() >= 12, "{} fixture files", files.len());
    files
}

/// Exact path: f32 summation order only (see the module documentation).
const EXACT: f64 = 1e-4;
/// Default path against llama.cpp's logits on the same file (same arithmetic).
const LLAMA_CPP: f64 = 0.02;

/// The default path's tolerance against llama.cpp: [`LLAMA_CPP`], except for Q4_1/Q5_1
/// weights, whose Q8_1 activation block sum `s = d · Σq` the kernels keep exact where llama.cpp
/// rounds it to a half (the kernels' one deliberate difference): a relative `2^-11` on each
/// block's minimum term `m · s`, which cancels against the scaled term (the minimum is about
/// `−max|w|`), so up to `√32` times a block's share of the product; over the `n / 32` blocks of a
/// row (`n = 256`) and `P` products, `z = 8` deviations: `8 · √P · 2^-11 · √32 · √(n / 32)`.
fn llama_cpp_tolerance(goldens: &Value) -> f64 {
    let types = goldens["tensor_types"].as_object().unwrap();
    let q8_1 = types
        .values()
        .any(|t| matches!(t.as_str(), Some("Q4_1" | "Q5_1")));
    if !q8_1 {
        return LLAMA_CPP;
    }
    let layers = goldens["config"]["num_hidden_layers"].as_u64().unwrap() as f64;
    let n = goldens["config"]["hidden_size"].as_u64().unwrap() as f64;
    let products = 7.0 * layers + 1.0;
    8.0 * products.sqrt() * 2f64.powi(-11) * 32f64.sqrt() * (n / 32.0).sqrt()
}

/// The default path's tolerance against `transformers`, in units of the logits' std: `8 · √P ·
/// ε_b`, with `P = 7 · layers + 1` products and `ε_b` the relative RMS rounding of a block of
/// `b` activations (module documentation); 0 where activations stay f32.
fn default_tolerance(goldens: &Value) -> f64 {
    let layers = goldens["config"]["num_hidden_layers"].as_u64().unwrap() as f64;
    let products = 7.0 * layers + 1.0;
    let types: Vec<&str> = goldens["tensor_types"]
        .as_object()
        .unwrap()
        .values()
        .map(|t| t.as_str().unwrap())
        .collect();
    let k_quant = types.iter().any(|t| t.ends_with("_K"));
    let quantized = types.iter().any(|t| !matches!(*t, "F32" | "F16" | "BF16"));
    if !quantized {
        return EXACT;
    }
    let crest = if k_quant { 4.5 } else { 3.4 };
    let epsilon = crest / (127.0 * 12f64.sqrt());
    8.0 * products.sqrt() * epsilon
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn std_of(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    (values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt()
}

/// The logits of every position of `ids` and the greedy continuation of `n` tokens with its
/// margins (top-1 minus top-2 at each step).
fn run<R: Residency>(
    model: &Model<R>,
    ids: &[u32],
    n: usize,
    exact: bool,
) -> (Vec<Vec<f32>>, Vec<u32>, Vec<f64>) {
    let options = SessionOptions {
        exact_activations: exact,
        ..Default::default()
    };
    let mut session = model.session_with(options).unwrap();
    let mut rows = Vec::new();
    session
        .evaluate(ids, |_, logits| rows.push(logits.to_vec()))
        .unwrap();
    let mut next = argmax(rows.last().unwrap());
    let (mut greedy, mut margins) = (Vec::new(), Vec::new());
    let mut logits = rows.last().unwrap().clone();
    for _ in 0..n {
        margins.push(margin(&logits));
        greedy.push(next);
        logits = session.step(next).unwrap().to_vec();
        next = argmax(&logits);
    }
    (rows, greedy, margins)
}

fn margin(logits: &[f32]) -> f64 {
    let mut sorted: Vec<f32> = logits.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    f64::from(sorted[0]) - f64::from(sorted[1])
}

/// What one run measured, for the report.
#[derive(Default, Debug)]
struct Measured {
    /// Largest |ours − transformers| / std at a last position.
    vs_transformers: f64,
    /// Largest |ours − llama.cpp| / std over llama.cpp's top 20 at a last position.
    vs_llama_cpp: f64,
    /// llama.cpp's own largest |llama.cpp − transformers| / std (from the goldens).
    llama_cpp_vs_transformers: f64,
    /// Greedy steps compared with llama.cpp (default path) or transformers (exact path).
    greedy_steps: usize,
}

/// Checks `model` (the file `name`) on one path against its goldens.
fn check<R: Residency>(name: &str, model: &Model<R>, goldens: &Value, exact: bool) -> Measured {
    let tolerance = if exact {
        EXACT
    } else {
        default_tolerance(goldens)
    };
    let mut m = Measured::default();
    let llama = &goldens["llama_cpp"];
    for (i, prompt) in goldens["prompts"].as_array().unwrap().iter().enumerate() {
        let label = format!("{name} (exact {exact}) prompt {i}");
        let prompt_ids = ids(&prompt["ids"]);
        // The file's own tokenizer gives transformers' (and llama.cpp's) ids.
        let text = prompt["text"].as_str().unwrap();
        let tokenizer = model.tokenizer();
        assert_eq!(
            tokenizer.encode(text, tokenizer.prompt_options()),
            prompt_ids,
            "{label}: tokenizer"
        );
        let want_greedy = ids(&prompt["greedy"]["ids"]);
        let (rows, greedy, margins) = run(model, &prompt_ids, want_greedy.len(), exact);

        // Last position: every logit, against transformers.
        let want = floats(&prompt["last_position"]["logits"]);
        let got = rows.last().unwrap();
        assert_eq!(got.len(), want.len(), "{label}");
        let std = std_of(&want);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(&g, &w)| (f64::from(g) - w).abs())
            .fold(0.0, f64::max);
        m.vs_transformers = m.vs_transformers.max(worst / std);
        assert!(
            worst <= tolerance * std,
            "{label}: logits off by {worst:.4} > {tolerance:.2e} x std {std:.2}"
        );
        // Log-sum-exp at every position.
        for (t, (row, &want)) in rows
            .iter()
            .zip(&floats(&prompt["logsumexp_per_position"]))
            .enumerate()
        {
            let got = logsumexp(row);
            assert!(
                (got - want).abs() <= tolerance * std + 1e-4 * want.abs(),
                "{label}: logsumexp at {t}: {got} vs {want}"
            );
        }

        // llama.cpp's answer on the same file.
        let lc = &llama["prompts"][i];
        let lc_ids = ids(&lc["last_top20_ids"]);
        let lc_logits = floats(&lc["last_top20_logits"]);
        let lc_vs_hf = lc_ids
            .iter()
            .zip(&lc_logits)
            .map(|(&id, &l)| (l - want[id as usize]).abs())
            .fold(0.0, f64::max);
        m.llama_cpp_vs_transformers = m.llama_cpp_vs_transformers.max(lc_vs_hf / std);
        if !exact {
            // The bound holds for llama.cpp's own arithmetic too.
            assert!(
                lc_vs_hf <= default_tolerance(goldens).max(EXACT) * std
                    || default_tolerance(goldens) == EXACT,
                "{label}: llama.cpp off by {lc_vs_hf:.4} from transformers"
            );
        }
        if exact {
            assert_eq!(greedy, want_greedy, "{label}: greedy continuation");
            m.greedy_steps += greedy.len();
            continue;
        }
        let quantized = default_tolerance(goldens) > EXACT;
        if !quantized {
            // F32/F16/BF16: the default path is the exact one.
            assert_eq!(greedy, want_greedy, "{label}: greedy continuation");
            m.greedy_steps += greedy.len();
            continue;
        }
        let lc_vs_ours = lc_ids
            .iter()
            .zip(&lc_logits)
            .map(|(&id, &l)| (l - f64::from(got[id as usize])).abs())
            .fold(0.0, f64::max);
        m.vs_llama_cpp = m.vs_llama_cpp.max(lc_vs_ours / std);
        let to_llama_cpp = llama_cpp_tolerance(goldens);
        assert!(
            lc_vs_ours <= to_llama_cpp * std,
            "{label}: logits off llama.cpp's by {lc_vs_ours:.4} > {to_llama_cpp:.2e} x std {std:.2}"
        );
        // Greedy ids: llama.cpp's, while both runs' margins exceed twice the tolerance.
        let lc_greedy = ids(&lc["greedy_ids"]);
        let lc_margins = floats(&lc["greedy_step_margins"]);
        for step in 0..greedy.len() {
            assert_eq!(greedy[step], lc_greedy[step], "{label}: greedy step {step}");
            m.greedy_steps += 1;
            if margins[step].min(lc_margins[step]) <= 2.0 * to_llama_cpp * std {
                break;
            }
        }
    }
    m
}

#[test]
fn every_type_on_both_paths_matches_transformers_and_llama_cpp() {
    let mut report = String::new();
    for (name, goldens) in fixtures() {
        let path = dir().join(&name);
        let model = Mistral::load(&path).unwrap();
        assert_eq!(model.file().format(), FileFormat::Gguf { version: 3 });
        for exact in [true, false] {
            let m = check(&name, &model, &goldens, exact);
            report.push_str(&format!(
                "{name:<28} exact {exact:<5} tol {:.2e}: vs transformers {:.2e}, vs llama.cpp {:.2e} (llama.cpp vs transformers {:.2e}), {} greedy steps\n",
                if exact { EXACT } else { default_tolerance(&goldens) },
                m.vs_transformers,
                m.vs_llama_cpp,
                m.llama_cpp_vs_transformers,
                m.greedy_steps
            ));
        }
    }
    eprintln!("{report}");
}

/// Lazy paging and a copy read into memory give the mapped model's logits bit for bit, on both
/// paths.
#[test]
fn lazy_and_read_into_memory_give_the_same_logits() {
    for (name, goldens) in fixtures() {
        let path = dir().join(&name);
        let eager = Mistral::load(&path).unwrap();
        let lazy = LazyMistral::load(&path).unwrap();
        let copied = Mistral::load_with(
            &path,
            LoadOptions {
                read_into_memory: true,
                ..Default::default()
            },
        )
        .unwrap();
        let prompt = &goldens["prompts"][1];
        let prompt_ids = ids(&prompt["ids"]);
        for exact in [true, false] {
            let (want, want_greedy, _) = run(&eager, &prompt_ids, 4, exact);
            for (mode, (rows, greedy, _)) in [
                ("lazy", run(&lazy, &prompt_ids, 4, exact)),
                ("read into memory", run(&copied, &prompt_ids, 4, exact)),
            ] {
                assert!(rows == want, "{name} {mode} (exact {exact}): logits");
                assert_eq!(greedy, want_greedy, "{name} {mode}");
            }
        }
        // And the lazy model passes the goldens on its own.
        check(&name, &lazy, &goldens, true);
    }
}

/// The weights are the file's bytes: no tensor is copied or converted at load, and a decode
/// step reads the blocks' bytes.
#[test]
fn weights_are_used_in_place_at_their_own_types() {
    for (name, goldens) in fixtures() {
        let path = dir().join(&name);
        let model = Mistral::load(&path).unwrap();
        let file = model.file();
        let gguf = torchless_model::format::gguf::GgufFile::open(&path).unwrap();
        let types = goldens["tensor_types"].as_object().unwrap();
        let mut bytes = 0;
        for info in file.tensors() {
            let stored = file.stored_name(&info.name);
            let want = types[stored].as_str().unwrap();
            assert_eq!(info.dtype.as_str().to_uppercase(), want, "{name}: {stored}");
            assert_eq!(matches!(info.dtype, DType::Blocks(_)), want != "F32");
            bytes += gguf.tensor(stored).unwrap().byte_size();
        }
        let config = model.config();
        let embedding_row = if config.tie_word_embeddings {
            0
        } else {
            gguf.tensor("token_embd.weight").unwrap().byte_size() * (config.vocab_size as u64 - 1)
                / config.vocab_size as u64
        };
        assert_eq!(model.bytes_per_token(), bytes - embedding_row, "{name}");
    }
}

/// A SentencePiece GGUF (Mistral's vocabulary) and a byte-level one (Llama 3's pre-tokenizer)
/// load their tokenizers from the metadata, with BOS as the file says; the chat template too.
#[test]
fn tokenizers_and_bos_come_from_the_metadata() {
    let spm = Mistral::load(dir().join("mistral-spm-q8_0.gguf")).unwrap();
    assert!(spm.tokenizer().adds_bos());
    assert_eq!(spm.tokenizer().bos_id(), Some(1));
    let bpe = Mistral::load(dir().join("llama-bpe-q4_0.gguf")).unwrap();
    let goldens: Value = serde_json::from_str(
        &std::fs::read_to_string(dir().join("llama-bpe-q4_0-goldens.json")).unwrap(),
    )
    .unwrap();
    let first = ids(&goldens["prompts"][0]["ids"]);
    assert_eq!(
        bpe.tokenizer().adds_bos(),
        Some(first[0]) == bpe.tokenizer().bos_id()
    );
}

/// A session whose context is longer than the model's shared RoPE table builds its own, with
/// the same angles: logits bit for bit those of a short session, alone and batched together.
#[test]
fn long_contexts_get_their_own_rope_table() {
    let path = dir().join("llama-bpe-q4_0.gguf");
    let mut raw = gguf_writer::RawGguf::open(&path);
    raw.set(
        "llama.context_length",
        torchless_model::format::gguf::GgufValue::U32(70_000),
    );
    let file = torchless_model::format::ModelFile::from_bytes(&raw.to_bytes()).unwrap();
    let model = Mistral::from_file(file).unwrap();
    let ids = [1u32, 50, 60, 70, 80];
    let logits = |context: usize| {
        let mut s = model
            .session_with(SessionOptions {
                context_len: Some(context),
                ..Default::default()
            })
            .unwrap();
        s.prefill(&ids).unwrap().to_vec()
    };
    assert!(logits(100) == logits(70_000));
    // Batched: the long session lends its table to the pass (positions of both are covered).
    let session = |context: usize| {
        let mut s = model
            .session_with(SessionOptions {
                context_len: Some(context),
                ..Default::default()
            })
            .unwrap();
        s.prefill(&ids).unwrap();
        s
    };
    let (mut short, mut long) = (session(100), session(70_000));
    Session::step_batch(&mut [&mut short, &mut long], &[7, 9]).unwrap();
    let (mut alone_short, mut alone_long) = (session(100), session(70_000));
    assert!(short.logits() == alone_short.step(7).unwrap());
    assert!(long.logits() == alone_long.step(9).unwrap());
}

#[path = "../../torchless-format/tests/common/gguf_writer.rs"]
mod gguf_writer;
