//! Golden checks shared by the fixture tests and the shared-reference tests: every figure is
//! compared with what Hugging Face `transformers` computed (see the goldens JSON files).
#![allow(dead_code)]

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use torchless_model::sampling::logsumexp;
use torchless_model::{GenerateOptions, Model, Residency, SessionOptions};

pub fn fixtures() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/models"
    ))
}

#[derive(Deserialize)]
pub struct Goldens {
    pub model: String,
    pub prompts: Vec<Prompt>,
    pub eos_id: u32,
}

#[derive(Deserialize)]
pub struct Prompt {
    pub text: String,
    pub ids: Vec<u32>,
    pub argmax_per_position: Vec<u32>,
    pub logsumexp_per_position: Vec<f64>,
    pub last_positions: Vec<LastPosition>,
    pub nll: Nll,
    pub greedy: Greedy,
}

#[derive(Deserialize)]
pub struct LastPosition {
    pub position: usize,
    pub top20_ids: Vec<u32>,
    pub top20_logits: Vec<f64>,
    pub argmax: u32,
    pub max: f64,
    pub logsumexp: f64,
    pub mean: f64,
    pub std: f64,
    pub l2_norm: f64,
}

#[derive(Deserialize)]
pub struct Nll {
    pub per_token: Vec<f64>,
    pub mean: f64,
}

#[derive(Deserialize)]
pub struct Greedy {
    pub ids: Vec<u32>,
}

impl Goldens {
    /// The length of the shortest greedy continuation: how far every prompt can be checked.
    pub fn shortest_greedy(&self) -> usize {
        self.prompts
            .iter()
            .map(|p| p.greedy.ids.len())
            .min()
            .unwrap_or(0)
    }
}

pub fn read_goldens(path: &Path) -> Goldens {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The README's rule for float32 logits computed in another summation order.
pub fn logit_close(ours: f64, reference: f64) -> bool {
    (ours - reference).abs() <= 1e-3 + 1e-4 * reference.abs()
}

fn relative_close(ours: f64, reference: f64, tol: f64) -> bool {
    (ours - reference).abs() <= tol * reference.abs().max(1e-12)
}

/// Per-position logits of `prompt` through the public session API.
pub fn all_logits<R: Residency>(model: &Model<R>, ids: &[u32]) -> Vec<Vec<f32>> {
    all_logits_with(model, ids, SessionOptions::default())
}

/// Per-position logits with explicit session options (e.g. a small batch, so the ring wraps).
pub fn all_logits_with<R: Residency>(
    model: &Model<R>,
    ids: &[u32],
    options: SessionOptions,
) -> Vec<Vec<f32>> {
    let mut session = model.session_with(options).unwrap();
    let mut rows = vec![Vec::new(); ids.len()];
    session
        .evaluate(ids, |t, logits| rows[t] = logits.to_vec())
        .unwrap();
    rows
}

/// Checks every recorded figure of every prompt; returns the number of assertions made.
pub fn check_model<R: Residency>(model: &Model<R>, goldens: &Goldens) -> usize {
    check_model_with(model, goldens, SessionOptions::default())
}

/// As [`check_model`], with the session options used for every session.
pub fn check_model_with<R: Residency>(
    model: &Model<R>,
    goldens: &Goldens,
    options: SessionOptions,
) -> usize {
    let mut checks = 0;
    for prompt in &goldens.prompts {
        let label = format!(
            "{} {:?}",
            goldens.model,
            &prompt.text[..prompt.text.len().min(20)]
        );
        let rows = all_logits_with(model, &prompt.ids, options.clone());

        for (t, row) in rows.iter().enumerate() {
            let argmax = torchless_model::sampling::argmax(row);
            assert_eq!(
                argmax, prompt.argmax_per_position[t],
                "{label}: argmax at {t}"
            );
            let lse = logsumexp(row);
            let want = prompt.logsumexp_per_position[t];
            assert!(
                logit_close(lse, want),
                "{label}: logsumexp at {t}: {lse} vs {want}"
            );
            checks += 2;
        }

        for last in &prompt.last_positions {
            let row = &rows[last.position];
            for (&id, &want) in last.top20_ids.iter().zip(&last.top20_logits) {
                let ours = f64::from(row[id as usize]);
                assert!(
                    logit_close(ours, want),
                    "{label}: logit of {id} at {}: {ours} vs {want}",
                    last.position
                );
                checks += 1;
            }
            // Our own top 20 must be the same set, up to ties within the tolerance at its edge.
            let mut order: Vec<u32> = (0..row.len() as u32).collect();
            order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
            for &id in &order[..20] {
                let inside = last.top20_ids.contains(&id);
                let at_edge = logit_close(
                    f64::from(row[id as usize]),
                    *last.top20_logits.last().unwrap(),
                );
                assert!(inside || at_edge, "{label}: {id} in our top 20 only");
            }
            let n = row.len() as f64;
            let mean = row.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
            let var = row
                .iter()
                .map(|&x| (f64::from(x) - mean).powi(2))
                .sum::<f64>()
                / n;
            let l2 = row
                .iter()
                .map(|&x| f64::from(x).powi(2))
                .sum::<f64>()
                .sqrt();
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            assert_eq!(
                torchless_model::sampling::argmax(row),
                last.argmax,
                "{label}"
            );
            assert!(logit_close(f64::from(max), last.max), "{label}: max");
            assert!(
                logit_close(logsumexp(row), last.logsumexp),
                "{label}: logsumexp"
            );
            assert!(
                (mean - last.mean).abs() <= 1e-4 * last.mean.abs().max(last.std),
                "{label}: mean {mean} vs {}",
                last.mean
            );
            assert!(relative_close(var.sqrt(), last.std, 1e-4), "{label}: std");
            assert!(relative_close(l2, last.l2_norm, 1e-4), "{label}: l2 norm");
            checks += 6;
        }

        // Mean NLL, computed here from the logits, and through the library's perplexity.
        let nll: Vec<f64> = (1..prompt.ids.len())
            .map(|t| logsumexp(&rows[t - 1]) - f64::from(rows[t - 1][prompt.ids[t] as usize]))
            .collect();
        if !nll.is_empty() {
            let mean = nll.iter().sum::<f64>() / nll.len() as f64;
            assert!(
                relative_close(mean, prompt.nll.mean, 1e-4),
                "{label}: mean nll {mean} vs {}",
                prompt.nll.mean
            );
            for (t, (a, b)) in nll.iter().zip(&prompt.nll.per_token).enumerate() {
                assert!(logit_close(*a, *b), "{label}: nll of token {}", t + 1);
            }
            let mut session = model.session_with(options.clone()).unwrap();
            let ppl = session
                .perplexity(&prompt.ids, prompt.ids.len(), |_, _| {})
                .unwrap();
            assert_eq!(ppl.tokens, prompt.ids.len() - 1);
            assert!(
                relative_close(ppl.mean_nll, prompt.nll.mean, 1e-4),
                "{label}: perplexity mean nll"
            );
            checks += 2 + nll.len();
        }

        // Greedy continuation through the generation API, not stopping at EOS.
        let mut session = model.session_with(options.clone()).unwrap();
        let options = GenerateOptions {
            max_tokens: prompt.greedy.ids.len(),
            stop_at_eos: false,
            ..Default::default()
        };
        let generation = session
            .generate(&prompt.ids, options, |_| ControlFlow::Continue(()))
            .unwrap();
        assert_eq!(
            generation.ids, prompt.greedy.ids,
            "{label}: greedy continuation"
        );
        checks += 1;
    }
    checks
}
