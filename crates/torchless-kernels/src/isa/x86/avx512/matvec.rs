//! int4 decode rows with `vpdpbusd`: 256-bit vectors for one to three inputs (bound by the weight
//! stream), 512-bit for passes of four (bound by arithmetic).

use super::Avx512;
use crate::int4::{
    assert_row_shapes, pair_lane, reduce_lanes, Int4Input, BLOCK_GROUPS, BLOCK_X_BYTES, LANE_GROUP,
};
use crate::isa::traits::Int4Matvec;
use crate::mat::Int4Mat;
use core::arch::x86_64::*;

/// Prefetch distance along each row stream, in bytes of codes: far enough ahead for the whole
/// model's decode to stream at full speed (a lone matrix prefers less; the model is what counts).
const PF_INT4_BYTES: usize = 2048;
/// Code bytes per block of 8 groups.
const BLOCK_CODE_BYTES: usize = BLOCK_GROUPS * 16;
/// Inputs taken together per pass over a row pair (the rest in smaller passes).
const MULTI_B: usize = crate::int4::TRANSPOSED_MIN_BATCH;

/// Two rows' block `b` (8 groups each: `codes[r]` 128 bytes, `scales[r]` 8 halves), added into
/// the pair's 16 lanes of each input (`acc[i][0]` lanes 0-7, `acc[i][1]` lanes 8-15): lane
/// `4k + j` holds row `j / 2`'s group `k + 4 · (j % 2)` (`int4::pair_lane`).
///
/// 256-bit vectors: decode streams weights from memory, and the core slows down while 512-bit
/// arithmetic runs, so 256-bit adds stream faster. `vpdpbusd` on 256 bits needs AVX-512 VL + VNNI
/// (or AVX-VNNI). The prefill micro-kernel, bound by arithmetic, keeps 512 bits.
///
/// # Safety
/// The token's features must be available; `codes[r]` must point to 128 bytes, `scales[r]` to 8
/// halves, and every input must hold block `b`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn i4_pair_block<const B: usize>(
    codes: [*const u8; 2],
    scales: [*const u16; 2],
    b: usize,
    acc: &mut [[__m256; 2]; B],
    inputs: [&Int4Input; B],
) {
    let mask = _mm256_set1_epi8(0x0f);
    // The 16 scales in lane order: lane 4k + j takes half k + 4 (j % 2) + 8 (j / 2) of
    // [row 0's 8, row 1's 8].
    // SAFETY: caller contract: 8 halves per row.
    let halves = unsafe { _mm256_loadu2_m128i(scales[1].cast(), scales[0].cast()) };
    let order = _mm256_setr_epi16(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    let ordered = _mm256_permutexvar_epi16(order, halves);
    let d = [
        _mm256_cvtph_ps(_mm256_castsi256_si128(ordered)),
        _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(ordered)),
    ];
    // Lanes 0-7 come from 128-bit lanes 0-1 of the 512-bit layout (groups 0-1 of each quad),
    // lanes 8-15 from 128-bit lanes 2-3 (groups 2-3): `part` picks the 32 bytes of each 64.
    for part in 0..2 {
        // [lo of groups 0-3, hi of 0-3, lo of 4-7, hi of 4-7] for each row, this part's two
        // groups of each quad: group k's 16 bytes in 128-bit lane k % 2; low nibbles are
        // values 0..16.
        let mut nib = [[_mm256_setzero_si256(); 4]; 2];
        for (r, n) in nib.iter_mut().enumerate() {
            for quad in 0..2 {
                // SAFETY: caller contract: 128 code bytes per row.
                let c = unsafe { _mm256_loadu_si256(codes[r].add(quad * 64 + part * 32).cast()) };
                n[2 * quad] = _mm256_and_si256(c, mask);
                n[2 * quad + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(c), mask);
            }
        }
        for (a, input) in acc.iter_mut().zip(inputs) {
            // SAFETY: caller contract: the input holds block b (256 activation bytes, 16 lanes).
            let (x, offsets, steps) = unsafe {
                (
                    input.xq.as_ptr().add(b * BLOCK_X_BYTES + part * 32),
                    _mm256_loadu_si256(input.offsets16.as_ptr().add(b * 16 + part * 8).cast()),
                    _mm256_loadu_ps(input.steps16.as_ptr().add(b * 16 + part * 8)),
                )
            };
            // Per row and quad of groups: codes (u8) x activations (i8), four products per i32
            // lane (vpdpbusd), each 128-bit lane's four i32 belonging to one group.
            let mut sums = [_mm256_setzero_si256(); 4];
            for (r, n) in nib.iter().enumerate() {
                for quad in 0..2 {
                    // SAFETY: caller contract (see above): quad's 128 bytes are in block b.
                    let (xlo, xhi) = unsafe {
                        (
                            _mm256_loadu_si256(x.add(quad * 128).cast()),
                            _mm256_loadu_si256(x.add(quad * 128 + 64).cast()),
                        )
                    };
                    let s = _mm256_dpbusd_epi32(_mm256_setzero_si256(), n[2 * quad], xlo);
                    sums[2 * r + quad] = _mm256_dpbusd_epi32(s, n[2 * quad + 1], xhi);
                }
            }
            // [A, B, C, D] = row 0 groups 0-3, row 0 groups 4-7, row 1 groups 0-3, row 1
            // groups 4-7 (this part's two groups of each), each 128-bit lane k holding four
            // partial sums of one group. Two rounds of unpack-and-add leave [A_k, B_k, C_k,
            // D_k] in lane k: the order above.
            let [a0, b0, c0, d0] = sums;
            let ab = _mm256_add_epi32(_mm256_unpacklo_epi32(a0, b0), _mm256_unpackhi_epi32(a0, b0));
            let cd = _mm256_add_epi32(_mm256_unpacklo_epi32(c0, d0), _mm256_unpackhi_epi32(c0, d0));
            let h = _mm256_add_epi32(_mm256_unpacklo_epi64(ab, cd), _mm256_unpackhi_epi64(ab, cd));
            let v = _mm256_cvtepi32_ps(_mm256_sub_epi32(h, offsets));
            a[part] = _mm256_fmadd_ps(v, _mm256_mul_ps(d[part], steps), a[part]);
        }
    }
}

