//! Opening a model file: memory map, header parsing, bounds checks, typed zero-copy views.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::{Advice, Mmap, MmapMut, UncheckedAdvice};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::Config;
use crate::error::{FormatError, FormatErrorKind};
use crate::gguf::{self, GgufFile, GgufHeader, GgufValue};
use crate::int4;
use crate::quant::GROUP_SIZE;
use crate::tensor::{
    BlockView, DType, Int4View, Int8View, ScaleInfo, TensorData, TensorInfo, TensorRef,
};
use crate::tokenizer_data::{AddedTokenData, TokenizerData, TokenizerKind};

/// Headers larger than this are refused before anything is read into memory.
pub const MAX_HEADER_LEN: u64 = 1 << 30;

/// Alignment of the payload and of every tensor, as the exporter writes them and readers
/// require (files with int4 tensors align their payload and int4 tensors to 4096 bytes).
pub const ALIGNMENT: usize = 64;

/// Page size: in-memory copies put the payload on a page boundary, and the writer aligns the
/// payload and every int4 tensor to it in files that hold int4 tensors.
pub(crate) const PAGE: usize = 4096;

/// Whether to bring a tensor's pages in or give them back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residency {
    /// Start reading the pages now (`MADV_WILLNEED`), without waiting.
    WillNeed,
    /// Map the pages into this process now (`MADV_POPULATE_READ`, Linux 5.14+; elsewhere
    /// `MADV_WILLNEED`), so the next reads take no page faults. Waits until done.
    Populate,
    /// Drop the pages from this process (`MADV_DONTNEED`); they stay in the page cache and fault
    /// back in from it on the next access.
    DontNeed,
}

/// Which kind of file a [`ModelFile`] was opened from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// A torchless model file.
    Torchless,
    /// A llama.cpp GGUF file, its tensors used at their own ggml types.
    Gguf {
        /// The GGUF version (2 or 3).
        version: u32,
    },
}

/// What is specific to the kind of file.
#[derive(Debug)]
enum Source {
    /// Byte range of the tokenizer JSON inside the file, if the header has one.
    Torchless {
        tokenizer_range: Option<(usize, usize)>,
    },
    Gguf(Box<GgufSource>),
}

/// A GGUF file opened as a model: its parsed header and how its tensors are named.
#[derive(Debug)]
struct GgufSource {
    header: GgufHeader,
    /// Hugging Face name → the name in the file.
    stored_names: BTreeMap<String, String>,
}

/// An opened model file: a torchless model file or a llama.cpp GGUF file (detected by its magic).
///
/// Opening maps the file and checks the header, every tensor's bounds, alignment and scale count
/// once; afterwards views are handed out without copying. The embedded tokenizer is parsed only
/// when [`ModelFile::tokenizer_data`] is called.
///
/// A GGUF file (v2/v3, architecture `llama`) is read as the same model: its configuration comes
/// from the `llama.*` metadata (with [`RopeLayout::Adjacent`](crate::RopeLayout::Adjacent): its
/// query and key rows are llama.cpp's permutation), its tensors take their Hugging Face names
/// (`blk.0.attn_q.weight` is `model.layers.0.self_attn.q_proj.weight`) and keep their ggml types
/// ([`DType::Blocks`]; F32 tensors are `&[f32]`), its tokenizer comes from `tokenizer.ggml.*`.
/// Every key is type-checked and every tensor checked against the configuration at open; errors
/// name the key or the tensor as the file spells it.
#[derive(Debug)]
pub struct ModelFile {
    source_name: String,
    path: Option<PathBuf>,
    mmap: Mmap,
    /// Where the file's first byte is in `mmap` (non-zero only for in-memory copies, which put
    /// the payload on a page boundary: see `copy_in`).
    lead: usize,
    /// The bytes live in anonymous memory (a copy), not in a mapping of the file.
    in_memory: bool,
    payload_start: usize,
    metadata: BTreeMap<String, String>,
    config: Config,
    tensors: BTreeMap<String, TensorInfo>,
    source: Source,
}

#[derive(Deserialize)]
struct RawHeader<'a> {
    metadata: BTreeMap<String, MetadataValue>,
    tensors: BTreeMap<String, RawTensor>,
    #[serde(borrow, default)]
    tokenizer: Option<&'a RawValue>,
}

/// Metadata values are strings in files from the exporter; plain JSON numbers are accepted too.
#[derive(Deserialize)]
#[serde(untagged)]
enum MetadataValue {
    Text(String),
    Number(serde_json::Number),
    Null(()),
}

impl MetadataValue {
    fn into_string(self) -> String {
        match self {
            MetadataValue::Text(s) => s,
            MetadataValue::Number(n) => n.to_string(),
            MetadataValue::Null(()) => "None".to_string(),
        }
    }
}

#[derive(Deserialize)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    offset: u64,
    scale_offset: Option<u64>,
    scale_size: Option<u64>,
}

/// Fills `buffer` with the file's first `buffer.len()` bytes, a part per thread (up to 4): most
/// of the time goes into faulting in and zeroing the fresh pages and copying from the page cache,
/// which scale with threads. `progress(done)` is called on this thread, `done` increasing.
fn read_in_parallel(
    file: &File,
    buffer: &mut [u8],
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    read_in_parts(file, buffer, threads, 64 << 20, progress)
}

