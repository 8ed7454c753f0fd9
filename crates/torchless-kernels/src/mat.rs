//! Borrowed weight-matrix views, validated once at construction.

use crate::blocks::{BlockMat, BlockType};
use crate::error::{check_len, checked_mul, KernelError};
pub(crate) use crate::half::f16_to_f32;
use std::ops::Range;

/// Number of consecutive (row-major, flattened) int8 values that share one inverse scale.
pub const GROUP_SIZE: usize = 64;

/// A row-major f32 matrix of `rows x cols` (PyTorch `[out_features, in_features]`).
#[derive(Clone, Copy, Debug)]
pub struct F32Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
}

impl<'a> F32Mat<'a> {
    /// Wraps `data`, which must hold exactly `rows * cols` values.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Result<Self, KernelError> {
        check_len(
            "f32 matrix data",
            checked_mul("f32 matrix", rows, cols)?,
            data.len(),
        )?;
        Ok(Self { data, rows, cols })
    }

    /// The flat row-major data.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }

    /// Number of rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `r`, or `None` when out of range.
    pub fn row(&self, r: usize) -> Option<&'a [f32]> {
        (r < self.rows).then(|| &self.data[r * self.cols..(r + 1) * self.cols])
    }

    /// The sub-matrix made of rows `range` (e.g. the q, k and v parts of a fused projection).
    pub fn rows_range(&self, range: Range<usize>) -> Result<Self, KernelError> {
        check_row_range(&range, self.rows)?;
        Ok(Self {
            data: &self.data[range.start * self.cols..range.end * self.cols],
            rows: range.len(),
            cols: self.cols,
        })
    }
}

/// A row-major int8 matrix in the torchless file layout.
///
/// The matrix is flattened row-major and cut into groups of [`GROUP_SIZE`] consecutive values; each
/// group has one stored f32 `inv_scale = 127 / max|x|`, an *inverse* scale: the weight is
/// `q / inv_scale`. Groups are not aligned to rows: when `cols % 64 != 0` a group spans the end of
/// one row and the start of the next. A view made by [`Int8Mat::rows_range`] may start inside a group;
/// [`Int8Mat::group_phase`] is the position of its first value inside that group.
///
/// Stored scales are used as given. An all-zero group written as `inv_scale = +inf` dequantizes to
/// zeros (`q / inf == 0`), as in the reference; `0` or NaN scales produce non-finite outputs, exactly
/// as dividing by them would.
#[derive(Clone, Copy, Debug)]
pub struct Int8Mat<'a> {
    q: &'a [i8],
    inv_scales: &'a [f32],
    rows: usize,
    cols: usize,
    phase: usize,
}

impl<'a> Int8Mat<'a> {
    /// Wraps a whole tensor: `q` holds `rows * cols` values and `inv_scales` one value per group,
    /// `ceil(rows * cols / 64)` of them.
    pub fn new(
        q: &'a [i8],
        inv_scales: &'a [f32],
        rows: usize,
        cols: usize,
    ) -> Result<Self, KernelError> {
        let n = checked_mul("int8 matrix", rows, cols)?;
        check_len("int8 matrix values", n, q.len())?;
        check_len(
            "int8 inverse scales",
            n.div_ceil(GROUP_SIZE),
            inv_scales.len(),
        )?;
        Ok(Self {
            q,
            inv_scales,
            rows,
            cols,
            phase: 0,
        })
    }