/// Rows `rows[0]` and `rows[1]` (their codes and scales at `packed[r]`, `scales[r]`) with `B`
/// inputs; each (row, input) result bit-identical to the scalar `row_dot`.
///
/// # Safety
/// The token's features must be available; each `packed[r]` must point to `groups * 16` bytes
/// and each `scales[r]` to `groups` halves; each input must hold `groups.div_ceil(8)` blocks.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn i4_pair_multi<const B: usize>(
    packed: [*const u8; 2],
    scales: [*const u16; 2],
    groups: usize,
    inputs: [&Int4Input; B],
) -> [[f32; B]; 2] {
    let mut acc = [[_mm256_setzero_ps(); 2]; B];
    let full = groups / BLOCK_GROUPS;
    for b in 0..full {
        let codes = packed.map(|p| p.wrapping_add(b * BLOCK_CODE_BYTES));
        for c in codes {
            for line in [0, 64] {
                // A prefetch is a hint: it never faults, whatever the address.
                _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(PF_INT4_BYTES + line).cast());
            }
        }
        // SAFETY: caller contract: block b < full lies inside both rows and every input.
        unsafe {
            i4_pair_block(
                codes,
                scales.map(|s| s.add(b * BLOCK_GROUPS)),
                b,
                &mut acc,
                inputs,
            )
        };
    }
    let rest = groups - full * BLOCK_GROUPS;
    if rest > 0 {
        // A short last block: zero-padded copies (zero codes and scales, as the scalar `row_dot`).
        // SAFETY: caller contract: the rows hold `groups` groups, so `rest` more from `full`.
        let (codes, halves) = unsafe { padded_last_block(packed, scales, full, rest) };
        // SAFETY: the padded copies hold a whole block; every input holds block `full`.
        unsafe {
            i4_pair_block(
                [codes[0].as_ptr(), codes[1].as_ptr()],
                [halves[0].as_ptr(), halves[1].as_ptr()],
                full,
                &mut acc,
                inputs,
            )
        };
    }
    // Each row's 8 lanes into the canonical lane order (`int4::LANE_GROUP`), then the fixed
    // reduction.
    let mut out = [[0.0f32; B]; 2];
    for (i, a) in acc.iter().enumerate() {
        let mut lanes = [0.0f32; 16];
        // SAFETY: `lanes` holds 16 floats, 8 per store.
        unsafe {
            _mm256_storeu_ps(lanes.as_mut_ptr(), a[0]);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8), a[1]);
        }
        for (r, row) in out.iter_mut().enumerate() {
            let canonical: [f32; 8] = std::array::from_fn(|m| {
                let g = LANE_GROUP[m];
                lanes[pair_lane(g, r)]
            });
            row[i] = reduce_lanes(canonical);
        }
    }
    out
}

