//! Parsing and validating a GGUF file; tensor lookup and dequantization.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::Path;

use memmap2::{Mmap, MmapOptions};

use super::dequant;
use super::error::{GgufError, GgufErrorKind};
use super::types::{value_type_name, GgmlType, GgufArray, GgufValue};

/// Alignment of the data section and of tensor offsets when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Deepest nesting of metadata arrays accepted (real files nest at most one level).
pub const MAX_ARRAY_DEPTH: usize = 8;

/// The bytes of the file: a read-only map of it, or a copy of an in-memory buffer.
enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// One tensor's description from the GGUF tensor-info table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    offset: u64,
    n_elements: u64,
    byte_size: u64,
}

impl GgufTensorInfo {
    /// The tensor name (`blk.0.attn_q.weight`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Dimensions as GGUF stores them: fastest-varying first (`[cols, rows]` for a matrix).
    pub fn dims(&self) -> &[u64] {
        &self.dims
    }

    /// Dimensions in PyTorch order, slowest first (`[rows, cols]` for a matrix): `dims` reversed.
    pub fn shape_rows_major(&self) -> Vec<usize> {
        // Every dim fits in usize: the element count was checked against the file length.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// The ggml type of the data.
    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// Offset of the data from the start of the data section.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Number of values.
    pub fn n_elements(&self) -> u64 {
        self.n_elements
    }

    /// Size of the data in bytes.
    pub fn byte_size(&self) -> u64 {
        self.byte_size
    }

    /// Values per row: `dims[0]`.
    pub fn row_len(&self) -> u64 {
        self.dims[0]
    }

    /// Number of rows: the product of `dims[1..]` (1 for a vector).
    pub fn n_rows(&self) -> u64 {
        self.dims[1..].iter().product()
    }

    fn row_bytes(&self) -> u64 {
        self.dims[0] / self.ggml_type.block_size() * self.ggml_type.type_size()
    }
}

/// A GGUF file, mapped and validated: metadata, tensor infos and data.
pub struct GgufFile {
    storage: Storage,
    source_name: String,
    header: GgufHeader,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("source", &self.source_name)
            .field("version", &self.header.version)
            .field("metadata", &self.header.metadata.len())
            .field("tensors", &self.header.tensors.len())
            .field("alignment", &self.header.alignment)
            .finish()
    }
}

