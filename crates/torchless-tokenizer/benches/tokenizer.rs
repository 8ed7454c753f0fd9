//! Encode and decode throughput, side by side with the Hugging Face
//! `tokenizers` crate on the same tokenizer.json.
//!
//! ```text
//! cargo bench -p torchless-tokenizer --bench tokenizer -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! The text is ~3 MB of mixed documents (prose in many languages, code, CJK,
//! emoji, whitespace runs, rare Unicode) assembled from the texts of the
//! fixture corpus in a fixed pseudo-random order. Each document is encoded
//! (with BOS) and decoded separately, as a server would; `whole` encodes the
//! entire text as one string.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use torchless_tokenizer::{DecodeOptions, EncodeOptions, Tokenizer};

const TOKENIZER_JSON: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/tokenizer/mistral-v0.1-tokenizer.json"
);
const CASES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/tokenizer/cases.jsonl.gz"
);
const TARGET_BYTES: usize = 3 << 20;
const DOCUMENT_BYTES: usize = 4 << 10;

/// Documents of roughly `DOCUMENT_BYTES` each, `TARGET_BYTES` in all.
fn documents() -> Vec<String> {
    let mut cases = String::new();
    let compressed = std::fs::read(CASES).expect("fixture cases.jsonl.gz");
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&compressed[..]),
        &mut cases,
    )
    .expect("fixture cases.jsonl.gz decompresses");
    let texts: Vec<String> = cases
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|case| case["kind"] == "encode")
        .filter_map(|case| case["text"].as_str().map(str::to_owned))
        .filter(|text| !text.is_empty())
        .collect();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        // xorshift64*: a fixed order, no dependency.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let separators = ["\n\n", "\n", " ", "\r\n", "\t", "  "];
    let mut documents = Vec::new();
    let mut total = 0;
    while total < TARGET_BYTES {
        let mut document = String::new();
        while document.len() < DOCUMENT_BYTES {
            document.push_str(&texts[next() as usize % texts.len()]);
            document.push_str(separators[next() as usize % separators.len()]);
        }
        total += document.len();
        documents.push(document);
    }
    documents
}

fn bench(c: &mut Criterion) {
    let ours = Tokenizer::from_file(TOKENIZER_JSON).expect("tokenizer.json");
    let hf = tokenizers::Tokenizer::from_file(TOKENIZER_JSON).expect("HF tokenizer.json");
    let documents = documents();
    let whole = documents.concat();
    let bytes = whole.len() as u64;
    let ids: Vec<Vec<u32>> = documents
        .iter()
        .map(|d| ours.encode(d, EncodeOptions::default()))
        .collect();
    let token_count: usize = ids.iter().map(Vec::len).sum();
    eprintln!(
        "corpus: {} documents, {bytes} bytes, {token_count} tokens",
        documents.len()
    );

    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Bytes(bytes));
    group.sample_size(10);
    group.bench_function("torchless/documents", |b| {
        b.iter(|| {
            for document in &documents {
                black_box(ours.encode(black_box(document), EncodeOptions::default()));
            }
        })
    });
    group.bench_function("hf-tokenizers/documents", |b| {
        b.iter(|| {
            for document in &documents {
                let encoding = hf.encode_fast(black_box(document.as_str()), true);
                black_box(encoding.expect("HF encode").get_ids().len());
            }
        })
    });
    group.bench_function("torchless/whole", |b| {
        b.iter(|| black_box(ours.encode(black_box(&whole), EncodeOptions::default())))
    });
    group.bench_function("hf-tokenizers/whole", |b| {
        b.iter(|| {
            let encoding = hf.encode_fast(black_box(whole.as_str()), true);
            black_box(encoding.expect("HF encode").get_ids().len())
        })
    });
    group.finish();

    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Bytes(bytes));
    group.sample_size(10);
    group.bench_function("torchless/documents", |b| {
        b.iter(|| {
            for document_ids in &ids {
                black_box(ours.decode(black_box(document_ids), DecodeOptions::default()));
            }
        })
    });
    group.bench_function("torchless-stream/documents", |b| {
        b.iter(|| {
            for document_ids in &ids {
                let mut decoder = ours.stream_decoder();
                let mut text = String::new();
                for &id in document_ids {
                    decoder.push_to(id, &mut text);
                }
                text.push_str(&decoder.finish());
                black_box(text);
            }
        })
    });
    group.bench_function("hf-tokenizers/documents", |b| {
        b.iter(|| {
            for document_ids in &ids {
                black_box(hf.decode(black_box(document_ids), true).expect("HF decode"));
            }
        })
    });
    group.finish();

    let json = std::fs::read_to_string(TOKENIZER_JSON).expect("tokenizer.json");
    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    group.bench_function("torchless/tokenizer.json", |b| {
        b.iter(|| black_box(Tokenizer::from_tokenizer_json_str(black_box(&json)).expect("loads")))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
