//! `torchless convert` on the published reference checkpoints (../shared/reference, present in CI,
//! not in a user's clone): the output must equal, byte for byte, the files the ORIGINAL Python
//! exporter made. Compiled only with `--features shared-reference`; a missing directory is a
//! failure, not a skip.
#![cfg(feature = "shared-reference")]

mod common;

use std::path::PathBuf;

fn reference_models() -> PathBuf {
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
fn every_reference_checkpoint_converts_to_the_original_exporters_bytes() {
    let models = reference_models();
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&models).unwrap() {
        let hf_dir = entry.unwrap().path();
        let Some(name) = hf_dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix("-hf"))
            .map(str::to_string)
        else {
            continue;
        };
        for quant in ["f32", "int8"] {
            let want_path = models.join(format!("{name}-{quant}.bin"));
            let want = std::fs::read(&want_path)
                .unwrap_or_else(|e| panic!("{}: {e}", want_path.display()));
            let out_dir = tempfile::tempdir().unwrap();
            let out = out_dir.path().join("model.bin");
            let result = common::run(
                common::torchless()
                    .arg("convert")
                    .arg(&hf_dir)
                    .arg(&out)
                    .args(["--quant", quant]),
            );
            assert_eq!(result.code, 0, "{name} {quant}: {}", result.stderr);
            let got = std::fs::read(&out).unwrap();
            if got != want {
                let at = got.iter().zip(&want).position(|(a, b)| a != b);
                panic!(
                    "{name} {quant}: differs from {} at byte {at:?} (lengths {} and {})",
                    want_path.display(),
                    got.len(),
                    want.len()
                );
            }
            checked.push(format!("{name}-{quant}"));
        }
    }
    assert!(
        checked.iter().any(|c| c == "tiny-int8"),
        "no reference checkpoint found in {}: {checked:?}",
        models.display()
    );
}