    /// The quantized values (flat row-major).
    pub fn q(&self) -> &'a [i8] {
        self.q
    }

    /// The inverse scales, starting with the group that holds the first value of this view.
    pub fn inv_scales(&self) -> &'a [f32] {
        self.inv_scales
    }

    /// Number of rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Offset of the first value inside its group (0 for a whole tensor).
    pub fn group_phase(&self) -> usize {
        self.phase
    }

    /// True when every row starts a group and spans whole groups: the fast kernels' layout (all
    /// Mistral shapes). Other layouts take a general, slower path.
    pub fn is_row_aligned(&self) -> bool {
        self.phase == 0 && self.cols.is_multiple_of(GROUP_SIZE)
    }

    /// The inverse scale of element (`r`, `c`) (no bounds check beyond slice indexing).
    #[inline]
    pub(crate) fn inv_scale_at(&self, r: usize, c: usize) -> f32 {
        self.inv_scales[(self.phase + r * self.cols + c) / GROUP_SIZE]
    }

    /// Row `r` times `x` for any layout: the row is cut where groups change, and each piece's
    /// integer-weight dot product (`dot`, an instruction set's) is divided by its group's inverse
    /// scale, the pieces summed in order.
    #[inline]
    pub(crate) fn row_dot_by_groups(
        &self,
        r: usize,
        x: &[f32],
        dot: impl Fn(&[i8], &[f32]) -> f32,
    ) -> f32 {
        let cols = self.cols;
        let q = &self.q[r * cols..(r + 1) * cols];
        let first = self.phase + r * cols;
        let mut sum = 0.0f32;
        let mut c = 0;
        while c < cols {
            let g = (first + c) / GROUP_SIZE;
            let end = ((g + 1) * GROUP_SIZE - first).min(cols);
            sum += dot(&q[c..end], &x[c..end]) / self.inv_scales[g];
            c = end;
        }
        sum
    }

    /// Dequantizes row `r` into `out` as `q / inv_scale` (the reference's exact f32 dequantization).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), KernelError> {
        check_row_range(&(r..r + 1), self.rows)?;
        check_len("dequantize_row output", self.cols, out.len())?;
        let q = &self.q[r * self.cols..(r + 1) * self.cols];
        for (c, (o, &v)) in out.iter_mut().zip(q).enumerate() {
            *o = f32::from(v) / self.inv_scale_at(r, c);
        }
        Ok(())
    }

    /// The sub-matrix made of rows `range`. It may start inside a group when `cols % 64 != 0`.
    pub fn rows_range(&self, range: Range<usize>) -> Result<Self, KernelError> {
        check_row_range(&range, self.rows)?;
        let first = self.phase + range.start * self.cols;
        let end = self.phase + range.end * self.cols;
        let g0 = first / GROUP_SIZE;
        let g1 = if range.is_empty() {
            g0
        } else {
            end.div_ceil(GROUP_SIZE)
        };
        Ok(Self {
            q: &self.q[range.start * self.cols..range.end * self.cols],
            inv_scales: &self.inv_scales[g0..g1],
            rows: range.len(),
            cols: self.cols,
            phase: first % GROUP_SIZE,
        })
    }
}

/// Number of consecutive values of a row that share one f16 scale in an int4 matrix.
pub const INT4_GROUP_SIZE: usize = 32;

/// A row-major int4 matrix in the torchless file layout (see `torchless_format::int4`).
///
/// Each row is `cols / 32` groups (`cols` must be a multiple of 32); a group is 16 bytes of
/// codes (byte `j`: value `j` in the low nibble, value `j + 16` in the high nibble) and one IEEE
/// half scale `d` in `scales`; code `u` stands for `d · (u − 8)`.
#[derive(Clone, Copy, Debug)]
pub struct Int4Mat<'a> {
    packed: &'a [u8],
    scales: &'a [u16],
    rows: usize,
    cols: usize,
}

impl<'a> Int4Mat<'a> {
    /// Wraps a tensor of `rows x cols`: `packed` holds `rows * cols / 2` bytes and `scales`
    /// `rows * cols / 32` half-precision scales (as bits).
    pub fn new(
        packed: &'a [u8],
        scales: &'a [u16],
        rows: usize,
        cols: usize,
    ) -> Result<Self, KernelError> {
        if !cols.is_multiple_of(INT4_GROUP_SIZE) {
            return Err(KernelError::Shape(format!(
                "an int4 matrix needs whole groups of {INT4_GROUP_SIZE} per row, found {cols} columns"
            )));
        }
        let n = checked_mul("int4 matrix", rows, cols)?;
        check_len("int4 matrix codes", n / 2, packed.len())?;
        check_len("int4 matrix scales", n / INT4_GROUP_SIZE, scales.len())?;
        Ok(Self {
            packed,
            scales,
            rows,
            cols,
        })
    }

