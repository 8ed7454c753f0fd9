//! The published reference models and goldens (../shared/reference; CI has them, a user's clone
//! does not). Compiled only with `--features shared-reference`; a missing directory fails.
#![cfg(feature = "shared-reference")]

mod common;

use std::path::PathBuf;

use common::{check_model, read_goldens};
use torchless_model::{LazyMistral, Mistral};

fn reference() -> PathBuf {
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

fn check(name: &str, quant: &str) {
    let path = reference().join(format!("{name}-{quant}.bin"));
    let goldens = read_goldens(&reference().join(format!("{name}-goldens-{quant}.json")));
    let eager = Mistral::load(&path).unwrap();
    assert!(check_model(&eager, &goldens) > 500);
    let lazy = LazyMistral::load(&path).unwrap();
    assert!(check_model(&lazy, &goldens) > 500);
}

#[test]
fn tiny_f32() {
    check("tiny", "f32");
}

#[test]
fn tiny_int8() {
    check("tiny", "int8");
}

#[test]
fn tiny_mqa_f32() {
    check("tiny-mqa", "f32");
}

#[test]
fn tiny_mqa_int8() {
    check("tiny-mqa", "int8");
}