impl GgufFile {
    /// Maps and validates the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let source_name = path.display().to_string();
        let err = |e: std::io::Error| GgufError::new(source_name.clone(), GgufErrorKind::Io(e));
        let file = File::open(path).map_err(err)?;
        let len = file.metadata().map_err(err)?.len();
        let storage = if len == 0 {
            // A zero-length map is an error on Linux; an empty file is simply too short.
            Storage::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only. Undefined behaviour would need another process to
            // truncate or rewrite the file while it is mapped; as for torchless model files (and
            // every mmap-based loader), model files must not be modified while in use.
            Storage::Mapped(unsafe { MmapOptions::new().map(&file) }.map_err(err)?)
        };
        Self::parse(storage, source_name)
    }

    /// Validates a GGUF file held in memory (copied; errors name it `<memory>`).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, GgufError> {
        Self::parse(Storage::Owned(bytes.to_vec()), "<memory>".to_string())
    }

    fn parse(storage: Storage, source_name: String) -> Result<Self, GgufError> {
        let header = GgufHeader::parse(storage.bytes())
            .map_err(|kind| GgufError::new(source_name.clone(), kind))?;
        Ok(Self {
            storage,
            source_name,
            header,
        })
    }

    /// The parsed header (metadata and tensor table).
    pub(crate) fn header(&self) -> &GgufHeader {
        &self.header
    }

    fn err(&self, kind: GgufErrorKind) -> GgufError {
        GgufError::new(self.source_name.clone(), kind)
    }

    /// The file path (or `<memory>`).
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// The alignment of the data section and tensor offsets (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.header.alignment
    }

    /// File offset of the data section.
    pub fn data_start(&self) -> u64 {
        self.header.data_start as u64
    }

    /// File length in bytes.
    pub fn file_len(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    /// Every metadata key and value, in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.header.metadata
    }

    /// The value of metadata key `key`.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.header.get(key)
    }

    /// Every tensor's info, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.header.tensors
    }

    /// The info of tensor `name`.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.header.tensor(name)
    }

    fn info(&self, name: &str) -> Result<&GgufTensorInfo, GgufError> {
        self.tensor(name).ok_or_else(|| {
            self.err(GgufErrorKind::MissingTensor {
                name: name.to_string(),
            })
        })
    }

    /// The raw bytes of tensor `name` as stored (ggml blocks).
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], GgufError> {
        let info = self.info(name)?;
        Ok(self.data_of(info))
    }

    fn data_of(&self, info: &GgufTensorInfo) -> &[u8] {
        // In bounds: checked at open.
        let start = self.header.data_start + info.offset as usize;
        &self.storage.bytes()[start..start + info.byte_size as usize]
    }

    fn supported<'a>(&self, info: &'a GgufTensorInfo) -> Result<&'a GgufTensorInfo, GgufError> {
        if info.ggml_type.can_dequantize() {
            Ok(info)
        } else {
            Err(self.err(GgufErrorKind::UnsupportedType {
                tensor: info.name.clone(),
                ggml_type: info.ggml_type.name().to_string(),
            }))
        }
    }

    /// Tensor `name` dequantized to f32, row-major (the layout of
    /// [`shape_rows_major`](GgufTensorInfo::shape_rows_major)).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self.supported(self.info(name)?)?;
        let n = usize::try_from(info.n_elements).map_err(|_| {
            self.err(GgufErrorKind::TooLarge {
                tensor: info.name.clone(),
                values: info.n_elements,
            })
        })?;
        let mut out = vec![0.0f32; n];
        dequant::dequantize(info.ggml_type, self.data_of(info), &mut out);
        Ok(out)
    }

    /// Dequantizes rows `rows` of tensor `name` into `out`, which must hold exactly
    /// `rows.len() * row_len` values. A row is `dims[0]` consecutive values (one row of the
    /// `[rows, cols]` matrix); a tensor of more dimensions has `n_rows` = product of the others.
    /// Lets a converter stream a large tensor without an f32 copy of the whole.
    pub fn dequantize_rows(
        &self,
        name: &str,
        rows: Range<usize>,
        out: &mut [f32],
    ) -> Result<(), GgufError> {
        let info = self.supported(self.info(name)?)?;
        let n_rows = info.n_rows();
        if rows.start > rows.end || rows.end as u64 > n_rows {
            return Err(self.err(GgufErrorKind::RowsOutOfRange {
                tensor: info.name.clone(),
                start: rows.start,
                end: rows.end,
                n_rows,
            }));
        }
        // Fits: rows.end <= n_rows and the tensor's element count fits in the file.
        let row_len = info.row_len() as usize;
        let expected = rows.len() * row_len;
        if out.len() != expected {
            return Err(self.err(GgufErrorKind::OutputLength {
                tensor: info.name.clone(),
                expected,
                found: out.len(),
            }));
        }
        let row_bytes = info.row_bytes() as usize;
        let data = self.data_of(info);
        let bytes = &data[rows.start * row_bytes..rows.end * row_bytes];
        dequant::dequantize(info.ggml_type, bytes, out);
        Ok(())
    }
}

/// A parsed and validated GGUF header: version, metadata, tensor table, where the data starts.
/// Holds no bytes of the file: [`GgufFile`] and a GGUF [`ModelFile`](crate::ModelFile) keep
/// theirs each in their own way.
#[derive(Debug)]
pub(crate) struct GgufHeader {
    pub(crate) version: u32,
    pub(crate) metadata: Vec<(String, GgufValue)>,
    index: HashMap<String, usize>,
    pub(crate) tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
    pub(crate) alignment: u64,
    /// File offset of the data section.
    pub(crate) data_start: usize,
}

impl GgufHeader {
    /// Parses and validates the header of the GGUF file whose bytes are `bytes` (every tensor
    /// is checked to lie inside them).
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, GgufErrorKind> {
        Parser { bytes, pos: 0 }.parse()
    }

    /// The value of metadata key `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&GgufValue> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// The info of tensor `name`.
    pub(crate) fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

type Res<T> = Result<T, GgufErrorKind>;

/// Smallest encoding of a value of type `id` (used to cap array counts).
fn min_value_size(id: u32) -> u64 {
    match id {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => 1,
    }
}

impl<'a> Parser<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Res<&'a [u8]> {
        if n > self.remaining() {
            return Err(GgufErrorKind::Truncated {
                what: what(),
                offset: self.pos as u64,
                needed: n,
                file_len: self.bytes.len() as u64,
            });
        }
        let n = n as usize;
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Res<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Res<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Res<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Res<String> {
        let offset = self.pos as u64;
        let len = self.u64(&|| format!("length of {}", what()))?;
        if len > self.remaining() {
            return Err(GgufErrorKind::StringTooLong {
                what: what(),
                offset,
                len,
                remaining: self.remaining(),
            });
        }
        let start = self.pos as u64;
        let s = self.take(len, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| GgufErrorKind::NotUtf8 {
            what: what(),
            offset: start,
        })
    }

