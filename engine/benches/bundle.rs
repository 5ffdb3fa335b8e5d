//! Bundle benchmarks: pack and verify a bundle of 10 components totalling
//! 50 MB. Run: cargo bench -p cairn-engine --bench bundle

use std::fmt::Write;

use cairn::bundle::{self, Bundle};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn bundles(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut manifest = String::from("name = \"big\"\n");
    for i in 0..10 {
        // Incompressible bytes: the worst case for the archive.
        let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ i;
        let data: Vec<u8> = (0..5_000_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        std::fs::write(dir.path().join(format!("c{i}.wasm")), data).unwrap();
        let _ = write!(manifest, "[steps.s{i}]\ncomponent = \"c{i}.wasm\"\n");
    }
    std::fs::write(dir.path().join("pipeline.toml"), manifest).unwrap();

    let packed = bundle::pack(dir.path()).unwrap();
    let mut group = c.benchmark_group("bundle");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(50_000_000));
    group.bench_function("pack/10x5MB", |b| {
        b.iter(|| bundle::pack(dir.path()).unwrap())
    });
    group.bench_function("verify/10x5MB", |b| {
        b.iter(|| Bundle::read(&packed).unwrap())
    });
    group.bench_function("blake3-only/50MB", |b| {
        let data = vec![7u8; 50_000_000];
        b.iter(|| blake3::hash(&data))
    });
    group.finish();
}

criterion_group!(benches, bundles);
criterion_main!(benches);
