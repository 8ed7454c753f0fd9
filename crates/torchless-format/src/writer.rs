//! A streaming writer for model files: header first, then tensors one by one in chunks, so
//! converting or generating a 7B model needs memory for one chunk, not for the model.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::error::{FormatError, FormatErrorKind};
use crate::file::{ALIGNMENT, PAGE};
use crate::int4::{self, Int4Method};
use crate::quant::{quantize_group, GROUP_SIZE};
use crate::tensor::DType;
use crate::tokenizer_data::TokenizerData;

/// A tensor to be written: name, storage type and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Hugging Face tensor name.
    pub name: String,
    /// Storage in the file; int8 and int4 tensors are quantized from the f32 values pushed.
    pub dtype: DType,
    /// PyTorch shape, row-major.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// A tensor spec.
    pub fn new(name: impl Into<String>, dtype: DType, shape: Vec<usize>) -> Self {
        Self {
            name: name.into(),
            dtype,
            shape,
        }
    }
}

struct PlannedTensor {
    spec: TensorSpec,
    n_elements: usize,
    offset: u64,
    scale_offset: u64,
}

/// Writes a torchless model file tensor by tensor.
///
/// Tensors are written in the order given to [`ModelWriter::new`]: [`begin_tensor`](Self::begin_tensor),
/// any number of [`push`](Self::push) calls with consecutive f32 values (quantized on the fly for
/// int8 tensors, in the exporter's exact f32 arithmetic), then the next tensor;
/// [`finish`](Self::finish) checks everything was written and flushes.
pub struct ModelWriter<W: Write> {
    out: W,
    source_name: String,
    plan: Vec<PlannedTensor>,
    /// Bytes of payload written so far.
    position: u64,
    next_tensor: usize,
    current: Option<CurrentTensor>,
    int4_method: Int4Method,
}

impl<W: Write> std::fmt::Debug for ModelWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelWriter")
            .field("source_name", &self.source_name)
            .field("tensors", &self.plan.len())
            .field("next_tensor", &self.next_tensor)
            .finish()
    }
}

struct CurrentTensor {
    index: usize,
    written: usize,
    /// Quantized types: values of a group not yet complete.
    pending: Vec<f32>,
    /// int8: the inverse scales so far, and a buffer for codes.
    inv_scales: Vec<f32>,
    quantized: Vec<i8>,
    /// int4: the f16 scales so far, and a buffer for codes.
    scales: Vec<u16>,
    packed: Vec<u8>,
}

impl ModelWriter<BufWriter<File>> {
    /// Creates `path` and writes the header.
    pub fn create(
        path: impl AsRef<Path>,
        metadata: &[(String, String)],
        tensors: Vec<TensorSpec>,
        tokenizer: Option<&TokenizerData>,
    ) -> Result<Self, FormatError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file = File::create(path).map_err(|e| FormatError::new(name.clone(), e.into()))?;
        Self::new(
            BufWriter::with_capacity(1 << 20, file),
            name,
            metadata,
            tensors,
            tokenizer,
        )
    }
}