/// [`read_in_parallel`] with `threads` parts read `chunk` bytes at a time.
fn read_in_parts(
    file: &File,
    buffer: &mut [u8],
    threads: usize,
    chunk: usize,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let part_len = buffer
        .len()
        .div_ceil(threads.max(1))
        .next_multiple_of(chunk)
        .max(chunk);
    let done = AtomicU64::new(0);
    let read_part = |part: &mut [u8], start: usize, report: &mut dyn FnMut(u64)| {
        for (i, piece) in part.chunks_mut(chunk).enumerate() {
            read_exact_at(file, piece, (start + i * chunk) as u64)?;
            report(done.fetch_add(piece.len() as u64, Relaxed) + piece.len() as u64);
        }
        Ok::<(), std::io::Error>(())
    };
    std::thread::scope(|scope| {
        let mut parts = buffer.chunks_mut(part_len).enumerate();
        let first = parts.next();
        let others: Vec<_> = parts
            .map(|(p, part)| scope.spawn(move || read_part(part, p * part_len, &mut |_| {})))
            .collect();
        let mut last = 0;
        let mut report = |d: u64| {
            if d > last {
                last = d;
                progress(d);
            }
        };
        let mut result = match first {
            Some((_, part)) => read_part(part, 0, &mut report),
            None => Ok(()),
        };
        for handle in others {
            let joined = handle
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("a reading thread panicked")));
            result = result.and(joined);
        }
        report(done.load(Relaxed));
        result
    })
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    // Handles share one cursor here: the parts take turns.
    static CURSOR: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = CURSOR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut file = file;
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

