//! The GGUF reader against files written by gguf-py (`scripts/fixtures/make_gguf_fixtures.py`):
//! every metadata value, every tensor's type and shape, and every dequantized value bit-identical
//! to `gguf.quants.dequantize`; then malformed files, which must give errors, never panics.

use std::path::PathBuf;

use serde_json::Value;
use torchless_format::gguf::{GgufArray, GgufErrorKind, GgufFile, GgufValue};

fn dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/gguf"
    ))
}

fn expected() -> Value {
    let text = std::fs::read_to_string(dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn array_json(a: &GgufArray) -> Value {
    match a {
        GgufArray::U8(v) => v.iter().map(|&x| Value::from(x)).collect(),
        GgufArray::I8(v) => v.iter().map(|&x| Value::from(x)).collect(),
        GgufArray::U16(v) => v.iter().map(|&x| Value::from(x)).collect(),
        GgufArray::I16(v) => v.iter().map(|&x| Value::from(x)).collect(),
        GgufArray::U32(v) => v.iter().map(|&x| Value::from(x)).collect(),
        GgufArray::I32(v) => v.iter().map(|&x| Value::from(x)).collect(),
        GgufArray::U64(v) => v.iter().map(|&x| Value::from(x)).collect(),
        GgufArray::I64(v) => v.iter().map(|&x| Value::from(x)).collect(),
        GgufArray::F32(v) => v.iter().map(|&x| Value::from(f64::from(x))).collect(),
        GgufArray::F64(v) => v.iter().map(|&x| Value::from(x)).collect(),
        GgufArray::Bool(v) => v.iter().map(|&x| Value::from(x)).collect(),
        GgufArray::String(v) => v.iter().map(|x| Value::from(x.as_str())).collect(),
        GgufArray::Array(v) => v.iter().map(array_json).collect(),
    }
}

fn value_json(v: &GgufValue) -> Value {
    match v {
        GgufValue::U8(x) => Value::from(*x),
        GgufValue::I8(x) => Value::from(*x),
        GgufValue::U16(x) => Value::from(*x),
        GgufValue::I16(x) => Value::from(*x),
        GgufValue::U32(x) => Value::from(*x),
        GgufValue::I32(x) => Value::from(*x),
        GgufValue::U64(x) => Value::from(*x),
        GgufValue::I64(x) => Value::from(*x),
        GgufValue::F32(x) => Value::from(f64::from(*x)),
        GgufValue::F64(x) => Value::from(*x),
        GgufValue::Bool(x) => Value::from(*x),
        GgufValue::String(x) => Value::from(x.as_str()),
        GgufValue::Array(a) => array_json(a),
    }
}

fn read_f32(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(dir().join(name)).unwrap();
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn every_value_and_tensor_matches_gguf_py() {
    let expected = expected();
    let files = expected["files"].as_object().unwrap();
    assert_eq!(files.len(), 2);
    let mut checked_tensors = 0;
    for (file_name, want) in files {
        let file = GgufFile::open(dir().join(file_name)).unwrap();
        assert_eq!(u64::from(file.version()), want["version"].as_u64().unwrap());
        assert_eq!(file.alignment(), want["alignment"].as_u64().unwrap());
        let want_meta = want["metadata"].as_object().unwrap();
        assert_eq!(file.metadata().len(), want_meta.len(), "{file_name}");
        for (key, w) in want_meta {
            let got = file
                .get(key)
                .unwrap_or_else(|| panic!("{file_name}: no {key}"));
            assert_eq!(got.type_name(), w["type"].as_str().unwrap(), "{key}");
            assert_eq!(value_json(got), w["value"], "{file_name}: {key}");
        }
        let want_tensors = want["tensors"].as_array().unwrap();
        assert_eq!(file.tensors().len(), want_tensors.len());
        for (info, w) in file.tensors().iter().zip(want_tensors) {
            let name = w["name"].as_str().unwrap();
            assert_eq!(info.name(), name);
            assert_eq!(info.ggml_type().name(), w["ggml_type"].as_str().unwrap());
            let dims: Vec<u64> = w["dims"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            assert_eq!(info.dims(), dims.as_slice(), "{name}");
            assert_eq!(info.offset() % file.alignment(), 0);
            let Some(expected_file) = w["expected"].as_str() else {
                // A type the reader sizes but does not dequantize: refused by name.
                let err = file.tensor_f32(name).unwrap_err();
                assert!(
                    matches!(err.kind(), GgufErrorKind::UnsupportedType { tensor, ggml_type }
                        if tensor == name && ggml_type == "Q3_K"),
                    "{err}"
                );
                assert!(err.to_string().contains(name), "{err}");
                continue;
            };
            let want_values = read_f32(expected_file);
            let got = file.tensor_f32(name).unwrap();
            assert_eq!(got.len(), want_values.len(), "{name}");
            for (i, (g, e)) in got.iter().zip(&want_values).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    e.to_bits(),
                    "{file_name}: {name}[{i}]: {g} vs {e}"
                );
            }
            // Row ranges give the same values as the whole tensor.
            let row_len = info.row_len() as usize;
            let n_rows = info.n_rows() as usize;
            let rows = (n_rows / 2)..n_rows;
            let mut part = vec![0.0f32; rows.len() * row_len];
            file.dequantize_rows(name, rows.clone(), &mut part).unwrap();
            assert_eq!(
                part,
                got[rows.start * row_len..rows.end * row_len],
                "{name}"
            );
            checked_tensors += 1;
        }
    }
    assert!(checked_tensors >= 19, "{checked_tensors}");
}

#[test]
fn bad_requests_are_errors() {
    let file = GgufFile::open(dir().join("types_v3.gguf")).unwrap();
    let err = file.tensor_f32("no.such.tensor").unwrap_err();
    assert!(
        matches!(err.kind(), GgufErrorKind::MissingTensor { .. }),
        "{err}"
    );
    let mut out = vec![0.0f32; 96];
    let err = file
        .dequantize_rows("q4_1.weight", 2..4, &mut out)
        .unwrap_err();
    assert!(
        matches!(err.kind(), GgufErrorKind::RowsOutOfRange { .. }),
        "{err}"
    );
    let err = file
        .dequantize_rows("q4_1.weight", 0..2, &mut out)
        .unwrap_err();
    assert!(
        matches!(err.kind(), GgufErrorKind::OutputLength { .. }),
        "{err}"
    );
}

fn valid() -> Vec<u8> {
    std::fs::read(dir().join("types_v3.gguf")).unwrap()
}

fn debug_of(bytes: &[u8]) -> String {
    match GgufFile::from_bytes(bytes) {
        Ok(_) => panic!("malformed file accepted"),
        Err(e) => {
            assert!(e.to_string().starts_with("<memory>: "), "{e}");
            format!("{:?}", e.kind())
        }
    }
}

/// Where the data section starts: everything before it is header and tensor infos.
fn header_end(bytes: &[u8]) -> usize {
    GgufFile::from_bytes(bytes).unwrap().data_start() as usize
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = valid();
    let end = header_end(&bytes);
    for len in 0..end {
        let kind = debug_of(&bytes[..len]);
        assert!(
            ["Truncated", "OutOfBounds", "CountTooLarge", "StringTooLong"]
                .iter()
                .any(|k| kind.starts_with(k)),
            "len {len}: {kind}"
        );
    }
    // Cutting into the data section leaves the header whole: the last tensor is out of bounds.
    let file = GgufFile::from_bytes(&bytes).unwrap();
    let data_end = file
        .tensors()
        .iter()
        .map(|t| file.data_start() + t.offset() + t.byte_size())
        .max()
        .unwrap() as usize;
    let kind = debug_of(&bytes[..data_end - 1]);
    assert!(kind.starts_with("OutOfBounds"), "{kind}");
}

#[test]
fn named_header_faults() {
    let bytes = valid();
    let mut b = bytes.clone();
    b[0] = b'X';
    assert!(debug_of(&b).starts_with("BadMagic"));

    for version in [1u32, 4, 0x0300_0000] {
        let mut b = bytes.clone();
        b[4..8].copy_from_slice(&version.to_le_bytes());
        let kind = debug_of(&b);
        assert!(kind.starts_with("UnsupportedVersion"), "{kind}");
    }

    // Tensor and metadata counts far beyond what the file could hold: refused before allocating.
    for (at, what) in [(8usize, "tensor"), (16, "metadata")] {
        let mut b = bytes.clone();
        b[at..at + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        let kind = debug_of(&b);
        assert!(kind.starts_with("CountTooLarge"), "{what}: {kind}");
    }

    // The first key's length is huge.
    let mut b = bytes.clone();
    b[24..32].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(debug_of(&b).starts_with("StringTooLong"));

    // The first value's type id is unknown.
    let key_len = u64::from_le_bytes(bytes[24..32].try_into().unwrap()) as usize;
    let type_at = 32 + key_len;
    let mut b = bytes.clone();
    b[type_at..type_at + 4].copy_from_slice(&99u32.to_le_bytes());
    assert!(debug_of(&b).starts_with("BadValueType"));
}

/// Finds the tensor-info record of `name` and returns the offset of its name length.
fn find_info(bytes: &[u8], name: &str) -> usize {
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(name.as_bytes());
    bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .unwrap()
}

#[test]
fn named_tensor_faults() {
    let bytes = valid();
    let name = "q8_0.weight";
    let at = find_info(&bytes, name) + 8 + name.len();
    // Record: n_dims u32, dims u64 x n, type u32, offset u64.
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    assert_eq!(n_dims, 2);
    let dims_at = at + 4;
    let type_at = dims_at + 8 * n_dims;
    let offset_at = type_at + 4;

    let mut b = bytes.clone();
    b[at..at + 4].copy_from_slice(&5u32.to_le_bytes());
    assert!(debug_of(&b).starts_with("BadDims"));
    let mut b = bytes.clone();
    b[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
    assert!(debug_of(&b).starts_with("BadDims"));

    let mut b = bytes.clone();
    b[type_at..type_at + 4].copy_from_slice(&1000u32.to_le_bytes());
    assert!(debug_of(&b).starts_with("UnknownGgmlType"));

    // A row that is not a whole number of Q8_0 blocks.
    let mut b = bytes.clone();
    b[dims_at..dims_at + 8].copy_from_slice(&33u64.to_le_bytes());
    assert!(debug_of(&b).starts_with("PartialBlock"));

    // A shape whose element count overflows 64 bits.
    let mut b = bytes.clone();
    b[dims_at + 8..dims_at + 16].copy_from_slice(&(u64::MAX / 4).to_le_bytes());
    let kind = debug_of(&b);
    assert!(
        kind.starts_with("ShapeOverflow") || kind.starts_with("OutOfBounds"),
        "{kind}"
    );

    // Huge but representable: out of the file.
    let mut b = bytes.clone();
    b[dims_at + 8..dims_at + 16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(debug_of(&b).starts_with("OutOfBounds"));

    let offset = u64::from_le_bytes(bytes[offset_at..offset_at + 8].try_into().unwrap());
    let mut b = bytes.clone();
    b[offset_at..offset_at + 8].copy_from_slice(&(offset + 1).to_le_bytes());
    assert!(debug_of(&b).starts_with("Misaligned"));
    let mut b = bytes.clone();
    b[offset_at..offset_at + 8].copy_from_slice(&(u64::MAX - 31).to_le_bytes());
    assert!(debug_of(&b).starts_with("OutOfBounds"));
    // Pointing at the previous tensor's data.
    let mut b = bytes.clone();
    b[offset_at..offset_at + 8].copy_from_slice(&0u64.to_le_bytes());
    assert!(debug_of(&b).starts_with("Overlap"));

    // Two tensors of one name.
    let other = "q4_0.weight";
    let other_at = find_info(&bytes, other) + 8;
    let mut b = bytes.clone();
    b[other_at..other_at + other.len()].copy_from_slice(name.as_bytes());
    assert!(debug_of(&b).starts_with("DuplicateTensor"));
}

#[test]
fn random_corruption_never_panics() {
    let bytes = valid();
    let end = header_end(&bytes);
    // xorshift: deterministic, no dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut rejected = 0;
    for _ in 0..3000 {
        let mut b = bytes.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % end as u64) as usize;
            b[at] = next() as u8;
        }
        match GgufFile::from_bytes(&b) {
            Ok(file) => {
                // Whatever was accepted reads back without panicking.
                for info in file.tensors() {
                    let _ = file.tensor_f32(info.name());
                }
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                rejected += 1;
            }
        }
    }
    assert!(rejected > 1000, "{rejected}");
}