    /// The packed codes (flat row-major, 16 bytes per group).
    pub fn packed(&self) -> &'a [u8] {
        self.packed
    }

    /// The f16 scale bits, one per group.
    pub fn scales(&self) -> &'a [u16] {
        self.scales
    }

    /// Number of rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Groups per row.
    pub fn groups_per_row(&self) -> usize {
        self.cols / INT4_GROUP_SIZE
    }

    /// Element (`r`, `c`) as f32, `d · (u − 8)` (exact); no bounds check beyond slice indexing.
    #[inline]
    pub(crate) fn value_at(&self, r: usize, c: usize) -> f32 {
        let g = (r * self.cols + c) / INT4_GROUP_SIZE;
        let i = c % INT4_GROUP_SIZE;
        let byte = self.packed[g * 16 + i % 16];
        let nibble = if i < 16 { byte & 0x0f } else { byte >> 4 };
        f16_to_f32(self.scales[g]) * f32::from(nibble as i8 - 8)
    }

    /// Dequantizes row `r` into `out` (exactly `d · (u − 8)` per value).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), KernelError> {
        check_row_range(&(r..r + 1), self.rows)?;
        check_len("dequantize_row output", self.cols, out.len())?;
        let g0 = r * self.groups_per_row();
        for (g, o) in out.chunks_exact_mut(INT4_GROUP_SIZE).enumerate() {
            let d = f16_to_f32(self.scales[g0 + g]);
            let codes = &self.packed[(g0 + g) * 16..(g0 + g + 1) * 16];
            for j in 0..16 {
                o[j] = d * f32::from((codes[j] & 0x0f) as i8 - 8);
                o[j + 16] = d * f32::from((codes[j] >> 4) as i8 - 8);
            }
        }
        Ok(())
    }

    /// The sub-matrix made of rows `range` (rows are whole groups, so any range is aligned).
    pub fn rows_range(&self, range: Range<usize>) -> Result<Self, KernelError> {
        check_row_range(&range, self.rows)?;
        let (half, groups) = (self.cols / 2, self.groups_per_row());
        Ok(Self {
            packed: &self.packed[range.start * half..range.end * half],
            scales: &self.scales[range.start * groups..range.end * groups],
            rows: range.len(),
            cols: self.cols,
        })
    }
}

fn check_row_range(range: &Range<usize>, rows: usize) -> Result<(), KernelError> {
    if range.start <= range.end && range.end <= rows {
        Ok(())
    } else {
        Err(KernelError::Shape(format!(
            "row range {}..{} outside 0..{rows}",
            range.start, range.end
        )))
    }
}

