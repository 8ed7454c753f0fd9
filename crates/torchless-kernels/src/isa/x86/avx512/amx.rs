//! The ggml-block GEMM tile on AMX (Intel Xeon since Sapphire Rapids): `tdpbusd` multiplies a
//! 16-row tile of unsigned weight codes by a tile of signed activation codes, 16 x 16 exact
//! integer sums of a sub-block per instruction (16 x 16 x 32 multiply-adds), where one `vpdpbusd`
//! does 16 x 4. The sums are then scaled and added in AVX-512 exactly as the other tiles do, so
//! the results are bit-identical to decode.
//!
//! Rust has no stable AMX intrinsics: the five tile instructions are inline assembly, on fixed
//! tile registers (`tmm0` the sums, `tmm1` the weights, `tmm2` the activations), which nothing
//! else in the program uses. Linux hands out the tile state only on request
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), made once by [`Amx::detect`].

use super::Avx512;
use crate::block_input::{ActKind, BLOCK_LANES};
use crate::isa::traits::{BlockMicro, BlockTile, QNR};
use crate::isa::x86::avx2;
use core::arch::asm;
use core::arch::x86_64::*;

/// Tokens per sliver: the 16 columns of a result tile.
pub(crate) const AMX_MR: usize = 16;

/// Proof that the CPU has AMX-TILE and AMX-INT8, that the OS granted this process the tile
/// state, and the AVX-512 features (it carries the [`Avx512`] token).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Amx(Avx512);

impl Amx {
    /// `Some` when the CPU has AMX-INT8 and the kernel lets this process use the tiles.
    pub(crate) fn detect(avx512: Avx512) -> Option<Amx> {
        // CPUID leaf 7: EDX bit 24 AMX-TILE, bit 25 AMX-INT8.
        let leaf7 = __cpuid_count(7, 0);
        if (leaf7.edx >> 24) & 3 != 3 {
            return None;
        }
        #[cfg(target_os = "linux")]
        {
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: a plain system call with integer arguments; it only changes which
            // register state the kernel lets this process use.
            let granted = unsafe {
                libc::syscall(
                    libc::SYS_arch_prctl,
                    ARCH_REQ_XCOMP_PERM,
                    XFEATURE_XTILEDATA,
                )
            };
            (granted == 0).then_some(Amx(avx512))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = avx512;
            None
        }
    }
}

/// A tile configuration (palette 1): `tmm0`..`tmm3` 16 x 16 i32 sums; `tmm4`, `tmm6` 16 weight
/// rows of `sv` code bytes; `tmm5`, `tmm7` `sv / 4` rows of 16 tokens' 4 activation bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    const fn new(sv: usize) -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        let (sums, weights, acts) = ((16u8, 64u16), (16u8, sv as u16), ((sv / 4) as u8, 64u16));
        let tiles = [sums, sums, sums, sums, weights, acts, weights, acts];
        let mut t = 0;
        // Bytes per row (a u16 per tile from byte 16), rows (a u8 per tile from byte 48).
        while t < 8 {
            let (rows, colsb) = tiles[t];
            c[16 + 2 * t] = colsb as u8;
            c[17 + 2 * t] = (colsb >> 8) as u8;
            c[48 + t] = rows;
            t += 1;
        }
        TileConfig(c)
    }
}

static CONFIG_SUB32: TileConfig = TileConfig::new(32);
static CONFIG_SUB16: TileConfig = TileConfig::new(16);

/// The 16 x 16 sums of 4 consecutive sub-blocks, stored 1 KiB apart.
#[repr(C, align(64))]
struct Sums([i32; 4 * 256]);

/// The sums of sub-blocks `u..u + 4` into `tmm0`..`tmm3`: four independent `tdpbusd`, their
/// operand tiles alternating between two register pairs.
///
/// # Safety
/// The tile configuration for `SV` must be loaded; rows `w` (16 rows `stride` apart) hold
/// depths `u * SV..(u + 4) * SV` and `a` the sliver's words from sub-block `u` on (4 · `SV`
/// words).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn compute4<const SV: usize>(w: *const u8, stride: usize, a: *const u32) {
    // SAFETY: as the caller guarantees.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "tileloadd tmm4, [{w} + {ws}*1]",
            "tileloadd tmm5, [{a} + {as_}*1]",
            "tdpbusd tmm0, tmm4, tmm5",
            "tileloadd tmm6, [{w} + {ws}*1 + {w1}]",
            "tileloadd tmm7, [{a} + {as_}*1 + {a1}]",
            "tdpbusd tmm1, tmm6, tmm7",
            "tileloadd tmm4, [{w} + {ws}*1 + {w2}]",
            "tileloadd tmm5, [{a} + {as_}*1 + {a2}]",
            "tdpbusd tmm2, tmm4, tmm5",
            "tileloadd tmm6, [{w} + {ws}*1 + {w3}]",
            "tileloadd tmm7, [{a} + {as_}*1 + {a3}]",
            "tdpbusd tmm3, tmm6, tmm7",
            w = in(reg) w,
            ws = in(reg) stride,
            a = in(reg) a,
            as_ = in(reg) 64usize,
            w1 = const SV,
            w2 = const 2 * SV,
            w3 = const 3 * SV,
            a1 = const SV * 16,
            a2 = const 2 * SV * 16,
            a3 = const 3 * SV * 16,
            options(nostack, readonly),
        );
    }
}

