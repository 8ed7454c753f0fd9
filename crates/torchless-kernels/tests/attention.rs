//! Attention inner loops over strided KV caches (linear and ring buffer) against the reference.
mod common;

use common::{assert_rel, Rng};
use torchless_kernels::{
    decode_kv_row, encode_kv_row, reference, Kernels, KvCacheView, KvData, KvType, RowsRef,
    SimdPath, SlotRanges,
};

fn paths() -> Vec<Kernels> {
    SimdPath::supported()
        .into_iter()
        .map(|p| Kernels::with_path(p).expect("supported"))
        .collect()
}

struct Cache {
    keys: Vec<f32>,
    values: Vec<f32>,
    n_slots: usize,
    n_kv: usize,
    hd: usize,
}

impl Cache {
    fn random(rng: &mut Rng, n_slots: usize, n_kv: usize, hd: usize) -> Self {
        let n = n_slots * n_kv * hd;
        Cache {
            keys: rng.vec(n).iter().map(|v| v * 2.0).collect(),
            values: rng.vec(n),
            n_slots,
            n_kv,
            hd,
        }
    }
    fn view(&self) -> KvCacheView<'_> {
        KvCacheView::contiguous(&self.keys, &self.values, self.n_slots, self.n_kv, self.hd).unwrap()
    }
    fn row<'a>(&self, data: &'a [f32], slot: usize, h: usize) -> &'a [f32] {
        let o = (slot * self.n_kv + h) * self.hd;
        &data[o..o + self.hd]
    }
    /// Reference for all heads of one query over `slots` (in the given order).
    fn reference(&self, q: &[f32], n_heads: usize, slots: &[usize], scale: f32) -> Vec<f32> {
        let group = n_heads / self.n_kv;
        (0..n_heads)
            .flat_map(|h| {
                let kh = h / group;
                let ks: Vec<&[f32]> = slots.iter().map(|&s| self.row(&self.keys, s, kh)).collect();
                let vs: Vec<&[f32]> = slots
                    .iter()
                    .map(|&s| self.row(&self.values, s, kh))
                    .collect();
                reference::attention(&q[h * self.hd..(h + 1) * self.hd], &ks, &vs, scale)
            })
            .collect()
    }
}

#[test]
fn ring_ranges_follow_sliding_window_semantics() {
    assert_eq!(SlotRanges::ring(16, 5), SlotRanges::single(0..5));
    assert_eq!(SlotRanges::ring(16, 16), SlotRanges::single(0..16));
    assert_eq!(SlotRanges::ring(16, 17), SlotRanges::pair(1..16, 0..1));
    assert_eq!(SlotRanges::ring(16, 40), SlotRanges::pair(8..16, 0..8));
    assert_eq!(SlotRanges::ring(16, 32).len(), 16);
    assert_eq!(
        SlotRanges::ring(16, 32).iter().collect::<Vec<_>>(),
        vec![0..16]
    );
}

#[test]
fn decode_attention_matches_reference_gqa_and_ring() {
    let mut rng = Rng::new(30);
    for (n_heads, n_kv, hd, n_slots) in [
        (4, 2, 16, 16),
        (8, 8, 12, 33),
        (32, 8, 128, 70),
        (6, 1, 9, 5),
    ] {
        let cache = Cache::random(&mut rng, n_slots, n_kv, hd);
        let view = cache.view();
        let scale = 1.0 / (hd as f32).sqrt();
        for written in [1, 2, n_slots / 2 + 1, n_slots, n_slots + 3, 3 * n_slots - 1] {
            let slots = SlotRanges::ring(n_slots, written);
            let order: Vec<usize> = slots.iter().flatten().collect();
            let q = rng.vec(n_heads * hd);
            let want = cache.reference(&q, n_heads, &order, scale);
            for k in paths() {
                let mut out = vec![f32::NAN; n_heads * hd];
                k.attention(&q, &view, &slots, n_heads, scale, &mut out)
                    .unwrap();
                let what = format!(
                    "attention h{n_heads}/{n_kv} d{hd} w{written} {}",
                    k.simd_path().name()
                );
                assert_rel(&what, &out, &want, 1e-5, 1e-6);
            }
        }
    }
}