impl ModelFile {
    /// Maps and validates the file at `path`. Copies nothing from the payload; pages are read
    /// when first touched.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FormatError> {
        Self::open_with(path, false)
    }

    /// Like [`open`](Self::open); with `populate`, the kernel reads the whole file and maps every
    /// page up front (`MAP_POPULATE`), so the first use of each tensor does not page-fault.
    pub fn open_with(path: impl AsRef<Path>, populate: bool) -> Result<Self, FormatError> {
        let path = path.as_ref();
        let source_name = path.display().to_string();
        let err = |kind| FormatError::new(source_name.clone(), kind);
        let file = File::open(path).map_err(|e| err(FormatErrorKind::Io(e)))?;
        let mmap = crate::page_cache::map_file(&file, populate)
            .map_err(|e| err(FormatErrorKind::Io(e)))?;
        let mut model = Self::from_mmap(mmap, 0, source_name)?;
        model.path = Some(path.to_path_buf());
        Ok(model)
    }

    /// Opens the file at `path` like [`open`](Self::open), then reads all of it into anonymous
    /// memory (asking for 2 MiB pages on Linux, the payload on a page boundary whatever the
    /// file's own alignment) and drops the mapping: what llama.cpp calls `--no-mmap`. Slower to
    /// start (the whole file is read before the first token) and the copy is private to this
    /// process, but reads need no page cache: on the virtual machines measured here, streaming
    /// the weights from such memory ran 3-17% faster than from the file's page-cache mapping on
    /// some hosts and up to 1.8× faster on another. The file is read on up to 4 threads.
    /// `progress(done, total)` is called as bytes are read, `done` increasing.
    ///
    /// The file is validated before anything is allocated, and again after reading (it must not
    /// change in between). Allocates the file's size.
    pub fn read_into_memory(
        path: impl AsRef<Path>,
        mut progress: Option<&mut dyn FnMut(u64, u64)>,
    ) -> Result<Self, FormatError> {
        let path = path.as_ref();
        let mapped = Self::open(path)?;
        let err = |kind| FormatError::new(mapped.source_name.clone(), kind);
        let total = mapped.file_len();
        let file = File::open(path).map_err(|e| err(FormatErrorKind::Io(e)))?;
        let fill = |buffer: &mut [u8]| {
            read_in_parallel(&file, buffer, &mut |done| {
                if let Some(cb) = progress.as_mut() {
                    cb(done, total as u64);
                }
            })
            .map_err(|e| err(FormatErrorKind::Io(e)))
        };
        let mut model = Self::copy_in(
            mapped.source_name.clone(),
            total,
            mapped.payload_start,
            fill,
        )?;
        model.path = Some(path.to_path_buf());
        Ok(model)
    }

    /// Whether the bytes were copied into this process's memory ([`from_bytes`](Self::from_bytes),
    /// [`read_into_memory`](Self::read_into_memory)) rather than mapped from the file.
    pub fn is_in_memory(&self) -> bool {
        self.in_memory
    }

    /// For a mapped file (not an in-memory copy): touches sample points of the mapping and
    /// reports how much of what is resident is mapped with 2 MiB pages. A file cached in 4 KiB
    /// pages (just written or downloaded) decodes markedly slower; [`recache`](crate::recache)
    /// fixes that once. `None` for an in-memory copy or where the kernel's figures cannot be
    /// read (not Linux).
    pub fn huge_page_share(&self) -> Option<crate::HugePageShare> {
        if self.in_memory {
            return None;
        }
        crate::page_cache::sample(&self.mmap)
    }

    /// Validates a model held in memory (copied once into anonymous memory, the payload on a page
    /// boundary, as [`read_into_memory`](Self::read_into_memory) does).
    ///
    /// Used by tests and tools that build or mutate files in memory; errors name `<memory>`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        let source_name = "<memory>".to_string();
        let err = |kind| FormatError::new(source_name.clone(), kind);
        if bytes.len() < 8 {
            return Err(err(FormatErrorKind::TooShort {
                len: bytes.len() as u64,
            }));
        }
        let payload_start = if bytes.starts_with(GGUF_MAGIC) {
            GgufHeader::parse(bytes)
                .map_err(|kind| err(kind.into()))?
                .data_start
        } else {
            let mut prefix = [0u8; 8];
            prefix.copy_from_slice(&bytes[..8]);
            // Only where the payload would start matters here (validation follows in `copy_in`).
            (u64::from_le_bytes(prefix) % PAGE as u64) as usize + 8
        };
        Self::copy_in(source_name, bytes.len(), payload_start, |buffer| {
            buffer.copy_from_slice(bytes);
            Ok(())
        })
    }

    /// Validates a file that `fill` writes (all `len` bytes) into anonymous memory, asking for
    /// 2 MiB pages on Linux. The copy starts `lead` bytes into its page-aligned buffer so that
    /// the payload starts on a page boundary, and with it every tensor at a page-multiple offset
    /// (all of a 7B model's large ones). Files only align to 64 bytes: copied as they were, a 7B
    /// int4 model's weights sat 64 bytes off every 128, and its 32 layers streamed 2-4% slower
    /// than the same weights page-aligned (2-vCPU Xeon, kernels alone).
    fn copy_in(
        source_name: String,
        len: usize,
        payload_start: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), FormatError>,
    ) -> Result<Self, FormatError> {
        let err = |kind| FormatError::new(source_name.clone(), kind);
        let lead = (PAGE - payload_start % PAGE) % PAGE;
        let mut buffer = MmapMut::map_anon(lead + len).map_err(|e| err(e.into()))?;
        #[cfg(target_os = "linux")]
        let _ = buffer.advise(Advice::HugePage);
        fill(&mut buffer[lead..])?;
        let mmap = buffer.make_read_only().map_err(|e| err(e.into()))?;
        let mut model = Self::from_mmap(mmap, lead, source_name)?;
        model.in_memory = true;
        Ok(model)
    }

    /// Validates the GGUF file whose bytes are `mmap[lead..]`.
    fn from_gguf_mmap(mmap: Mmap, lead: usize, source_name: String) -> Result<Self, FormatError> {
        let err = |kind| FormatError::new(source_name.clone(), kind);
        let bytes: &[u8] = mmap.get(lead..).unwrap_or_default();
        let header = GgufHeader::parse(bytes).map_err(|kind| err(kind.into()))?;
        let model = gguf::model::open_model(&header).map_err(err)?;
        // Type-checked once here, so `chat_template` cannot fail later.
        gguf::model::chat_template(&header).map_err(err)?;
        let metadata = header
            .metadata
            .iter()
            .map(|(key, value)| (key.clone(), metadata_text(value)))
            .collect();
        Ok(Self {
            source_name,
            path: None,
            in_memory: false,
            mmap,
            lead,
            payload_start: header.data_start,
            metadata,
            config: model.config,
            tensors: model.tensors,
            source: Source::Gguf(Box::new(GgufSource {
                header,
                stored_names: model.stored_names,
            })),
        })
    }

    /// Validates the file whose bytes are `mmap[lead..]`.
    fn from_mmap(mmap: Mmap, lead: usize, source_name: String) -> Result<Self, FormatError> {
        let err = |kind| FormatError::new(source_name.clone(), kind);
        let bytes: &[u8] = mmap.get(lead..).unwrap_or_default();
        if bytes.starts_with(GGUF_MAGIC) {
            return Self::from_gguf_mmap(mmap, lead, source_name);
        }
        let file_len = bytes.len() as u64;
        let Some(prefix) = bytes.get(..8) else {
            return Err(err(FormatErrorKind::TooShort { len: file_len }));
        };
        let mut len_bytes = [0u8; 8];
        len_bytes.copy_from_slice(prefix);
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER_LEN {
            return Err(err(FormatErrorKind::HeaderTooLarge {
                len: header_len,
                max: MAX_HEADER_LEN,
            }));
        }
        if header_len > file_len - 8 {
            return Err(err(FormatErrorKind::HeaderBeyondFile {
                header_len,
                file_len,
            }));
        }
        // Both fit in usize: header_len <= 1 GiB and the file is mapped.
        let payload_start = 8 + header_len as usize;
        let header_bytes = &bytes[8..payload_start];
        // The JSON is followed by NUL padding up to the aligned payload.
        let json_len = header_bytes
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |i| i + 1);
        let header_text = std::str::from_utf8(&header_bytes[..json_len]).map_err(|e| {
            err(FormatErrorKind::HeaderNotUtf8 {
                offset: e.valid_up_to(),
            })
        })?;
        let raw: RawHeader = serde_json::from_str(header_text).map_err(|e| {
            err(FormatErrorKind::HeaderJson {
                message: e.to_string(),
            })
        })?;

        let metadata: BTreeMap<String, String> = raw
            .metadata
            .into_iter()
            .map(|(k, v)| (k, v.into_string()))
            .collect();
        let config = Config::from_metadata(&metadata).map_err(err)?;

        let payload_len = file_len - payload_start as u64;
        let mut tensors = BTreeMap::new();
        for (name, raw_tensor) in raw.tensors {
            let info =
                check_tensor(&name, raw_tensor, payload_start as u64, payload_len).map_err(err)?;
            tensors.insert(name, info);
        }

        let tokenizer_range = raw.tokenizer.map(|value| {
            // The raw value borrows from `header_text`; record where, to parse it on demand.
            let start = value.get().as_ptr() as usize - header_text.as_ptr() as usize + 8;
            (start, start + value.get().len())
        });

        Ok(Self {
            source_name,
            path: None,
            in_memory: false,
            mmap,
            lead,
            payload_start,
            metadata,
            config,
            tensors,
            source: Source::Torchless { tokenizer_range },
        })
    }

    /// Which kind of file this is.
    pub fn format(&self) -> FileFormat {
        match &self.source {
            Source::Torchless { .. } => FileFormat::Torchless,
            Source::Gguf(gguf) => FileFormat::Gguf {
                version: gguf.header.version,
            },
        }
    }

    /// The name tensor `name` (a Hugging Face name, as [`tensor`](Self::tensor) takes) has in
    /// the file: `blk.0.attn_q.weight` for `model.layers.0.self_attn.q_proj.weight` in a GGUF
    /// file, `name` itself in a torchless file.
    pub fn stored_name<'a>(&'a self, name: &'a str) -> &'a str {
        match &self.source {
            Source::Gguf(gguf) => gguf.stored_names.get(name).map_or(name, String::as_str),
            Source::Torchless { .. } => name,
        }
    }

    /// A GGUF file's metadata, typed and in file order (`None` for a torchless file, whose
    /// metadata is [`metadata`](Self::metadata)).
    pub fn gguf_metadata(&self) -> Option<&[(String, GgufValue)]> {
        match &self.source {
            Source::Gguf(gguf) => Some(&gguf.header.metadata),
            Source::Torchless { .. } => None,
        }
    }

    fn error(&self, kind: FormatErrorKind) -> FormatError {
        FormatError::new(self.source_name.clone(), kind)
    }

    /// The path the file was opened from (`None` for in-memory models).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// A name for messages: the path, or `<memory>`.
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// Total file size in bytes.
    pub fn file_len(&self) -> usize {
        self.bytes().len()
    }

    /// The file's bytes.
    fn bytes(&self) -> &[u8] {
        &self.mmap[self.lead..]
    }

    /// Byte offset of the payload (8 + header length).
    pub fn payload_start(&self) -> usize {
        self.payload_start
    }

    /// The raw metadata strings.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Every tensor, sorted by name.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.tensors.values()
    }

    /// Number of tensors.
    pub fn n_tensors(&self) -> usize {
        self.tensors.len()
    }

    /// Description of the tensor `name`.
    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo, FormatError> {
        self.tensors.get(name).ok_or_else(|| {
            self.error(FormatErrorKind::MissingTensor {
                name: name.to_string(),
            })
        })
    }

    /// Zero-copy view of the tensor `name`.
    pub fn tensor(&self, name: &str) -> Result<TensorRef<'_>, FormatError> {
        let info = self.tensor_info(name)?;
        let data_start = self.payload_start + info.offset;
        let data = &self.bytes()[data_start..data_start + info.data_len()];
        let data = match (info.dtype, info.scales) {
            (DType::F32, _) => TensorData::F32(self.cast_f32(info, data)?),
            (DType::Int8, Some(scales)) => {
                let start = self.payload_start + scales.offset;
                let scale_bytes = &self.bytes()[start..start + scales.count * 4];
                TensorData::Int8(Int8View {
                    values: bytemuck::cast_slice(data),
                    inv_scales: self.cast_f32(info, scale_bytes)?,
                })
            }
            (DType::Int4, Some(scales)) => {
                let start = self.payload_start + scales.offset;
                let scale_bytes = &self.bytes()[start..start + scales.count * 2];
                TensorData::Int4(Int4View {
                    packed: data,
                    scales: bytemuck::try_cast_slice(scale_bytes).map_err(|_| {
                        self.error(FormatErrorKind::Misaligned {
                            tensor: info.name.clone(),
                            what: "scales",
                            offset: start as u64,
                            align: 2,
                        })
                    })?,
                })
            }
            (DType::Blocks(format), _) => TensorData::Blocks(BlockView { format, data }),
            (DType::Int8 | DType::Int4, None) => {
                return Err(self.error(FormatErrorKind::BadScales {
                    tensor: name.into(),
                    problem: "no scales".into(),
                }))
            }
        };
        Ok(TensorRef { info, data })
    }

    fn cast_f32<'a>(&self, info: &TensorInfo, bytes: &'a [u8]) -> Result<&'a [f32], FormatError> {
        // Alignment and length were checked at open; this keeps the cast itself fallible, not panicking.
        bytemuck::try_cast_slice(bytes).map_err(|_| {
            self.error(FormatErrorKind::Misaligned {
                tensor: info.name.clone(),
                what: "data",
                offset: bytes.as_ptr() as u64,
                align: 4,
            })
        })
    }

    /// Checks that every tensor a Mistral model of this configuration needs is present with the
    /// right shape and a usable dtype.
    pub fn validate_mistral(&self) -> Result<(), FormatError> {
        // A configuration needing more tensors than the file holds has a problem within its first
        // `n_tensors / 9 + 1` layers (3 + 9 per layer names would not fit otherwise): check only
        // those, so a corrupted `n_layers` (up to 2^24) cannot make us list 150 million names first.
        let layers = self.config.n_layers.min(self.tensors.len() / 9 + 1);
        let config = Config {
            n_layers: layers,
            ..self.config.clone()
        };
        for expected in config.expected_tensors() {
            let info = self.tensor_info(&expected.name)?;
            if info.shape != expected.shape {
                return Err(self.error(FormatErrorKind::WrongShape {
                    tensor: expected.name,
                    expected: expected.shape,
                    found: info.shape.clone(),
                }));
            }
            if info.dtype != DType::F32 && !expected.may_be_quantized {
                return Err(self.error(FormatErrorKind::WrongDtype {
                    tensor: expected.name,
                    expected: "f32".into(),
                    found: info.dtype.to_string(),
                }));
            }
        }
        if layers < self.config.n_layers {
            // Not reached: the loop found a missing tensor among the layers it checked.
            return Err(self.error(FormatErrorKind::MissingTensor {
                name: crate::config::layer_tensor_name(layers, "input_layernorm.weight"),
            }));
        }
        Ok(())
    }

    /// Parses the vocabulary and merges embedded in the header (a GGUF file: the
    /// `tokenizer.ggml.*` metadata, one piece per embedding row).
    pub fn tokenizer_data(&self) -> Result<TokenizerData, FormatError> {
        let bad = |reason: String| self.error(FormatErrorKind::BadTokenizer { reason });
        let tokenizer_range = match &self.source {
            Source::Torchless { tokenizer_range } => *tokenizer_range,
            Source::Gguf(gguf) => {
                return gguf::model::tokenizer_data(&gguf.header, Some(self.config.vocab_size))
                    .map_err(|kind| self.error(kind))
            }
        };
        let (start, end) =
            tokenizer_range.ok_or_else(|| bad("the header has no `tokenizer` entry".into()))?;
        // The range was cut from a validated UTF-8 string at open.
        let text =
            std::str::from_utf8(&self.bytes()[start..end]).map_err(|e| bad(e.to_string()))?;
        let raw: RawTokenizer = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let vocab = raw.vocab.0;
        let mut seen = vec![false; self.config.vocab_size];
        for (piece, id) in &vocab {
            match seen.get_mut(*id as usize) {
                None => {
                    return Err(bad(format!(
                        "piece {piece:?} has id {id}, outside the vocabulary of {}",
                        self.config.vocab_size
                    )))
                }
                Some(true) => return Err(bad(format!("id {id} is given to two pieces"))),
                Some(slot) => *slot = true,
            }
        }
        let mut merges = Vec::with_capacity(raw.merges.len());
        for (i, merge) in raw.merges.into_iter().enumerate() {
            let merge = match merge {
                RawMerge::Joined(s) => s,
                RawMerge::Pair([a, b]) => format!("{a} {b}"),
            };
            if !merge.contains(' ') {
                return Err(bad(format!(
                    "merge #{i} {merge:?} is not of the form \"left right\""
                )));
            }
            merges.push(merge);
        }
        let in_vocab = |id: u32, what: &str| {
            if (id as usize) < self.config.vocab_size {
                Ok(id)
            } else {
                Err(bad(format!(
                    "{what} id {id} is outside the vocabulary of {}",
                    self.config.vocab_size
                )))
            }
        };
        let mut added_tokens = Vec::with_capacity(raw.added_tokens.len());
        for token in raw.added_tokens {
            added_tokens.push(AddedTokenData {
                id: in_vocab(token.id, "added token")?,
                content: token.content,
                special: token.special,
            });
        }
        let meta = |key: &str| self.metadata.get(key).map(|s| s.trim());
        let meta_err = |key: &str, value: &str, expected: &str| {
            self.error(FormatErrorKind::BadMetadata {
                key: key.into(),
                value: value.into(),
                expected: expected.into(),
            })
        };
        let kind = match meta("tokenizer_kind") {
            None | Some("sentencepiece") => TokenizerKind::SentencePiece,
            Some("byte_level_bpe") => TokenizerKind::ByteLevelBpe,
            Some(other) => {
                return Err(meta_err(
                    "tokenizer_kind",
                    other,
                    "\"sentencepiece\" or \"byte_level_bpe\"",
                ))
            }
        };
        let id = |key: &str| -> Result<Option<u32>, FormatError> {
            match meta(key) {
                None => Ok(None),
                Some(text) => match text.parse::<u32>() {
                    Ok(id) => in_vocab(id, key).map(Some),
                    Err(_) => Err(meta_err(key, text, "a token id")),
                },
            }
        };
        let add_bos = crate::config::optional_bool(&self.metadata, "add_bos_token")
            .map_err(|kind| self.error(kind))?;
        Ok(TokenizerData {
            kind,
            vocab,
            merges,
            added_tokens,
            pretokenizer: meta("tokenizer_pre").map(str::to_string),
            bos_id: id("bos_token_id")?,
            eos_id: id("eos_token_id")?,
            add_bos,
            scores: Vec::new(),
            token_types: Vec::new(),
            unk_id: None,
            add_space_prefix: None,
        })
    }

    /// The chat template the file carries (metadata `chat_template`: the model's Jinja source,
    /// as in its `tokenizer_config.json`; a GGUF file's `tokenizer.chat_template`).
    pub fn chat_template(&self) -> Option<&str> {
        match &self.source {
            Source::Gguf(gguf) => gguf
                .header
                .get("tokenizer.chat_template")
                .and_then(GgufValue::as_str),
            Source::Torchless { .. } => self.metadata.get("chat_template").map(String::as_str),
        }
    }

    /// Brings a tensor's pages in, or gives them back, over its byte range (data and scales).
    ///
    /// This is what lets a low-memory model keep only the layer it is computing resident.
    pub fn set_residency(&self, name: &str, residency: Residency) -> Result<(), FormatError> {
        let info = self.tensor_info(name)?;
        for (offset, len) in self.byte_ranges(info) {
            self.advise(residency, offset, len)?;
        }
        Ok(())
    }

    /// Like [`set_residency`](Self::set_residency) for a group of tensors (e.g. one layer's), as
    /// one byte span from the first tensor's start to the last one's end, scales included,
    /// aligned to 2 MiB: outward when bringing pages in, inward when giving them back.
    ///
    /// Why: the file is mapped with huge pages where the kernel allows it. Dropping a range
    /// whose ends are not 2 MiB aligned splits the huge mappings there, and the span is then
    /// mapped back with 4 KiB entries, which makes streaming it measurably slower (a TLB miss
    /// every 4 KiB). The aligned pieces left mapped at the edges are at most 4 MiB per group.
    pub fn set_group_residency(
        &self,
        names: &[&str],
        residency: Residency,
    ) -> Result<(), FormatError> {
        let mut span: Option<(usize, usize)> = None;
        for name in names {
            for (offset, len) in self.byte_ranges(self.tensor_info(name)?) {
                let end = offset + len;
                span = Some(match span {
                    None => (offset, end),
                    Some((a, b)) => (a.min(offset), b.max(end)),
                });
            }
        }
        match span {
            Some((start, end)) => self.advise_span(residency, start, end),
            None => Ok(()),
        }
    }

    /// Like [`set_group_residency`](Self::set_group_residency) for rows `rows` of the matrix
    /// `name` (and, for int8, the scales of the groups those rows touch), so that a large matrix
    /// can be brought in and given back a slice at a time.
    pub fn set_rows_residency(
        &self,
        name: &str,
        rows: Range<usize>,
        residency: Residency,
    ) -> Result<(), FormatError> {
        let info = self.tensor_info(name)?;
        let cols = match *info.shape.as_slice() {
            [n_rows, cols] if rows.start <= rows.end && rows.end <= n_rows => cols,
            _ => {
                return Err(self.error(FormatErrorKind::RowsOutOfRange {
                    tensor: name.to_string(),
                    start: rows.start,
                    end: rows.end,
                    shape: info.shape.clone(),
                }))
            }
        };
        if rows.is_empty() {
            return Ok(());
        }
        // Element counts fit: they are at most the tensor's, checked at open.
        let (first, end) = (rows.start * cols, rows.end * cols);
        let data = self.payload_start + info.offset;
        let dtype = info.dtype;
        self.advise_span(
            residency,
            data + dtype.data_len(first),
            data + dtype.data_len(end),
        )?;
        if let (Some(scales), Some(group)) = (info.scales, dtype.group_size()) {
            let at = self.payload_start + scales.offset;
            let (g0, g1) = (first / group, end.div_ceil(group));
            let size = dtype.scale_bytes();
            self.advise_span(residency, at + g0 * size, at + g1 * size)?;
        }
        Ok(())
    }

    /// Applies `residency` to the map's bytes `start..end`, aligned to 2 MiB (see
    /// [`set_group_residency`](Self::set_group_residency)).
    fn advise_span(
        &self,
        residency: Residency,
        start: usize,
        end: usize,
    ) -> Result<(), FormatError> {
        const HUGE: usize = 2 << 20;
        let (start, end) = match residency {
            Residency::DontNeed => (start.next_multiple_of(HUGE), end / HUGE * HUGE),
            _ => (
                start / HUGE * HUGE,
                end.next_multiple_of(HUGE).min(self.file_len()),
            ),
        };
        if start >= end {
            return Ok(());
        }
        self.advise(residency, start, end - start)
    }

    /// The non-empty byte ranges of a tensor in the map: its data and, for int8, its scales.
    fn byte_ranges(&self, info: &TensorInfo) -> impl Iterator<Item = (usize, usize)> {
        let data = (self.payload_start + info.offset, info.data_len());
        let scales = info.scales.map(|s| {
            (
                self.payload_start + s.offset,
                s.count * info.dtype.scale_bytes(),
            )
        });
        std::iter::once(data)
            .chain(scales)
            .filter(|&(_, len)| len > 0)
    }

    /// Applies `residency` to `len` bytes of the map at `offset` (inside the map: the callers
    /// pass tensor spans, bounds-checked at open, or spans clipped to the map's length).
    fn advise(&self, residency: Residency, offset: usize, len: usize) -> Result<(), FormatError> {
        // A model copied into memory (`from_bytes`, `read_into_memory`) lives in anonymous memory,
        // where MADV_DONTNEED would zero the pages (including neighbouring tensors sharing a page)
        // under live shared references: there is no file to fault them back in from, so keep them.
        if residency == Residency::DontNeed && self.in_memory {
            return Ok(());
        }
        let offset = self.lead + offset;
        let result = match residency {
            Residency::WillNeed => self.mmap.advise_range(Advice::WillNeed, offset, len),
            Residency::Populate => populate(&self.mmap, offset, len),
            // SAFETY: the map is read-only and file-backed (in-memory copies returned above), so
            // MADV_DONTNEED cannot lose data: the pages (the range rounded out to whole pages) are
            // dropped from this process and fault back in with the same file contents.
            // No reference into the range is invalidated; reads after this just page-fault.
            Residency::DontNeed => unsafe {
                self.mmap
                    .unchecked_advise_range(UncheckedAdvice::DontNeed, offset, len)
            },
        };
        result.map_err(|e| self.error(FormatErrorKind::Io(e)))
    }

    /// Tensors holding NaN or infinite values (in the data or, for int8, in the inverse scales or
    /// giving a non-finite dequantized value), with the count of bad values.
    pub fn non_finite_tensors(&self) -> Result<Vec<(String, usize)>, FormatError> {
        let mut found = Vec::new();
        for name in self.tensors.keys() {
            let tensor = self.tensor(name)?;
            let bad = match tensor.data {
                TensorData::F32(values) => values.iter().filter(|x| !x.is_finite()).count(),
                // A group is bad if its scale is not finite or dequantizes one of its values to
                // NaN/Inf (zero, or so tiny that `q / inv_scale` overflows).
                TensorData::Int8(view) => view
                    .inv_scales
                    .iter()
                    .zip(view.values.chunks(GROUP_SIZE))
                    .filter(|(s, q)| {
                        let max_q = q.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
                        !s.is_finite() || !(f32::from(max_q) / **s).is_finite()
                    })
                    .count(),
                TensorData::Int4(view) => view
                    .scales
                    .iter()
                    .filter(|&&s| !crate::half::f16_to_f32(s).is_finite())
                    .count(),
                TensorData::Blocks(view) => non_finite_blocks(view),
            };
            if bad > 0 {
                found.push((name.clone(), bad));
            }
        }
        Ok(found)
    }
}

