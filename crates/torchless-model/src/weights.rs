//! The weights as the forward pass reads them: typed views of every tensor, looked up by name
//! and checked against the configuration (shape and dtype) in one place, so the forward pass
//! indexes fields instead of naming tensors and cannot meet a tensor of the wrong shape.

use std::ops::Range;

use torchless_format::gguf::BlockFormat;
use torchless_format::{layer_tensor_name, Config, ModelFile, TensorData, TensorRef};
use torchless_kernels::{BlockType, MatRef};

use crate::error::{ModelError, Result};

/// The token embedding matrix (also the output matrix when the embeddings are tied).
pub(crate) const EMBEDDING: &str = "model.embed_tokens.weight";
/// The norm applied before the output projection.
const FINAL_NORM: &str = "model.norm.weight";

/// Hugging Face suffixes of one block's tensors, in the order of [`LayerWeights`]' fields.
const LAYER_TENSORS: [&str; 9] = [
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
];

/// The names of block `layer`'s tensors (e.g. to page them in and out together).
pub(crate) fn layer_tensor_names(layer: usize) -> [String; 9] {
    LAYER_TENSORS.map(|suffix| layer_tensor_name(layer, suffix))
}

/// One transformer block's weights: matrices are `[out, in]` (`y = W x`), norms f32.
pub(crate) struct LayerWeights<'a> {
    /// `input_layernorm`, `[hidden]`.
    pub attn_norm: &'a [f32],
    /// `q_proj`, `[n_heads · head_dim, hidden]`.
    pub wq: MatRef<'a>,
    /// `k_proj`, `[n_kv_heads · head_dim, hidden]`.
    pub wk: MatRef<'a>,
    /// `v_proj`, `[n_kv_heads · head_dim, hidden]`.
    pub wv: MatRef<'a>,
    /// `o_proj`, `[hidden, n_heads · head_dim]`.
    pub wo: MatRef<'a>,
    /// `post_attention_layernorm`, `[hidden]`.
    pub ffn_norm: &'a [f32],
    /// `gate_proj`, `[intermediate, hidden]`.
    pub w_gate: MatRef<'a>,
    /// `up_proj`, `[intermediate, hidden]`.
    pub w_up: MatRef<'a>,
    /// `down_proj`, `[hidden, intermediate]`.
    pub w_down: MatRef<'a>,
}

impl<'a> LayerWeights<'a> {
    /// The layer's matrices: q, k, v, o, gate, up, down.
    pub(crate) fn matrices(&self) -> [&MatRef<'a>; 7] {
        [
            &self.wq,
            &self.wk,
            &self.wv,
            &self.wo,
            &self.w_gate,
            &self.w_up,
            &self.w_down,
        ]
    }
}

/// Every weight of the model, borrowed from its file.
pub(crate) struct Weights<'a> {
    /// `[vocab, hidden]`.
    pub embedding: MatRef<'a>,
    /// The transformer blocks, in order.
    pub layers: Vec<LayerWeights<'a>>,
    /// `[hidden]`.
    pub final_norm: &'a [f32],
    /// `lm_head` (or the embedding when tied), `[vocab, hidden]`.
    pub output: MatRef<'a>,
    /// `output` cut into the row ranges lazy mode computes one at a time, with those ranges.
    pub output_chunks: Vec<(Range<usize>, MatRef<'a>)>,
}

