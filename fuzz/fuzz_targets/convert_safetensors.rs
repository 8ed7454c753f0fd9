//! Arbitrary bytes as the `model.safetensors` of a checkpoint directory, through the converter's
//! checkpoint reader (header parsing, validation against `config.json`, reading every tensor as
//! f32): `Err` or the tensors, never a panic.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use torchless_format::{Activation, Architecture, Config, QuantKind};
use torchless_model::convert::{Checkpoint, SINGLE_FILE};

/// The tiny configuration the seed checkpoints (fuzz/corpus/convert_safetensors) are made for.
fn config() -> Config {
    Config {
        hidden_size: 8,
        intermediate_size: 16,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 4,
        vocab_size: 32,
        max_position_embeddings: 16,
        sliding_window: Some(4),
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        activation: Activation::Silu,
        quant: QuantKind::F32,
        architecture: Architecture::Mistral,
        tie_word_embeddings: false,
        rope_layout: Default::default(),
    }
}

/// A checkpoint directory of this process (the converter reads files, not buffers): under
/// `$TORCHLESS_FUZZ_TMP` (scripts/fuzz.sh makes and removes one), else the temporary directory.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::env::var_os("TORCHLESS_FUZZ_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("torchless-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    let config = config();
    std::fs::write(dir.join(SINGLE_FILE), data).expect("write the shard");
    let Ok(checkpoint) = Checkpoint::open(dir, &config) else {
        return;
    };
    assert_eq!(checkpoint.tensors.len(), config.expected_tensors().len());
    let mut scratch = Vec::new();
    for tensor in &checkpoint.tensors {
        let mut out = vec![0.0f32; tensor.n_elements];
        let _ = checkpoint.read_f32(tensor, 0, &mut out, &mut scratch);
        let half = tensor.n_elements / 2;
        let _ = checkpoint.read_f32(tensor, half, &mut out[half..], &mut scratch);
        assert!(checkpoint
            .read_f32(tensor, half + 1, &mut out[half..], &mut scratch)
            .is_err());
    }
    let _ = checkpoint.dtypes();
});
