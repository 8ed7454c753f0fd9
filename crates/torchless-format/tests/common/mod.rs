//! Shared helpers for the format crate's tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

pub fn fixtures() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/models"
    ))
}

pub const MODELS: [&str; 3] = ["small-gqa", "small-mqa", "small-mha"];

/// Reads a float32 safetensors file with the `safetensors` crate (an independent reader).
pub fn read_safetensors(path: &std::path::Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

/// Splits a model file into its header JSON and its payload.
pub fn split(bytes: &[u8]) -> (serde_json::Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let json = &bytes[8..8 + n];
    let end = json.iter().rposition(|&b| b != 0).unwrap() + 1;
    (
        serde_json::from_slice(&json[..end]).unwrap(),
        bytes[8 + n..].to_vec(),
    )
}

/// Reassembles a file from a (possibly edited) header and a payload, padding to 64 bytes.
pub fn join(header: &serde_json::Value, payload: &[u8]) -> Vec<u8> {
    let mut json = serde_json::to_vec(header).unwrap();
    while !(8 + json.len()).is_multiple_of(64) {
        json.push(0);
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(payload);
    out
}
pub mod gguf_writer;