    /// Checks that `count` items of at least `min_size` bytes each fit in the rest of the file.
    fn check_count(&self, count: u64, min_size: u64, what: &dyn Fn() -> String) -> Res<usize> {
        let max = self.remaining() / min_size;
        if count > max {
            return Err(GgufErrorKind::CountTooLarge {
                what: what(),
                count,
                max,
                remaining: self.remaining(),
            });
        }
        Ok(count as usize)
    }

    fn parse(mut self) -> Res<GgufHeader> {
        let file_len = self.bytes.len() as u64;
        let magic = self.bytes.get(..4).unwrap_or(self.bytes);
        if magic != b"GGUF" {
            if magic.len() < 4 && b"GGUF".starts_with(magic) {
                return Err(GgufErrorKind::Truncated {
                    what: "magic".into(),
                    offset: 0,
                    needed: 4,
                    file_len,
                });
            }
            return Err(GgufErrorKind::BadMagic {
                found: magic.to_vec(),
            });
        }
        self.pos = 4;
        let version = self.u32(&|| "version".into())?;
        if version != 2 && version != 3 {
            let hint = match version {
                1 => " (GGUF v1, with 32-bit counts, predates llama.cpp's 2023 switch to v2; re-convert the model)",
                0x0200_0000 | 0x0300_0000 => " (this looks like a big-endian GGUF file; only little-endian files are read)",
                _ => "",
            };
            return Err(GgufErrorKind::UnsupportedVersion { version, hint });
        }
        let n_tensors = self.u64(&|| "tensor count".into())?;
        let n_kv = self.u64(&|| "metadata count".into())?;
        // A metadata entry is at least a key length (8), a type (4) and a 1-byte value; a tensor
        // info is at least a name length (8), n_dims (4), one dim (8), type (4) and offset (8).
        let n_kv = self.check_count(n_kv, 13, &|| "the header's metadata count".into())?;
        let n_tensors_cap = self.remaining().saturating_sub(n_kv as u64 * 13) / 32;
        if n_tensors > n_tensors_cap {
            return Err(GgufErrorKind::CountTooLarge {
                what: "the header's tensor count".into(),
                count: n_tensors,
                max: n_tensors_cap,
                remaining: self.remaining(),
            });
        }
        let n_tensors = n_tensors as usize;

        let mut metadata = Vec::with_capacity(n_kv);
        let mut index = HashMap::with_capacity(n_kv);
        for i in 0..n_kv {
            let key = self.string(&|| format!("key of metadata entry {i}"))?;
            let type_id = self.u32(&|| format!("value type of metadata `{key}`"))?;
            let value = self.value(&key, type_id, 0)?;
            if index.insert(key.clone(), metadata.len()).is_some() {
                return Err(GgufErrorKind::DuplicateKey { key });
            }
            metadata.push((key, value));
        }

        let alignment = match index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(GgufValue::U32(a)) if a.is_power_of_two() => u64::from(*a),
            Some(v) => {
                return Err(GgufErrorKind::BadMetadata {
                    key: "general.alignment".into(),
                    expected: "a UINT32 power of two".into(),
                    found: format!("{} {v:?}", v.type_name()),
                })
            }
        };

        let mut tensors = Vec::with_capacity(n_tensors);
        let mut tensor_index = HashMap::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = self.string(&|| format!("name of tensor {i}"))?;
            let n_dims = self.u32(&|| format!("n_dims of tensor `{name}`"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufErrorKind::BadDims {
                    tensor: name,
                    n_dims,
                    max: MAX_DIMS,
                });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                dims.push(self.u64(&|| format!("dim {d} of tensor `{name}`"))?);
            }
            let type_id = self.u32(&|| format!("ggml type of tensor `{name}`"))?;
            let offset = self.u64(&|| format!("offset of tensor `{name}`"))?;
            let Some(ggml_type) = GgmlType::from_id(type_id) else {
                return Err(GgufErrorKind::UnknownGgmlType {
                    tensor: name,
                    type_id,
                });
            };
            let overflow = || GgufErrorKind::ShapeOverflow {
                tensor: name.clone(),
                dims: dims.clone(),
            };
            let n_elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(overflow)?;
            let block = ggml_type.block_size();
            if dims[0] % block != 0 {
                return Err(GgufErrorKind::PartialBlock {
                    tensor: name,
                    ggml_type: ggml_type.name().into(),
                    row_len: dims[0],
                    block_size: block,
                });
            }
            let byte_size = (n_elements / block)
                .checked_mul(ggml_type.type_size())
                .ok_or_else(overflow)?;
            if offset % alignment != 0 {
                return Err(GgufErrorKind::Misaligned {
                    tensor: name,
                    offset,
                    alignment,
                });
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(GgufErrorKind::DuplicateTensor { name });
            }
            tensors.push(GgufTensorInfo {
                name,
                dims,
                ggml_type,
                offset,
                n_elements,
                byte_size,
            });
        }