#[test]
fn batch_attention_matches_per_token_calls_and_reference() {
    let mut rng = Rng::new(31);
    let (n_heads, n_kv, hd, n_slots, tokens) = (8, 2, 32, 40, 9);
    let cache = Cache::random(&mut rng, n_slots, n_kv, hd);
    let view = cache.view();
    let qs = rng.vec(tokens * n_heads * hd);
    let scale = 0.17;
    // Causal: token t (at cache slot 20 + t) sees slots 0..=20+t; window of 16: the last 16.
    let slots_for = |t: usize| {
        let end = 21 + t;
        SlotRanges::single(end.saturating_sub(16)..end)
    };
    for k in paths() {
        let mut outs = vec![0.0; qs.len()];
        k.attention_batch(&qs, &view, n_heads, scale, slots_for, &mut outs)
            .unwrap();
        for t in 0..tokens {
            let row = t * n_heads * hd..(t + 1) * n_heads * hd;
            let mut one = vec![0.0; n_heads * hd];
            k.attention(
                &qs[row.clone()],
                &view,
                &slots_for(t),
                n_heads,
                scale,
                &mut one,
            )
            .unwrap();
            let order: Vec<usize> = slots_for(t).iter().flatten().collect();
            let want = cache.reference(&qs[row.clone()], n_heads, &order, scale);
            assert_rel("one token vs reference", &one, &want, 1e-5, 1e-6);
            // Depending on the thread count the batch is blocked (two small matrix products) or
            // not, so it is held to the reference, not to the single call's bits.
            assert_rel("batch vs reference", &outs[row], &want, 1e-5, 1e-6);
        }
    }
}

/// Prompts long enough for tokens to be attended in blocks (two small matrix products per block
/// and KV head): at 1, 2 and 3 threads (different block sizes), for GQA, MHA, MQA and a group of 3
/// with a head_dim that is not a multiple of 8, with causal, windowed, empty and wrapped slot runs
/// (the wrapped ring takes the per-token loop). Every token must match the f64 reference.
#[cfg(feature = "parallel")]
#[test]
fn long_prompts_attend_in_token_blocks() {
    let mut rng = Rng::new(36);
    let tokens = 45;
    for (n_heads, n_kv, hd) in [(8, 2, 32), (6, 6, 16), (4, 1, 24), (12, 4, 20)] {
        let n_slots = 70;
        let cache = Cache::random(&mut rng, n_slots, n_kv, hd);
        let view = cache.view();
        let qs = rng.vec(tokens * n_heads * hd);
        let row = n_heads * hd;
        // Token t sits at slot 20 + t. Causal; a window of 16; causal except one token that sees
        // nothing; and a ring of 40 slots that wraps for the later tokens (two runs each).
        let patterns: [&(dyn Fn(usize) -> SlotRanges + Sync); 4] = [
            &|t| SlotRanges::single(0..21 + t),
            &|t| SlotRanges::single((21 + t).saturating_sub(16)..21 + t),
            &|t| SlotRanges::single(if t == 7 { 3..3 } else { 0..21 + t }),
            &|t| SlotRanges::ring(40, 21 + t),
        ];
        for (p, slots_for) in patterns.iter().enumerate() {
            let want: Vec<Vec<f32>> = (0..tokens)
                .map(|t| {
                    let order: Vec<usize> = slots_for(t).iter().flatten().collect();
                    cache.reference(&qs[t * row..(t + 1) * row], n_heads, &order, 0.15)
                })
                .collect();
            for k in paths() {
                for threads in [1, 2, 3] {
                    let mut outs = vec![f32::NAN; qs.len()];
                    torchless_kernels::thread_pool(threads)
                        .unwrap()
                        .install(|| {
                            k.attention_batch(&qs, &view, n_heads, 0.15, slots_for, &mut outs)
                        })
                        .unwrap();
                    for (t, want) in want.iter().enumerate() {
                        let what = format!(
                            "h{n_heads}/{n_kv} d{hd} pattern {p} token {t} {} x{threads}",
                            k.simd_path().name()
                        );
                        assert_rel(&what, &outs[t * row..(t + 1) * row], want, 1e-5, 1e-6);
                    }
                }
            }
        }
    }
}