/// Two rows' block `b` with `B` inputs, the weights transposed once for all inputs (several
/// inputs: a batch of sequences' decode step), on 512-bit vectors: row 0 in the low 256 bits,
/// row 1 in the high 256 bits of each vector, every input's codes broadcast to both halves.
/// Vector `k` (0..4) of a row holds dword `k` of each of its 8 groups' 16 code bytes, group
/// `LANE_GROUP[m]` in lane `m`; its low nibbles are values `4k ..`, its high nibbles values
/// `16 + 4k ..` of those groups, which meet the input's transposed codes ([`Int4Input::xt`]).
/// Eight `vpdpbusd` (two chains of four, one starting from `− 8 · Σ xq`, the codes' offset) then
/// leave each group's whole sum in its own lane, in the order of `int4::LANE_GROUP`: no
/// reduction per input, only per row at the end. `acc[i]` holds input `i`'s lanes: row 0's 8,
/// then row 1's 8.
///
/// 512 bits here, unlike the one-input kernels: with four inputs the block is bound by
/// arithmetic, not by the weight stream, and this core runs 512-bit `vpdpbusd` at the 256-bit
/// rate (measured: 2 per cycle either way), so each instruction does twice the work. Against the
/// same kernel on 256 bits: +28% on a matrix in cache, 7B 4-sequence decode +7%.
///
/// # Safety
/// The token's features must be available; `codes[r]` must point to 128 bytes, `scales[r]` to 8
/// halves, and every input must hold block `b` in `xt`, `neg_offsets` and `steps`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn i4_pair_block_transposed<const B: usize>(
    codes: [*const u8; 2],
    scales: [*const u16; 2],
    b: usize,
    acc: &mut [__m512; B],
    inputs: [&Int4Input; B],
) {
    let mask = _mm512_set1_epi8(0x0f);
    // Halves 0, 2, 4, 6, 1, 3, 5, 7: the scales in lane order.
    let scale_order = _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
    // c[i]: both rows' groups 2i, 2i + 1 (row 0 in 128-bit lanes 0-1, row 1 in lanes 2-3).
    // SAFETY: caller contract: 128 code bytes per row.
    let c: [__m512i; 4] = std::array::from_fn(|i| unsafe {
        _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm256_loadu_si256(codes[0].add(32 * i).cast())),
            _mm256_loadu_si256(codes[1].add(32 * i).cast()),
        )
    });
    // Per 128-bit lane, a 4x4 transpose of dwords: [g0 g2 g0 g2 | g1 g3 g1 g3] dwords (0, 1)
    // and (2, 3), then with groups 4-7: vector k = dword k of [g0 g2 g4 g6 | g1 g3 g5 g7].
    let lo01 = _mm512_unpacklo_epi32(c[0], c[1]);
    let hi01 = _mm512_unpackhi_epi32(c[0], c[1]);
    let lo23 = _mm512_unpacklo_epi32(c[2], c[3]);
    let hi23 = _mm512_unpackhi_epi32(c[2], c[3]);
    let t = [
        _mm512_unpacklo_epi64(lo01, lo23),
        _mm512_unpackhi_epi64(lo01, lo23),
        _mm512_unpacklo_epi64(hi01, hi23),
        _mm512_unpackhi_epi64(hi01, hi23),
    ];
    let mut nib = [_mm512_setzero_si512(); 8];
    for (k, &v) in t.iter().enumerate() {
        nib[k] = _mm512_and_si512(v, mask);
        nib[4 + k] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask);
    }
    // SAFETY: caller contract: 8 halves per row.
    let d: [__m256; 2] = std::array::from_fn(|r| unsafe {
        _mm256_cvtph_ps(_mm_shuffle_epi8(
            _mm_loadu_si128(scales[r].cast()),
            scale_order,
        ))
    });
    let d = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
        _mm512_castpd256_pd512(_mm256_castps_pd(d[0])),
        _mm256_castps_pd(d[1]),
    ));
    for (i, input) in inputs.iter().enumerate() {
        // SAFETY: caller contract: the input holds block b (256 transposed bytes, 8 lanes).
        let (x, neg_offsets, steps) = unsafe {
            (
                input.xt.as_ptr().add(b * BLOCK_X_BYTES),
                _mm512_broadcast_i64x4(_mm256_loadu_si256(
                    input.neg_offsets.as_ptr().add(b * 8).cast(),
                )),
                _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(
                    input.steps.as_ptr().add(b * 8),
                )))),
            )
        };
        // SAFETY: as above, 8 vectors of 32 bytes.
        let xv: [__m512i; 8] = std::array::from_fn(|v| unsafe {
            _mm512_broadcast_i64x4(_mm256_loadu_si256(x.add(32 * v).cast()))
        });
        // Two chains of four (values 0..16 and 16..32) to overlap the latency.
        let mut lo = neg_offsets;
        let mut hi = _mm512_setzero_si512();
        for k in 0..4 {
            lo = _mm512_dpbusd_epi32(lo, nib[k], xv[k]);
            hi = _mm512_dpbusd_epi32(hi, nib[4 + k], xv[4 + k]);
        }
        let v = _mm512_cvtepi32_ps(_mm512_add_epi32(lo, hi));
        acc[i] = _mm512_fmadd_ps(v, _mm512_mul_ps(d, steps), acc[i]);
    }
}