impl<W: Write> ModelWriter<W> {
    /// Writes the header to `out`; `source_name` is used in error messages.
    pub fn new(
        mut out: W,
        source_name: impl Into<String>,
        metadata: &[(String, String)],
        tensors: Vec<TensorSpec>,
        tokenizer: Option<&TokenizerData>,
    ) -> Result<Self, FormatError> {
        let source_name = source_name.into();
        let err = |reason: String| {
            FormatError::new(source_name.clone(), FormatErrorKind::Writer { reason })
        };
        // int4 is this project's own dtype, so its files need not match the original exporter
        // byte for byte: their payload and int4 tensors start on page boundaries, where the
        // decode kernels' 128-byte blocks of codes stream fastest (a 7B model's weights 64 bytes
        // off every 128 streamed 2-4% slower on a 2-vCPU Xeon). f32 and int8 files keep the
        // exporter's 64-byte alignment.
        let has_int4 = tensors.iter().any(|spec| spec.dtype == DType::Int4);
        let mut plan = Vec::with_capacity(tensors.len());
        let mut position = 0u64;
        for spec in tensors {
            if plan
                .iter()
                .any(|p: &PlannedTensor| p.spec.name == spec.name)
            {
                return Err(err(format!("tensor `{}` is listed twice", spec.name)));
            }
            if let DType::Blocks(format) = spec.dtype {
                return Err(err(format!(
                    "tensor `{}`: a torchless file holds f32, int8 and int4 tensors, not ggml {format} blocks",
                    spec.name
                )));
            }
            let n_elements = spec
                .shape
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| err(format!("shape {:?} overflows", spec.shape)))?;
            if spec.dtype == DType::Int4
                && spec.shape.last().copied().unwrap_or(1) % int4::GROUP_SIZE != 0
            {
                return Err(err(format!(
                    "tensor `{}` of shape {:?} cannot be int4: its last dimension is not a multiple of {}",
                    spec.name,
                    spec.shape,
                    int4::GROUP_SIZE
                )));
            }
            let offset = match spec.dtype {
                DType::Int4 => position.next_multiple_of(PAGE as u64),
                _ => position,
            };
            position = align_up(offset + spec.dtype.data_len(n_elements) as u64);
            let scale_offset = position;
            if let Some(group) = spec.dtype.group_size() {
                let count = n_elements.div_ceil(group);
                position = align_up(position + (spec.dtype.scale_bytes() * count) as u64);
            }
            plan.push(PlannedTensor {
                spec,
                n_elements,
                offset,
                scale_offset,
            });
        }

        let mut header = header_json(metadata, &plan, tokenizer);
        let payload_alignment = if has_int4 { PAGE } else { ALIGNMENT } as u64;
        let padded = (8 + header.len() as u64).next_multiple_of(payload_alignment) - 8;
        header.resize(padded as usize, 0);
        out.write_all(&(header.len() as u64).to_le_bytes())
            .and_then(|()| out.write_all(&header))
            .map_err(|e| FormatError::new(source_name.clone(), e.into()))?;