/// The four bytes a GGUF file starts with. (A torchless file cannot: read as its header length,
/// they are more than [`MAX_HEADER_LEN`].)
const GGUF_MAGIC: &[u8] = b"GGUF";

/// Counts the non-finite values of ggml blocks, dequantizing 256 blocks at a time.
fn non_finite_blocks(view: BlockView<'_>) -> usize {
    const BLOCKS: usize = 256;
    let (values, bytes) = (view.format.block_values(), view.format.block_bytes());
    let mut buffer = vec![0.0f32; BLOCKS * values];
    view.data
        .chunks(BLOCKS * bytes)
        .map(|chunk| {
            let out = &mut buffer[..chunk.len() / bytes * values];
            let chunk = BlockView {
                format: view.format,
                data: chunk,
            };
            if chunk.dequantize_into(out) {
                out.iter().filter(|x| !x.is_finite()).count()
            } else {
                0
            }
        })
        .sum()
}

/// A GGUF metadata value as text ([`ModelFile::metadata`] of a GGUF file): strings as they are,
/// numbers and booleans printed, arrays summarized (`[32000 × STRING]`).
fn metadata_text(value: &GgufValue) -> String {
    match value {
        GgufValue::String(s) => s.clone(),
        GgufValue::Array(a) => format!("[{} × {}]", a.len(), a.element_type_name()),
        GgufValue::Bool(b) => b.to_string(),
        GgufValue::F32(x) => x.to_string(),
        GgufValue::F64(x) => x.to_string(),
        other => other
            .as_i64()
            .map_or_else(|| format!("{other:?}"), |v| v.to_string()),
    }
}

