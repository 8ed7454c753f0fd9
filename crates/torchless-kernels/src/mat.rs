//! Borrowed weight-matrix views, validated once at construction.

use crate::error::{check_len, checked_mul, KernelError};
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
        self.phase == 0 && self.cols % GROUP_SIZE == 0
    }

    /// The inverse scale of element (`r`, `c`) (no bounds check beyond slice indexing).
    #[inline]
    pub(crate) fn inv_scale_at(&self, r: usize, c: usize) -> f32 {
        self.inv_scales[(self.phase + r * self.cols + c) / GROUP_SIZE]
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

    /// Number of rows (output features).
    pub fn rows(&self) -> usize {
        match self {
            Self::F32(m) => m.rows(),
            Self::Int8(m) => m.rows(),
        }
    }

    /// Number of columns (input features).
    pub fn cols(&self) -> usize {
        match self {
            Self::F32(m) => m.cols(),
            Self::Int8(m) => m.cols(),
        }
    }

    /// Bytes a matvec has to stream: values plus, for int8, the f32 inverse scales.
    pub fn weight_bytes(&self) -> usize {
        match self {
            Self::F32(m) => m.data().len() * 4,
            Self::Int8(m) => m.q().len() + m.inv_scales().len() * 4,
        }
    }

    /// The sub-matrix made of rows `range`.
    pub fn rows_range(&self, range: Range<usize>) -> Result<Self, KernelError> {
        match self {
            Self::F32(m) => m.rows_range(range).map(Self::F32),
            Self::Int8(m) => m.rows_range(range).map(Self::Int8),
        }
    }

    /// Element (`r`, `c`) as f32 (int8: `q / inv_scale`). For tests and debugging, not hot loops.
    pub fn get(&self, r: usize, c: usize) -> Option<f32> {
        if r >= self.rows() || c >= self.cols() {
            return None;
        }
        Some(match self {
            Self::F32(m) => m.data()[r * m.cols() + c],
            Self::Int8(m) => f32::from(m.q()[r * m.cols() + c]) / m.inv_scale_at(r, c),
        })
    }
}
