//! The safetensors weights of a Hugging Face checkpoint: finding the shards, validating every
//! tensor against the Mistral configuration, and reading tensors back in f32 chunks.
//!
//! Shards are memory-mapped only to let the `safetensors` crate parse and validate the header
//! (offsets contiguous, the data exactly filling the file, so a truncated shard is caught before
//! anything is written); the map is dropped right after. Tensor data is then read with `pread`
//! into a small buffer, so memory use is a few chunks whatever the model size, and pages of the
//! input never count towards the process's resident set.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::{SafeTensorError, SafeTensors};
use serde::Deserialize;
use torchless_format::{Config, JsonEntries};

use super::error::ConvertError;

/// Name of the shard index file.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Name of the single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";

/// Element types the converter reads (all converted exactly to f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceDType {
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
    /// float32.
    F32,
}

impl SourceDType {
    fn from_safetensors(dtype: Dtype) -> Option<Self> {
        match dtype {
            Dtype::BF16 => Some(Self::Bf16),
            Dtype::F16 => Some(Self::F16),
            Dtype::F32 => Some(Self::F32),
            _ => None,
        }
    }

    /// Bytes per element in the checkpoint.
    pub fn size(self) -> usize {
        match self {
            Self::Bf16 | Self::F16 => 2,
            Self::F32 => 4,
        }
    }
}

impl fmt::Display for SourceDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
            Self::F32 => "f32",
        })
    }
}

/// One safetensors file of the checkpoint.
#[derive(Debug)]
pub struct Shard {
    /// Path, for messages.
    pub path: PathBuf,
    file: File,
    /// Where the data section starts (`8 + header length`).
    data_start: u64,
    metadata: Metadata,
}

/// One tensor to convert, in output order.
#[derive(Debug, Clone)]
pub struct SourceTensor {
    /// Hugging Face name.
    pub name: String,
    /// Index into [`Checkpoint::shards`].
    pub shard: usize,
    /// Element type in the checkpoint.
    pub dtype: SourceDType,
    /// PyTorch shape.
    pub shape: Vec<usize>,
    /// Number of elements.
    pub n_elements: usize,
    /// Absolute byte offset of the data in the shard file.
    offset: u64,
}

impl SourceTensor {
    /// Bytes of this tensor in the checkpoint.
    pub fn source_bytes(&self) -> u64 {
        (self.n_elements * self.dtype.size()) as u64
    }
}

/// The validated weights of a checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    /// The shard files.
    pub shards: Vec<Shard>,
    /// Every tensor the model needs, in the order the original exporter writes them (the index's
    /// `weight_map` order; alphabetical without an index).
    pub tensors: Vec<SourceTensor>,
    /// Tensors present but not needed (rotary `inv_freq` buffers), left out of the output.
    pub skipped: Vec<String>,
}

#[derive(Deserialize)]
struct IndexFile {
    /// `{tensor name: shard file}` in file order: the order of the output.
    weight_map: JsonEntries<String>,
}

impl Checkpoint {
    /// Opens the weights in `dir` (`model.safetensors.index.json` and its shards,
    /// `model.safetensors`, or every `*.safetensors` file) and checks every tensor against
    /// `config`; no tensor data is read yet.
    pub fn open(dir: &Path, config: &Config) -> Result<Checkpoint, ConvertError> {
        let (files, order) = discover(dir)?;
        let mut shards = Vec::with_capacity(files.len());
        for path in files {
            shards.push(open_shard(path)?);
        }
        // Name -> shard. With an index, the index decides; without, every tensor of every shard.
        let order: Vec<(String, usize)> = match order {
            Some(order) => order,
            None => {
                let mut seen: BTreeMap<String, usize> = BTreeMap::new();
                for (i, shard) in shards.iter().enumerate() {
                    for name in shard.metadata.offset_keys() {
                        if let Some(first) = seen.insert(name.clone(), i) {
                            return Err(ConvertError::tensor(
                                &shard.path,
                                &name,
                                format!(
                                    "tensor `{name}` is in both {} and {}",
                                    shards[first].path.display(),
                                    shard.path.display()
                                ),
                            ));
                        }
                    }
                }
                seen.into_iter().collect()
            }
        };
        plan(dir, shards, order, config)
    }
}

