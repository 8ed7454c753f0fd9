//! ggml block rows on AVX2 (for now the scalar definition).

use super::Avx2;
use crate::block_input::BlockInput;
use crate::blocks::BlockMat;
use crate::isa::traits::BlockMatvec;

impl BlockMatvec for Avx2 {
    fn rows(self, w: &BlockMat<'_>, inputs: &[BlockInput], r0: usize, yt: &mut [f32]) {
        crate::isa::scalar::Scalar.rows(w, inputs, r0, yt)
    }

    fn rows_exact(self, w: &BlockMat<'_>, xs: &[f32], batch: usize, r0: usize, yt: &mut [f32]) {
        crate::isa::scalar::Scalar.rows_exact(w, xs, batch, r0, yt)
    }
}