impl<'a> Weights<'a> {
    /// Looks every tensor of a model with `config` up in `file` and checks its shape and dtype;
    /// `output_chunks` are row ranges of the output matrix (see [`Weights::output_chunks`]).
    pub(crate) fn resolve(
        file: &'a ModelFile,
        config: &Config,
        output_chunks: &[Range<usize>],
    ) -> Result<Self> {
        let (h, q_dim, kv_dim, inter) = (
            config.hidden_size,
            config.q_dim(),
            config.kv_dim(),
            config.intermediate_size,
        );
        let norm = |name: &str| norm_view(file.tensor(name)?, h);
        let matrix = |name: &str, shape| matrix_view(file.tensor(name)?, shape);
        let layers = (0..config.n_layers)
            .map(|layer| {
                let [attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down] =
                    layer_tensor_names(layer);
                Ok(LayerWeights {
                    attn_norm: norm(&attn_norm)?,
                    wq: matrix(&wq, [q_dim, h])?,
                    wk: matrix(&wk, [kv_dim, h])?,
                    wv: matrix(&wv, [kv_dim, h])?,
                    wo: matrix(&wo, [h, q_dim])?,
                    ffn_norm: norm(&ffn_norm)?,
                    w_gate: matrix(&w_gate, [inter, h])?,
                    w_up: matrix(&w_up, [inter, h])?,
                    w_down: matrix(&w_down, [h, inter])?,
                })
            })
            .collect::<Result<_>>()?;
        let output = matrix(config.output_tensor_name(), [config.vocab_size, h])?;
        let output_chunks = output_chunks
            .iter()
            .map(|rows| Ok((rows.clone(), output.rows_range(rows.clone())?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            embedding: matrix(EMBEDDING, [config.vocab_size, h])?,
            layers,
            final_norm: norm(FINAL_NORM)?,
            output,
            output_chunks,
        })
    }
}

fn check_shape(tensor: &TensorRef<'_>, expected: &[usize]) -> Result<()> {
    if tensor.info.shape == expected {
        return Ok(());
    }
    Err(ModelError::TensorShape {
        tensor: tensor.info.name.clone(),
        expected: expected.to_vec(),
        found: tensor.info.shape.clone(),
    })
}

/// A norm's weights: `len` float32 values.
fn norm_view(tensor: TensorRef<'_>, len: usize) -> Result<&[f32]> {
    check_shape(&tensor, &[len])?;
    match tensor.data {
        TensorData::F32(values) => Ok(values),
        TensorData::Int8(_) | TensorData::Int4(_) | TensorData::Blocks(_) => {
            Err(ModelError::TensorDtype {
                tensor: tensor.info.name.clone(),
                expected: "f32",
                found: tensor.info.dtype.to_string(),
            })
        }
    }
}

/// A `[rows, cols]` matrix in any dtype the kernels take: GGUF blocks go to the kernels as the
/// file holds them (a [`BlockType`] view of the mapped bytes: no copy, no conversion).
fn matrix_view(tensor: TensorRef<'_>, [rows, cols]: [usize; 2]) -> Result<MatRef<'_>> {
    check_shape(&tensor, &[rows, cols])?;
    Ok(match tensor.data {
        TensorData::F32(values) => MatRef::f32(values, rows, cols)?,
        TensorData::Int8(view) => MatRef::int8(view.values, view.inv_scales, rows, cols)?,
        TensorData::Int4(view) => MatRef::int4(view.packed, view.scales, rows, cols)?,
        TensorData::Blocks(view) => MatRef::blocks(block_type(view.format), view.data, rows, cols)?,
    })
}

/// The kernels' name for a GGUF block format (the format crate and the kernels know nothing of
/// each other; the model joins them here).
fn block_type(format: BlockFormat) -> BlockType {
    match format {
        BlockFormat::F16 => BlockType::F16,
        BlockFormat::BF16 => BlockType::BF16,
        BlockFormat::Q8_0 => BlockType::Q8_0,
        BlockFormat::Q4_0 => BlockType::Q4_0,
        BlockFormat::Q4_1 => BlockType::Q4_1,
        BlockFormat::Q5_0 => BlockType::Q5_0,
        BlockFormat::Q5_1 => BlockType::Q5_1,
        BlockFormat::Q4_K => BlockType::Q4K,
        BlockFormat::Q5_K => BlockType::Q5K,
        BlockFormat::Q6_K => BlockType::Q6K,
    }
}

#[cfg(test)]
mod tests {
    use torchless_format::{DType, ModelWriter, TensorSpec};

    use super::*;

    fn fixture() -> ModelFile {
        let models = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/models");
        ModelFile::open(format!("{models}/small-gqa-int8.bin")).unwrap()
    }

    #[test]
    fn every_tensor_is_checked_against_the_configuration() {
        let file = fixture();
        let config = file.config().clone();
        let (h, inter) = (config.hidden_size, config.intermediate_size);
        let weights = Weights::resolve(&file, &config, &[0..3, 3..config.vocab_size]).unwrap();
        assert_eq!(weights.layers.len(), config.n_layers);
        assert_eq!(weights.output_chunks[1].1.rows(), config.vocab_size - 3);

        let wider = Config {
            intermediate_size: inter + 1,
            ..config
        };
        let Err(e) = Weights::resolve(&file, &wider, &[]) else {
            panic!("a configuration the file does not match was accepted");
        };
        assert!(
            matches!(&e, ModelError::TensorShape { tensor, expected, found }
                if tensor == "model.layers.0.mlp.gate_proj.weight"
                    && *expected == [inter + 1, h]
                    && *found == [inter, h]),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            format!(
                "tensor model.layers.0.mlp.gate_proj.weight: expected shape [{}, {h}], found [{inter}, {h}]",
                inter + 1
            )
        );
    }

    /// Each block format is the kernels' type of the same ggml name and block size.
    #[test]
    fn block_formats_map_to_the_kernels_types() {
        for format in BlockFormat::ALL {
            let ty = block_type(format);
            assert_eq!(ty.name(), format.name());
            assert_eq!(ty.block_values(), format.block_values());
            assert_eq!(ty.block_bytes(), format.block_bytes());
        }
    }

    #[test]
    fn norms_must_be_float32() {
        let config = fixture().config().clone();
        let h = config.hidden_size;
        let spec = TensorSpec::new(FINAL_NORM, DType::Int8, vec![h]);
        let mut writer = ModelWriter::new(
            Vec::new(),
            "<test>",
            &config.to_metadata(),
            vec![spec],
            None,
        )
        .unwrap();
        writer.write_tensor(FINAL_NORM, &vec![1.0; h]).unwrap();
        let file = ModelFile::from_bytes(&writer.finish().unwrap()).unwrap();
        let e = norm_view(file.tensor(FINAL_NORM).unwrap(), h).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tensor model.norm.weight: expected dtype f32, found int8"
        );
    }
}