#[test]
fn per_head_pieces_with_explicit_strides() {
    // Layout [kv_head][slot][head_dim] (head-major), read through explicit strides.
    let mut rng = Rng::new(32);
    let (n_kv, n_slots, hd) = (3, 11, 20);
    let keys = rng.vec(n_kv * n_slots * hd);
    let values = rng.vec(n_kv * n_slots * hd);
    let view = KvCacheView::new(&keys, &values, n_slots, n_kv, hd, hd, n_slots * hd).unwrap();
    let q = rng.vec(hd);
    for k in paths() {
        let kr = view.keys(2, 3..11).unwrap();
        let vr = view.values(2, 3..11).unwrap();
        let mut scores = vec![0.0; 8];
        let mut out = vec![0.0; hd];
        k.attention_head(&q, &[kr], &[vr], 0.3, &mut scores, &mut out)
            .unwrap();
        let ks: Vec<&[f32]> = (3..11)
            .map(|s| &keys[(2 * n_slots + s) * hd..][..hd])
            .collect();
        let vs: Vec<&[f32]> = (3..11)
            .map(|s| &values[(2 * n_slots + s) * hd..][..hd])
            .collect();
        assert_rel(
            "attention_head",
            &out,
            &reference::attention(&q, &ks, &vs, 0.3),
            1e-5,
            1e-6,
        );
        // Two segments give the same as one covering both.
        let (a, b) = (view.keys(2, 3..7).unwrap(), view.keys(2, 7..11).unwrap());
        let (c, d) = (
            view.values(2, 3..7).unwrap(),
            view.values(2, 7..11).unwrap(),
        );
        let mut out2 = vec![0.0; hd];
        k.attention_head(&q, &[a, b], &[c, d], 0.3, &mut scores, &mut out2)
            .unwrap();
        assert_eq!(out, out2);
        // Scores and weighted sum separately.
        let mut s = vec![0.0; 8];
        k.attention_scores(&q, &kr, 0.3, &mut s).unwrap();
        k.softmax(&mut s);
        let mut o = vec![0.0; hd];
        k.attention_values(&s, &vr, &mut o).unwrap();
        assert_eq!(o, out);
    }
}

#[test]
fn views_reject_out_of_bounds() {
    let data = vec![0.0f32; 100];
    assert!(RowsRef::new(&data, 0, 10, 10, 10).is_ok());
    assert!(RowsRef::new(&data, 1, 10, 10, 10).is_err());
    assert!(RowsRef::new(&data, 0, usize::MAX, 2, 1).is_err());
    assert!(RowsRef::contiguous(&data, 7).is_err());
    assert!(KvCacheView::contiguous(&data, &data, 5, 2, 10).is_ok());
    assert!(KvCacheView::contiguous(&data, &data, 6, 2, 10).is_err());
    assert!(KvCacheView::contiguous(&data, &data[..90], 5, 2, 10).is_err());
    let view = KvCacheView::contiguous(&data, &data, 5, 2, 10).unwrap();
    assert!(view.keys(2, 0..1).is_err());
    assert!(view.keys(1, 0..6).is_err());
    let k = Kernels::auto();
    let q = vec![0.0; 30];
    let mut out = vec![0.0; 30];
    // 3 heads over 2 KV heads is not grouped-query attention.
    assert!(k
        .attention(&q, &view, &SlotRanges::single(0..2), 3, 1.0, &mut out)
        .is_err());
    let q = vec![0.0; 40];
    let mut out = vec![0.0; 40];
    assert!(k
        .attention(&q, &view, &SlotRanges::single(0..6), 4, 1.0, &mut out)
        .is_err());
    assert!(k
        .attention(&q, &view, &SlotRanges::single(0..5), 4, 1.0, &mut out)
        .is_ok());
}

