//! Hostile model files, end to end. Seeded corruptions of the bundled fixture models (bit flips in
//! the header, truncations at every structural boundary, offsets and shapes pushed out of range,
//! broken metadata, NaN/Inf written into weights and scales) go through `ModelFile::from_bytes` →
//! `Mistral` and `LazyMistral` → one token. Every case must end in an error or in a result
//! (finite logits unless the weights hold NaN/Inf), never in a panic or a signal, and injected
//! NaN/Inf must be reported by `ModelFile::non_finite_tensors` (what `torchless info --check`
//! prints).
//!
//! Also here: resource limits (absurd sizes refused before anything big is allocated, the KV cache
//! checked up front, a too-long prompt refused with a clear error) and a lazy model shared by
//! threads while they drop and re-fault its pages.
//!
//! Every allocation of this test binary goes through [`CappedAllocator`]: a request above
//! [`ALLOCATION_CAP`] fails (an infallible allocation then aborts the test run) and the largest
//! request is recorded, so "refused before allocating" is checked, not assumed.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use torchless_model::format::{
    Config, DType, FormatError, FormatErrorKind, ModelFile, ModelWriter, TensorSpec, MAX_HEADER_LEN,
};
use torchless_model::{
    GenerateOptions, KvCache, KvTypes, LazyMistral, Mistral, Model, ModelError, Residency,
    SessionOptions,
};

// ---------------------------------------------------------------------------------------------
// Allocation cap.

/// No test in this file needs a single allocation anywhere near this; absurd sizes that slipped
/// past validation fail here instead of taking the machine's memory.
const ALLOCATION_CAP: usize = 256 << 20;

static LARGEST_REQUEST: AtomicUsize = AtomicUsize::new(0);

/// Forwards to the system allocator, refusing requests above [`ALLOCATION_CAP`].
struct CappedAllocator;

impl CappedAllocator {
    fn admit(size: usize) -> bool {
        LARGEST_REQUEST.fetch_max(size, Ordering::Relaxed);
        size <= ALLOCATION_CAP
    }
}

// SAFETY: every method either fails with a null pointer (which `GlobalAlloc` allows for any
// request) or forwards its arguments unchanged to `System`, whose guarantees then hold.
unsafe impl GlobalAlloc for CappedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Self::admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires it, is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Self::admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` (every successful allocation above did) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !Self::admit(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` came from `System` with `layout`; the caller guarantees `new_size`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CappedAllocator = CappedAllocator;

fn assert_no_absurd_allocation() {
    let largest = LARGEST_REQUEST.load(Ordering::Relaxed);
    assert!(
        largest <= ALLOCATION_CAP,
        "an allocation of {largest} bytes was attempted"
    );
}

// ---------------------------------------------------------------------------------------------
// Taking a model file apart and putting it back together.

/// The header as the format stores it; the tokenizer is kept as raw JSON text.
#[derive(Clone, Deserialize, Serialize)]
struct Header {
    metadata: Map<String, Value>,
    tensors: Map<String, Value>,
    tokenizer: Box<RawValue>,
}

/// Where one tensor lives, read from the header.
#[derive(Clone, Debug)]
struct TensorLoc {
    name: String,
    int8: bool,
    shape: Vec<u64>,
    /// Byte range of the data, relative to the payload.
    data: (usize, usize),
    /// Byte range of the inverse scales, relative to the payload.
    scales: Option<(usize, usize)>,
}

struct Fixture {
    name: &'static str,
    bytes: Vec<u8>,
    header: Header,
    payload_start: usize,
    /// Length of the JSON text (the header without its NUL padding).
    json_len: usize,
    /// Offset of the `"tokenizer"` key inside the JSON text.
    tokenizer_at: usize,
    tensors: Vec<TensorLoc>,
}

impl Fixture {
    fn load(name: &'static str) -> Self {
        let bytes = std::fs::read(common::fixtures().join(name)).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let payload_start = 8 + header_len;
        let text = std::str::from_utf8(&bytes[8..payload_start])
            .unwrap()
            .trim_end_matches('\0');
        let header: Header = serde_json::from_str(text).unwrap();
        let tokenizer_at = text.find("\"tokenizer\"").unwrap();
        let tensors = header
            .tensors
            .iter()
            .map(|(name, t)| {
                let shape: Vec<u64> = serde_json::from_value(t["shape"].clone()).unwrap();
                let int8 = t["dtype"] == "int8";
                let n: u64 = shape.iter().product();
                let offset = t["offset"].as_u64().unwrap() as usize;
                let len = n as usize * if int8 { 1 } else { 4 };
                let scales = t.get("scale_offset").map(|s| {
                    let start = s.as_u64().unwrap() as usize;
                    (
                        start,
                        start + 4 * t["scale_size"].as_u64().unwrap() as usize,
                    )
                });
                TensorLoc {
                    name: name.clone(),
                    int8,
                    shape,
                    data: (offset, offset + len),
                    scales,
                }
            })
            .collect();
        Self {
            name,
            json_len: text.len(),
            tokenizer_at,
            header,
            payload_start,
            bytes,
            tensors,
        }
    }

    fn payload(&self) -> &[u8] {
        &self.bytes[self.payload_start..]
    }

    /// The file with an edited header (re-serialized and re-padded; offsets are relative to the
    /// payload, so they stay valid).
    fn with_header(&self, edit: impl FnOnce(&mut Header)) -> Vec<u8> {
        let mut header = self.header.clone();
        edit(&mut header);
        assemble(serde_json::to_vec(&header).unwrap(), self.payload())
    }

    /// The file with an edited tensor table entry.
    fn with_tensor(&self, name: &str, edit: impl FnOnce(&mut Map<String, Value>)) -> Vec<u8> {
        self.with_header(|h| edit(h.tensors[name].as_object_mut().unwrap()))
    }

    /// The file with one metadata value replaced (`None`: removed).
    fn with_metadata(&self, key: &str, value: Option<Value>) -> Vec<u8> {
        self.with_header(|h| match value {
            Some(v) => {
                h.metadata.insert(key.into(), v);
            }
            None => {
                h.metadata.remove(key);
            }
        })
    }

    /// The file with the tokenizer section replaced.
    fn with_tokenizer(&self, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
        self.with_header(|h| {
            let mut tokenizer: Value = serde_json::from_str(h.tokenizer.get()).unwrap();
            edit(&mut tokenizer);
            h.tokenizer = RawValue::from_string(tokenizer.to_string()).unwrap();
        })
    }

    /// The file with 4 bytes of the payload overwritten.
    fn with_payload_f32(&self, at: usize, value: f32) -> Vec<u8> {
        let mut bytes = self.bytes.clone();
        let at = self.payload_start + at;
        bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        bytes
    }
}

