//! SSM benchmarks (CPU unless CUDA is available): the BST SSM sublayer forward and
//! forward+backward at d_model = 256, causal FFT against direct convolution, and kernel
//! generation (chunked against naive Vandermonde, S4 Cauchy, unstructured).
//! `cargo bench -p bst-ssm --bench ssm` (add `-- --quick` for a short run).

use std::time::{Duration, Instant};

use bst_ssm::vandermonde::{diagonal_kernel, diagonal_kernel_naive};
use bst_ssm::{causal_fft_conv, direct_causal_conv, S4dKernel, SsmConfig, SsmConv, SsmKind, SsmLayerConfig, SsmSublayer, UnstructuredFilter};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tch::{nn, Device, Kind, Tensor, nn::ModuleT};

const D_MODEL: usize = 256;
/// Sequence lengths of the sublayer benches (the 1k..64k).
const LENGTHS: [i64; 4] = [1 << 10, 1 << 12, 1 << 14, 1 << 16];
/// The O(L^2) direct convolution is only timed up to this length.
const DIRECT_MAX: i64 = 1 << 12;
const CONV_CHANNELS: i64 = 64;

fn device() -> Device {
    Device::cuda_if_available()
}

fn sync() {
    bst_core::sync(device());
}

/// Times `f` with a device sync before reading the clock (candle's `iter_custom` pattern).
fn timed(iters: u64, mut f: impl FnMut()) -> Duration {
    sync();
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    sync();
    start.elapsed()
}

fn sublayer(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("ssm_sublayer_d{D_MODEL}"));
    group.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    let (explicit, implicit) = (UnstructuredFilter::Explicit, UnstructuredFilter::Implicit);
    for (kind, filter) in [(SsmKind::S4d, explicit), (SsmKind::S4, explicit), (SsmKind::Unstructured, explicit), (SsmKind::Unstructured, implicit)] {
        let vs = nn::VarStore::new(device());
        let max_len = *LENGTHS.last().unwrap() as usize;
        let cfg = SsmConfig { unstructured_filter: filter, ..SsmConfig::default() };
        let layer = SsmSublayer::new(&vs.root(), &SsmLayerConfig::new(&cfg, kind, D_MODEL, max_len));
        let kind = if kind == SsmKind::Unstructured { format!("{kind:?}{filter:?}") } else { format!("{kind:?}") };
        for seq in LENGTHS {
            let xs = Tensor::randn([1, seq, D_MODEL as i64], (Kind::Float, device()));
            group.throughput(Throughput::Elements(seq as u64));
            group.bench_with_input(BenchmarkId::new(format!("{kind}/forward"), seq), &seq, |b, _| {
                b.iter_custom(|n| timed(n, || {
                    drop(tch::no_grad(|| layer.forward_t(&xs, true)));
                }))
            });
            group.bench_with_input(BenchmarkId::new(format!("{kind}/forward+backward"), seq), &seq, |b, _| {
                b.iter_custom(|n| timed(n, || {
                    let xs = xs.copy().set_requires_grad(true);
                    layer.forward_t(&xs, true).sum(Kind::Float).backward();
                }))
            });
        }
    }
    group.finish();
}

fn convolution(c: &mut Criterion) {
    let _guard = tch::no_grad_guard();
    let mut group = c.benchmark_group(format!("causal_conv_{CONV_CHANNELS}ch"));
    group.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    for seq in [256i64, 1024, 4096, 16384] {
        let u = Tensor::randn([1, CONV_CHANNELS, seq], (Kind::Float, device()));
        let k = Tensor::randn([CONV_CHANNELS, seq], (Kind::Float, device()));
        group.throughput(Throughput::Elements((CONV_CHANNELS * seq) as u64));
        group.bench_with_input(BenchmarkId::new("fft", seq), &seq, |b, _| b.iter_custom(|n| timed(n, || drop(causal_fft_conv(&u, &k)))));
        if seq <= DIRECT_MAX {
            group.bench_with_input(BenchmarkId::new("direct", seq), &seq, |b, _| b.iter_custom(|n| timed(n, || drop(direct_causal_conv(&u, &k)))));
        }
    }
    group.finish();
}

fn kernel_generation(c: &mut Criterion) {
    let _guard = tch::no_grad_guard();
    let channels = SsmConfig::default().channels(D_MODEL);
    let vs = nn::VarStore::new(device());
    let s4d = S4dKernel::new(&(vs.root() / "s4d"), channels, &SsmConfig::default());
    let (log_a, cb) = s4d.discretize();
    let s4 = SsmConv::new(&(vs.root() / "s4"), &SsmLayerConfig { ssm: SsmConfig { proj_factor: 1, ..SsmConfig::default() }, ..SsmLayerConfig::new(&SsmConfig::default(), SsmKind::S4, channels, 1) });
    let mut group = c.benchmark_group(format!("kernel_{channels}ch_n16"));
    group.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    for seq in LENGTHS {
        group.throughput(Throughput::Elements(channels as u64 * seq as u64));
        group.bench_with_input(BenchmarkId::new("s4d_chunked", seq), &seq, |b, &seq| b.iter_custom(|n| timed(n, || drop(diagonal_kernel(&log_a, &cb, seq)))));
        group.bench_with_input(BenchmarkId::new("s4d_naive", seq), &seq, |b, &seq| b.iter_custom(|n| timed(n, || drop(diagonal_kernel_naive(&log_a, &cb, seq)))));
        group.bench_with_input(BenchmarkId::new("s4_cauchy", seq), &seq, |b, &seq| b.iter_custom(|n| timed(n, || drop(s4.kernel(seq, true)))));
    }
    group.finish();
}

criterion_group!(benches, kernel_generation, convolution, sublayer);
criterion_main!(benches);
