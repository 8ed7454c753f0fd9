//! Dequantization of ggml blocks to f32, with gguf-py's (`gguf.quants`) order of operations so
//! that results are bit-identical to it: each value is one f32 product (plus, for types with a
//! minimum, one f32 addition or subtraction of a precomputed f32 product); no fused multiply-add.

use super::types::GgmlType;

pub(crate) use crate::half::f16_to_f32;

#[inline]
fn le16(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_to_f32(le16(b, i))
}

/// Dequantizes whole blocks of `format` into `out` (`out.len()` values).
pub(crate) fn dequantize_blocks(format: super::BlockFormat, data: &[u8], out: &mut [f32]) {
    dequantize(format.ggml_type(), data, out);
}

/// Dequantizes `data` (whole blocks of `ty`) into `out`; `out.len()` is the number of values
/// `data` holds. The caller has checked the sizes and that `ty` is supported.
pub(crate) fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
            }
        }
        GgmlType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(data.chunks_exact(34)) {
                let d = f16_at(b, 0);
                for (o, &q) in o.iter_mut().zip(&b[2..34]) {
                    *o = f32::from(q as i8) * d;
                }
            }
        }
        GgmlType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(data.chunks_exact(18)) {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                for j in 0..16 {
                    o[j] = d * f32::from((qs[j] & 0x0f) as i8 - 8);
                    o[j + 16] = d * f32::from((qs[j] >> 4) as i8 - 8);
                }
            }
        }
        GgmlType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(data.chunks_exact(20)) {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                let qs = &b[4..20];
                for j in 0..16 {
                    o[j] = d * f32::from(qs[j] & 0x0f) + m;
                    o[j + 16] = d * f32::from(qs[j] >> 4) + m;
                }
            }
        }
        GgmlType::Q5_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(data.chunks_exact(22)) {
                let d = f16_at(b, 0);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                let qs = &b[6..22];
                for (i, o) in o.iter_mut().enumerate() {
                    let lo = (qs[i % 16] >> (4 * (i / 16))) & 0x0f;
                    let hi = ((qh >> i) & 1) as u8;
                    *o = d * f32::from((lo | (hi << 4)) as i8 - 16);
                }
            }
        }
        GgmlType::Q5_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(data.chunks_exact(24)) {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                let qs = &b[8..24];
                for (i, o) in o.iter_mut().enumerate() {
                    let lo = (qs[i % 16] >> (4 * (i / 16))) & 0x0f;
                    let hi = ((qh >> i) & 1) as u8;
                    *o = d * f32::from(lo | (hi << 4)) + m;
                }
            }
        }
        GgmlType::Q4_K => {
            for (o, b) in out.chunks_exact_mut(256).zip(data.chunks_exact(144)) {
                let d = f16_at(b, 0);
                let dmin = f16_at(b, 2);
                let (sc, mn) = scale_min_k4(&b[4..16]);
                let qs = &b[16..144];
                for s in 0..8 {
                    let ds = d * f32::from(sc[s]);
                    let ms = dmin * f32::from(mn[s]);
                    let chunk = &qs[(s / 2) * 32..(s / 2) * 32 + 32];
                    let shift = 4 * (s % 2);
                    for (k, o) in o[s * 32..s * 32 + 32].iter_mut().enumerate() {
                        let q = (chunk[k] >> shift) & 0x0f;
                        *o = ds * f32::from(q) - ms;
                    }
                }
            }
        }
        GgmlType::Q5_K => {
            for (o, b) in out.chunks_exact_mut(256).zip(data.chunks_exact(176)) {
                let d = f16_at(b, 0);
                let dmin = f16_at(b, 2);
                let (sc, mn) = scale_min_k4(&b[4..16]);
                let qh = &b[16..48];
                let qs = &b[48..176];
                for s in 0..8 {
                    let ds = d * f32::from(sc[s]);
                    let ms = dmin * f32::from(mn[s]);
                    let chunk = &qs[(s / 2) * 32..(s / 2) * 32 + 32];
                    let shift = 4 * (s % 2);
                    for (k, o) in o[s * 32..s * 32 + 32].iter_mut().enumerate() {
                        let lo = (chunk[k] >> shift) & 0x0f;
                        let hi = (qh[k] >> s) & 1;
                        *o = ds * f32::from(lo | (hi << 4)) - ms;
                    }
                }
            }
        }
        GgmlType::Q6_K => {
            for (o, b) in out.chunks_exact_mut(256).zip(data.chunks_exact(210)) {
                let ql = &b[0..128];
                let qh = &b[128..192];
                let scales = &b[192..208];
                let d = f16_at(b, 208);
                for (e, o) in o.iter_mut().enumerate() {
                    let half = e / 128;
                    let r = e % 128;
                    let lo = (ql[half * 64 + r % 64] >> (4 * (r / 64))) & 0x0f;
                    let hi = (qh[half * 32 + r % 32] >> (2 * (r / 32))) & 0x03;
                    let q = (lo | (hi << 4)) as i8 - 32;
                    let ds = d * f32::from(scales[e / 16] as i8);
                    *o = ds * f32::from(q);
                }
            }
        }
        // Unsupported types are refused before this is called.
        _ => out.fill(f32::NAN),
    }
}

/// The 8 six-bit scales and mins of a Q4_K/Q5_K block from its 12 packed bytes.
fn scale_min_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 0x3f;
        mn[j] = s[j + 4] & 0x3f;
        sc[j + 4] = (s[j + 8] & 0x0f) | ((s[j] >> 2) & 0x30);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 2) & 0x30);
    }
    (sc, mn)
}