#[test]
fn long_ring_cache_spans_several_slot_blocks() {
    // 600 slots: three blocks of the slot-major decode path, wrapped ring order.
    let mut rng = Rng::new(33);
    let (n_heads, n_kv, hd, n_slots) = (8, 2, 64, 600);
    let cache = Cache::random(&mut rng, n_slots, n_kv, hd);
    let view = cache.view();
    for written in [300, 600, 1000] {
        let slots = SlotRanges::ring(n_slots, written);
        let order: Vec<usize> = slots.iter().flatten().collect();
        let q = rng.vec(n_heads * hd);
        let want = cache.reference(&q, n_heads, &order, 0.125);
        for k in paths() {
            let mut out = vec![0.0; n_heads * hd];
            k.attention(&q, &view, &slots, n_heads, 0.125, &mut out)
                .unwrap();
            assert_rel("long ring", &out, &want, 1e-5, 1e-6);
        }
    }
}

#[test]
fn head_major_cache_layout_matches_reference() {
    // [kv_head][slot][head_dim]: the per-KV-head path.
    let mut rng = Rng::new(34);
    let (n_heads, n_kv, hd, n_slots) = (12, 3, 24, 50);
    let keys = rng.vec(n_kv * n_slots * hd);
    let values = rng.vec(n_kv * n_slots * hd);
    let view = KvCacheView::new(&keys, &values, n_slots, n_kv, hd, hd, n_slots * hd).unwrap();
    let slots = SlotRanges::pair(30..50, 0..7);
    let order: Vec<usize> = slots.iter().flatten().collect();
    let q = rng.vec(n_heads * hd);
    let want: Vec<f32> = (0..n_heads)
        .flat_map(|h| {
            let kh = h / (n_heads / n_kv);
            let ks: Vec<&[f32]> = order
                .iter()
                .map(|&s| &keys[(kh * n_slots + s) * hd..][..hd])
                .collect();
            let vs: Vec<&[f32]> = order
                .iter()
                .map(|&s| &values[(kh * n_slots + s) * hd..][..hd])
                .collect();
            reference::attention(&q[h * hd..(h + 1) * hd], &ks, &vs, 0.2)
        })
        .collect();
    for k in paths() {
        let mut out = vec![0.0; n_heads * hd];
        k.attention(&q, &view, &slots, n_heads, 0.2, &mut out)
            .unwrap();
        assert_rel("head-major", &out, &want, 1e-5, 1e-6);
        let mut outs = vec![0.0; 2 * n_heads * hd];
        let qs: Vec<f32> = q.iter().chain(q.iter()).copied().collect();
        k.attention_batch(&qs, &view, n_heads, 0.2, |_| slots.clone(), &mut outs)
            .unwrap();
        assert_eq!(&outs[..n_heads * hd], &out[..]);
        assert_eq!(&outs[n_heads * hd..], &out[..]);
    }
}

#[cfg(feature = "parallel")]
#[test]
fn attention_does_not_depend_on_thread_count() {
    let mut rng = Rng::new(35);
    let (n_heads, n_kv, hd, n_slots) = (32, 8, 128, 700);
    let cache = Cache::random(&mut rng, n_slots, n_kv, hd);
    let view = cache.view();
    let q = rng.vec(n_heads * hd);
    let slots = SlotRanges::ring(n_slots, 900);
    for k in paths() {
        let run = |t: usize| {
            let mut out = vec![0.0; n_heads * hd];
            torchless_kernels::thread_pool(t)
                .unwrap()
                .install(|| k.attention(&q, &view, &slots, n_heads, 0.088, &mut out))
                .unwrap();
            out
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one, run(3));
    }
}