        Ok(Self {
            out,
            source_name,
            plan,
            position: 0,
            next_tensor: 0,
            current: None,
            int4_method: Int4Method::default(),
        })
    }

    /// How int4 tensors are quantized (default [`Int4Method::Search`]).
    pub fn with_int4_method(self, method: Int4Method) -> Self {
        Self {
            int4_method: method,
            ..self
        }
    }

    fn error(&self, reason: String) -> FormatError {
        FormatError::new(self.source_name.clone(), FormatErrorKind::Writer { reason })
    }

    fn io(&self, e: std::io::Error) -> FormatError {
        FormatError::new(self.source_name.clone(), e.into())
    }

    /// Starts the next tensor, which must be `name`.
    pub fn begin_tensor(&mut self, name: &str) -> Result<(), FormatError> {
        if let Some(current) = &self.current {
            let name = &self.plan[current.index].spec.name;
            return Err(self.error(format!("tensor `{name}` is not finished")));
        }
        let Some(planned) = self.plan.get(self.next_tensor) else {
            return Err(self.error(format!("tensor `{name}` was not declared")));
        };
        if planned.spec.name != name {
            return Err(self.error(format!(
                "expected tensor `{}` next, got `{name}`",
                planned.spec.name
            )));
        }
        let offset = planned.offset;
        self.pad_to(offset)?;
        self.current = Some(CurrentTensor {
            index: self.next_tensor,
            written: 0,
            pending: Vec::new(),
            inv_scales: Vec::new(),
            quantized: Vec::new(),
            scales: Vec::new(),
            packed: Vec::new(),
        });
        self.next_tensor += 1;
        Ok(())
    }

    /// Appends consecutive values of the current tensor (flattened row-major).
    pub fn push(&mut self, values: &[f32]) -> Result<(), FormatError> {
        let Some(mut current) = self.current.take() else {
            return Err(self.error("push without begin_tensor".into()));
        };
        let planned = &self.plan[current.index];
        if current.written + values.len() > planned.n_elements {
            let reason = format!(
                "tensor `{}` has {} elements, got more",
                planned.spec.name, planned.n_elements
            );
            return Err(self.error(reason));
        }
        let name = planned.spec.name.clone();
        let result = match planned.spec.dtype {
            DType::F32 => {
                let bytes: &[u8] = bytemuck::cast_slice(values);
                self.write_bytes(bytes)
            }
            DType::Int8 | DType::Int4 => self.push_groups(&mut current, values, &name),
            // Refused by `new`.
            DType::Blocks(_) => Err(self.error(format!("tensor `{name}` cannot be written"))),
        };
        current.written += values.len();
        self.current = Some(current);
        result
    }

    /// Quantized tensors: whole groups are quantized and written, a partial one waits.
    fn push_groups(
        &mut self,
        current: &mut CurrentTensor,
        mut values: &[f32],
        name: &str,
    ) -> Result<(), FormatError> {
        let group_size = self.plan[current.index]
            .spec
            .dtype
            .group_size()
            .unwrap_or(GROUP_SIZE);
        // Complete a group left over from the previous push first.
        if !current.pending.is_empty() {
            let take = (group_size - current.pending.len()).min(values.len());
            current.pending.extend_from_slice(&values[..take]);
            values = &values[take..];
            if current.pending.len() == group_size {
                let group = std::mem::take(&mut current.pending);
                self.quantize_and_write(current, &group, name)?;
            }
        }
        let whole = values.len() / group_size * group_size;
        if whole > 0 {
            self.quantize_and_write(current, &values[..whole], name)?;
        }
        current.pending.extend_from_slice(&values[whole..]);
        Ok(())
    }

    fn quantize_and_write(
        &mut self,
        current: &mut CurrentTensor,
        values: &[f32],
        name: &str,
    ) -> Result<(), FormatError> {
        if self.plan[current.index].spec.dtype == DType::Int4 {
            return self.quantize_int4(current, values, name);
        }
        current.quantized.resize(values.len(), 0);
        let group_base = current.written / GROUP_SIZE;
        for (group_index, (group, out)) in values
            .chunks(GROUP_SIZE)
            .zip(current.quantized.chunks_mut(GROUP_SIZE))
            .enumerate()
        {
            let inv_scale = quantize_group(group, out).ok_or_else(|| {
                self.error(format!(
                    "tensor `{name}` group {} holds a NaN or infinity and cannot be quantized",
                    group_base + group_index
                ))
            })?;
            current.inv_scales.push(inv_scale);
        }
        let bytes: &[u8] = bytemuck::cast_slice(&current.quantized);
        self.write_bytes(bytes)
    }

    /// Whole int4 groups (`values.len()` is a multiple of 32: rows are whole groups).
    fn quantize_int4(
        &mut self,
        current: &mut CurrentTensor,
        values: &[f32],
        name: &str,
    ) -> Result<(), FormatError> {
        let n_groups = values.len() / int4::GROUP_SIZE;
        current.packed.resize(n_groups * int4::GROUP_BYTES, 0);
        let first = current.scales.len();
        current.scales.resize(first + n_groups, 0);
        let failed = quantize_int4_groups(
            values,
            self.int4_method,
            &mut current.packed,
            &mut current.scales[first..],
        );
        if let Some(group_index) = failed {
            current.scales.truncate(first);
            return Err(self.error(format!(
                "tensor `{name}` group {} holds a NaN, an infinity or a magnitude beyond \
                 int4's f16 scales and cannot be quantized",
                current.written / int4::GROUP_SIZE + group_index
            )));
        }
        let packed = std::mem::take(&mut current.packed);
        let result = self.write_bytes(&packed);
        current.packed = packed;
        result
    }

    /// Appends already-quantized int4 groups to the current int4 tensor: 16 code bytes and one
    /// f16 scale per group, in the layout of [`crate::int4`] (e.g. llama.cpp Q4_0 blocks, whose
    /// codes are the same bytes). Counts as `32 · scales.len()` values.
    pub fn push_int4_groups(&mut self, packed: &[u8], scales: &[u16]) -> Result<(), FormatError> {
        let expected = scales.len() * int4::GROUP_BYTES;
        let count_problem = (packed.len() != expected).then(|| {
            format!(
                "{} code bytes for {} groups (expected {expected})",
                packed.len(),
                scales.len()
            )
        });
        let n = scales.len() * int4::GROUP_SIZE;
        self.push_quantized(DType::Int4, packed, n, count_problem, |current| {
            current.scales.extend_from_slice(scales)
        })
    }

    /// Appends already-quantized int8 groups to the current int8 tensor: codes and one inverse
    /// scale per group of 64 (the last group may be partial, ending the tensor), stored as
    /// [`push`](Self::push) would store values that quantize to them. Counts as
    /// `codes.len()` values.
    pub fn push_int8_groups(
        &mut self,
        codes: &[i8],
        inv_scales: &[f32],
    ) -> Result<(), FormatError> {
        let n = codes.len();
        let expected = n.div_ceil(GROUP_SIZE);
        let count_problem = (inv_scales.len() != expected).then(|| {
            format!(
                "{} inverse scales for {n} values (expected {expected})",
                inv_scales.len()
            )
        });
        let codes: &[u8] = bytemuck::cast_slice(codes);
        self.push_quantized(DType::Int8, codes, n, count_problem, |current| {
            current.inv_scales.extend_from_slice(inv_scales)
        })
    }

    /// Writes the codes of `n` values of whole groups of the current tensor, which must be of
    /// `dtype`, and hands the tensor's state to `keep_scales` (its scales are written at its
    /// end); refuses the push, changing nothing, if it does not fit.
    fn push_quantized(
        &mut self,
        dtype: DType,
        codes: &[u8],
        n: usize,
        count_problem: Option<String>,
        keep_scales: impl FnOnce(&mut CurrentTensor),
    ) -> Result<(), FormatError> {
        let Some(mut current) = self.current.take() else {
            return Err(self.error("push without begin_tensor".into()));
        };
        let planned = &self.plan[current.index];
        let group = dtype.group_size().unwrap_or(GROUP_SIZE);
        let problem = if planned.spec.dtype != dtype {
            Some(format!(
                "tensor `{}` is not {}",
                planned.spec.name,
                dtype.as_str()
            ))
        } else if count_problem.is_some() {
            count_problem
        } else if !current.pending.is_empty()
            || current.written % group != 0
            || current.written + n > planned.n_elements
        {
            Some(format!(
                "tensor `{}` has {} elements; {} written, {n} more do not fit whole groups",
                planned.spec.name, planned.n_elements, current.written
            ))
        } else {
            None
        };
        if let Some(reason) = problem {
            self.current = Some(current);
            return Err(self.error(reason));
        }
        let result = self.write_bytes(codes);
        keep_scales(&mut current);
        current.written += n;
        self.current = Some(current);
        result
    }

    /// Finishes the current tensor (checks its length, writes int8 or int4 scales).
    pub fn end_tensor(&mut self) -> Result<(), FormatError> {
        let Some(mut current) = self.current.take() else {
            return Err(self.error("end_tensor without begin_tensor".into()));
        };
        let planned = &self.plan[current.index];
        let (name, n_elements, dtype, scale_offset) = (
            planned.spec.name.clone(),
            planned.n_elements,
            planned.spec.dtype,
            planned.scale_offset,
        );
        if current.written != n_elements {
            return Err(self.error(format!(
                "tensor `{name}` has {n_elements} elements, got {}",
                current.written
            )));
        }
        if dtype == DType::Int8 && !current.pending.is_empty() {
            // A final partial group: the tensor's size is not a multiple of 64 (int4 rows are
            // whole groups, so nothing is pending there).
            let group = std::mem::take(&mut current.pending);
            self.quantize_and_write(&mut current, &group, &name)?;
        }
        match dtype {
            DType::F32 | DType::Blocks(_) => {}
            DType::Int8 => {
                self.pad_to(scale_offset)?;
                let bytes: &[u8] = bytemuck::cast_slice(&current.inv_scales);
                self.write_bytes(bytes)?;
            }
            DType::Int4 => {
                self.pad_to(scale_offset)?;
                let bytes: Vec<u8> = current
                    .scales
                    .iter()
                    .flat_map(|s| s.to_le_bytes())
                    .collect();
                self.write_bytes(&bytes)?;
            }
        }
        Ok(())
    }

    /// Writes a whole tensor from one slice.
    pub fn write_tensor(&mut self, name: &str, values: &[f32]) -> Result<(), FormatError> {
        self.begin_tensor(name)?;
        self.push(values)?;
        self.end_tensor()
    }

    /// Checks every declared tensor was written, pads the payload and flushes. Returns the writer.
    pub fn finish(mut self) -> Result<W, FormatError> {
        if self.current.is_some() {
            return Err(self.error("the last tensor was not ended".into()));
        }
        if let Some(missing) = self.plan.get(self.next_tensor) {
            let reason = format!("tensor `{}` was never written", missing.spec.name);
            return Err(self.error(reason));
        }
        let end = align_up(self.position);
        self.pad_to(end)?;
        self.out.flush().map_err(|e| self.io(e))?;
        Ok(self.out)
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        self.out.write_all(bytes).map_err(|e| self.io(e))?;
        self.position += bytes.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, target: u64) -> Result<(), FormatError> {
        const ZEROS: [u8; ALIGNMENT] = [0; ALIGNMENT];
        while self.position < target {
            let n = (target - self.position).min(ALIGNMENT as u64) as usize;
            self.write_bytes(&ZEROS[..n])?;
        }
        Ok(())
    }
}

