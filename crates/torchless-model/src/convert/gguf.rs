//! A llama.cpp GGUF file (architecture `llama`, which also covers Mistral and SmolLM files) into
//! a torchless model file.
//!
//! Tensors are dequantized row by row (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K) and
//! renamed to their Hugging Face names. llama.cpp's converter interleaves the two rotary halves
//! of every head in `attn_q` and `attn_k` (it stores row `2i + j` of a head where Hugging Face has
//! row `j * head_dim / 2 + i`); the rows are put back in Hugging Face order here, so the model's
//! RoPE (rotate-half, as in `transformers`) applies unchanged. The tokenizer and the chat template
//! come from the metadata. With int4 storage, Q4_0 tensors keep their bytes: a Q4_0 block is
//! exactly an int4 group ([`copy_q4_0`]).

use std::fs::File;
use std::io::{BufWriter, Read};
use std::path::Path;

use torchless_format::gguf::{GgmlType, GgufFile, GgufTensorInfo, GgufValue};
use torchless_format::{
    int4, layer_tensor_name, Activation, AddedTokenData, Architecture, Config, DType, ModelWriter,
    QuantKind, TensorSpec, TokenizerData, TokenizerKind,
};

use super::error::{refuse, ConvertError};
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
    let config = read_config(&gguf, &what)?;
    let tokenizer = read_tokenizer(&gguf, &what, config.vocab_size)?;
    let mappings = map_tensors(&gguf, &config, &what)?;

    let storage = options.storage;
    let mut config = config;
    config.quant = storage.kind();
    let mut metadata = config.to_metadata();
    if let Some(template) = gguf.get("tokenizer.chat_template") {
        let Some(template) = template.as_str() else {
            refuse!(&what, "{what}: tokenizer.chat_template is not a string");
        };
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
    for (index, m) in mappings.iter().enumerate() {
        report(&mut options.progress, ConvertProgress::Tensor { index });
        let Some(info) = gguf.tensor(&m.gguf_name) else {
            return Err(ConvertError::tensor(
                input,
                &m.gguf_name,
                format!("{what}: tensor {} vanished", m.gguf_name),
            ));
        };
        if storage.dtype_of(&m.name, &m.shape) == DType::Int4 && info.ggml_type() == GgmlType::Q4_0
        {
            copy_q4_0(&gguf, info, m, out.writer(), &what)?;
        } else {
            write_tensor(&gguf, info, m, out.writer(), &mut row)?;
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

fn get_u64(gguf: &GgufFile, key: &str, what: &str) -> Result<Option<u64>, ConvertError> {
    let Some(v) = gguf.get(key) else {
        return Ok(None);
    };
    v.as_u64().map(Some).ok_or_else(|| {
        let message = format!(
            "{what}: metadata {key} is {} {v:?}, expected an unsigned integer",
            v.type_name()
        );
        ConvertError::input(what, message)
    })
}

fn get_usize(gguf: &GgufFile, key: &str, what: &str) -> Result<Option<usize>, ConvertError> {
    get_u64(gguf, key, what)?
        .map(|v| {
            usize::try_from(v).map_err(|_| {
                ConvertError::input(what, format!("{what}: metadata {key} = {v} is too large"))
            })
        })
        .transpose()
}

fn need_usize(gguf: &GgufFile, key: &str, what: &str) -> Result<usize, ConvertError> {
    get_usize(gguf, key, what)?
        .ok_or_else(|| ConvertError::input(what, format!("{what}: metadata {key} is missing")))
}

/// A number from the metadata. llama.cpp stores `1e-5` as an f32 (9.99999974737875e-6); the
/// shortest decimal that round-trips that f32 gives back the value of `config.json`.
fn get_f64(gguf: &GgufFile, key: &str, what: &str) -> Result<Option<f64>, ConvertError> {
    let Some(v) = gguf.get(key) else {
        return Ok(None);
    };
    if let GgufValue::F32(x) = v {
        return Ok(Some(format!("{x}").parse::<f64>().unwrap_or(f64::from(*x))));
    }
    v.as_f64().map(Some).ok_or_else(|| {
        let message = format!(
            "{what}: metadata {key} is {}, expected a number",
            v.type_name()
        );
        ConvertError::input(what, message)
    })
}

/// The model configuration from the `llama.*` metadata.
fn read_config(gguf: &GgufFile, what: &str) -> Result<Config, ConvertError> {
    let Some(arch) = gguf.get("general.architecture").and_then(GgufValue::as_str) else {
        refuse!(
            what,
            "{what}: general.architecture is missing (not a model GGUF file?)"
        );
    };
    if arch != "llama" {
        refuse!(what, "{what}: architecture {arch:?} is not supported (only \"llama\", which covers Llama, Mistral and SmolLM files)");
    }
    let key = |k: &str| format!("llama.{k}");
    if let Some(kind) = gguf
        .get(&key("rope.scaling.type"))
        .and_then(GgufValue::as_str)
    {
        if kind != "none" {
            refuse!(
                what,
                "{what}: RoPE scaling {kind:?} (llama.rope.scaling.type) is not supported"
            );
        }
    }
    if gguf.tensor("rope_freqs.weight").is_some() {
        refuse!(what, "{what}: has rope_freqs.weight (Llama 3.1-style RoPE frequency scaling), which is not supported");
    }
    let hidden_size = need_usize(gguf, &key("embedding_length"), what)?;
    let n_heads = need_usize(gguf, &key("attention.head_count"), what)?;
    let n_kv_heads = get_usize(gguf, &key("attention.head_count_kv"), what)?.unwrap_or(n_heads);
    if n_heads == 0 {
        refuse!(what, "{what}: llama.attention.head_count is 0");
    }
    let head_dim =
        get_usize(gguf, &key("attention.key_length"), what)?.unwrap_or(hidden_size / n_heads);
    if let Some(rot) = get_u64(gguf, &key("rope.dimension_count"), what)? {
        if rot as usize != head_dim {
            refuse!(what, "{what}: partial rotary embeddings (llama.rope.dimension_count {rot} < head_dim {head_dim}) are not supported");
        }
    }
    let Some(embd) = gguf.tensor("token_embd.weight") else {
        return Err(ConvertError::tensor(
            what,
            "token_embd.weight",
            format!("{what}: tensor token_embd.weight is missing"),
        ));
    };
    let vocab_size = embd.n_rows() as usize;
    let intermediate_size = need_usize(gguf, &key("feed_forward_length"), what)?;
    let n_layers = need_usize(gguf, &key("block_count"), what)?;
    let max_position_embeddings = need_usize(gguf, &key("context_length"), what)?;
    let rope_theta = get_f64(gguf, &key("rope.freq_base"), what)?.unwrap_or(10_000.0);
    let Some(norm_eps) = get_f64(gguf, &key("attention.layer_norm_rms_epsilon"), what)? else {
        refuse!(
            what,
            "{what}: llama.attention.layer_norm_rms_epsilon is missing"
        );
    };
    let config = Config {
        hidden_size,
        intermediate_size,
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        vocab_size,
        max_position_embeddings,
        sliding_window: None,
        rope_theta,
        norm_eps,
        activation: Activation::Silu,
        quant: QuantKind::F32,
        architecture: Architecture::Llama,
        tie_word_embeddings: gguf.tensor("output.weight").is_none(),
    };
    if let Err(e) = config.validate() {
        refuse!(what, "{what}: the metadata describes an invalid model: {e}");
    }
    if head_dim % 2 != 0 {
        refuse!(
            what,
            "{what}: head_dim {head_dim} is odd (RoPE needs pairs)"
        );
    }
    Ok(config)
}

/// The tokenizer from the `tokenizer.ggml.*` metadata (byte-level BPE, `tokenizer.ggml.model`
/// = `gpt2`).
fn read_tokenizer(
    gguf: &GgufFile,
    what: &str,
    vocab_size: usize,
) -> Result<TokenizerData, ConvertError> {
    let refuse = |message: String| ConvertError::tokenizer(what, message, None);
    let Some(model) = gguf.get("tokenizer.ggml.model").and_then(GgufValue::as_str) else {
        return Err(refuse(format!(
            "{what}: tokenizer.ggml.model is missing (the file has no tokenizer)"
        )));
    };
    if model != "gpt2" {
        return Err(refuse(format!(
            "{what}: tokenizer.ggml.model {model:?} is not supported from GGUF (only \"gpt2\", byte-level BPE); \
             for SentencePiece models convert the Hugging Face checkpoint directory instead"
        )));
    }
    let strings = |key: &str| {
        gguf.get(key)
            .and_then(GgufValue::as_str_array)
            .ok_or_else(|| {
                refuse(format!(
                    "{what}: {key} is missing or not an array of strings"
                ))
            })
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    if tokens.len() > vocab_size {
        return Err(refuse(format!(
            "{what}: tokenizer.ggml.tokens has {} entries but token_embd.weight has {vocab_size} rows",
            tokens.len()
        )));
    }
    let merges = strings("tokenizer.ggml.merges")?;
    let types = match gguf.get("tokenizer.ggml.token_type") {
        None => vec![1; tokens.len()],
        Some(v) => v
            .as_i64_array()
            .filter(|t| t.len() == tokens.len())
            .ok_or_else(|| refuse(format!("{what}: tokenizer.ggml.token_type is not an integer array of one entry per token")))?,
    };
    // llama.cpp's token types: 3 = control (special), 4 = user-defined (added, matched in text).
    let added_tokens = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, &t))| t == 3 || t == 4)
        .map(|(id, (content, &t))| AddedTokenData {
            id: id as u32,
            content: content.clone(),
            special: t == 3,
        })
        .collect();
    let id_of = |key: &str| -> Result<Option<u32>, ConvertError> {
        match get_u64(gguf, key, what)? {
            None => Ok(None),
            Some(id) if (id as usize) < tokens.len() => Ok(Some(id as u32)),
            Some(id) => Err(refuse(format!(
                "{what}: {key} = {id} is outside the vocabulary of {}",
                tokens.len()
            ))),
        }
    };
    let add_bos = match gguf.get("tokenizer.ggml.add_bos_token") {
        None => None,
        Some(v) => Some(v.as_bool().ok_or_else(|| {
            refuse(format!(
                "{what}: tokenizer.ggml.add_bos_token is not a bool"
            ))
        })?),
    };
    let pretokenizer = gguf
        .get("tokenizer.ggml.pre")
        .and_then(GgufValue::as_str)
        .map(str::to_string);
    Ok(TokenizerData {
        kind: TokenizerKind::ByteLevelBpe,
        vocab: tokens
            .iter()
            .enumerate()
            .map(|(id, piece)| (piece.clone(), id as u32))
            .collect(),
        merges: merges.to_vec(),
        added_tokens,
        pretokenizer,
        bos_id: id_of("tokenizer.ggml.bos_token_id")?,
        eos_id: id_of("tokenizer.ggml.eos_token_id")?,
        add_bos,
    })
}

/// Every GGUF tensor with its Hugging Face name and shape; tensors the model does not use are
/// refused by name (they would change its output).
fn map_tensors(gguf: &GgufFile, config: &Config, what: &str) -> Result<Vec<Mapping>, ConvertError> {
    let mut by_gguf: Vec<(String, String, Option<usize>)> = vec![
        (
            "token_embd.weight".into(),
            "model.embed_tokens.weight".into(),
            None,
        ),
        (
            "output_norm.weight".into(),
            "model.norm.weight".into(),
            None,
        ),
    ];
    if !config.tie_word_embeddings {
        by_gguf.push(("output.weight".into(), "lm_head.weight".into(), None));
    }
    for layer in 0..config.n_layers {
        let hf = |suffix: &str| layer_tensor_name(layer, suffix);
        let blk = |suffix: &str| format!("blk.{layer}.{suffix}.weight");
        by_gguf.extend([
            (blk("attn_norm"), hf("input_layernorm.weight"), None),
            (blk("ffn_norm"), hf("post_attention_layernorm.weight"), None),
            (
                blk("attn_q"),
                hf("self_attn.q_proj.weight"),
                Some(config.n_heads),
            ),
            (
                blk("attn_k"),
                hf("self_attn.k_proj.weight"),
                Some(config.n_kv_heads),
            ),
            (blk("attn_v"), hf("self_attn.v_proj.weight"), None),
            (blk("attn_output"), hf("self_attn.o_proj.weight"), None),
            (blk("ffn_gate"), hf("mlp.gate_proj.weight"), None),
            (blk("ffn_up"), hf("mlp.up_proj.weight"), None),
            (blk("ffn_down"), hf("mlp.down_proj.weight"), None),
        ]);
    }
    let used: std::collections::HashSet<&str> =
        by_gguf.iter().map(|(g, _, _)| g.as_str()).collect();
    let unused: Vec<&str> = gguf
        .tensors()
        .iter()
        .map(GgufTensorInfo::name)
        .filter(|n| !used.contains(n))
        .collect();
    if let Some(first) = unused.first() {
        return Err(ConvertError::tensor(
            what,
            *first,
            format!(
                "{what}: {} tensor(s) this engine's Llama model has no place for: {}",
                unused.len(),
                unused
                    .iter()
                    .take(5)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let expected = config.expected_tensors();
    let mut mappings = Vec::with_capacity(by_gguf.len());
    for (gguf_name, name, unpermute_heads) in by_gguf {
        let refuse = |message: String| ConvertError::tensor(what, &gguf_name, message);
        let Some(info) = gguf.tensor(&gguf_name) else {
            return Err(refuse(format!("{what}: tensor {gguf_name} is missing")));
        };
        if !info.ggml_type().can_dequantize() {
            return Err(refuse(format!(
                "{what}: tensor {gguf_name} has type {}, which this converter does not read \
                 (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K)",
                info.ggml_type().name()
            )));
        }
        let shape = info.shape_rows_major();
        let Some(want) = expected.iter().find(|t| t.name == name) else {
            return Err(ConvertError::Internal(format!(
                "{name} is not an expected tensor"
            )));
        };
        // Norm vectors may be stored as [1, n] in some files; compare element layouts.
        let same = shape == want.shape
            || (want.shape.len() == 1 && shape.iter().product::<usize>() == want.shape[0]);
        if !same {
            return Err(refuse(format!(
                "{what}: tensor {gguf_name} has shape {shape:?}, expected {:?} for {name}",
                want.shape
            )));
        }
        if let Some(heads) = unpermute_heads {
            if !(info.n_rows() as usize).is_multiple_of(heads)
                || !(info.n_rows() as usize / heads).is_multiple_of(2)
            {
                return Err(refuse(format!(
                    "{what}: tensor {gguf_name} has {} rows, not whole heads of even size",
                    info.n_rows()
                )));
            }
        }
        mappings.push(Mapping {
            gguf_name,
            name,
            shape: want.shape.clone(),
            unpermute_heads,
        });
    }
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
