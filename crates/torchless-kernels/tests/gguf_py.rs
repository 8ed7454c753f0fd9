//! Dequantization against gguf-py's, bit for bit: rows of real GGUF tensors (made by llama.cpp's
//! converter and `llama-quantize`) and random blocks, every block type, written by
//! `scripts/fixtures/make_gguf_dequant_fixtures.py` into `tests/fixtures/gguf_py_dequant.json`.
use torchless_kernels::{reference, BlockType, MatRef};

#[test]
fn dequantization_is_gguf_py_s_bit_for_bit() {
    let json: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/gguf_py_dequant.json")).expect("fixture");
    let rows = json["rows"].as_array().expect("rows");
    let mut seen = std::collections::BTreeSet::new();
    for row in rows {
        let (source, name) = (
            row["source"].as_str().unwrap(),
            row["type"].as_str().unwrap(),
        );
        let ty = BlockType::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .unwrap_or_else(|| panic!("unknown type {name}"));
        seen.insert(name);
        let hex = row["hex"].as_str().unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let cols = row["cols"].as_u64().unwrap() as usize;
        let want: Vec<u32> = row["bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let m = MatRef::blocks(ty, &bytes, 1, cols).unwrap();
        let mut got = vec![f32::NAN; cols];
        m.row_f32(0, &mut got).unwrap();
        let f64s = reference::dequantize_blocks(ty, &bytes);
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            let wf = f32::from_bits(w);
            assert_eq!(
                g.to_bits(),
                w,
                "{source} {name} value {i}: {g:e} vs gguf-py {wf:e}"
            );
            // The reference's f64 values round to the same f32.
            assert_eq!(f64s[i] as f32, wf, "{source} {name} value {i}: reference");
        }
    }
    assert_eq!(
        seen.len(),
        BlockType::ALL.len(),
        "every type covered: {seen:?}"
    );
}