/// Quantizes whole int4 groups into `packed` and `scales`, on every core for large inputs (the
/// error-minimizing search costs ~100 ns per value); the bytes do not depend on the thread
/// count. Returns the index of the first group that cannot be quantized.
fn quantize_int4_groups(
    values: &[f32],
    method: Int4Method,
    packed: &mut [u8],
    scales: &mut [u16],
) -> Option<usize> {
    fn serial(
        values: &[f32],
        method: Int4Method,
        packed: &mut [u8],
        scales: &mut [u16],
    ) -> Option<usize> {
        for (i, ((group, out), scale)) in values
            .chunks_exact(int4::GROUP_SIZE)
            .zip(packed.chunks_exact_mut(int4::GROUP_BYTES))
            .zip(scales.iter_mut())
            .enumerate()
        {
            match int4::quantize_group(group, method, out) {
                Some(bits) => *scale = bits,
                None => return Some(i),
            }
        }
        None
    }
    let n_groups = scales.len();
    let threads = if n_groups >= 8192 {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(16)
    } else {
        1
    };
    if threads <= 1 {
        return serial(values, method, packed, scales);
    }
    let per = n_groups.div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = values
            .chunks(per * int4::GROUP_SIZE)
            .zip(packed.chunks_mut(per * int4::GROUP_BYTES))
            .zip(scales.chunks_mut(per))
            .enumerate()
            .map(|(w, ((v, p), s))| {
                scope.spawn(move || serial(v, method, p, s).map(|g| w * per + g))
            })
            .collect();
        // Joined in order, so the first failure found is the earliest group.
        let mut first_failure = None;
        for worker in workers {
            match worker.join() {
                Ok(failure) => first_failure = first_failure.or(failure),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        first_failure
    })
}

fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGNMENT as u64) * ALIGNMENT as u64
}

/// The header JSON as Python's `json.dumps` writes it (`", "` and `": "` separators, non-ASCII
/// escaped), so files are byte-compatible with the original exporter's.
fn header_json(
    metadata: &[(String, String)],
    plan: &[PlannedTensor],
    tokenizer: Option<&TokenizerData>,
) -> Vec<u8> {
    let mut s = String::with_capacity(1 << 16);
    s.push_str("{\"metadata\": {");
    // The tokenizer's settings live in the metadata; the caller may have listed them already.
    let tokenizer_entries: Vec<(String, String)> = tokenizer
        .map(|t| t.metadata_entries())
        .unwrap_or_default()
        .into_iter()
        .filter(|(key, _)| !metadata.iter().any(|(k, _)| k == key))
        .collect();
    for (i, (key, value)) in metadata.iter().chain(&tokenizer_entries).enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        push_json_string(&mut s, key);
        s.push_str(": ");
        push_json_string(&mut s, value);
    }
    s.push_str("}, \"tensors\": {");
    for (i, t) in plan.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        push_json_string(&mut s, &t.spec.name);
        s.push_str(": {\"dtype\": ");
        push_json_string(&mut s, t.spec.dtype.as_str());
        s.push_str(", \"shape\": [");
        let dims: Vec<String> = t.spec.shape.iter().map(|d| d.to_string()).collect();
        s.push_str(&dims.join(", "));
        s.push_str(&format!("], \"offset\": {}", t.offset));
        if let Some(group) = t.spec.dtype.group_size() {
            s.push_str(&format!(
                ", \"scale_offset\": {}, \"scale_size\": {}",
                t.scale_offset,
                t.n_elements.div_ceil(group)
            ));
        }
        s.push('}');
    }
    s.push('}');
    if let Some(tokenizer) = tokenizer {
        s.push_str(", \"tokenizer\": {\"vocab\": {");
        for (i, (piece, id)) in tokenizer.vocab.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            push_json_string(&mut s, piece);
            s.push_str(&format!(": {id}"));
        }
        s.push_str("}, \"merges\": [");
        for (i, merge) in tokenizer.merges.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            push_json_string(&mut s, merge);
        }
        s.push(']');
        if !tokenizer.added_tokens.is_empty() {
            s.push_str(", \"added_tokens\": [");
            for (i, token) in tokenizer.added_tokens.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                s.push_str(&format!("{{\"id\": {}, \"content\": ", token.id));
                push_json_string(&mut s, &token.content);
                s.push_str(&format!(", \"special\": {}}}", token.special));
            }
            s.push(']');
        }
        s.push('}');
    }
    s.push('}');
    s.into_bytes()
}