/// A cache stored as `tk` keys and `tv` values (`head_major`: `[kv_head][slot][dim]`), and the
/// same cache decoded to f32 for the reference.
struct TypedCache {
    keys: Vec<u8>,
    values: Vec<u8>,
    decoded: Cache,
    types: (KvType, KvType),
    head_major: bool,
}

fn encoded(ty: KvType, data: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut bytes = vec![0u8; ty.bytes_of(data.len()) as usize];
    encode_kv_row(ty, data, &mut bytes).unwrap();
    let mut back = vec![0.0; data.len()];
    decode_kv_row(ty, &bytes, &mut back).unwrap();
    (bytes, back)
}

fn data<'a>(ty: KvType, bytes: &'a [u8], floats: &'a [f32]) -> KvData<'a> {
    match ty {
        KvType::F32 => KvData::F32(floats),
        KvType::F16 => KvData::F16(bytes),
        KvType::Q8_0 => KvData::Q8_0(bytes),
    }
}

impl TypedCache {
    fn random(
        rng: &mut Rng,
        types: (KvType, KvType),
        n_slots: usize,
        n_kv: usize,
        hd: usize,
        head_major: bool,
    ) -> Self {
        let f32s = Cache::random(rng, n_slots, n_kv, hd);
        // Stored in the layout asked for; the reference cache stays slot-major.
        let layout = |d: &[f32]| -> Vec<f32> {
            if !head_major {
                return d.to_vec();
            }
            let mut out = vec![0.0; d.len()];
            for s in 0..n_slots {
                for h in 0..n_kv {
                    let src = (s * n_kv + h) * hd;
                    let dst = (h * n_slots + s) * hd;
                    out[dst..dst + hd].copy_from_slice(&d[src..src + hd]);
                }
            }
            out
        };
        let (kb, kd) = encoded(types.0, &layout(&f32s.keys));
        let (vb, vd) = encoded(types.1, &layout(&f32s.values));
        let unlayout = |d: Vec<f32>| -> Vec<f32> {
            if !head_major {
                return d;
            }
            let mut out = vec![0.0; d.len()];
            for s in 0..n_slots {
                for h in 0..n_kv {
                    let dst = (s * n_kv + h) * hd;
                    let src = (h * n_slots + s) * hd;
                    out[dst..dst + hd].copy_from_slice(&d[src..src + hd]);
                }
            }
            out
        };
        TypedCache {
            keys: kb,
            values: vb,
            decoded: Cache {
                keys: unlayout(kd),
                values: unlayout(vd),
                n_slots,
                n_kv,
                hd,
            },
            types,
            head_major,
        }
    }

    /// The view over the stored bytes (f32 parts read from the decoded, which are exact).
    fn view<'a>(&'a self, f32_keys: &'a [f32], f32_values: &'a [f32]) -> KvCacheView<'a> {
        let c = &self.decoded;
        let (k, v) = (
            data(self.types.0, &self.keys, f32_keys),
            data(self.types.1, &self.values, f32_values),
        );
        if self.head_major {
            KvCacheView::new_typed(k, v, c.n_slots, c.n_kv, c.hd, c.hd, c.n_slots * c.hd).unwrap()
        } else {
            KvCacheView::contiguous_typed(k, v, c.n_slots, c.n_kv, c.hd).unwrap()
        }
    }
}

