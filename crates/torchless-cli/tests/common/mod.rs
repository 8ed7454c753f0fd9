//! Helpers for running the built `torchless` binary against models and their goldens.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;

pub fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures"))
}

pub fn model(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

pub fn torchless() -> Command {
    let mut cmd = Command::cargo_bin("torchless").unwrap();
    cmd.env("RUST_BACKTRACE", "0");
    cmd
}

pub fn goldens(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    let output = Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !output.stderr.contains("panicked") && !output.stderr.contains("RUST_BACKTRACE"),
        "panic: {}",
        output.stderr
    );
    output
}

pub fn ids_arg(ids: &[Value]) -> String {
    ids.iter()
        .map(|v| v.as_u64().unwrap().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Greedy generation through the CLI equals the goldens: ids, and the top log-probabilities of
/// the first generated position (the logits of the last prompt position).
pub fn check_greedy_cli(model_path: &Path, goldens_path: &Path, lazy: bool) {
    check_greedy_cli_within(model_path, goldens_path, lazy, 2e-3);
}

/// [`check_greedy_cli`] with first-token log-probabilities held to `|got − want| ≤ abs_tol +
/// 1e-4 |want|`; returns the largest difference seen.
pub fn check_greedy_cli_within(
    model_path: &Path,
    goldens_path: &Path,
    lazy: bool,
    abs_tol: f64,
) -> f64 {
    let flags: &[&str] = if lazy { &["--lazy"] } else { &[] };
    check_greedy_cli_with(model_path, goldens_path, flags, abs_tol)
}

/// [`check_greedy_cli_within`] with these extra command-line flags (e.g. a loading mode).
pub fn check_greedy_cli_with(
    model_path: &Path,
    goldens_path: &Path,
    flags: &[&str],
    abs_tol: f64,
) -> f64 {
    let mut worst = 0.0f64;
    let g = goldens(goldens_path);
    for prompt in g["prompts"].as_array().unwrap() {
        let greedy: Vec<u64> = prompt["greedy"]["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let ids = prompt["ids"].as_array().unwrap();
        let mut cmd = torchless();
        cmd.arg(model_path)
            .arg("--prompt-ids")
            .arg(ids_arg(ids))
            .args([
                "-n",
                &greedy.len().to_string(),
                "--temp",
                "0",
                "--ignore-eos",
            ])
            .args(["--json", "--logprobs", "5"]);
        cmd.args(flags);
        let out = run(&mut cmd);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
        let got: Vec<u64> = v["generated_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(got, greedy, "{}", prompt["text"]);
        assert_eq!(v["prompt_ids"].as_array().unwrap(), ids);

        let last = prompt["last_positions"].as_array().unwrap().last().unwrap();
        let lse = last["logsumexp"].as_f64().unwrap();
        let first = v["logprobs"][0].as_array().unwrap();
        assert_eq!(first.len(), 5);
        let top20 = last["top20_ids"].as_array().unwrap();
        assert_eq!(first[0]["id"], top20[0], "rank 0");
        for (k, entry) in first.iter().enumerate() {
            // By id: near-ties may swap ranks within the tolerance.
            let at = top20
                .iter()
                .position(|id| *id == entry["id"])
                .unwrap_or_else(|| panic!("rank {k}: id {} not in the golden top 20", entry["id"]));
            let want = last["top20_logits"][at].as_f64().unwrap() - lse;
            let got = entry["logprob"].as_f64().unwrap();
            worst = worst.max((got - want).abs());
            assert!(
                (got - want).abs() <= abs_tol + 1e-4 * want.abs(),
                "rank {k}: {got} vs {want}"
            );
        }
        assert_eq!(v["logprobs"].as_array().unwrap().len(), greedy.len());
    }
    worst
}

/// `torchless perplexity --prompt-ids` equals the golden mean NLL within 1e-4 relative.
pub fn check_perplexity_cli(model_path: &Path, goldens_path: &Path) {
    check_perplexity_cli_within(model_path, goldens_path, 1e-4);
}

/// [`check_perplexity_cli`] within `rel_tol` relative; returns the largest relative difference.
pub fn check_perplexity_cli_within(model_path: &Path, goldens_path: &Path, rel_tol: f64) -> f64 {
    let mut worst = 0.0f64;
    let g = goldens(goldens_path);
    for prompt in g["prompts"].as_array().unwrap() {
        let ids = prompt["ids"].as_array().unwrap();
        if ids.len() < 2 {
            continue;
        }
        let out = run(torchless()
            .arg("perplexity")
            .arg(model_path)
            .arg("--prompt-ids")
            .arg(ids_arg(ids))
            .args(["--ctx", &ids.len().to_string(), "--json"]));
        assert_eq!(out.code, 0, "{}", out.stderr);
        let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
        let want = prompt["nll"]["mean"].as_f64().unwrap();
        let got = v["mean_nll"].as_f64().unwrap();
        worst = worst.max((got - want).abs() / want.abs());
        assert!(
            (got - want).abs() <= rel_tol * want.abs(),
            "{got} vs {want}"
        );
        assert_eq!(v["tokens"].as_u64().unwrap() as usize, ids.len() - 1);
        assert!((v["ppl"].as_f64().unwrap().ln() - got).abs() < 1e-9 * got.max(1.0));
    }
    worst
}
