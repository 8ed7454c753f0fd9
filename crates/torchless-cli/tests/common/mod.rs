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
        if lazy {
            cmd.arg("--lazy");
        }
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
        for (k, entry) in first.iter().enumerate() {
            let want_id = last["top20_ids"][k].as_u64().unwrap();
            let want = last["top20_logits"][k].as_f64().unwrap() - lse;
            let got = entry["logprob"].as_f64().unwrap();
            assert_eq!(entry["id"].as_u64().unwrap(), want_id, "rank {k}");
            assert!(
                (got - want).abs() <= 2e-3 + 1e-4 * want.abs(),
                "rank {k}: {got} vs {want}"
            );
        }
        assert_eq!(v["logprobs"].as_array().unwrap().len(), greedy.len());
    }
}

/// `torchless perplexity --prompt-ids` equals the golden mean NLL within 1e-4 relative.
pub fn check_perplexity_cli(model_path: &Path, goldens_path: &Path) {
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
        assert!((got - want).abs() <= 1e-4 * want.abs(), "{got} vs {want}");
        assert_eq!(v["tokens"].as_u64().unwrap() as usize, ids.len() - 1);
        assert!((v["ppl"].as_f64().unwrap().ln() - got).abs() < 1e-9 * got.max(1.0));
    }
}