#[test]
fn f16_and_q8_0_caches_match_the_reference_on_their_decoded_values() {
    let mut rng = Rng::new(40);
    let type_pairs = [
        (KvType::F16, KvType::F16),
        (KvType::Q8_0, KvType::Q8_0),
        (KvType::Q8_0, KvType::F16),
        (KvType::F32, KvType::Q8_0),
    ];
    for types in type_pairs {
        for (n_heads, n_kv, hd, n_slots, head_major) in [
            (6, 2, 64, 300, false),
            (4, 1, 32, 40, false),
            (9, 3, 96, 70, false),
            (8, 2, 64, 50, true),
        ] {
            let cache = TypedCache::random(&mut rng, types, n_slots, n_kv, hd, head_major);
            // f32 parts: the decoded values in the stored layout (exact for f32).
            let layout_f32 = |d: &[f32]| -> Vec<f32> {
                if !head_major {
                    return d.to_vec();
                }
                let mut out = vec![0.0; d.len()];
                for s in 0..n_slots {
                    for h in 0..n_kv {
                        let (src, dst) = ((s * n_kv + h) * hd, (h * n_slots + s) * hd);
                        out[dst..dst + hd].copy_from_slice(&d[src..src + hd]);
                    }
                }
                out
            };
            let (fk, fv) = (
                layout_f32(&cache.decoded.keys),
                layout_f32(&cache.decoded.values),
            );
            let view = cache.view(&fk, &fv);
            assert_eq!(view.types(), types);
            let scale = 1.0 / (hd as f32).sqrt();
            let tag = format!("{}/{} h{n_heads}/{n_kv} d{hd}", types.0, types.1);
            // Decode: linear and wrapped rings.
            for written in [1, n_slots / 2 + 1, n_slots, n_slots + 7] {
                let slots = SlotRanges::ring(n_slots, written);
                let order: Vec<usize> = slots.iter().flatten().collect();
                let q = rng.vec(n_heads * hd);
                let want = cache.decoded.reference(&q, n_heads, &order, scale);
                for k in paths() {
                    let mut out = vec![f32::NAN; n_heads * hd];
                    k.attention(&q, &view, &slots, n_heads, scale, &mut out)
                        .unwrap();
                    let what = format!("{tag} decode w{written} {}", k.simd_path().name());
                    assert_rel(&what, &out, &want, 1e-5, 1e-6);
                }
            }
            // Prefill: 40 causal tokens (token blocks), and a ring (per-token tasks).
            let tokens = 40.min(n_slots - 1);
            let row = n_heads * hd;
            let qs = rng.vec(tokens * row);
            let first = n_slots - tokens;
            let patterns: [&(dyn Fn(usize) -> SlotRanges + Sync); 2] =
                [&|t| SlotRanges::single(0..first + t + 1), &|t| {
                    SlotRanges::ring(n_slots / 2, first + t + 1)
                }];
            for (p, slots_for) in patterns.iter().enumerate() {
                for k in paths() {
                    let mut outs = vec![f32::NAN; qs.len()];
                    k.attention_batch(&qs, &view, n_heads, scale, slots_for, &mut outs)
                        .unwrap();
                    for t in 0..tokens {
                        let order: Vec<usize> = slots_for(t).iter().flatten().collect();
                        let want = cache.decoded.reference(
                            &qs[t * row..(t + 1) * row],
                            n_heads,
                            &order,
                            scale,
                        );
                        let what = format!(
                            "{tag} prefill pattern {p} token {t} {}",
                            k.simd_path().name()
                        );
                        assert_rel(&what, &outs[t * row..(t + 1) * row], &want, 1e-5, 1e-6);
                    }
                }
            }
        }
    }
}

#[test]
fn q8_0_caches_refuse_head_dims_off_blocks() {
    let bytes = vec![0u8; 34 * 8];
    let e = KvCacheView::contiguous_typed(KvData::Q8_0(&bytes), KvData::Q8_0(&bytes), 4, 1, 48)
        .unwrap_err();
    assert!(e.to_string().contains("multiple of 32"), "{e}");
    // Whole blocks but too few of them for the slots.
    assert!(
        KvCacheView::contiguous_typed(KvData::Q8_0(&bytes), KvData::F16(&[0; 64]), 2, 2, 32)
            .is_err()
    );
}

