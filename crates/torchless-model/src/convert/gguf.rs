//! A llama.cpp GGUF file (architecture `llama`, which also covers Mistral and SmolLM files) into
//! a torchless model file.
//!
//! The file is read as a model by the format crate (`ModelFile::open`: configuration, tensor
//! names and types, tokenizer, every check), then tensors are dequantized row by row (F32, F16,
//! BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) under their Hugging Face names. llama.cpp's converter interleaves the two rotary halves
//! of every head in `attn_q` and `attn_k` (it stores row `2i + j` of a head where Hugging Face has
//! row `j * head_dim / 2 + i`); the rows are put back in Hugging Face order here, so the model's
//! RoPE (rotate-half, as in `transformers`) applies unchanged. The tokenizer and the chat template
//! come from the metadata. With int4 storage, Q4_0 tensors keep their bytes: a Q4_0 block is
//! exactly an int4 group ([`copy_q4_0`]). SentencePiece vocabularies (pieces with scores) have no
//! place in a torchless file: such a GGUF is refused, and runs as it is instead.

use std::fs::File;
use std::io::{BufWriter, Read};
use std::path::Path;

use torchless_format::gguf::{GgmlType, GgufFile, GgufTensorInfo};
use torchless_format::{
    int4, DType, ModelFile, ModelWriter, RopeLayout, TensorSpec, TokenizerKind,
};

use super::error::ConvertError;
use super::options::{report, ConvertOptions, ConvertProgress, ConvertReport, ConvertedFrom};
use super::output::ModelOutput;

/// Whether `path` starts with the GGUF magic.
pub fn is_gguf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| &magic == b"GGUF")
}

/// How a GGUF tensor becomes a torchless tensor.
struct Mapping {
    gguf_name: String,
    name: String,
    shape: Vec<usize>,
    /// Undo llama.cpp's rotary interleave with this many heads (q: `n_heads`, k: `n_kv_heads`).
    unpermute_heads: Option<usize>,
}

/// Converts the GGUF file `input` into the model file `output`.
pub fn convert_gguf(
    input: &Path,
    output: &Path,
    mut options: ConvertOptions<'_>,
) -> Result<ConvertReport, ConvertError> {
    let gguf = GgufFile::open(input)?;
    let what = input.display().to_string();
    // The model the file holds, read as `Model::load` reads it: configuration, tensors under
    // their Hugging Face names, tokenizer (one reader of GGUF metadata for both).
    let model = ModelFile::open(input)?;
    let tokenizer = model.tokenizer_data()?;
    if tokenizer.kind == TokenizerKind::ScoredSentencePiece {
        return Err(ConvertError::tokenizer(
            &what,
            format!(
                "{what}: its SentencePiece vocabulary (tokenizer.ggml.model \"llama\": pieces with \
                 scores) cannot be stored in a torchless file, which holds merges; run the .gguf \
                 as it is (`torchless {what} \"...\"`), or convert the Hugging Face checkpoint"
            ),
            None,
        ));
    }
    let mappings = map_tensors(&model, &gguf, &what)?;

    let storage = options.storage;
    let mut config = model.config().clone();
    config.quant = storage.kind();
    // The rows of attn_q/attn_k are written back in Hugging Face order.
    config.rope_layout = RopeLayout::Halves;
    let mut metadata = config.to_metadata();
    if let Some(template) = model.chat_template() {
        metadata.push(("chat_template".into(), template.to_string()));
    }
    let specs: Vec<TensorSpec> = mappings
        .iter()
        .map(|m| storage.spec(&m.name, &m.shape))
        .collect();

    let mut out = ModelOutput::create(output, &metadata, specs, &tokenizer, options.int4_method)?;
    let total: u64 = mappings
        .iter()
        .filter_map(|m| gguf.tensor(&m.gguf_name))
        .map(GgufTensorInfo::byte_size)
        .sum();
    report(
        &mut options.progress,
        ConvertProgress::Started {
            tensors: mappings.len(),
            bytes: total,
        },
    );
    let mut row = Vec::new();
    let mut done = 0;
    let mut copied = 0;
    let mut dequantized: Vec<&'static str> = Vec::new();
    for (index, m) in mappings.iter().enumerate() {
        report(&mut options.progress, ConvertProgress::Tensor { index });
        let Some(info) = gguf.tensor(&m.gguf_name) else {
            return Err(ConvertError::tensor(
                input,
                &m.gguf_name,
                format!("{what}: tensor {} vanished", m.gguf_name),
            ));
        };
        let dtype = storage.dtype_of(&m.name, &m.shape);
        if dtype == DType::Int4 && info.ggml_type() == GgmlType::Q4_0 {
            copy_q4_0(&gguf, info, m, out.writer(), &what)?;
            copied += 1;
        } else {
            write_tensor(&gguf, info, m, out.writer(), &mut row)?;
            if dtype == DType::F32 && info.ggml_type() == GgmlType::F32 {
                copied += 1;
            } else {
                dequantized.push(info.ggml_type().name());
            }
        }
        done += info.byte_size();
        report(&mut options.progress, ConvertProgress::Bytes { done });
    }
    report(&mut options.progress, ConvertProgress::Finishing);
    let model = out.finish()?;
    let mut types: Vec<&'static str> = gguf
        .tensors()
        .iter()
        .map(|t| t.ggml_type().name())
        .collect();
    types.sort_unstable();
    types.dedup();
    Ok(ConvertReport {
        from: ConvertedFrom::Gguf {
            version: gguf.version(),
            tensors: gguf.tensors().len(),
            types,
            file_bytes: gguf.file_len(),
            copied,
            dequantized: {
                dequantized.sort_unstable();
                dequantized.dedup();
                dequantized
            },
        },
        storage,
        output_bytes: model.file_len() as u64,
    })
}

