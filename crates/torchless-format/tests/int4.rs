//! int4 tensors: written by the streaming writer (in chunks that cut groups), read back through
//! the mapped view, checked against an independent bound; raw groups kept byte for byte; bad
//! headers refused.

mod common;

use common::{fixtures, join, split};
use serde_json::json;
use torchless_format::half::f16_to_f32;
use torchless_format::int4::{Int4Method, GROUP_SIZE};
use torchless_format::{DType, ModelFile, ModelWriter, TensorData, TensorSpec};

/// Rewrites `llama-untied-f32.bin` with every `*_proj` matrix whose rows are whole groups of 32
/// as int4, pushing the values in chunks of 45 (not a multiple of 32).
fn rewrite(method: Int4Method) -> (ModelFile, Vec<u8>) {
    let source = ModelFile::open(fixtures().join("llama-untied-f32.bin")).unwrap();
    let mut metadata = source.metadata().clone();
    metadata.insert("quant".into(), "int4".into());
    let metadata: Vec<(String, String)> = metadata.into_iter().collect();
    let specs: Vec<TensorSpec> = source
        .tensors()
        .map(|t| {
            let int4 = t.name.contains("_proj") && t.shape.last().unwrap() % GROUP_SIZE == 0;
            let dtype = if int4 { DType::Int4 } else { DType::F32 };
            TensorSpec::new(t.name.clone(), dtype, t.shape.clone())
        })
        .collect();
    let tokenizer = source.tokenizer_data().unwrap();
    let mut writer = ModelWriter::new(Vec::new(), "int4 test", &metadata, specs, Some(&tokenizer))
        .unwrap()
        .with_int4_method(method);
    let names: Vec<String> = source.tensors().map(|t| t.name.clone()).collect();
    for name in &names {
        let values = source.tensor(name).unwrap().to_f32_vec();
        writer.begin_tensor(name).unwrap();
        for chunk in values.chunks(45) {
            writer.push(chunk).unwrap();
        }
        writer.end_tensor().unwrap();
    }
    let bytes = writer.finish().unwrap();
    (source, bytes)
}

#[test]
fn int4_tensors_round_trip_within_one_step() {
    for method in [Int4Method::RoundToNearest, Int4Method::Search] {
        let (source, bytes) = rewrite(method);
        let model = ModelFile::from_bytes(&bytes).unwrap();
        model.validate_mistral().unwrap();
        let slack = match method {
            Int4Method::RoundToNearest => 1.01,
            Int4Method::Search => 2.0,
        };
        let mut n_int4 = 0;
        for info in model.tensors() {
            let original = source.tensor(&info.name).unwrap().to_f32_vec();
            match model.tensor(&info.name).unwrap().data {
                TensorData::Int4(view) => {
                    n_int4 += 1;
                    assert_eq!(view.scales.len() * GROUP_SIZE, original.len());
                    assert_eq!(
                        info.bytes_read(),
                        original.len() / 2 + view.scales.len() * 2
                    );
                    for (g, group) in original.chunks(GROUP_SIZE).enumerate() {
                        let d = f16_to_f32(view.scales[g]).abs();
                        let amax = group.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                        // The scale covers the group (|d| <= amax / 7 with some slack for
                        // the search and f16 rounding), and each value is within one step
                        // (round to nearest: half a step, a whole one where +8 clamps to +7);
                        // the search may clip the extreme value further to fit the rest better.
                        assert!(d <= amax / 6.0 + 1e-12, "{} group {g}", info.name);
                        for (i, &x) in group.iter().enumerate() {
                            let back = view.get(g * GROUP_SIZE + i).unwrap();
                            assert!(
                                (back - x).abs() <= d * slack + 1e-12,
                                "{}[{}]: {x} -> {back} (d = {d})",
                                info.name,
                                g * GROUP_SIZE + i
                            );
                        }
                    }
                }
                TensorData::F32(values) => assert_eq!(values, original.as_slice()),
                TensorData::Int8(_) => panic!("no int8 written"),
                TensorData::Blocks(_) => panic!("no ggml blocks written"),
            }
        }
        assert!(n_int4 >= 4, "{n_int4} int4 tensors");
    }
}

#[test]
fn int4_files_put_the_payload_and_every_int4_tensor_on_a_page() {
    // In the written bytes: the payload starts at 8 + the header length, stored first.
    let (source, bytes) = rewrite(Int4Method::RoundToNearest);
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(
        (8 + header_len) % 4096,
        0,
        "payload start {}",
        8 + header_len
    );
    let model = ModelFile::from_bytes(&bytes).unwrap();
    assert_eq!(model.payload_start(), 8 + header_len);
    let mut n_int4 = 0;
    for info in model.tensors() {
        if info.dtype == DType::Int4 {
            n_int4 += 1;
            assert_eq!(info.offset % 4096, 0, "{} at {}", info.name, info.offset);
            // The in-memory copy keeps them on a page.
            let TensorData::Int4(view) = model.tensor(&info.name).unwrap().data else {
                panic!("{} is not int4", info.name);
            };
            assert_eq!(view.packed.as_ptr() as usize % 4096, 0, "{}", info.name);
        } else {
            assert_eq!(info.offset % 64, 0, "{} at {}", info.name, info.offset);
        }
    }
    assert!(n_int4 > 0);
    // The f32 source keeps the exporter's 64-byte alignment (not a page).
    assert_ne!(source.payload_start() % 4096, 0);
}