/// A token whose run is empty, alone in its block and past every other token's slots (at a
/// panel boundary of every path): zero output, no panic; the other token as the reference.
#[cfg(feature = "parallel")]
#[test]
fn an_empty_run_after_the_others_gives_zeros() {
    let mut rng = Rng::new(45);
    let (n_heads, n_kv, hd, n_slots) = (4, 2, 16, 130);
    let cache = Cache::random(&mut rng, n_slots, n_kv, hd);
    let view = cache.view();
    let row = n_heads * hd;
    let qs = rng.vec(2 * row);
    let slots_for = |t: usize| match t {
        0 => SlotRanges::single(0..64),
        _ => SlotRanges::single(64..64),
    };
    let order: Vec<usize> = (0..64).collect();
    let want = cache.reference(&qs[..row], n_heads, &order, 0.3);
    for k in paths() {
        for threads in [1, 2] {
            let mut outs = vec![f32::NAN; 2 * row];
            torchless_kernels::thread_pool(threads)
                .unwrap()
                .install(|| k.attention_batch(&qs, &view, n_heads, 0.3, slots_for, &mut outs))
                .unwrap();
            let what = format!("{} x{threads}", k.simd_path().name());
            assert_rel(&what, &outs[..row], &want, 1e-5, 1e-6);
            assert!(
                outs[row..].iter().all(|&v| v == 0.0),
                "{what}: {:?}",
                &outs[row..]
            );
        }
    }
}

/// `Kernels::attention_batch_invariant_from`'s promise: over an unwrapped cache, a token's output
/// has the same bits whatever the other tokens of the call, from that many tokens on. 45 causal
/// (or windowed) tokens in one call, then cut into consecutive calls of every size from the
/// promised one up, at 1, 2 and 3 threads, on every KV type and path.
#[cfg(feature = "parallel")]
#[test]
fn a_tokens_attention_does_not_depend_on_the_other_tokens_of_its_call() {
    let mut rng = Rng::new(44);
    let tokens = 45;
    for (types, n_heads, n_kv, hd) in [
        ((KvType::F32, KvType::F32), 8, 2, 32),
        ((KvType::F32, KvType::F32), 12, 4, 20),
        ((KvType::F16, KvType::Q8_0), 9, 3, 64),
        ((KvType::Q8_0, KvType::F16), 4, 1, 32),
    ] {
        let n_slots = 70;
        let cache = TypedCache::random(&mut rng, types, n_slots, n_kv, hd, false);
        let (fk, fv) = (cache.decoded.keys.clone(), cache.decoded.values.clone());
        let view = cache.view(&fk, &fv);
        let row = n_heads * hd;
        let qs = rng.vec(tokens * row);
        let scale = 0.2;
        // Token t sits at slot 20 + t: causal, or a window of 16.
        let patterns: [&(dyn Fn(usize) -> SlotRanges + Sync); 2] =
            [&|t| SlotRanges::single(0..21 + t), &|t| {
                SlotRanges::single((21 + t).saturating_sub(16)..21 + t)
            }];
        for (p, slots_for) in patterns.iter().enumerate() {
            for k in paths() {
                let from = k.attention_batch_invariant_from();
                let mut whole = vec![f32::NAN; qs.len()];
                k.attention_batch(&qs, &view, n_heads, scale, slots_for, &mut whole)
                    .unwrap();
                for threads in [1, 2, 3] {
                    let pool = torchless_kernels::thread_pool(threads).unwrap();
                    for piece in common::cuts(tokens, from) {
                        let (start, end) = (piece.start, piece.end);
                        let mut part = vec![f32::NAN; (end - start) * row];
                        let shifted = |t: usize| slots_for(start + t);
                        let q = &qs[start * row..end * row];
                        pool.install(|| {
                            k.attention_batch(q, &view, n_heads, scale, shifted, &mut part)
                        })
                        .unwrap();
                        assert!(
                            common::same_bits(&part, &whole[start * row..end * row]),
                            "{}/{} h{n_heads}/{n_kv} d{hd} pattern {p} {} x{threads}: \
                             tokens {start}..{end} differ",
                            types.0,
                            types.1,
                            k.simd_path().name()
                        );
                    }
                }
            }
        }
    }
}