/// [`i4_pair_multi`] with the weights transposed once per block for all `B` inputs
/// ([`i4_pair_block_transposed`]); each (row, input) result bit-identical to the scalar
/// `row_dot`.
///
/// # Safety
/// As [`i4_pair_multi`], and every input must hold its transposed codes (`xt`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn i4_pair_multi_transposed<const B: usize>(
    packed: [*const u8; 2],
    scales: [*const u16; 2],
    groups: usize,
    inputs: [&Int4Input; B],
) -> [[f32; B]; 2] {
    let mut acc = [_mm512_setzero_ps(); B];
    let full = groups / BLOCK_GROUPS;
    let rest = groups - full * BLOCK_GROUPS;
    // A short last block is read from zero-padded copies (zero codes and scales, as the scalar
    // `row_dot`).
    let (padded_codes, padded_halves) = if rest > 0 {
        // SAFETY: caller contract: the rows hold `groups` groups, so `rest` more from `full`.
        unsafe { padded_last_block(packed, scales, full, rest) }
    } else {
        ([[0; BLOCK_CODE_BYTES]; 2], [[0; BLOCK_GROUPS]; 2])
    };
    // One call site, so that the block is inlined and the accumulators stay in registers (with
    // a second call for the last block they went through memory on every block).
    for b in 0..groups.div_ceil(BLOCK_GROUPS) {
        let (codes, halves) = if b < full {
            (
                packed.map(|p| p.wrapping_add(b * BLOCK_CODE_BYTES)),
                scales.map(|s| s.wrapping_add(b * BLOCK_GROUPS)),
            )
        } else {
            (
                [padded_codes[0].as_ptr(), padded_codes[1].as_ptr()],
                [padded_halves[0].as_ptr(), padded_halves[1].as_ptr()],
            )
        };
        for c in codes {
            for line in [0, 64] {
                // A prefetch is a hint: it never faults, whatever the address.
                _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(PF_INT4_BYTES + line).cast());
            }
        }
        // SAFETY: caller contract: block b < full lies inside both rows and every input; the
        // padded copies hold a whole block and every input holds block `full`.
        unsafe { i4_pair_block_transposed(codes, halves, b, &mut acc, inputs) };
    }
    // Each input's 16 lanes: row 0's 8, then row 1's 8, already in the canonical order
    // (`int4::LANE_GROUP`).
    let mut out = [[0.0f32; B]; 2];
    for (i, a) in acc.iter().enumerate() {
        let mut lanes = [0.0f32; 16];
        // SAFETY: `lanes` holds 16 floats.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), *a) };
        for (r, row) in out.iter_mut().enumerate() {
            let mut row_lanes = [0.0f32; 8];
            row_lanes.copy_from_slice(&lanes[8 * r..8 * r + 8]);
            row[i] = reduce_lanes(row_lanes);
        }
    }
    out
}