/// The shard files and, with an index, the tensor order and placement.
#[allow(clippy::type_complexity)]
fn discover(dir: &Path) -> Result<(Vec<PathBuf>, Option<Vec<(String, usize)>>), ConvertError> {
    let index_path = dir.join(INDEX_FILE);
    if index_path.is_file() {
        let what = index_path.display().to_string();
        let refuse = |message: String| ConvertError::input(&index_path, message);
        let text = std::fs::read_to_string(&index_path)
            .map_err(|e| ConvertError::io(&index_path, format!("cannot read {what}"), e))?;
        let index: IndexFile = serde_json::from_str(&text).map_err(|e| {
            refuse(format!(
                "{what} is not a safetensors index (no `weight_map`): {e}"
            ))
        })?;
        if index.weight_map.0.is_empty() {
            return Err(refuse(format!("{what}: the weight_map is empty")));
        }
        let mut files: Vec<PathBuf> = Vec::new();
        let mut by_file: HashMap<String, usize> = HashMap::new();
        let mut order = Vec::with_capacity(index.weight_map.0.len());
        let mut names = HashSet::new();
        for (name, file) in index.weight_map.0 {
            if !names.insert(name.clone()) {
                return Err(refuse(format!("{what} lists tensor `{name}` twice")));
            }
            if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                return Err(refuse(format!(
                    "{what}: shard name {file:?} is not a plain file name"
                )));
            }
            let shard = match by_file.get(&file) {
                Some(&i) => i,
                None => {
                    let path = dir.join(&file);
                    if !path.is_file() {
                        return Err(refuse(format!(
                            "{what} lists {file}, which is missing from {}",
                            dir.display()
                        )));
                    }
                    files.push(path);
                    by_file.insert(file, files.len() - 1);
                    files.len() - 1
                }
            };
            order.push((name, shard));
        }
        return Ok((files, Some(order)));
    }
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return Ok((vec![single], None));
    }
    let cannot_list = |e| ConvertError::io(dir, format!("cannot list {}", dir.display()), e);
    let entries = std::fs::read_dir(dir).map_err(cannot_list)?;
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let path = entry.map_err(cannot_list)?.path();
        if path.extension().is_some_and(|e| e == "safetensors") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    // Mistral's own repositories also hold `consolidated.safetensors` (the same weights under
    // Mistral's native names); the Hugging Face shards are what we read.
    let is_consolidated = |p: &PathBuf| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("consolidated"))
    };
    if files.iter().any(|p| !is_consolidated(p)) {
        files.retain(|p| !is_consolidated(p));
    }
    if files.is_empty() {
        return Err(ConvertError::input(dir, format!(
            "no weights in {}: neither {INDEX_FILE}, {SINGLE_FILE} nor any *.safetensors file (PyTorch .bin checkpoints are not supported)",
            dir.display()
        )));
    }
    Ok((files, None))
}

fn open_shard(path: PathBuf) -> Result<Shard, ConvertError> {
    let what = path.display().to_string();
    let io = |message: String, e| ConvertError::io(&path, message, e);
    let file = File::open(&path).map_err(|e| io(format!("cannot open {what}"), e))?;
    let len = file
        .metadata()
        .map_err(|e| io(format!("cannot read {what}"), e))?
        .len();
    let refuse = |message: String| ConvertError::input(&path, message);
    if len < 8 {
        return Err(refuse(format!(
            "{what} is truncated or not a safetensors file ({len} bytes)"
        )));
    }
    // SAFETY: the map is read-only and only lives inside this function, for the header parse;
    // like every reader of a memory-mapped file we rely on nobody truncating the file meanwhile.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| io(format!("cannot map {what}"), e))?;
    let (header_len, metadata) = match SafeTensors::read_metadata(&mmap) {
        Ok(parsed) => parsed,
        Err(SafeTensorError::MetadataIncompleteBuffer) => {
            let described = described_len(&mmap)
                .map(|n| format!("its header describes {n} bytes, the file has {len}"))
                .unwrap_or_else(|| format!("the file has {len} bytes"));
            return Err(refuse(format!("{what} is truncated or corrupt: {described}")));
        }
        Err(SafeTensorError::InvalidHeaderLength) => {
            return Err(refuse(format!("{what} is truncated or not a safetensors file: its header length runs past the end of the file ({len} bytes)")))
        }
        Err(e) => return Err(refuse(format!("{what} is not a valid safetensors file: {e}"))),
    };
    drop(mmap);
    Ok(Shard {
        path,
        file,
        data_start: 8 + header_len as u64,
        metadata,
    })
}

/// The file length a safetensors header describes (for the truncation message).
fn described_len(buffer: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Entry {
        data_offsets: (u64, u64),
    }
    let n = u64::from_le_bytes(buffer.get(..8)?.try_into().ok()?);
    let header = buffer.get(8..usize::try_from(8 + n).ok()?)?;
    let mut entries: HashMap<String, serde_json::Value> = serde_json::from_slice(header).ok()?;
    entries.remove("__metadata__");
    let mut end = 0;
    for entry in entries.into_values() {
        end = end.max(Entry::deserialize(entry).ok()?.data_offsets.1);
    }
    Some(8 + n + end)
}