/// The tokenizer of a model file, without checking its weights: a torchless file's embedded one,
/// or a GGUF file's `tokenizer.ggml.*` metadata, including a vocabulary-only GGUF (no tensors,
/// as `convert_hf_to_gguf.py --vocab-only` writes). When the GGUF has a `token_embd.weight`, its
/// vocabulary must have one piece per row.
pub fn read_tokenizer_data(path: impl AsRef<Path>) -> Result<TokenizerData, FormatError> {
    let path = path.as_ref();
    let mut magic = [0u8; 4];
    let is_gguf = File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == *GGUF_MAGIC;
    if !is_gguf {
        return ModelFile::open(path)?.tokenizer_data();
    }
    let file = GgufFile::open(path)
        .map_err(|e| FormatError::new(e.source_name().to_string(), gguf_kind(e)))?;
    let err = |kind| FormatError::new(file.source_name().to_string(), kind);
    let rows = match file.tensor("token_embd.weight").map(|t| t.dims()) {
        None => None,
        Some([_, rows]) => Some(usize::try_from(*rows).unwrap_or(usize::MAX)),
        Some(_) => {
            return Err(err(FormatErrorKind::WrongShape {
                tensor: "token_embd.weight".into(),
                expected: vec![0, 0],
                found: file
                    .tensor("token_embd.weight")
                    .map(|t| t.shape_rows_major())
                    .unwrap_or_default(),
            }))
        }
    };
    gguf::model::tokenizer_data(file.header(), rows).map_err(err)
}