/// Streams one tensor, row by row in Hugging Face order.
fn write_tensor(
    gguf: &GgufFile,
    info: &GgufTensorInfo,
    m: &Mapping,
    writer: &mut ModelWriter<BufWriter<File>>,
    row: &mut Vec<f32>,
) -> Result<(), ConvertError> {
    writer.begin_tensor(&m.name)?;
    let n_rows = info.n_rows() as usize;
    let row_len = info.row_len() as usize;
    match m.unpermute_heads {
        None => {
            // Whole blocks of rows at a time: ~4 MB of f32.
            let step = ((1usize << 20) / row_len.max(1)).max(1);
            let mut start = 0;
            while start < n_rows {
                let end = (start + step).min(n_rows);
                row.resize((end - start) * row_len, 0.0);
                gguf.dequantize_rows(&m.gguf_name, start..end, row)?;
                writer.push(row)?;
                start = end;
            }
        }
        Some(heads) => {
            row.resize(row_len, 0.0);
            let head_dim = n_rows / heads;
            let half = head_dim / 2;
            for hf_row in 0..n_rows {
                let gguf_row = gguf_row_of(hf_row, head_dim, half);
                gguf.dequantize_rows(&m.gguf_name, gguf_row..gguf_row + 1, row)?;
                writer.push(row)?;
            }
        }
    }
    writer.end_tensor()?;
    Ok(())
}

/// Bytes of one Q4_0 block: an f16 scale, then the 16 code bytes of 32 values.
const Q4_0_BLOCK: usize = 2 + int4::GROUP_BYTES;