#[test]
fn search_lowers_the_squared_error() {
    let error = |method| {
        let (source, bytes) = rewrite(method);
        let model = ModelFile::from_bytes(&bytes).unwrap();
        let mut total = 0.0f64;
        for info in model.tensors().filter(|t| t.dtype == DType::Int4) {
            let a = source.tensor(&info.name).unwrap().to_f32_vec();
            let b = model.tensor(&info.name).unwrap().to_f32_vec();
            total += a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(x - y).powi(2))
                .sum::<f64>();
        }
        total
    };
    let (rtn, search) = (error(Int4Method::RoundToNearest), error(Int4Method::Search));
    assert!(search < 0.9 * rtn, "search {search:e} vs rtn {rtn:e}");
}

#[test]
fn raw_groups_are_kept_byte_for_byte() {
    let metadata: Vec<(String, String)> = Vec::new();
    let spec = TensorSpec::new("w", DType::Int4, vec![2, 64]);
    let mut writer = ModelWriter::new(Vec::new(), "raw", &metadata, vec![spec], None).unwrap();
    let packed: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37)).collect();
    let scales = [0x3c00u16, 0xb800, 0x2e66, 0x0001];
    writer.begin_tensor("w").unwrap();
    assert!(writer
        .push_int4_groups(&packed[..15], &scales[..1])
        .is_err());
    writer
        .push_int4_groups(&packed[..32], &scales[..2])
        .unwrap();
    writer
        .push_int4_groups(&packed[32..], &scales[2..])
        .unwrap();
    assert!(
        writer
            .push_int4_groups(&packed[..16], &scales[..1])
            .is_err(),
        "too many"
    );
    writer.end_tensor().unwrap();
    let bytes = writer.finish().unwrap();
    let (header, payload) = split(&bytes);
    let t = &header["tensors"]["w"];
    assert_eq!(t["dtype"], "int4");
    assert_eq!(t["scale_size"], 4);
    let offset = t["offset"].as_u64().unwrap() as usize;
    assert_eq!(&payload[offset..offset + 64], packed.as_slice());
    let at = t["scale_offset"].as_u64().unwrap() as usize;
    let stored: Vec<u16> = payload[at..at + 8]
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    assert_eq!(stored, scales);
}

/// A push large enough to be quantized on several threads gives the bytes of quantizing each
/// group alone, and a bad value deep inside it is reported with its group index.
#[test]
fn large_pushes_quantize_group_by_group() {
    let (rows, cols) = (512, 1024);
    let values: Vec<f32> = (0..rows * cols)
        .map(|i| {
            let x = (i as f32 * 0.618_034).fract() - 0.5;
            x * (1.0 + (i / 4096) as f32 * 0.01)
        })
        .collect();
    let metadata: Vec<(String, String)> = Vec::new();
    let spec = || vec![TensorSpec::new("w", DType::Int4, vec![rows, cols])];
    let mut writer = ModelWriter::new(Vec::new(), "large", &metadata, spec(), None).unwrap();
    writer.write_tensor("w", &values).unwrap();
    // No model config here, so the header and payload are read directly.
    let bytes = writer.finish().unwrap();
    let (header, payload) = split(&bytes);
    let t = &header["tensors"]["w"];
    let offset = t["offset"].as_u64().unwrap() as usize;
    let scale_offset = t["scale_offset"].as_u64().unwrap() as usize;
    let mut codes = [0u8; GROUP_SIZE / 2];
    for (g, group) in values.chunks(GROUP_SIZE).enumerate() {
        let scale = torchless_format::int4::quantize_group(group, Int4Method::Search, &mut codes);
        let at = scale_offset + 2 * g;
        let stored = u16::from_le_bytes([payload[at], payload[at + 1]]);
        assert_eq!(Some(stored), scale, "group {g}");
        let packed = &payload[offset + g * 16..offset + (g + 1) * 16];
        assert_eq!(packed, &codes, "group {g}");
    }

    let mut bad = values.clone();
    bad[12_345 * GROUP_SIZE + 7] = f32::NAN;
    let mut writer = ModelWriter::new(Vec::new(), "large", &metadata, spec(), None).unwrap();
    writer.begin_tensor("w").unwrap();
    let e = writer.push(&bad).unwrap_err().to_string();
    assert!(e.contains("group 12345 "), "{e}");
}

type Edit = dyn Fn(&mut serde_json::Value);

#[test]
fn bad_int4_headers_are_refused() {
    let (_, bytes) = rewrite(Int4Method::RoundToNearest);
    let (header, payload) = split(&bytes);
    let name = header["tensors"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, t)| t["dtype"] == "int4")
        .map(|(n, _)| n.clone())
        .unwrap();
    let edits: Vec<(&str, Box<Edit>)> = vec![
        (
            "scale_size",
            Box::new(|t| t["scale_size"] = json!(t["scale_size"].as_u64().unwrap() + 1)),
        ),
        ("scale_offset", Box::new(|t| t["scale_offset"] = json!(1))),
        (
            "multiple of 32",
            Box::new(|t| {
                let shape = t["shape"].as_array().unwrap().clone();
                let (rows, cols) = (shape[0].as_u64().unwrap(), shape[1].as_u64().unwrap());
                t["shape"] = json!([rows * 2, cols / 2 + 1]);
            }),
        ),
        (
            "scale_offset",
            Box::new(|t| {
                t.as_object_mut()
                    .unwrap()
                    .remove("scale_offset")
                    .map(|_| ())
                    .unwrap()
            }),
        ),
    ];
    for (what, edit) in edits {
        let mut h = header.clone();
        edit(&mut h["tensors"][&name]);
        let e = ModelFile::from_bytes(&join(&h, &payload))
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(e.to_string().contains(&name), "{what}: {e}");
    }
    // An unknown quant label is refused by name, as an older reader refuses "int4".
    let mut h = header.clone();
    h["metadata"]["quant"] = json!("int3");
    let e = ModelFile::from_bytes(&join(&h, &payload)).err().unwrap();
    assert!(e.to_string().contains("int3"), "{e}");
}