/// Stores `tmm0`..`tmm3` into `sums`, 1 KiB apart.
///
/// # Safety
/// The tile configuration must be loaded.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store4(sums: &mut Sums) {
    // SAFETY: the stores write the 4 KiB of `sums`.
    unsafe {
        asm!(
            "tilestored [{c} + {cs}*1], tmm0",
            "tilestored [{c} + {cs}*1 + 1024], tmm1",
            "tilestored [{c} + {cs}*1 + 2048], tmm2",
            "tilestored [{c} + {cs}*1 + 3072], tmm3",
            c = in(reg) sums.0.as_mut_ptr(),
            cs = in(reg) 64usize,
            options(nostack),
        );
    }
}

/// The sums of one sub-block into the first 1 KiB of `sums`.
///
/// # Safety
/// As [`sums4`], for one sub-block.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn sums1(w: *const u8, stride: usize, a: *const u32, sums: &mut Sums) {
    // SAFETY: as the caller guarantees; the store writes the first 1 KiB of `sums`.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tileloadd tmm4, [{w} + {ws}*1]",
            "tileloadd tmm5, [{a} + {as_}*1]",
            "tdpbusd tmm0, tmm4, tmm5",
            "tilestored [{c} + {cs}*1], tmm0",
            w = in(reg) w,
            ws = in(reg) stride,
            a = in(reg) a,
            as_ = in(reg) 64usize,
            c = in(reg) sums.0.as_mut_ptr(),
            cs = in(reg) 64usize,
            options(nostack),
        );
    }
}