/// A Q4_0 tensor into an int4 one without leaving 4 bits: a Q4_0 block is an int4 group's f16
/// scale followed by its 16 code bytes in the same nibble order, so the bytes are copied (rows
/// reordered like [`write_tensor`]'s). Blocks never span rows (rows are whole blocks).
fn copy_q4_0(
    gguf: &GgufFile,
    info: &GgufTensorInfo,
    m: &Mapping,
    writer: &mut ModelWriter<BufWriter<File>>,
    what: &str,
) -> Result<(), ConvertError> {
    let bytes = gguf.tensor_bytes(&m.gguf_name)?;
    let n_rows = info.n_rows() as usize;
    let row_len = info.row_len() as usize;
    let row_bytes = row_len / int4::GROUP_SIZE * Q4_0_BLOCK;
    if !row_len.is_multiple_of(int4::GROUP_SIZE) || bytes.len() != n_rows * row_bytes {
        return Err(ConvertError::tensor(
            what,
            &m.gguf_name,
            format!(
                "{what}: Q4_0 tensor {} has {} bytes for {n_rows} rows of {row_len} (expected {})",
                m.gguf_name,
                bytes.len(),
                n_rows * row_bytes
            ),
        ));
    }
    writer.begin_tensor(&m.name)?;
    // About a megabyte of blocks per push.
    let rows_per_push = ((1usize << 20) / row_bytes.max(1)).max(1);
    let mut codes = Vec::new();
    let mut scales = Vec::new();
    let mut hf_row = 0;
    while hf_row < n_rows {
        let end = (hf_row + rows_per_push).min(n_rows);
        codes.clear();
        scales.clear();
        for r in hf_row..end {
            let gguf_row = match m.unpermute_heads {
                None => r,
                Some(heads) => {
                    let head_dim = n_rows / heads;
                    gguf_row_of(r, head_dim, head_dim / 2)
                }
            };
            let row = &bytes[gguf_row * row_bytes..(gguf_row + 1) * row_bytes];
            for block in row.chunks_exact(Q4_0_BLOCK) {
                scales.push(u16::from_le_bytes([block[0], block[1]]));
                codes.extend_from_slice(&block[2..]);
            }
        }
        writer.push_int4_groups(&codes, &scales)?;
        hf_row = end;
    }
    writer.end_tensor()?;
    Ok(())
}

/// The GGUF row holding Hugging Face row `hf_row` of a rotary projection: within each head,
/// Hugging Face keeps the two halves apart (`j * half + i`), llama.cpp interleaves them (`2i + j`).
fn gguf_row_of(hf_row: usize, head_dim: usize, half: usize) -> usize {
    let head = hf_row / head_dim;
    let within = hf_row % head_dim;
    let (j, i) = (within / half, within % half);
    head * head_dim + 2 * i + j
}

/// Every tensor of the model with its name in the file, its Hugging Face name and shape, and
/// whether its rows need llama.cpp's rotary permutation undone (query: `n_heads`, key:
/// `n_kv_heads`). The model file has checked every tensor against the configuration.
fn map_tensors(
    model: &ModelFile,
    gguf: &GgufFile,
    what: &str,
) -> Result<Vec<Mapping>, ConvertError> {
    let config = model.config();
    let mut mappings = Vec::with_capacity(model.n_tensors());
    for info in model.tensors() {
        let gguf_name = model.stored_name(&info.name).to_string();
        let unpermute_heads = if info.name.ends_with("self_attn.q_proj.weight") {
            Some(config.n_heads)
        } else if info.name.ends_with("self_attn.k_proj.weight") {
            Some(config.n_kv_heads)
        } else {
            None
        };
        if gguf.tensor(&gguf_name).is_none() {
            return Err(ConvertError::tensor(
                what,
                &gguf_name,
                format!("{what}: tensor {gguf_name} is missing"),
            ));
        }
        mappings.push(Mapping {
            gguf_name,
            name: info.name.clone(),
            shape: info.shape.clone(),
            unpermute_heads,
        });
    }
    // In the order of the file's tensor table, as before.
    let order: std::collections::HashMap<&str, usize> = gguf
        .tensors()
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name(), i))
        .collect();
    mappings.sort_by_key(|m| order.get(m.gguf_name.as_str()).copied());
    Ok(mappings)
}

#[cfg(test)]
mod tests {
    use super::gguf_row_of;

    /// The inverse of llama.cpp's `permute`: reshape(heads, 2, hd/2, cols).swapaxes(1, 2).
    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let (heads, head_dim) = (3, 8);
        let half = head_dim / 2;
        // llama.cpp's forward permutation, written from its reshape: GGUF row (h, i, j) holds
        // Hugging Face row (h, j, i).
        let mut hf_of_gguf = vec![0; heads * head_dim];
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..half {
                    hf_of_gguf[h * head_dim + i * 2 + j] = h * head_dim + j * half + i;
                }
            }
        }
        for hf_row in 0..heads * head_dim {
            assert_eq!(hf_of_gguf[gguf_row_of(hf_row, head_dim, half)], hf_row);
        }
    }
}