/// Python's `json.dumps` string escaping with `ensure_ascii=True`.
fn push_json_string(s: &mut String, text: &str) {
    s.push('"');
    for c in text.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            '\u{8}' => s.push_str("\\b"),
            '\u{c}' => s.push_str("\\f"),
            ' '..='~' => s.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    s.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    s.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pre-quantized int8 groups give the bytes `push` gives for values that quantize to them.
    #[test]
    fn int8_groups_are_stored_as_pushed_values_are() {
        let values: Vec<f32> = (0..200)
            .map(|i| ((i * 37) % 101) as f32 / 7.0 - 6.0)
            .collect();
        let spec = || vec![TensorSpec::new("t", DType::Int8, vec![2, 100])];
        let mut pushed = ModelWriter::new(Vec::new(), "a", &[], spec(), None).unwrap();
        pushed.write_tensor("t", &values).unwrap();
        let mut codes = vec![0i8; values.len()];
        let inv_scales: Vec<f32> = values
            .chunks(GROUP_SIZE)
            .zip(codes.chunks_mut(GROUP_SIZE))
            .map(|(group, out)| quantize_group(group, out).unwrap())
            .collect();
        let two_groups_in = || {
            let mut writer = ModelWriter::new(Vec::new(), "a", &[], spec(), None).unwrap();
            writer.begin_tensor("t").unwrap();
            writer
                .push_int8_groups(&codes[..128], &inv_scales[..2])
                .unwrap();
            writer
        };
        // A partial group must end the tensor.
        let mut partial = two_groups_in();
        partial
            .push_int8_groups(&codes[..10], &inv_scales[..1])
            .unwrap();
        assert!(partial
            .push_int8_groups(&codes[..10], &inv_scales[..1])
            .is_err());
        // A wrong number of scales is refused and changes nothing.
        let mut grouped = two_groups_in();
        assert!(grouped
            .push_int8_groups(&codes[128..], &inv_scales[..1])
            .is_err());
        grouped
            .push_int8_groups(&codes[128..], &inv_scales[2..])
            .unwrap();
        grouped.end_tensor().unwrap();
        assert_eq!(grouped.finish().unwrap(), pushed.finish().unwrap());
    }

    #[test]
    fn json_strings_are_escaped_like_python() {
        // Expected values are Python's json.dumps output for the same strings.
        let cases = [
            ("▁the", "\"\\u2581the\""),
            ("a\"b\\c", "\"a\\\"b\\\\c\""),
            ("\n\t\u{7f}", "\"\\n\\t\\u007f\""),
            ("😀", "\"\\ud83d\\ude00\""),
            ("<0x0A>", "\"<0x0A>\""),
        ];
        for (input, want) in cases {
            let mut s = String::new();
            push_json_string(&mut s, input);
            assert_eq!(s, want, "escaping {input:?}");
        }
    }
}