/// The kind of a GGUF reader error, as a format error's.
fn gguf_kind(e: gguf::GgufError) -> FormatErrorKind {
    e.into_kind().into()
}

/// `MADV_POPULATE_READ` where the kernel has it, otherwise `MADV_WILLNEED`.
fn populate(mmap: &Mmap, offset: usize, len: usize) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        if mmap.advise_range(Advice::PopulateRead, offset, len).is_ok() {
            return Ok(());
        }
    }
    mmap.advise_range(Advice::WillNeed, offset, len)
}

fn check_tensor(
    name: &str,
    raw: RawTensor,
    payload_start: u64,
    payload_len: u64,
) -> Result<TensorInfo, FormatErrorKind> {
    let dtype = match raw.dtype.as_str() {
        "f32" | "float32" => DType::F32,
        "int8" => DType::Int8,
        "int4" => DType::Int4,
        other => {
            return Err(FormatErrorKind::UnknownDtype {
                tensor: name.into(),
                dtype: other.into(),
            })
        }
    };
    let overflow = || FormatErrorKind::ShapeOverflow {
        tensor: name.into(),
        shape: raw.shape.clone(),
    };
    let n_elements = raw
        .shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(overflow)?;
    let data_len = match dtype {
        DType::F32 => n_elements.checked_mul(4).ok_or_else(overflow)?,
        DType::Int8 => n_elements,
        DType::Int4 => {
            // Rows are whole groups, so a group never spans two rows (the kernels rely on it).
            let cols = raw.shape.last().copied().unwrap_or(1);
            if cols % int4::GROUP_SIZE as u64 != 0 {
                return Err(FormatErrorKind::BadScales {
                    tensor: name.into(),
                    problem: format!(
                        "an int4 tensor's last dimension must be a multiple of {}, found {cols}",
                        int4::GROUP_SIZE
                    ),
                });
            }
            n_elements / 2
        }
        // Not named by torchless headers (only GGUF files hold blocks).
        DType::Blocks(format) => {
            n_elements / format.block_values() as u64 * format.block_bytes() as u64
        }
    };
    let align = match dtype {
        DType::F32 => 4,
        DType::Int8 | DType::Int4 | DType::Blocks(_) => 1,
    };
    check_range(
        name,
        "data",
        raw.offset,
        data_len,
        align,
        payload_start,
        payload_len,
    )?;

    let scales = match dtype {
        DType::F32 | DType::Blocks(_) => None,
        DType::Int8 | DType::Int4 => {
            let group = dtype.group_size().unwrap_or(GROUP_SIZE) as u64;
            let size = dtype.scale_bytes() as u64;
            let bad = |problem: String| FormatErrorKind::BadScales {
                tensor: name.into(),
                problem,
            };
            let (Some(scale_offset), Some(scale_count)) = (raw.scale_offset, raw.scale_size) else {
                return Err(bad("`scale_offset` or `scale_size` is missing".into()));
            };
            let expected = n_elements.div_ceil(group);
            if scale_count != expected {
                return Err(bad(format!(
                    "scale_size is {scale_count}, expected {expected} (one per {group} values)"
                )));
            }
            check_range(
                name,
                "scales",
                scale_offset,
                scale_count * size,
                size as usize,
                payload_start,
                payload_len,
            )?;
            Some(ScaleInfo {
                offset: scale_offset as usize,
                count: scale_count as usize,
            })
        }
    };

    Ok(TensorInfo {
        name: name.into(),
        dtype,
        // Every dimension fits: the product was bounded by the payload length above.
        shape: raw.shape.iter().map(|&d| d as usize).collect(),
        n_elements: n_elements as usize,
        offset: raw.offset as usize,
        scales,
    })
}