/// `[u64 LE length][JSON, NUL-padded so the payload starts 64-aligned][payload]`.
fn assemble(mut json: Vec<u8>, payload: &[u8]) -> Vec<u8> {
    while !(8 + json.len()).is_multiple_of(64) {
        json.push(0);
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend_from_slice(payload);
    out
}

/// splitmix64: a seeded, dependency-free generator, so every run tries the same cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

// ---------------------------------------------------------------------------------------------
// Cases and what they may end in.

#[derive(Clone, Debug, PartialEq)]
enum Expect {
    /// Refused with an error.
    Err,
    /// Loads and runs with finite logits.
    Finite,
    /// An error, or finite logits.
    ErrOrFinite,
    /// Anything but a panic; non-finite logits only where `non_finite_tensors` reports something
    /// (e.g. a flipped offset that now points at bytes reading as NaN).
    Any,
    /// NaN/Inf written into `tensor`: the file opens and `non_finite_tensors` names the tensor.
    /// With `reaches_logits` (the token reads the value, and it dequantizes to NaN/Inf), the
    /// logits are non-finite: nothing on the way may mask it into a plausible finite answer.
    Flagged {
        tensor: String,
        reaches_logits: bool,
    },
}

struct Case {
    class: &'static str,
    label: String,
    bytes: Vec<u8>,
    expect: Expect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// `ModelFile::from_bytes` refused the file.
    FileErr,
    /// `Model::from_file` refused it.
    LoadErr,
    /// Opening a session or running the token failed.
    RunErr,
    /// One token ran; every logit is finite.
    Finite,
    /// One token ran; some logit is NaN or infinite.
    NonFinite,
}

#[derive(Debug)]
struct Run {
    outcome: Outcome,
    /// For errors: the error's class (e.g. `OutOfBounds`); for results: empty.
    class: String,
    logits: Vec<f32>,
    /// What `non_finite_tensors` reports, if the file opened.
    flagged: Vec<String>,
}

/// The variant name of an error, for the summary (`OutOfBounds`, `Tokenizer`, ...).
fn error_class(e: &ModelError) -> String {
    match e {
        ModelError::Format(f) => format_class(f),
        other => variant(&format!("{other:?}")),
    }
}

fn format_class(e: &FormatError) -> String {
    variant(&format!("{:?}", e.kind()))
}

fn variant(debug: &str) -> String {
    debug
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .next()
        .unwrap_or_default()
        .to_string()
}

fn run<R: Residency>(bytes: &[u8]) -> Run {
    let done = |outcome, class: String, flagged| Run {
        outcome,
        class,
        logits: Vec::new(),
        flagged,
    };
    let file = match ModelFile::from_bytes(bytes) {
        Ok(file) => file,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return done(Outcome::FileErr, format_class(&e), Vec::new());
        }
    };
    let flagged: Vec<String> = file
        .non_finite_tensors()
        .expect("the tensors of an opened file can be scanned")
        .into_iter()
        .map(|(name, count)| {
            assert!(count > 0);
            name
        })
        .collect();
    let model = match Model::<R>::from_file(file) {
        Ok(model) => model,
        Err(e) => return done(Outcome::LoadErr, error_class(&e), flagged),
    };
    let context = model.config().max_position_embeddings.min(4);
    let vocab = model.config().vocab_size;
    let options = SessionOptions {
        context_len: Some(context),
        ..Default::default()
    };
    let mut session = match model.session_with(options) {
        Ok(session) => session,
        Err(e) => return done(Outcome::RunErr, error_class(&e), flagged),
    };
    match session.step(1) {
        Ok(logits) => {
            assert_eq!(logits.len(), vocab, "one logit per vocabulary entry");
            let outcome = if logits.iter().all(|x| x.is_finite()) {
                Outcome::Finite
            } else {
                Outcome::NonFinite
            };
            Run {
                outcome,
                class: String::new(),
                logits: logits.to_vec(),
                flagged,
            }
        }
        Err(e) => done(Outcome::RunErr, error_class(&e), flagged),
    }
}

