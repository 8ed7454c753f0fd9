//! Element types of a KV cache ([`KvType`]: f32, IEEE half, ggml's Q8_0) and the encoding of
//! f32 rows into them. The half conversion and the Q8_0 quantization are the crate's own
//! (`half`, `block_input`): a Q8_0 cache block is exactly what the block products quantize their
//! activations to, stored in ggml's `block_q8_0` layout (see `blocks`).

use crate::block_input::quantize_q8_0;
use crate::blocks::BlockType;
use crate::error::KernelError;
use crate::half::{f16_to_f32, f32_to_f16};

/// How a KV cache stores its keys or values (llama.cpp's `--cache-type-k` / `-v` spellings).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    /// 4 bytes per value, exact.
    #[default]
    F32,
    /// IEEE half, 2 bytes per value (rounded to nearest, ties to even).
    F16,
    /// ggml's Q8_0: per 32 values a half scale `d = amax / 127` and 32 codes
    /// `q = round(x / d)`, 34 bytes per 32 values. Needs a head dimension that is a multiple
    /// of 32.
    Q8_0,
}

impl KvType {
    /// Every type, in the order the help text lists them.
    pub const ALL: [KvType; 3] = [KvType::F32, KvType::F16, KvType::Q8_0];

    /// llama.cpp's name: `"f32"`, `"f16"`, `"q8_0"`.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
        }
    }

    /// Parses a [`KvType::name`] (case-insensitive).
    pub fn parse(s: &str) -> Option<KvType> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s.trim()))
    }

    /// Values per block (the unit a row's length must be a multiple of).
    pub fn block_values(self) -> usize {
        match self {
            KvType::F32 | KvType::F16 => 1,
            KvType::Q8_0 => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
            KvType::Q8_0 => 34,
        }
    }

    /// The ggml block type of the stored bytes (`None` for f32, stored as floats).
    pub(crate) fn block_type(self) -> Option<BlockType> {
        match self {
            KvType::F32 => None,
            KvType::F16 => Some(BlockType::F16),
            KvType::Q8_0 => Some(BlockType::Q8_0),
        }
    }

    /// Checks that a head of `head_dim` values is whole blocks of this type.
    pub fn check_head_dim(self, head_dim: usize) -> Result<(), KernelError> {
        if head_dim == 0 || !head_dim.is_multiple_of(self.block_values()) {
            return Err(KernelError::Shape(format!(
                "a {} KV cache needs a head dimension that is a positive multiple of {}, \
                 this model's is {head_dim}",
                self.name(),
                self.block_values()
            )));
        }
        Ok(())
    }

    /// Bytes of `values` values (a multiple of [`KvType::block_values`]).
    pub fn bytes_of(self, values: usize) -> u128 {
        values as u128 / self.block_values() as u128 * self.block_bytes() as u128
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Encodes `src` as `ty` (F16 or Q8_0) into `dst`, which must hold exactly its bytes
/// (`src.len()` a multiple of the type's block). Q8_0: a block holding an infinity or NaN gets a
/// NaN scale and zero codes; an all-zero block a zero scale.
pub fn encode_kv_row(ty: KvType, src: &[f32], dst: &mut [u8]) -> Result<(), KernelError> {
    if !src.len().is_multiple_of(ty.block_values()) || ty.bytes_of(src.len()) != dst.len() as u128 {
        return Err(KernelError::Shape(format!(
            "{} values do not encode as {} into {} bytes",
            src.len(),
            ty.name(),
            dst.len()
        )));
    }
    match ty {
        KvType::F32 => {
            for (o, &v) in dst.chunks_exact_mut(4).zip(src) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        KvType::F16 => {
            for (o, &v) in dst.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&f32_to_f16(v).to_le_bytes());
            }
        }
        KvType::Q8_0 => {
            for (o, x) in dst.chunks_exact_mut(34).zip(src.chunks_exact(32)) {
                let mut codes = [0i8; 32];
                let d = quantize_q8_0(x, &mut codes);
                // `d` is a half's value (NaN for a non-finite block): converting back is exact.
                o[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
                for (b, &q) in o[2..].iter_mut().zip(&codes) {
                    *b = q as u8;
                }
            }
        }
    }
    Ok(())
}

/// Decodes `src` (bytes of `ty`, F16 or Q8_0) into `dst` exactly (the inverse of
/// [`encode_kv_row`] up to its rounding).
pub fn decode_kv_row(ty: KvType, src: &[u8], dst: &mut [f32]) -> Result<(), KernelError> {
    if !dst.len().is_multiple_of(ty.block_values()) || ty.bytes_of(dst.len()) != src.len() as u128 {
        return Err(KernelError::Shape(format!(
            "{} bytes do not decode as {} into {} values",
            src.len(),
            ty.name(),
            dst.len()
        )));
    }
    match ty.block_type() {
        None => {
            for (o, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        Some(bt) => crate::blocks::dequantize_row(bt, src, dst),
    }
    Ok(())
}

/// Value `i` of a row of halves.
#[inline]
pub(crate) fn f16_value(row: &[u8], i: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([row[2 * i], row[2 * i + 1]]))
}

/// Value `i` of a row of Q8_0 blocks: `d · q`, exact in f32 (11 by 8 significant bits).
#[inline]
pub(crate) fn q8_0_value(row: &[u8], i: usize) -> f32 {
    let b = &row[34 * (i / 32)..];
    f16_to_f32(u16::from_le_bytes([b[0], b[1]])) * f32::from(b[2 + i % 32] as i8)
}

/// Values `c0..c0 + out.len()` of a row of halves or Q8_0 blocks (`ty`), exactly: each block's
/// scale converted once (the prefill attention packs values 16 at a time with this).
pub(crate) fn decode_values(ty: KvType, row: &[u8], c0: usize, out: &mut [f32]) {
    match ty {
        KvType::F32 => {
            for (i, o) in out.iter_mut().enumerate() {
                let b = &row[4 * (c0 + i)..];
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        KvType::F16 => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = f16_value(row, c0 + i);
            }
        }
        KvType::Q8_0 => {
            let end = c0 + out.len();
            let mut c = c0;
            while c < end {
                let stop = ((c / 32 + 1) * 32).min(end);
                let block = &row[34 * (c / 32)..34 * (c / 32 + 1)];
                let d = f16_to_f32(u16::from_le_bytes([block[0], block[1]]));
                for (o, &q) in out[c - c0..stop - c0]
                    .iter_mut()
                    .zip(&block[2 + c % 32..2 + (stop - 1) % 32 + 1])
                {
                    *o = d * f32::from(q as i8);
                }
                c = stop;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sizes_are_ggml_s() {
        for t in KvType::ALL {
            assert_eq!(KvType::parse(t.name()), Some(t));
        }
        assert_eq!(KvType::parse("Q8_0"), Some(KvType::Q8_0));
        assert_eq!(KvType::parse("q4_0"), None);
        assert_eq!(KvType::Q8_0.bytes_of(64), 68);
        assert_eq!(KvType::F16.bytes_of(64), 128);
        assert!(KvType::Q8_0.check_head_dim(48).is_err());
        assert!(KvType::Q8_0.check_head_dim(96).is_ok());
        assert!(KvType::F16.check_head_dim(17).is_ok());
    }

    #[test]
    fn q8_0_rows_match_the_definition_within_half_a_step() {
        // An independent f64 model of the format: d = amax / 127 stored as a half, codes
        // round(x · 127 / amax) (as ggml rounds); decoding gives d · q.
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 7919 % 263) as f32 - 131.0) / 17.0)
            .collect();
        let mut bytes = vec![0u8; 68];
        encode_kv_row(KvType::Q8_0, &x, &mut bytes).unwrap();
        let mut back = vec![0.0f32; 64];
        decode_kv_row(KvType::Q8_0, &bytes, &mut back).unwrap();
        for (b, xs) in x.chunks(32).enumerate() {
            let amax = xs.iter().map(|v| f64::from(v.abs())).fold(0.0, f64::max);
            let d = f64::from(crate::half::f16_to_f32(u16::from_le_bytes([
                bytes[34 * b],
                bytes[34 * b + 1],
            ])));
            assert!((d - amax / 127.0).abs() <= amax / 127.0 * 1e-3, "{d}");
            for (i, &v) in xs.iter().enumerate() {
                let q = bytes[34 * b + 2 + i] as i8;
                let exact = f64::from(v) * 127.0 / amax;
                assert!((f64::from(q) - exact).abs() <= 0.5 + 1e-5, "{q} vs {exact}");
                assert_eq!(f64::from(back[32 * b + i]), d * f64::from(q));
            }
        }
        // Any range decodes as the whole row does.
        for (c0, len) in [(0, 64), (16, 16), (30, 5), (31, 33), (63, 1)] {
            let mut part = vec![0.0f32; len];
            decode_values(KvType::Q8_0, &bytes, c0, &mut part);
            assert_eq!(part, back[c0..c0 + len], "{c0}+{len}");
        }
        let mut small = [0u8; 34];
        assert!(encode_kv_row(KvType::Q8_0, &x[..31], &mut small).is_err());
    }

    #[test]
    fn f16_rows_round_to_nearest() {
        let x = [1.0f32, 1.0 + 1.0 / 4096.0, -65504.0, 1e-8];
        let mut bytes = [0u8; 8];
        encode_kv_row(KvType::F16, &x, &mut bytes).unwrap();
        let mut back = [0.0f32; 4];
        decode_kv_row(KvType::F16, &bytes, &mut back).unwrap();
        assert_eq!(back, [1.0, 1.0, -65504.0, 0.0]);
    }
}