        // The data section starts at the next multiple of the alignment (padding may be cut off
        // in a file without tensor data).
        let data_start = (self.pos as u64)
            .div_ceil(alignment)
            .saturating_mul(alignment)
            .min(file_len);
        let data_len = file_len - data_start;
        for t in &tensors {
            let end = t.offset.checked_add(t.byte_size);
            if end.is_none_or(|e| e > data_len) {
                return Err(GgufErrorKind::OutOfBounds {
                    tensor: t.name.clone(),
                    start: t.offset,
                    end: end.unwrap_or(u64::MAX),
                    data_len,
                });
            }
        }
        let mut by_offset: Vec<&GgufTensorInfo> =
            tensors.iter().filter(|t| t.byte_size > 0).collect();
        by_offset.sort_by_key(|t| t.offset);
        for w in by_offset.windows(2) {
            if w[0].offset + w[0].byte_size > w[1].offset {
                return Err(GgufErrorKind::Overlap {
                    tensor: w[1].name.clone(),
                    other: w[0].name.clone(),
                });
            }
        }

        Ok(GgufHeader {
            version,
            metadata,
            index,
            tensors,
            tensor_index,
            alignment,
            data_start: data_start as usize,
        })
    }

    fn value(&mut self, key: &str, type_id: u32, depth: usize) -> Res<GgufValue> {
        let what = || format!("value of metadata `{key}`");
        Ok(match type_id {
            0 => GgufValue::U8(u8::from_le_bytes(self.array(&what)?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(&what)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.array(&what)?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => GgufValue::Bool(self.bool(key)?),
            8 => GgufValue::String(self.string(&what)?),
            9 => GgufValue::Array(self.array_value(key, depth)?),
            10 => GgufValue::U64(u64::from_le_bytes(self.array(&what)?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(&what)?)),
            _ => {
                return Err(GgufErrorKind::BadValueType {
                    key: key.to_string(),
                    type_id,
                })
            }
        })
    }

    fn bool(&mut self, key: &str) -> Res<bool> {
        let offset = self.pos;
        match self.array::<1>(&|| format!("value of metadata `{key}`"))? {
            [0] => Ok(false),
            [1] => Ok(true),
            [b] => Err(GgufErrorKind::BadMetadata {
                key: key.to_string(),
                expected: "a BOOL of 0 or 1".into(),
                found: format!("byte {b} at offset {offset}"),
            }),
        }
    }

    fn array_value(&mut self, key: &str, depth: usize) -> Res<GgufArray> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(GgufErrorKind::NestingTooDeep {
                key: key.to_string(),
                max: MAX_ARRAY_DEPTH,
            });
        }
        let elem = self.u32(&|| format!("element type of array `{key}`"))?;
        if elem > 12 {
            return Err(GgufErrorKind::BadValueType {
                key: format!("{key}[]"),
                type_id: elem,
            });
        }
        let count = self.u64(&|| format!("length of array `{key}`"))?;
        let n = self.check_count(count, min_value_size(elem), &|| {
            format!("array `{key}` of {}", value_type_name(elem))
        })?;
        macro_rules! numbers {
            ($variant:ident, $t:ty) => {{
                let size = std::mem::size_of::<$t>() as u64;
                let raw = self.take(size * n as u64, &|| format!("elements of array `{key}`"))?;
                GgufArray::$variant(
                    raw.chunks_exact(size as usize)
                        .map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or_default()))
                        .collect(),
                )
            }};
        }
        Ok(match elem {
            0 => numbers!(U8, u8),
            1 => numbers!(I8, i8),
            2 => numbers!(U16, u16),
            3 => numbers!(I16, i16),
            4 => numbers!(U32, u32),
            5 => numbers!(I32, i32),
            6 => numbers!(F32, f32),
            10 => numbers!(U64, u64),
            11 => numbers!(I64, i64),
            12 => numbers!(F64, f64),
            7 => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.bool(key)?);
                }
                GgufArray::Bool(v)
            }
            8 => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(self.string(&|| format!("element {i} of array `{key}`"))?);
                }
                GgufArray::String(v)
            }
            _ => {
                let mut v = Vec::with_capacity(n);
                let inner = format!("{key}[]");
                for _ in 0..n {
                    v.push(self.array_value(&inner, depth + 1)?);
                }
                GgufArray::Array(v)
            }
        })
    }
}