fn check_range(
    tensor: &str,
    what: &'static str,
    offset: u64,
    len: u64,
    align: usize,
    payload_start: u64,
    payload_len: u64,
) -> Result<(), FormatErrorKind> {
    let end = offset.checked_add(len);
    match end {
        Some(end) if end <= payload_len => {}
        _ => {
            return Err(FormatErrorKind::OutOfBounds {
                tensor: tensor.into(),
                what,
                start: offset,
                end: end.unwrap_or(u64::MAX),
                payload_len,
            })
        }
    }
    // The mapping is page-aligned, so file offsets decide alignment in memory too.
    let absolute = payload_start + offset;
    if !absolute.is_multiple_of(align as u64) {
        return Err(FormatErrorKind::Misaligned {
            tensor: tensor.into(),
            what,
            offset: absolute,
            align,
        });
    }
    Ok(())
}

#[derive(Deserialize)]
struct RawTokenizer {
    vocab: JsonEntries<u32>,
    merges: Vec<RawMerge>,
    #[serde(default)]
    added_tokens: Vec<RawAddedToken>,
}

#[derive(Deserialize)]
struct RawAddedToken {
    id: u32,
    content: String,
    #[serde(default)]
    special: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawMerge {
    Joined(String),
    Pair([String; 2]),
}

/// A JSON object read as its `(key, value)` entries in file order (serde_json's maps sort their
/// keys): the header's vocabulary, a safetensors index's `weight_map`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonEntries<V>(pub Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for JsonEntries<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for EntriesVisitor<V> {
            type Value = JsonEntries<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                // The size hint comes from the input; cap it so a lying header cannot force a huge allocation.
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(JsonEntries(entries))
            }
        }
        deserializer
            .deserialize_map(EntriesVisitor(std::marker::PhantomData))
            .map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod read_tests {
    use super::*;
    use std::io::Write;

    fn file_of(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn parts_read_on_several_threads_give_the_file_and_report_all_of_it() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let bytes: Vec<u8> = (0..100_003)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let f = file_of(&bytes);
        let expected = std::fs::read(f.path()).unwrap();
        for (threads, chunk) in [(1, 4096), (3, 4096), (4, 1000), (7, 65_536), (2, 1 << 20)] {
            let mut buffer = vec![0u8; expected.len()];
            let mut reports = Vec::new();
            let file = File::open(f.path()).unwrap();
            read_in_parts(&file, &mut buffer, threads, chunk, &mut |d| reports.push(d)).unwrap();
            assert!(buffer == expected, "{threads} threads, chunks of {chunk}");
            assert!(reports.windows(2).all(|w| w[0] < w[1]), "{reports:?}");
            assert_eq!(reports.last(), Some(&(expected.len() as u64)));
        }
    }

    #[test]
    fn a_file_shorter_than_the_buffer_is_an_error_from_any_part() {
        let f = file_of(&[7u8; 10_000]);
        for threads in [1, 2, 3] {
            let mut buffer = vec![0u8; 12_000];
            let file = File::open(f.path()).unwrap();
            let e = read_in_parts(&file, &mut buffer, threads, 1024, &mut |_| {}).unwrap_err();
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof,
                "{threads} threads"
            );
        }
    }
}
