//! Data-path benchmarks: is the input pipeline ever the bottleneck?
//! - sampling a training batch (16 x 257 tokens) from a memory-mapped shard and from memory;
//! - opening (and checksumming) a shard;
//! - byte-level BPE encoding throughput (bytes/s), trained on the first MB of the books corpus
//!   when `data/` has it (`scripts/fetch_data.sh`), else on generated text.
//!
//! `cargo bench -p bst-data --bench data` (add `-- --quick` for a short run).

use std::path::Path;

use bst_data::shard::{write_shard, Shard, ShardKey};
use bst_data::{Batcher, BpeTokenizer, TokenStream, Tokenizer};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const TOKENS: usize = 20_000_000;
const KEY: ShardKey = ShardKey { tokenizer: [7; 32], source: [8; 32] };

fn sample_text() -> String {
    let books = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/books/gutenberg_big.txt");
    match std::fs::read(&books) {
        Ok(bytes) => String::from_utf8_lossy(&bytes[..bytes.len().min(1 << 20)]).into_owned(),
        Err(_) => (0..20_000).map(|i| format!("line {i}: the quick brown fox jumps over the lazy dog {}.\n", i % 97)).collect(),
    }
}

fn bench_batches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("train.bin");
    let ids: Vec<u32> = (0..TOKENS as u32).map(|i| i.wrapping_mul(2_654_435_761) % 4096).collect();
    write_shard(&path, &ids, &[0], TOKENS as u64, 4096, KEY).expect("write shard");
    let lengths = std::sync::Arc::new(vec![1; 4096]);
    let mapped = TokenStream::from_shard(Shard::open(&path, KEY).expect("open shard"), lengths.clone());
    let memory = TokenStream::from_ids(ids, lengths);
    let mut group = c.benchmark_group("batch_16x257");
    group.throughput(Throughput::Elements(16 * 257));
    for (name, stream) in [("mmap_shard", &mapped), ("memory", &memory)] {
        let mut batcher = Batcher::new(0, 16, 256);
        group.bench_function(name, |b| b.iter(|| batcher.next_batch(stream).expect("batch")));
    }
    group.finish();
    let mut group = c.benchmark_group("shard_open_verify");
    group.throughput(Throughput::Bytes((TOKENS * 2) as u64));
    group.sample_size(10);
    group.bench_function("20M_tokens_u16", |b| b.iter(|| Shard::open(&path, KEY).expect("open shard")));
    group.finish();
}

fn bench_bpe(c: &mut Criterion) {
    let text = sample_text();
    let bpe = BpeTokenizer::train(std::iter::once(text.as_str()), 4096).expect("train BPE");
    let chunk = &text.as_bytes()[..64 * 1024];
    let mut group = c.benchmark_group("bpe4096_encode");
    group.throughput(Throughput::Bytes(chunk.len() as u64));
    group.bench_function("64KiB", |b| b.iter(|| bpe.encode(chunk)));
    group.finish();
}

criterion_group!(benches, bench_batches, bench_bpe);
criterion_main!(benches);