/// Zero-padded copies of the two rows' short last block (`rest` groups from block `full`).
///
/// # Safety
/// Each `packed[r]` must hold `(8 · full + rest) * 16` bytes and `scales[r]` `8 · full + rest`
/// halves.
#[allow(clippy::type_complexity)]
unsafe fn padded_last_block(
    packed: [*const u8; 2],
    scales: [*const u16; 2],
    full: usize,
    rest: usize,
) -> ([[u8; BLOCK_CODE_BYTES]; 2], [[u16; BLOCK_GROUPS]; 2]) {
    let first = full * BLOCK_GROUPS;
    let mut codes = [[0u8; BLOCK_CODE_BYTES]; 2];
    let mut halves = [[0u16; BLOCK_GROUPS]; 2];
    for r in 0..2 {
        // SAFETY: caller contract: the rows hold `rest` more groups from `first`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                packed[r].add(first * 16),
                codes[r].as_mut_ptr(),
                rest * 16,
            );
            std::ptr::copy_nonoverlapping(scales[r].add(first), halves[r].as_mut_ptr(), rest);
        }
    }
    (codes, halves)
}

/// `yt[i * batch + b]` = row `r0 + i` of `w` times input `b`, for every row of `yt / batch`:
/// rows taken in pairs (`i` and `i + n/2`, two memory streams), each weight row read once for
/// all inputs, each result bit-identical to the scalar `row_dot`.
fn matvec_i4_multi(_t: Avx512, w: &Int4Mat<'_>, inputs: &[Int4Input], r0: usize, yt: &mut [f32]) {
    let (batch, groups, out_rows) = assert_row_shapes(w, inputs, r0, yt);
    let (pp, sp) = (w.packed().as_ptr(), w.scales().as_ptr());
    // Several inputs with their transposed codes: the weights transposed once for all of them
    // (fewer instructions per input); one input keeps the kernel without a transpose.
    let transposed = batch >= MULTI_B && inputs.iter().all(|x| !x.xt.is_empty());
    let stride = out_rows.div_ceil(2);
    for i in 0..stride {
        let (ia, ib) = (i, i + stride);
        // An odd last row is paired with itself (its second result is dropped).
        let pair = [r0 + ia, r0 + ib.min(out_rows - 1)];
        let mut b0 = 0;
        while b0 < batch {
            macro_rules! pass {
                ($kernel:ident, $B:expr) => {{
                    // SAFETY: token ⇒ the features; both rows < r0 + out_rows <= w.rows(), so
                    // their `groups * 16` code bytes and `groups` scales are in bounds, and every
                    // input holds the blocks (asserted above), transposed too if `transposed`.
                    let v = unsafe {
                        $kernel::<{ $B }>(
                            pair.map(|r| pp.add(r * groups * 16)),
                            pair.map(|r| sp.add(r * groups)),
                            groups,
                            std::array::from_fn(|j| &inputs[b0 + j]),
                        )
                    };
                    yt[ia * batch + b0..][..$B].copy_from_slice(&v[0]);
                    if ib < out_rows {
                        yt[ib * batch + b0..][..$B].copy_from_slice(&v[1]);
                    }
                    b0 += $B;
                }};
            }
            // Passes of 4 inputs take the transposed weights; fewer (batches of 2-3, the rest
            // of a larger one) the kernel without a transpose, measured faster there (batch 2:
            // 13.0 vs 13.5 tok/s on 7B). Both give the same bits.
            match batch - b0 {
                1 => pass!(i4_pair_multi, 1),
                2 => pass!(i4_pair_multi, 2),
                3 => pass!(i4_pair_multi, 3),
                _ if transposed => pass!(i4_pair_multi_transposed, MULTI_B),
                _ => pass!(i4_pair_multi, MULTI_B),
            }
        }
    }
}

impl Int4Matvec for Avx512 {
    fn rows(self, w: &Int4Mat<'_>, inputs: &[Int4Input], r0: usize, yt: &mut [f32]) {
        matvec_i4_multi(self, w, inputs, r0, yt);
    }
}