/// Runs `case` through both residencies; returns the outcome or a description of what was wrong.
fn check(case: &Case) -> Result<Run, String> {
    let resident = catch_unwind(AssertUnwindSafe(|| {
        run::<torchless_model::Resident>(&case.bytes)
    }))
    .map_err(|_| "PANIC (resident)".to_string())?;
    let lazy = catch_unwind(AssertUnwindSafe(|| {
        run::<torchless_model::Lazy>(&case.bytes)
    }))
    .map_err(|_| "PANIC (lazy)".to_string())?;
    let same_logits = resident.logits.len() == lazy.logits.len()
        && resident
            .logits
            .iter()
            .zip(&lazy.logits)
            .all(|(a, b)| a.to_bits() == b.to_bits());
    if resident.outcome != lazy.outcome || resident.class != lazy.class || !same_logits {
        return Err(format!(
            "resident and lazy differ: {:?} {} vs {:?} {}",
            resident.outcome, resident.class, lazy.outcome, lazy.class
        ));
    }
    let is_err = matches!(
        resident.outcome,
        Outcome::FileErr | Outcome::LoadErr | Outcome::RunErr
    );
    if resident.outcome == Outcome::NonFinite && resident.flagged.is_empty() {
        return Err("non-finite logits from weights non_finite_tensors calls clean".into());
    }
    let ok = match &case.expect {
        Expect::Err => is_err,
        Expect::Finite => resident.outcome == Outcome::Finite,
        Expect::ErrOrFinite => is_err || resident.outcome == Outcome::Finite,
        Expect::Any => true,
        Expect::Flagged {
            tensor,
            reaches_logits,
        } => {
            resident.outcome != Outcome::FileErr
                && resident.flagged.contains(tensor)
                && (!reaches_logits || resident.outcome == Outcome::NonFinite)
        }
    };
    if ok {
        Ok(resident)
    } else {
        Err(format!(
            "expected {:?}, got {:?} {} (flagged {:?})",
            case.expect, resident.outcome, resident.class, resident.flagged
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// The corruptions.

fn length_prefix_flips(f: &Fixture, cases: &mut Vec<Case>) {
    let header_len = (f.payload_start - 8) as u64;
    for bit in 0..64 {
        let mut bytes = f.bytes.clone();
        bytes[bit / 8] ^= 1 << (bit % 8);
        let declared = header_len ^ (1 << bit);
        // A shorter length that still holds the whole JSON (it only cuts NUL padding) moves the
        // payload start: every tensor then reads a few bytes earlier. The reader does not require
        // the payload start to be 64-aligned as the format says (it only checks each tensor's
        // element alignment), so such a file loads with shifted weights.
        let shifts_payload = declared < header_len && declared >= f.json_len as u64;
        cases.push(Case {
            class: "length prefix bit flip",
            label: format!("bit {bit}"),
            bytes,
            expect: if shifts_payload {
                Expect::Any
            } else {
                Expect::Err
            },
        });
    }
}

fn header_bit_flips(f: &Fixture, rng: &mut Rng, cases: &mut Vec<Case>) {
    // Metadata and tensor table, the tokenizer section, the NUL padding.
    let regions = [
        ("table", 8, 8 + f.tokenizer_at, 64),
        ("tokenizer", 8 + f.tokenizer_at, 8 + f.json_len, 24),
        ("padding", 8 + f.json_len, f.payload_start, 8),
    ];
    for (region, start, end, count) in regions {
        assert!(end > start, "{}: empty {region} region", f.name);
        for _ in 0..count {
            let at = start + rng.below(end - start);
            let bit = rng.below(8);
            let mut bytes = f.bytes.clone();
            bytes[at] ^= 1 << bit;
            cases.push(Case {
                class: "header bit flip",
                label: format!("{region} byte {at} bit {bit}"),
                bytes,
                expect: Expect::Any,
            });
        }
    }
}

fn truncations(f: &Fixture, cases: &mut Vec<Case>) {
    let len = f.bytes.len();
    let p = f.payload_start;
    let mut cuts = vec![0, 1, 4, 7, 8, 9, 8 + f.json_len / 2, 8 + f.json_len - 1];
    cuts.extend([8 + f.json_len, p - 1, p, p + 1]);
    for t in &f.tensors {
        let (start, end) = t.data;
        cuts.extend([
            p + start,
            p + start + 1,
            p + (start + end) / 2,
            p + end - 1,
            p + end,
        ]);
        if let Some((s, e)) = t.scales {
            cuts.extend([p + s, p + s + 2, p + e - 4, p + e - 1, p + e]);
        }
    }
    cuts.sort_unstable();
    cuts.dedup();
    // Every byte of these fixtures belongs to the header or to some tensor: any cut short of the
    // full length loses something a tensor needs.
    let max_end = f
        .tensors
        .iter()
        .flat_map(|t| [Some(t.data.1), t.scales.map(|s| s.1)])
        .flatten()
        .max()
        .unwrap();
    assert_eq!(p + max_end, len, "{}: trailing bytes", f.name);
    for cut in cuts.into_iter().filter(|&c| c < len) {
        cases.push(Case {
            class: "truncation",
            label: format!("cut at {cut} of {len}"),
            bytes: f.bytes[..cut].to_vec(),
            expect: Expect::Err,
        });
    }
}

/// Edits of one tensor table entry.
#[derive(Clone, Copy, Debug, PartialEq)]
enum TableEdit {
    OffsetAtEnd,
    OffsetPastEnd,
    OffsetHuge,
    OffsetNegative,
    OffsetFraction,
    OffsetUnaligned,
    OffsetOfAnother,
    ShapeRowPlusOne,
    ShapeProductOverflows,
    ShapeByteCountOverflows,
    ShapeEmpty,
    ShapeZero,
    ShapeTransposed,
    ShapeExtraDim,
    DtypeUnknown,
    DtypeSwapped,
    ScaleOffsetAtEnd,
    ScaleOffsetHuge,
    ScaleOffsetUnaligned,
    ScaleCountPlusOne,
    ScaleCountMissing,
    Removed,
    Renamed,
}

const TABLE_EDITS: [TableEdit; 23] = [
    TableEdit::OffsetAtEnd,
    TableEdit::OffsetPastEnd,
    TableEdit::OffsetHuge,
    TableEdit::OffsetNegative,
    TableEdit::OffsetFraction,
    TableEdit::OffsetUnaligned,
    TableEdit::OffsetOfAnother,
    TableEdit::ShapeRowPlusOne,
    TableEdit::ShapeProductOverflows,
    TableEdit::ShapeByteCountOverflows,
    TableEdit::ShapeEmpty,
    TableEdit::ShapeZero,
    TableEdit::ShapeTransposed,
    TableEdit::ShapeExtraDim,
    TableEdit::DtypeUnknown,
    TableEdit::DtypeSwapped,
    TableEdit::ScaleOffsetAtEnd,
    TableEdit::ScaleOffsetHuge,
    TableEdit::ScaleOffsetUnaligned,
    TableEdit::ScaleCountPlusOne,
    TableEdit::ScaleCountMissing,
    TableEdit::Removed,
    TableEdit::Renamed,
];

/// The edited file and what it may end in; `None` when the edit does not apply to this tensor.
fn table_edit(f: &Fixture, t: &TensorLoc, edit: TableEdit) -> Option<(Vec<u8>, Expect)> {
    use TableEdit::*;
    let payload_len = f.payload().len() as u64;
    let data_len = (t.data.1 - t.data.0) as u64;
    let set = |key: &'static str, value: Value| {
        f.with_tensor(&t.name, |e| {
            e.insert(key.into(), value);
        })
    };
    let matrix = t.shape.len() == 2;
    let (rows, cols) = (t.shape[0], t.shape.get(1).copied().unwrap_or(1));
    Some(match edit {
        OffsetAtEnd => (set("offset", json!(payload_len)), Expect::Err),
        OffsetPastEnd => (
            set("offset", json!((payload_len - data_len + 64) / 64 * 64)),
            Expect::Err,
        ),
        OffsetHuge => (set("offset", json!(u64::MAX - 63)), Expect::Err),
        OffsetNegative => (set("offset", json!(-64)), Expect::Err),
        OffsetFraction => (set("offset", json!(t.data.0 as f64 + 0.5)), Expect::Err),
        // f32 data must be 4-byte aligned; int8 data may start anywhere (and then reads two bytes
        // of whatever follows).
        OffsetUnaligned if t.int8 => (set("offset", json!(t.data.0 + 2)), Expect::Any),
        OffsetUnaligned => (set("offset", json!(t.data.0 + 2)), Expect::Err),
        // Two tensors sharing bytes is legal; the values are another tensor's.
        OffsetOfAnother => {
            let other = f.tensors.iter().find(|o| {
                o.name != t.name && o.int8 == t.int8 && o.data.1 - o.data.0 >= data_len as usize
            })?;
            (set("offset", json!(other.data.0)), Expect::Any)
        }
        ShapeRowPlusOne => {
            let mut shape = t.shape.clone();
            shape[0] += 1;
            (set("shape", json!(shape)), Expect::Err)
        }
        ShapeProductOverflows => (set("shape", json!([1u64 << 32, 1u64 << 32])), Expect::Err),
        ShapeByteCountOverflows => (set("shape", json!([1u64 << 62])), Expect::Err),
        ShapeEmpty => (set("shape", json!([])), Expect::Err),
        ShapeZero => {
            let mut shape = t.shape.clone();
            shape[0] = 0;
            (set("shape", json!(shape)), Expect::Err)
        }
        ShapeTransposed if matrix && rows != cols => {
            (set("shape", json!([cols, rows])), Expect::Err)
        }
        ShapeTransposed => return None,
        ShapeExtraDim => {
            let mut shape = t.shape.clone();
            shape.push(1);
            (set("shape", json!(shape)), Expect::Err)
        }
        DtypeUnknown => (set("dtype", json!("bf16")), Expect::Err),
        // int8 → f32 reads four times the bytes, which may still lie inside the payload.
        DtypeSwapped if t.int8 => (set("dtype", json!("f32")), Expect::Any),
        DtypeSwapped => (set("dtype", json!("int8")), Expect::Err),
        ScaleOffsetAtEnd if t.int8 => (set("scale_offset", json!(payload_len)), Expect::Err),
        ScaleOffsetHuge if t.int8 => (set("scale_offset", json!(u64::MAX - 3)), Expect::Err),
        ScaleOffsetUnaligned if t.int8 => {
            (set("scale_offset", json!(t.scales?.0 + 2)), Expect::Err)
        }
        ScaleCountPlusOne if t.int8 => {
            let count = (t.scales?.1 - t.scales?.0) / 4;
            (set("scale_size", json!(count + 1)), Expect::Err)
        }
        ScaleCountMissing if t.int8 => (
            f.with_tensor(&t.name, |e| {
                e.remove("scale_size");
            }),
            Expect::Err,
        ),
        ScaleOffsetAtEnd | ScaleOffsetHuge | ScaleOffsetUnaligned | ScaleCountPlusOne
        | ScaleCountMissing => return None,
        Removed => (
            f.with_header(|h| {
                h.tensors.remove(&t.name);
            }),
            Expect::Err,
        ),
        Renamed => (
            f.with_header(|h| {
                let entry = h.tensors.remove(&t.name).unwrap();
                h.tensors.insert(format!("{}_renamed", t.name), entry);
            }),
            Expect::Err,
        ),
    })
}

/// Four different applicable edits of every tensor, chosen by the seeded generator.
fn table_edits(f: &Fixture, rng: &mut Rng, cases: &mut Vec<Case>) {
    for t in &f.tensors {
        let mut chosen = Vec::new();
        while chosen.len() < 4 {
            let edit = TABLE_EDITS[rng.below(TABLE_EDITS.len())];
            if chosen.contains(&edit) {
                continue;
            }
            if let Some((bytes, expect)) = table_edit(f, t, edit) {
                chosen.push(edit);
                cases.push(Case {
                    class: "tensor table edit",
                    label: format!("{} {edit:?}", t.name),
                    bytes,
                    expect,
                });
            }
        }
    }
}

fn metadata_edits(f: &Fixture, cases: &mut Vec<Case>) {
    let s = |v: &str| Some(json!(v));
    let mut edits: Vec<(&str, Option<Value>, Expect)> = Vec::new();
    for key in [
        "hidden_size",
        "intermediate_size",
        "n_layers",
        "n_heads",
        "n_kv_heads",
        "vocab_size",
        "max_position_embeddings",
        "sliding_window",
        "rope_theta",
        "norm_eps",
        "act_type",
        "quant",
    ] {
        edits.push((key, None, Expect::Err));
    }
    let hidden = f.header.metadata["hidden_size"]
        .as_str()
        .unwrap()
        .to_string();
    edits.extend([
        ("hidden_size", s("0"), Expect::Err),
        ("hidden_size", s("-64"), Expect::Err),
        ("hidden_size", s("64.0"), Expect::Err),
        ("hidden_size", s("sixty-four"), Expect::Err),
        ("hidden_size", s("16777217"), Expect::Err),
        ("hidden_size", s("18446744073709551616"), Expect::Err),
        ("hidden_size", Some(Value::Null), Expect::Err),
        // A JSON number instead of the exporter's string is accepted.
        (
            "hidden_size",
            Some(json!(hidden.parse::<u64>().unwrap())),
            Expect::Finite,
        ),
        ("vocab_size", s("1099511627776"), Expect::Err),
        ("vocab_size", s("1023"), Expect::Err),
        ("vocab_size", s("16777216"), Expect::Err),
        ("n_heads", s("3"), Expect::Err),
        ("n_heads", s("8"), Expect::Err),
        ("n_kv_heads", s("3"), Expect::Err),
        ("n_kv_heads", s("0"), Expect::Err),
        ("head_dim", s("17"), Expect::Err),
        ("head_dim", s("32"), Expect::Err),
        ("head_dim", s("16777216"), Expect::Err),
        // Fewer layers than the file holds: a shallower, valid model.
        ("n_layers", s("1"), Expect::Finite),
        ("n_layers", s("3"), Expect::Err),
        ("n_layers", s("16777216"), Expect::Err),
        ("max_position_embeddings", s("1"), Expect::Finite),
        ("max_position_embeddings", s("0"), Expect::Err),
        ("sliding_window", s("None"), Expect::Finite),
        ("sliding_window", Some(Value::Null), Expect::Finite),
        ("sliding_window", s("0"), Expect::Finite),
        ("sliding_window", s("1"), Expect::Finite),
        ("sliding_window", s("-1"), Expect::Err),
        ("sliding_window", s("1099511627777"), Expect::Err),
        ("rope_theta", s("0.0"), Expect::Err),
        ("rope_theta", s("-10000.0"), Expect::Err),
        ("rope_theta", s("nan"), Expect::Err),
        ("rope_theta", s("inf"), Expect::Err),
        ("rope_theta", s("1e308"), Expect::ErrOrFinite),
        ("norm_eps", s("0"), Expect::Err),
        ("norm_eps", s("1e-300"), Expect::ErrOrFinite),
        ("norm_eps", s("1e+30"), Expect::ErrOrFinite),
        ("act_type", s("gelu"), Expect::Err),
        ("quant", s("bf16"), Expect::Err),
        // Informational only: each tensor's dtype decides.
        ("quant", s("int8"), Expect::Finite),
        ("quant", s("f32"), Expect::Finite),
        // Keys this version does not know are refused by name, not ignored.
        ("some_new_key", s("whatever"), Expect::Err),
        ("architecture", s("llama"), Expect::Finite),
        ("architecture", s("gpt2"), Expect::Err),
        // Tied, but the file has its own lm_head: the embedding is used and lm_head ignored.
        ("tie_word_embeddings", s("true"), Expect::Finite),
        ("tie_word_embeddings", s("perhaps"), Expect::Err),
        ("tokenizer_kind", s("wordpiece"), Expect::Err),
        // A SentencePiece vocabulary read as byte-level BPE is consistent (every merge's
        // pieces exist), so it loads and runs.
        ("tokenizer_kind", s("byte_level_bpe"), Expect::Finite),
        ("bos_token_id", s("99999999"), Expect::Err),
        ("chat_template", s("{% for"), Expect::Finite),
    ]);
    for (key, value, expect) in edits {
        let label = format!(
            "{key} = {}",
            value.as_ref().map_or("<removed>".into(), |v| v.to_string())
        );
        cases.push(Case {
            class: "metadata edit",
            label,
            bytes: f.with_metadata(key, value),
            expect,
        });
    }
}

fn structural_edits(f: &Fixture, cases: &mut Vec<Case>) {
    let mut push = |label: &str, bytes: Vec<u8>, expect: Expect| {
        cases.push(Case {
            class: "header structure",
            label: label.into(),
            bytes,
            expect,
        });
    };
    push(
        "unchanged, re-serialized",
        f.with_header(|_| {}),
        Expect::Finite,
    );
    let json = |text: &str| assemble(text.as_bytes().to_vec(), f.payload());
    push(
        "no tokenizer",
        json(r#"{"metadata": {}, "tensors": {}}"#),
        Expect::Err,
    );
    let without_tokenizer = {
        let h = &f.header;
        let v = json!({"metadata": h.metadata, "tensors": h.tensors});
        assemble(serde_json::to_vec(&v).unwrap(), f.payload())
    };
    push("tokenizer removed", without_tokenizer, Expect::Err);
    push(
        "tensors is a list",
        f.with_header(|h| h.tensors.clear()),
        Expect::Err,
    );
    push("empty JSON object", json("{}"), Expect::Err);
    push("JSON array", json("[]"), Expect::Err);
    push("empty header", json(""), Expect::Err);
    let mut text = serde_json::to_vec(&f.header).unwrap();
    text.extend_from_slice(b"}");
    push("trailing brace", assemble(text, f.payload()), Expect::Err);
    let mut text = serde_json::to_vec(&f.header).unwrap();
    let at = text.iter().position(|&b| b == b'"').unwrap() + 1;
    text[at] = 0xFF;
    push("invalid UTF-8", assemble(text, f.payload()), Expect::Err);
    push(
        "vocab id outside vocab_size",
        f.with_tokenizer(|t| t["vocab"]["<unk>"] = json!(5000)),
        Expect::Err,
    );
    push(
        "vocab id repeated",
        f.with_tokenizer(|t| t["vocab"]["<s>"] = json!(0)),
        Expect::Err,
    );
    push(
        "merge without a space",
        f.with_tokenizer(|t| t["merges"][0] = json!("nospace")),
        Expect::Err,
    );
    push(
        "merge of unknown pieces",
        f.with_tokenizer(|t| t["merges"][0] = json!("\u{263A} \u{263B}")),
        Expect::Err,
    );
    push(
        "byte piece missing",
        f.with_tokenizer(|t| {
            let vocab = t["vocab"].as_object_mut().unwrap();
            let id = vocab.remove("<0x41>").unwrap();
            vocab.insert("<0x41>x".into(), id);
        }),
        Expect::Err,
    );
    push(
        "merges not a list",
        f.with_tokenizer(|t| t["merges"] = json!({})),
        Expect::Err,
    );
}

/// Non-finite values written into weights (f32 data) and inverse scales (int8).
fn non_finite_injections(f: &Fixture, rng: &mut Rng, cases: &mut Vec<Case>) {
    let values = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::from_bits(0xFFC0_0001), // negative quiet NaN with a payload
        f32::from_bits(0x7F80_0001), // signalling NaN
    ];
    let hidden: usize = f.header.metadata["hidden_size"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let f32_tensors: Vec<&TensorLoc> = f.tensors.iter().filter(|t| !t.int8).collect();
    for i in 0..24 {
        let t = f32_tensors[rng.below(f32_tensors.len())];
        let n = (t.data.1 - t.data.0) / 4;
        let index = rng.below(n);
        let value = values[i % values.len()];
        cases.push(Case {
            class: "NaN/Inf in weights",
            label: format!("{}[{index}] = {value}", t.name),
            bytes: f.with_payload_f32(t.data.0 + 4 * index, value),
            expect: Expect::Flagged {
                tensor: t.name.clone(),
                // The token (id 1) reads one embedding row; everything else is read in full.
                reaches_logits: t.name != "model.embed_tokens.weight" || index / hidden == 1,
            },
        });
    }
    // Inverse scales: non-finite, zero (q / 0), or so small that q / inv_scale overflows.
    let scale_values = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        1e-40,
        -1e-42,
        1e-39,
    ];
    let int8_tensors: Vec<&TensorLoc> = f.tensors.iter().filter(|t| t.int8).collect();
    if int8_tensors.is_empty() {
        return;
    }
    for i in 0..16 {
        let t = int8_tensors[rng.below(int8_tensors.len())];
        let (start, end) = t.scales.unwrap();
        let group = rng.below((end - start) / 4);
        let value = scale_values[i % scale_values.len()];
        cases.push(Case {
            class: "NaN/Inf/0 in int8 scales",
            label: format!("{} scale[{group}] = {value:e}", t.name),
            bytes: f.with_payload_f32(start + 4 * group, value),
            expect: Expect::Flagged {
                tensor: t.name.clone(),
                // q / ±inf is a (finite) zero: the group's weights vanish, nothing overflows.
                reaches_logits: value.is_finite() || value.is_nan(),
            },
        });
    }
}

fn all_cases(f: &Fixture, seed: u64) -> Vec<Case> {
    let mut rng = Rng(seed);
    let mut cases = Vec::new();
    structural_edits(f, &mut cases);
    length_prefix_flips(f, &mut cases);
    header_bit_flips(f, &mut rng, &mut cases);
    truncations(f, &mut cases);
    table_edits(f, &mut rng, &mut cases);
    metadata_edits(f, &mut cases);
    non_finite_injections(f, &mut rng, &mut cases);
    cases
}

#[test]
fn corrupted_model_files_end_in_errors_or_results_never_panics() {
    // (fixture, seed, expected number of cases): the counts follow from the fixtures' tensor
    // tables; a change means cases were lost or added, which should be deliberate.
    let fixtures = [
        ("small-gqa-int8.bin", 0x5EED_0001, 510),
        ("small-gqa-f32.bin", 0x5EED_0002, 439),
    ];
    let mut report = String::new();
    let mut failures = Vec::new();
    let mut total = 0;
    for (name, seed, expected_cases) in fixtures {
        let f = Fixture::load(name);
        let clean = run::<torchless_model::Resident>(&f.bytes);
        assert_eq!(
            clean.outcome,
            Outcome::Finite,
            "{name}: the fixture itself runs"
        );
        assert!(clean.flagged.is_empty(), "{name}: the fixture is clean");

        let cases = all_cases(&f, seed);
        let start = Instant::now();
        // class -> outcome -> count, and error class -> count.
        let mut by_class: BTreeMap<&str, BTreeMap<Outcome, usize>> = BTreeMap::new();
        let mut errors: BTreeMap<String, usize> = BTreeMap::new();
        for case in &cases {
            match check(case) {
                Ok(run) => {
                    *by_class
                        .entry(case.class)
                        .or_default()
                        .entry(run.outcome)
                        .or_default() += 1;
                    // MUTATION_VERBOSE=1 lists the cases that loaded and ran.
                    if std::env::var_os("MUTATION_VERBOSE").is_some() && run.class.is_empty() {
                        eprintln!("{name}: {} / {}: {:?}", case.class, case.label, run.outcome);
                    }
                    if !run.class.is_empty() {
                        *errors.entry(run.class).or_default() += 1;
                    }
                    if case.label == "unchanged, re-serialized" && run.logits != clean.logits {
                        failures.push(format!(
                            "{name}: re-serializing the header changed the logits"
                        ));
                    }
                }
                Err(problem) => failures.push(format!(
                    "{name}: {} / {}: {problem}",
                    case.class, case.label
                )),
            }
        }
        writeln!(
            report,
            "{name}: {} cases (x2: resident and lazy) in {:.1?}",
            cases.len(),
            start.elapsed()
        )
        .unwrap();
        for (class, outcomes) in &by_class {
            writeln!(report, "  {class:<26} {outcomes:?}").unwrap();
        }
        writeln!(report, "  errors: {errors:?}").unwrap();
        if cases.len() != expected_cases {
            failures.push(format!(
                "{name}: {} cases, expected {expected_cases}",
                cases.len()
            ));
        }
        total += cases.len();
    }
    eprintln!("mutation test: {total} cases\n{report}");
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_no_absurd_allocation();
}

// ---------------------------------------------------------------------------------------------
// GGUF files.

#[path = "../../torchless-format/tests/common/gguf_writer.rs"]
mod gguf_writer;

use gguf_writer::{RawGguf, RawTensor};
use torchless_model::format::gguf::{GgufArray, GgufValue};

/// The cases of one GGUF fixture: truncations at every structural boundary, seeded bit flips in
/// the header, every key removed or of the wrong type or out of range, tensor infos pushed out
/// of range (offsets, dims, types, names), vocabularies with holes, and NaN/Inf in weights and
/// block scales.
fn gguf_cases(raw: &RawGguf, seed: u64) -> Vec<Case> {
    let mut rng = Rng(seed);
    let mut cases = Vec::new();
    let bytes = raw.to_bytes();
    let push = |cases: &mut Vec<Case>, class, label: String, bytes, expect| {
        cases.push(Case {
            class,
            label,
            bytes,
            expect,
        })
    };
    push(
        &mut cases,
        "gguf structure",
        "unchanged, re-serialized".into(),
        bytes.clone(),
        Expect::Finite,
    );
    // Truncations: every boundary the writer knows, and one byte before and after.
    let data_start = raw
        .boundaries()
        .into_iter()
        .find(|&b| b > 24 && b % raw.alignment == 0 && bytes.len() > b)
        .unwrap_or(0);
    let mut cuts: Vec<usize> = raw
        .boundaries()
        .into_iter()
        .flat_map(|b| [b.saturating_sub(1), b, b + 1])
        .filter(|&b| b < bytes.len())
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    for cut in cuts {
        push(
            &mut cases,
            "gguf truncation",
            format!("cut at {cut}"),
            bytes[..cut].to_vec(),
            Expect::Err,
        );
    }
    // Bit flips in the header (metadata and tensor infos): anything but a panic.
    let header_end = raw
        .boundaries()
        .into_iter()
        .filter(|&b| b <= data_start)
        .max()
        .unwrap_or(24);
    for _ in 0..160 {
        let at = rng.below(header_end.max(1));
        let bit = rng.below(8);
        let mut b = bytes.clone();
        b[at] ^= 1 << bit;
        push(
            &mut cases,
            "gguf header bit flip",
            format!("byte {at} bit {bit}"),
            b,
            Expect::Any,
        );
    }
    // Metadata: each key removed, given the wrong type, or out of range.
    let required = [
        "general.architecture",
        "llama.block_count",
        "llama.context_length",
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.layer_norm_rms_epsilon",
        "tokenizer.ggml.model",
        "tokenizer.ggml.tokens",
    ];
    for (key, value) in &raw.metadata {
        let mut r = raw.clone();
        r.remove(key);
        let expect = if required.contains(&key.as_str()) || key == "tokenizer.ggml.merges" {
            Expect::Err
        } else {
            // Optional keys fall back to llama.cpp's defaults.
            Expect::ErrOrFinite
        };
        push(
            &mut cases,
            "gguf metadata",
            format!("{key} removed"),
            r.to_bytes(),
            expect,
        );
        let wrong = match value {
            GgufValue::String(_) => GgufValue::U32(7),
            GgufValue::Array(_) => GgufValue::String("not an array".into()),
            _ => GgufValue::String("7".into()),
        };
        let mut r = raw.clone();
        r.set(key, wrong);
        let read = key.starts_with("llama.")
            || key.starts_with("tokenizer.")
            || key == "general.architecture";
        let expect = if read {
            Expect::Err
        } else {
            Expect::ErrOrFinite
        };
        push(
            &mut cases,
            "gguf metadata",
            format!("{key} of the wrong type"),
            r.to_bytes(),
            expect,
        );
    }
    let u = GgufValue::U32;
    let u64v = GgufValue::U64;
    let f = GgufValue::F32;
    let edits: Vec<(&str, GgufValue, Expect)> = vec![
        ("llama.block_count", u(0), Expect::Err),
        ("llama.block_count", u(1), Expect::Err),
        ("llama.block_count", u(3), Expect::Err),
        ("llama.block_count", u64v(u64::MAX), Expect::Err),
        ("llama.embedding_length", u(0), Expect::Err),
        ("llama.embedding_length", u(1 << 30), Expect::Err),
        ("llama.feed_forward_length", u(1), Expect::Err),
        ("llama.attention.head_count", u(0), Expect::Err),
        ("llama.attention.head_count", u(3), Expect::Err),
        ("llama.attention.head_count", u(1 << 24), Expect::Err),
        ("llama.attention.head_count_kv", u(0), Expect::Err),
        ("llama.attention.head_count_kv", u(3), Expect::Err),
        ("llama.attention.key_length", u(17), Expect::Err),
        ("llama.attention.key_length", u(1 << 24), Expect::Err),
        ("llama.rope.dimension_count", u(2), Expect::Err),
        ("llama.context_length", u(0), Expect::Err),
        ("llama.context_length", u(1), Expect::Finite),
        ("llama.context_length", u(1 << 24), Expect::ErrOrFinite),
        ("llama.attention.sliding_window", u(0), Expect::Finite),
        ("llama.attention.sliding_window", u(1), Expect::Finite),
        (
            "llama.attention.sliding_window",
            u64v(u64::MAX),
            Expect::ErrOrFinite,
        ),
        ("llama.rope.freq_base", f(0.0), Expect::Err),
        ("llama.rope.freq_base", f(f32::NAN), Expect::Err),
        ("llama.rope.freq_base", f(f32::INFINITY), Expect::Err),
        ("llama.rope.freq_base", f(1e30), Expect::ErrOrFinite),
        (
            "llama.attention.layer_norm_rms_epsilon",
            f(-1.0),
            Expect::Err,
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            f(1e30),
            Expect::ErrOrFinite,
        ),
        ("llama.vocab_size", u(1), Expect::Err),
        ("llama.expert_count", u(8), Expect::Err),
        ("llama.expert_count", u(0), Expect::Finite),
        (
            "llama.rope.scaling.type",
            GgufValue::String("linear".into()),
            Expect::Err,
        ),
        (
            "llama.rope.scaling.type",
            GgufValue::String("none".into()),
            Expect::Finite,
        ),
        (
            "general.architecture",
            GgufValue::String("gemma".into()),
            Expect::Err,
        ),
        ("general.alignment", u(3), Expect::Err),
        ("general.alignment", u(0), Expect::Err),
        (
            "tokenizer.ggml.model",
            GgufValue::String("bert".into()),
            Expect::Err,
        ),
        ("tokenizer.ggml.bos_token_id", u(u32::MAX), Expect::Err),
        ("tokenizer.ggml.eos_token_id", u(1 << 20), Expect::Err),
        ("tokenizer.ggml.unknown_token_id", u(1 << 20), Expect::Err),
        (
            "tokenizer.ggml.pre",
            GgufValue::String("no-such-pre".into()),
            Expect::Err,
        ),
        (
            "tokenizer.ggml.add_bos_token",
            GgufValue::Bool(true),
            Expect::Finite,
        ),
        (
            "tokenizer.ggml.token_type",
            GgufValue::Array(GgufArray::I32(vec![1; 3])),
            Expect::Err,
        ),
        (
            "tokenizer.ggml.scores",
            GgufValue::Array(GgufArray::F32(vec![0.0; 3])),
            Expect::Err,
        ),
        (
            "tokenizer.ggml.merges",
            GgufValue::Array(GgufArray::String(vec!["x".into()])),
            Expect::ErrOrFinite,
        ),
        (
            "tokenizer.chat_template",
            GgufValue::String("{% for".into()),
            Expect::Finite,
        ),
    ];
    for (key, value, expect) in edits {
        let mut r = raw.clone();
        let label = format!("{key} = {value:?}");
        r.set(key, value);
        push(&mut cases, "gguf metadata", label, r.to_bytes(), expect);
    }
    // The vocabulary with holes: fewer pieces than embedding rows, or none.
    if let Some(GgufValue::Array(GgufArray::String(tokens))) = raw.get("tokenizer.ggml.tokens") {
        for keep in [0, 1, tokens.len() / 2, tokens.len() - 1] {
            let mut r = raw.clone();
            r.set(
                "tokenizer.ggml.tokens",
                GgufValue::Array(GgufArray::String(tokens[..keep].to_vec())),
            );
            push(
                &mut cases,
                "gguf vocabulary",
                format!("{keep} pieces"),
                r.to_bytes(),
                Expect::Err,
            );
        }
    }
    // Tensor infos: offsets, dims, types, names.
    for (i, t) in raw.tensors.iter().enumerate() {
        let n = &t.name;
        let mut edit = |label: &str, expect: Expect, change: &dyn Fn(&mut RawTensor)| {
            let mut r = raw.clone();
            change(&mut r.tensors[i]);
            push(
                &mut cases,
                "gguf tensor",
                format!("{n}: {label}"),
                r.to_bytes(),
                expect,
            );
        };
        edit("one more row", Expect::Err, &|t| {
            *t.dims.last_mut().unwrap() += 1
        });
        edit("no dims", Expect::Err, &|t| t.dims.clear());
        edit("5 dims", Expect::Err, &|t| t.dims.extend([1, 1, 1, 1]));
        edit("a huge dim", Expect::Err, &|t| t.dims[0] = u64::MAX / 2);
        edit("renamed", Expect::Err, &|t| t.name.push('x'));
        edit("an unknown type", Expect::Err, &|t| t.type_id = 99);
        edit("type Q2_K", Expect::Err, &|t| t.type_id = 10);
        edit("type IQ4_NL", Expect::Err, &|t| t.type_id = 20);
        edit("type I32", Expect::Err, &|t| t.type_id = 26);
        edit("data cut", Expect::Err, &|t| {
            let keep = t.data.len() / 2;
            t.data.truncate(keep)
        });
        for other in [0u32, 1, 2, 3, 6, 7, 8, 12, 13, 14, 30] {
            if other != t.type_id {
                // Another supported type: the data no longer has that type's size (refused),
                // or happens to (then it must load, or be refused, cleanly).
                edit(&format!("type {other}"), Expect::Any, &|t| {
                    t.type_id = other
                });
            }
        }
    }
    // Offsets in the table, patched in place: past the end, misaligned, onto another tensor.
    let infos_at: Vec<usize> = raw
        .tensors
        .iter()
        .map(|t| {
            let mut needle = (t.name.len() as u64).to_le_bytes().to_vec();
            needle.extend_from_slice(t.name.as_bytes());
            let at = bytes
                .windows(needle.len())
                .position(|w| w == needle.as_slice())
                .unwrap();
            at + needle.len() + 4 + 8 * t.dims.len() + 4
        })
        .collect();
    for (t, &at) in raw.tensors.iter().zip(&infos_at) {
        for (label, offset, expect) in [
            ("offset past the end", bytes.len() as u64, Expect::Err),
            ("offset u64::MAX", u64::MAX, Expect::Err),
            ("offset misaligned", 1, Expect::Err),
            ("offset onto the first tensor", 0, Expect::Any),
        ] {
            let mut b = bytes.clone();
            b[at..at + 8].copy_from_slice(&offset.to_le_bytes());
            push(
                &mut cases,
                "gguf tensor",
                format!("{}: {label}", t.name),
                b,
                expect,
            );
        }
    }
    // NaN and infinities in weights and block scales.
    for t in &raw.tensors {
        let (at, width) = match t.type_id {
            0 => (4 * rng.below(t.data.len() / 4), 4),
            // The f16 scale of a random block.
            2 | 8 => {
                let block = if t.type_id == 2 { 18 } else { 34 };
                (rng.below(t.data.len() / block) * block, 2)
            }
            _ => continue,
        };
        for (label, bits) in [("NaN", 0x7fc0_0000u32), ("+Inf", 0x7f80_0000)] {
            let mut r = raw.clone();
            let data = &mut r.tensor_mut(&t.name).data;
            if width == 4 {
                data[at..at + 4].copy_from_slice(&bits.to_le_bytes());
            } else {
                let half: u16 = if label == "NaN" { 0x7e00 } else { 0x7c00 };
                data[at..at + 2].copy_from_slice(&half.to_le_bytes());
            }
            // Every weight reaches the logits of one token in these tied models: a norm value or
            // a matrix value (every row of a product is computed), and any embedding row (the
            // embedding is the output matrix too).
            push(
                &mut cases,
                "gguf non-finite",
                format!("{}: {label} at byte {at}", t.name),
                r.to_bytes(),
                Expect::Flagged {
                    tensor: hf_name(&t.name),
                    reaches_logits: true,
                },
            );
        }
    }
    cases
}

/// The model's name of a GGUF tensor (what `non_finite_tensors` reports).
fn hf_name(gguf: &str) -> String {
    match gguf {
        "token_embd.weight" => "model.embed_tokens.weight".into(),
        "output_norm.weight" => "model.norm.weight".into(),
        "output.weight" => "lm_head.weight".into(),
        _ => {
            let rest = gguf.strip_prefix("blk.").unwrap();
            let (layer, rest) = rest.split_once('.').unwrap();
            let suffix = match rest.strip_suffix(".weight").unwrap() {
                "attn_norm" => "input_layernorm.weight",
                "attn_q" => "self_attn.q_proj.weight",
                "attn_k" => "self_attn.k_proj.weight",
                "attn_v" => "self_attn.v_proj.weight",
                "attn_output" => "self_attn.o_proj.weight",
                "ffn_norm" => "post_attention_layernorm.weight",
                "ffn_gate" => "mlp.gate_proj.weight",
                "ffn_up" => "mlp.up_proj.weight",
                "ffn_down" => "mlp.down_proj.weight",
                other => panic!("{other}"),
            };
            format!("model.layers.{layer}.{suffix}")
        }
    }
}

#[test]
fn corrupted_gguf_files_end_in_errors_or_results_never_panics() {
    // (fixture, seed): GGUFs written by gguf-py (Q4_0 matrices with a Q8_0 embedding; Q8_0).
    let fixtures = [
        ("llama-tied-q4_0.gguf", 0x6605_0001u64),
        ("llama-tied-q8_0.gguf", 0x6605_0002),
    ];
    let mut report = String::new();
    let mut failures = Vec::new();
    let mut total = 0;
    for (name, seed) in fixtures {
        let raw = RawGguf::open(&common::fixtures().join(name));
        let clean = run::<torchless_model::Resident>(&raw.to_bytes());
        assert_eq!(
            clean.outcome,
            Outcome::Finite,
            "{name}: the fixture itself runs"
        );
        assert!(clean.flagged.is_empty(), "{name}: the fixture is clean");
        let cases = gguf_cases(&raw, seed);
        let start = Instant::now();
        let mut by_class: BTreeMap<&str, BTreeMap<Outcome, usize>> = BTreeMap::new();
        let mut errors: BTreeMap<String, usize> = BTreeMap::new();
        for case in &cases {
            match check(case) {
                Ok(run) => {
                    *by_class
                        .entry(case.class)
                        .or_default()
                        .entry(run.outcome)
                        .or_default() += 1;
                    if std::env::var_os("MUTATION_VERBOSE").is_some() && run.class.is_empty() {
                        eprintln!("{name}: {} / {}: {:?}", case.class, case.label, run.outcome);
                    }
                    if !run.class.is_empty() {
                        *errors.entry(run.class).or_default() += 1;
                    }
                    if case.label == "unchanged, re-serialized" && run.logits != clean.logits {
                        failures.push(format!("{name}: re-serializing changed the logits"));
                    }
                }
                Err(problem) => failures.push(format!(
                    "{name}: {} / {}: {problem}",
                    case.class, case.label
                )),
            }
        }
        writeln!(
            report,
            "{name}: {} cases (x2: resident and lazy) in {:.1?}",
            cases.len(),
            start.elapsed()
        )
        .unwrap();
        for (class, outcomes) in &by_class {
            writeln!(report, "  {class:<26} {outcomes:?}").unwrap();
        }
        writeln!(report, "  errors: {errors:?}").unwrap();
        total += cases.len();
    }
    eprintln!("GGUF mutation test: {total} cases\n{report}");
    assert!(total > 1000, "{total} cases");
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_no_absurd_allocation();
}

// ---------------------------------------------------------------------------------------------
// Resource limits.

/// Runs `f`, which must fail quickly: an answer in milliseconds means nothing big was allocated
/// or computed first (the allocation cap catches the rest).
fn refused_quickly<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> String {
    let start = Instant::now();
    let result = f();
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_secs(2),
        "{what}: took {elapsed:?} to answer"
    );
    match result {
        Ok(_) => panic!("{what}: accepted"),
        Err(message) => message,
    }
}

fn load_err(bytes: &[u8]) -> Result<Mistral, String> {
    let file = ModelFile::from_bytes(bytes).map_err(|e| format!("{:?}", e.kind()))?;
    file.validate_mistral()
        .map_err(|e| format!("{:?}", e.kind()))?;
    Mistral::from_file(file).map_err(|e| error_class(&e))
}

#[test]
fn absurd_header_lengths_are_refused_before_reading() {
    let f = Fixture::load("small-gqa-int8.bin");
    let file_len = f.bytes.len() as u64;
    for (declared, want) in [
        (MAX_HEADER_LEN + 1, "HeaderTooLarge"),
        (1 << 40, "HeaderTooLarge"),
        (u64::MAX, "HeaderTooLarge"),
        (file_len - 7, "HeaderBeyondFile"),
    ] {
        let mut bytes = f.bytes.clone();
        bytes[..8].copy_from_slice(&declared.to_le_bytes());
        let message = refused_quickly(&format!("header length {declared}"), || {
            ModelFile::from_bytes(&bytes).map_err(|e| format!("{:?}", e.kind()))
        });
        assert!(message.starts_with(want), "{declared}: {message}");
    }
    for len in 0..8 {
        let e = ModelFile::from_bytes(&f.bytes[..len]).unwrap_err();
        assert!(matches!(e.kind(), FormatErrorKind::TooShort { .. }), "{e}");
    }
    assert_no_absurd_allocation();
}

#[test]
fn absurd_sizes_in_the_header_are_refused_before_allocating() {
    let f = Fixture::load("small-gqa-int8.bin");
    // Beyond the 2^24 cap on any dimension: refused while parsing the metadata.
    for (key, value) in [
        ("vocab_size", "1099511627776"),
        ("hidden_size", "1073741824"),
        ("intermediate_size", "33554432"),
        ("n_layers", "1099511627776"),
        ("max_position_embeddings", "1099511627776"),
        ("head_dim", "1073741824"),
        ("sliding_window", "1180591620717411303424"),
    ] {
        let bytes = f.with_metadata(key, Some(json!(value)));
        let message = refused_quickly(&format!("{key} = {value}"), || load_err(&bytes));
        assert!(message.starts_with("BadMetadata"), "{key}: {message}");
    }
    // Every dimension within its cap but their products absurd.
    let bytes = f.with_header(|h| {
        h.metadata.insert("n_heads".into(), json!("1048576"));
        h.metadata.insert("n_kv_heads".into(), json!("1048576"));
        h.metadata.insert("head_dim".into(), json!("1024"));
    });
    let message = refused_quickly("n_heads x head_dim = 2^30", || load_err(&bytes));
    assert!(message.starts_with("InvalidConfig"), "{message}");

    // A valid-looking configuration at the caps (a 2^24-row vocabulary of 2^24-wide embeddings,
    // 2^24 layers, 2^24 positions) in a 650 KB file: refused by the tensor checks, without
    // listing 150 million expected tensors or allocating for the sizes it claims.
    let bytes = f.with_header(|h| {
        for key in [
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "n_layers",
            "max_position_embeddings",
        ] {
            h.metadata.insert(key.into(), json!("16777216"));
        }
    });
    let message = refused_quickly("every dimension 2^24", || load_err(&bytes));
    assert!(message.starts_with("WrongShape"), "{message}");
    let bytes = f.with_metadata("n_layers", Some(json!("16777216")));
    let message = refused_quickly("n_layers = 2^24", || load_err(&bytes));
    assert!(message.starts_with("MissingTensor"), "{message}");

    // Shapes whose element or byte count overflows, or that claim more than the payload holds.
    for (shape, want) in [
        (json!([1u64 << 32, 1u64 << 32]), "ShapeOverflow"),
        (json!([u64::MAX, 2]), "ShapeOverflow"),
        (json!([1u64 << 62]), "ShapeOverflow"),
        (json!([1u64 << 40]), "OutOfBounds"),
        (json!([16_777_216, 16_777_216]), "OutOfBounds"),
    ] {
        let bytes = f.with_tensor("model.norm.weight", |t| {
            t.insert("shape".into(), shape.clone());
        });
        let message = refused_quickly(&format!("shape {shape}"), || load_err(&bytes));
        assert!(message.starts_with(want), "{shape}: {message}");
    }
    assert_no_absurd_allocation();
}

/// A file whose KV cache is huge per position (32,768 KV heads of 2 values, one layer) but whose
/// weights are tiny: 3 * 2^20 positions of context would need 1.5 TiB of cache.
fn wide_kv_model() -> Vec<u8> {
    let f = ModelFile::open(common::fixtures().join("small-gqa-f32.bin")).unwrap();
    let tokenizer = f.tokenizer_data().unwrap();
    let config = Config {
        hidden_size: 2,
        intermediate_size: 2,
        n_layers: 1,
        n_heads: 32_768,
        n_kv_heads: 32_768,
        head_dim: 2,
        vocab_size: f.config().vocab_size,
        max_position_embeddings: 3 << 20,
        sliding_window: None,
        ..f.config().clone()
    };
    let specs: Vec<TensorSpec> = config
        .expected_tensors()
        .into_iter()
        .map(|t| TensorSpec::new(t.name, DType::F32, t.shape))
        .collect();
    let mut writer = ModelWriter::new(
        Vec::new(),
        "<wide-kv>",
        &config.to_metadata(),
        specs.clone(),
        Some(&tokenizer),
    )
    .unwrap();
    let mut rng = Rng(7);
    for spec in &specs {
        let n: usize = spec.shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| (rng.below(2001) as f32 - 1000.0) / 10_000.0)
            .collect();
        writer.write_tensor(&spec.name, &values).unwrap();
    }
    writer.finish().unwrap()
}

#[test]
fn the_kv_cache_is_sized_and_checked_up_front() {
    let model = Mistral::from_file(ModelFile::from_bytes(&wide_kv_model()).unwrap()).unwrap();
    let config = model.config();
    let kv_dim = config.kv_dim();
    assert_eq!(kv_dim, 65_536);

    // The full context: refused when the session is created, before any cache memory exists.
    let message = refused_quickly("a 1.5 TiB KV cache", || {
        model.session().map_err(|e| match e {
            ModelError::CacheTooLarge {
                positions,
                bytes,
                limit,
            } => {
                assert_eq!(positions, 3 << 20);
                assert_eq!(
                    bytes,
                    KvCache::bytes_needed(1, kv_dim, 3 << 20, KvTypes::default())
                );
                assert!(bytes > limit);
                e.to_string()
            }
            other => panic!("expected CacheTooLarge, got {other}"),
        })
    });
    assert!(message.contains("use a shorter context"), "{message}");

    // A context whose cache fits the limit: its size is known up front, memory comes as
    // positions arrive (one position: one slot of keys and values).
    let mut session = model
        .session_with(SessionOptions {
            context_len: Some(1 << 20),
            batch_size: 1,
            ..Default::default()
        })
        .unwrap();
    let cache = session.kv_cache();
    assert_eq!(cache.capacity(), 1 << 20);
    assert_eq!(
        cache.max_bytes(),
        KvCache::bytes_needed(1, kv_dim, 1 << 20, KvTypes::default())
    );
    assert_eq!(cache.allocated_bytes(), 0);
    let logits = session.step(1).unwrap();
    assert!(logits.iter().all(|x| x.is_finite()));
    assert_eq!(session.kv_cache().allocated_bytes(), 2 * 4 * kv_dim);
    assert_no_absurd_allocation();
}

#[test]
fn a_prompt_longer_than_the_context_is_an_error_that_says_so() {
    let model = Mistral::load(common::fixtures().join("small-gqa-int8.bin")).unwrap();
    let options = SessionOptions {
        context_len: Some(8),
        ..Default::default()
    };
    let prompt: Vec<u32> = (1..=9).collect();
    let mut session = model.session_with(options.clone()).unwrap();
    let e = session.prefill(&prompt).unwrap_err();
    let message = e.to_string();
    assert!(
        matches!(
            e,
            ModelError::ContextOverflow {
                needed: 9,
                context_len: 8,
                ..
            }
        ),
        "{message}"
    );
    assert!(
        message.contains("9 positions needed") && message.contains("context holds 8"),
        "{message}"
    );
    assert!(message.contains("shorten the prompt"), "{message}");
    assert_eq!(
        session.position(),
        0,
        "a refused prompt leaves the session as it was"
    );

    // Generation refuses it the same way instead of silently cutting the prompt.
    let mut session = model.session_with(options).unwrap();
    let e = session
        .generate(&prompt, GenerateOptions::default(), |_| {
            std::ops::ControlFlow::Continue(())
        })
        .unwrap_err();
    assert!(
        matches!(e, ModelError::ContextOverflow { needed: 9, .. }),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Lazy models shared by threads.

/// Per-position logits of `ids` through one session.
fn logits_of<R: Residency>(model: &Model<R>, ids: &[u32], batch_size: usize) -> Vec<Vec<f32>> {
    let mut session = model
        .session_with(SessionOptions {
            batch_size,
            ..Default::default()
        })
        .unwrap();
    let mut rows = vec![Vec::new(); ids.len()];
    session
        .evaluate(ids, |t, logits| rows[t] = logits.to_vec())
        .unwrap();
    rows
}

#[test]
fn a_lazy_model_shared_by_threads_gives_bit_identical_logits() {
    // A file-backed lazy model really drops its pages (MADV_DONTNEED) after each layer while
    // other threads may be reading them; they fault back in from the page cache with the same
    // contents, so every thread must see exactly the numbers of a lone sequential run.
    let path = common::fixtures().join("small-mqa-int8.bin");
    let lazy = LazyMistral::load(&path).unwrap();
    let eager = Mistral::load(&path).unwrap();
    let prompts: Vec<Vec<u32>> = (0..6)
        .map(|k| (0..24).map(|i| 1 + (i * 37 + k * 101) % 1000).collect())
        .collect();
    // Batch 1 for half the threads: many more release/re-fault cycles per prompt.
    let batch = |k: usize| if k.is_multiple_of(2) { 1 } else { 128 };
    let sequential: Vec<Vec<Vec<f32>>> = prompts
        .iter()
        .enumerate()
        .map(|(k, p)| logits_of(&lazy, p, batch(k)))
        .collect();
    for (k, p) in prompts.iter().enumerate() {
        assert!(
            logits_of(&eager, p, batch(k)) == sequential[k],
            "lazy and resident logits differ for prompt {k}"
        );
    }
    for round in 0..3 {
        let parallel: Vec<Vec<Vec<f32>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = prompts
                .iter()
                .enumerate()
                .map(|(k, p)| {
                    let lazy = &lazy;
                    scope.spawn(move || logits_of(lazy, p, batch(k)))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (k, (a, b)) in sequential.iter().zip(&parallel).enumerate() {
            assert!(
                a == b,
                "round {round}: prompt {k} differs when run in parallel"
            );
        }
    }
}

#[test]
fn a_lazy_model_held_in_memory_keeps_its_weights() {
    // `from_bytes` models live in anonymous memory, where MADV_DONTNEED would zero the pages:
    // lazy mode must not release them, and must compute what the resident model computes.
    let bytes = std::fs::read(common::fixtures().join("small-gqa-int8.bin")).unwrap();
    let eager = Mistral::from_file(ModelFile::from_bytes(&bytes).unwrap()).unwrap();
    let lazy = LazyMistral::from_file(ModelFile::from_bytes(&bytes).unwrap()).unwrap();
    let ids: Vec<u32> = (0..20).map(|i| 1 + (i * 53) % 1000).collect();
    assert!(logits_of(&eager, &ids, 1) == logits_of(&lazy, &ids, 1));
    // And after all that releasing, the weights are still the file's.
    let reference = ModelFile::from_bytes(&bytes).unwrap();
    for info in reference.tensors() {
        let want = reference.tensor(&info.name).unwrap().to_f32_vec();
        let got = lazy.file().tensor(&info.name).unwrap().to_f32_vec();
        assert!(want == got, "{} changed", info.name);
    }
}