/// A weight matrix `W` of `rows x cols` in one of the supported dtypes, as used by
/// [`crate::matvec`] (`y = W x`) and [`crate::matmul`] (`Y = X Wᵀ`).
#[derive(Clone, Copy, Debug)]
pub enum MatRef<'a> {
    /// f32 weights.
    F32(F32Mat<'a>),
    /// int8 weights with per-64-group inverse scales.
    Int8(Int8Mat<'a>),
    /// int4 weights with per-32-group f16 scales.
    Int4(Int4Mat<'a>),
    /// ggml blocks (F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K), used in place.
    Blocks(BlockMat<'a>),
}

impl<'a> MatRef<'a> {
    /// An f32 matrix view; see [`F32Mat::new`].
    pub fn f32(data: &'a [f32], rows: usize, cols: usize) -> Result<Self, KernelError> {
        F32Mat::new(data, rows, cols).map(Self::F32)
    }

    /// An int8 matrix view; see [`Int8Mat::new`].
    pub fn int8(
        q: &'a [i8],
        inv_scales: &'a [f32],
        rows: usize,
        cols: usize,
    ) -> Result<Self, KernelError> {
        Int8Mat::new(q, inv_scales, rows, cols).map(Self::Int8)
    }

    /// An int4 matrix view; see [`Int4Mat::new`].
    pub fn int4(
        packed: &'a [u8],
        scales: &'a [u16],
        rows: usize,
        cols: usize,
    ) -> Result<Self, KernelError> {
        Int4Mat::new(packed, scales, rows, cols).map(Self::Int4)
    }

    /// A ggml block matrix view; see [`BlockMat::new`].
    pub fn blocks(
        ty: BlockType,
        data: &'a [u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, KernelError> {
        BlockMat::new(ty, data, rows, cols).map(Self::Blocks)
    }

    /// Number of rows (output features).
    pub fn rows(&self) -> usize {
        match self {
            Self::F32(m) => m.rows(),
            Self::Int8(m) => m.rows(),
            Self::Int4(m) => m.rows(),
            Self::Blocks(m) => m.rows(),
        }
    }

    /// Number of columns (input features).
    pub fn cols(&self) -> usize {
        match self {
            Self::F32(m) => m.cols(),
            Self::Int8(m) => m.cols(),
            Self::Int4(m) => m.cols(),
            Self::Blocks(m) => m.cols(),
        }
    }

    /// Bytes a matvec has to stream: values plus the scales (int8: f32, int4: f16; blocks: their
    /// bytes).
    pub fn weight_bytes(&self) -> usize {
        match self {
            Self::F32(m) => m.data().len() * 4,
            Self::Int8(m) => m.q().len() + m.inv_scales().len() * 4,
            Self::Int4(m) => m.packed().len() + m.scales().len() * 2,
            Self::Blocks(m) => m.data().len(),
        }
    }

    /// The sub-matrix made of rows `range`.
    pub fn rows_range(&self, range: Range<usize>) -> Result<Self, KernelError> {
        match self {
            Self::F32(m) => m.rows_range(range).map(Self::F32),
            Self::Int8(m) => m.rows_range(range).map(Self::Int8),
            Self::Int4(m) => m.rows_range(range).map(Self::Int4),
            Self::Blocks(m) => m.rows_range(range).map(Self::Blocks),
        }
    }

    /// Row `row` as f32 into `out` (`cols` values): copied (f32) or dequantized exactly (int8:
    /// `q / inv_scale`, int4: `d · (u − 8)`, blocks: as ggml's `dequantize_row_*`). The embedding
    /// lookup.
    pub fn row_f32(&self, row: usize, out: &mut [f32]) -> Result<(), KernelError> {
        match self {
            Self::F32(m) => {
                check_len("row_f32 output", m.cols(), out.len())?;
                let r = m.row(row).ok_or_else(|| {
                    KernelError::Shape(format!("row {row} outside 0..{}", m.rows()))
                })?;
                out.copy_from_slice(r);
                Ok(())
            }
            Self::Int8(m) => m.dequantize_row(row, out),
            Self::Int4(m) => m.dequantize_row(row, out),
            Self::Blocks(m) => m.dequantize_row(row, out),
        }
    }

    /// Element (`r`, `c`) as f32 (int8: `q / inv_scale`, int4: `d · (u − 8)`, blocks: their
    /// dequantization). For tests and debugging, not hot loops.
    pub fn get(&self, r: usize, c: usize) -> Option<f32> {
        if r >= self.rows() || c >= self.cols() {
            return None;
        }
        Some(match self {
            Self::F32(m) => m.data()[r * m.cols() + c],
            Self::Int8(m) => f32::from(m.q()[r * m.cols() + c]) / m.inv_scale_at(r, c),
            Self::Int4(m) => m.value_at(r, c),
            Self::Blocks(m) => m.get(r, c),
        })
    }
}