/// Sub-blocks four at a time on the tiles, software-pipelined: the next four are multiplied
/// while the vector code scales and adds the last four, and stored only after it has read them
/// (a load behind a tile store waits for it). Per sub-block and weight row (a
/// register of 16 tokens): `− o · Σ q`, the integer scale, into the block sum; per block the
/// mins with `vpdpwssd` and the two scaled additions into the block's lane.
///
/// # Safety
/// AMX and the token's AVX-512 features must be available with the tile state granted; `t` and
/// `lanes` must pass `BlockTile::assert_tile` with `t.mr == AMX_MR` reading rows, and the
/// quads per sub-block must be `SV / 4`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn amx_tile_raw<const OFF: bool, const SCALED: bool, const SV: usize, const MINS: bool>(
    t: &BlockTile<'_>,
    lanes: *mut f32,
) {
    let mut bufs = [Sums([0; 1024]), Sums([0; 1024])];
    let config = if SV == 32 {
        &CONFIG_SUB32
    } else {
        &CONFIG_SUB16
    };
    let units = t.blocks * t.subs;
    let (w, a, stride) = (t.b_rows.as_ptr(), t.a.as_ptr(), t.kc);
    // Sub-block `u`'s weights and activations.
    let w_at = |u: usize| w.wrapping_add(u * SV);
    let a_at = |u: usize| a.wrapping_add(u * SV / 4 * AMX_MR);
    let mut s = [_mm512_setzero_si512(); QNR];
    // SAFETY: (whole body) the tile configuration is valid for palette 1; the tile loads read
    // 16 rows of `SV` bytes `kc` apart from the panel's rows at depths below `kc`, and `SV / 4`
    // rows of 64 bytes of the sliver's activations of sub-blocks below `units` (the extents
    // `assert_tile` checked); the vector reads and writes stay inside those extents too
    // (per-token arrays 16 entries per item, per-row arrays `QNR` per item, lane rows
    // `(j * 8 + lane) * 16 ..+16`).
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
        // One sub-block's sums (16 rows of 16 tokens at `sums`) into the block sum, and the
        // block's lane update after its last sub-block.
        let mut add_unit = |u: usize, sums: *const i32| {
            let (blk, first, last) = (
                u / t.subs,
                u.is_multiple_of(t.subs),
                u % t.subs == t.subs - 1,
            );
            let off = if OFF {
                _mm512_loadu_si512(t.a_off.as_ptr().add(u * AMX_MR).cast())
            } else {
                _mm512_setzero_si512()
            };
            for (j, sj) in s.iter_mut().enumerate() {
                let mut c = _mm512_load_si512(sums.add(j * 16).cast());
                if OFF {
                    c = _mm512_sub_epi32(c, off);
                }
                if SCALED {
                    let sc = _mm512_set1_epi32(*t.b_sc.as_ptr().add(u * QNR + j));
                    let scaled = _mm512_mullo_epi32(c, sc);
                    *sj = if first {
                        scaled
                    } else {
                        _mm512_add_epi32(*sj, scaled)
                    };
                } else {
                    *sj = c;
                }
            }
            if !last {
                return;
            }
            let lane = (t.lane0 + blk) % BLOCK_LANES;
            let dx = _mm512_loadu_ps(t.a_d.as_ptr().add(blk * AMX_MR));
            for (j, sj) in s.iter().enumerate() {
                let at = lanes.add((j * BLOCK_LANES + lane) * AMX_MR);
                let dw = _mm512_set1_ps(*t.b_d.as_ptr().add(blk * QNR + j));
                let mut l = _mm512_loadu_ps(at);
                l = _mm512_add_ps(
                    l,
                    _mm512_mul_ps(_mm512_cvtepi32_ps(*sj), _mm512_mul_ps(dw, dx)),
                );
                if MINS {
                    let mut m = _mm512_setzero_si512();
                    for p in blk * t.pairs..(blk + 1) * t.pairs {
                        let bp = _mm512_set1_epi32(*t.b_pairs.as_ptr().add(p * QNR + j) as i32);
                        let ap = _mm512_loadu_si512(t.a_pairs.as_ptr().add(p * AMX_MR).cast());
                        m = _mm512_dpwssd_epi32(m, bp, ap);
                    }
                    let bm = _mm512_set1_ps(*t.b_m.as_ptr().add(blk * QNR + j));
                    l = _mm512_add_ps(
                        l,
                        _mm512_mul_ps(_mm512_cvtepi32_ps(m), _mm512_mul_ps(bm, dx)),
                    );
                }
                _mm512_storeu_ps(at, l);
            }
        };
        let groups = units / 4;
        if groups > 0 {
            compute4::<SV>(w_at(0), stride, a_at(0));
            store4(&mut bufs[0]);
        }
        for g in 0..groups {
            let next = g + 1 < groups;
            if next {
                compute4::<SV>(w_at(4 * g + 4), stride, a_at(4 * g + 4));
            }
            let sums = bufs[g % 2].0.as_ptr();
            for k in 0..4 {
                add_unit(4 * g + k, sums.add(k * 256));
            }
            if next {
                store4(&mut bufs[(g + 1) % 2]);
            }
        }
        for u in 4 * groups..units {
            sums1(w_at(u), stride, a_at(u), &mut bufs[0]);
            add_unit(u, bufs[0].0.as_ptr());
        }
    }
}

impl BlockMicro for Amx {
    fn kernel(self, op: &BlockTile<'_>, lanes: &mut [f32]) {
        assert!(
            op.mr == AMX_MR && op.nr == QNR,
            "a tile of 16 tokens and QNR rows"
        );
        op.assert_tile(lanes, false);
        // SAFETY: the token proves the features and the granted tile state; the operands' and
        // the lanes' extents were asserted; each arm's sub-block size is `4 · quads`.
        unsafe {
            let l = lanes.as_mut_ptr();
            match (op.offsets, op.subs > 1, op.quads, op.pairs > 0) {
                // Q8_0, Q4_0, Q5_0; Q4_1, Q5_1; Q4_K, Q5_K; Q6_K.
                (true, false, 8, false) => amx_tile_raw::<true, false, 32, false>(op, l),
                (false, false, 8, true) => amx_tile_raw::<false, false, 32, true>(op, l),
                (false, true, 8, true) => amx_tile_raw::<false, true, 32, true>(op, l),
                (true, true, 4, false) => amx_tile_raw::<true, true, 16, false>(op, l),
                _ => unreachable!("no ggml block type has this shape"),
            }
        }
    }

    fn mr(self) -> usize {
        AMX_MR
    }

    fn reads_words(self) -> bool {
        false
    }

    fn lanes_by_row(self) -> bool {
        true
    }

    #[inline]
    fn prefetch(self, p: *const u8) {
        avx2::prefetch(self.0.avx2(), p);
    }

    fn quantize(self, kind: ActKind, x: &[f32], qs: &mut [i8], d: &mut [f32]) {
        self.0.quantize(kind, x, qs, d)
    }
}