fn is_ignorable(name: &str) -> bool {
    // Old checkpoints saved the RoPE frequency buffer; it is recomputed from rope_theta.
    name.ends_with("rotary_emb.inv_freq")
}

fn plan(
    dir: &Path,
    shards: Vec<Shard>,
    order: Vec<(String, usize)>,
    config: &Config,
) -> Result<Checkpoint, ConvertError> {
    let expected: HashMap<String, Vec<usize>> = config
        .expected_tensors()
        .into_iter()
        .map(|t| (t.name, t.shape))
        .collect();
    let mut tensors = Vec::with_capacity(expected.len());
    let mut skipped = Vec::new();
    for (name, shard_index) in order {
        let shard = &shards[shard_index];
        let file = shard.path.display();
        let refuse = |message: String| ConvertError::tensor(&shard.path, &name, message);
        let Some(info) = shard.metadata.info(&name) else {
            return Err(refuse(format!(
                "{file} does not contain tensor `{name}` (the index says it does)"
            )));
        };
        let Some(shape) = expected.get(&name) else {
            if is_ignorable(&name) {
                skipped.push(name);
                continue;
            }
            return Err(refuse(format!(
                "{file}: unexpected tensor `{name}` {:?}: not part of a Mistral model with {} layers (config.json)",
                info.shape,
                config.n_layers
            )));
        };
        let Some(dtype) = SourceDType::from_safetensors(info.dtype) else {
            return Err(refuse(format!(
                "{file}: tensor `{name}` has dtype {:?}; only BF16, F16 and F32 weights are supported",
                info.dtype
            )));
        };
        if &info.shape != shape {
            return Err(ConvertError::Shape {
                path: shard.path.clone(),
                tensor: name,
                expected: shape.clone(),
                found: info.shape.clone(),
            });
        }
        let n_elements = shape.iter().product();
        tensors.push(SourceTensor {
            name,
            shard: shard_index,
            dtype,
            shape: shape.clone(),
            n_elements,
            offset: shard.data_start + info.data_offsets.0 as u64,
        });
    }
    if tensors.len() != expected.len() {
        let present: HashSet<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        let missing: Vec<_> = config
            .expected_tensors()
            .into_iter()
            .filter(|t| !present.contains(t.name.as_str()))
            .collect();
        if let Some(first) = missing.first() {
            let more = match missing.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            return Err(ConvertError::tensor(
                dir,
                &first.name,
                format!(
                    "the checkpoint has no tensor `{}` (shape {:?}){more}",
                    first.name, first.shape
                ),
            ));
        }
    }
    Ok(Checkpoint {
        shards,
        tensors,
        skipped,
    })
}

impl Checkpoint {
    /// Reads elements `start..start + out.len()` of `tensor` into `out` as f32 (exact for every
    /// source type). `scratch` holds the raw bytes.
    pub fn read_f32(
        &self,
        tensor: &SourceTensor,
        start: usize,
        out: &mut [f32],
        scratch: &mut Vec<u8>,
    ) -> Result<(), ConvertError> {
        let shard = &self.shards[tensor.shard];
        let size = tensor.dtype.size();
        if start + out.len() > tensor.n_elements {
            return Err(ConvertError::tensor(
                &shard.path,
                &tensor.name,
                format!("internal error: read past the end of `{}`", tensor.name),
            ));
        }
        scratch.resize(out.len() * size, 0);
        shard
            .file
            .read_exact_at(scratch, tensor.offset + (start * size) as u64)
            .map_err(|e| {
                ConvertError::io(
                    &shard.path,
                    format!(
                        "{}: cannot read tensor `{}` (was the file truncated?)",
                        shard.path.display(),
                        tensor.name
                    ),
                    e,
                )
            })?;
        match tensor.dtype {
            SourceDType::F32 => {
                for (o, b) in out.iter_mut().zip(scratch.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            SourceDType::Bf16 => {
                for (o, b) in out.iter_mut().zip(scratch.chunks_exact(2)) {
                    *o = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
                }
            }
            SourceDType::F16 => {
                for (o, b) in out.iter_mut().zip(scratch.chunks_exact(2)) {
                    *o = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                }
            }
        }
        Ok(())
    }

    /// The element types present, for the summary line.
    pub fn dtypes(&self) -> Vec<SourceDType> {
        let mut dtypes: Vec<SourceDType> = Vec::new();
        for t in &self.tensors {
            if !dtypes.contains(&t.dtype) {
                dtypes.push(t.dtype);
            }
        }
        dtypes
    }
}
