//! Opening a model file: maps and validates the header, copies no tensor data.

use criterion::{criterion_group, criterion_main, Criterion};
use torchless_format::ModelFile;

fn open(c: &mut Criterion) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/models/small-mha-int8.bin"
    );
    c.bench_function("open small-mha-int8", |b| {
        b.iter(|| ModelFile::open(path).map(|m| m.n_tensors()))
    });
    let model = ModelFile::open(path).unwrap_or_else(|e| panic!("{e}"));
    c.bench_function("parse embedded tokenizer", |b| {
        b.iter(|| model.tokenizer_data().map(|t| t.merges.len()))
    });
    if let Ok(big) = std::env::var("TORCHLESS_BENCH_MODEL") {
        c.bench_function("open TORCHLESS_BENCH_MODEL", |b| {
            b.iter(|| ModelFile::open(&big).map(|m| m.n_tensors()))
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = open
}
criterion_main!(benches);
