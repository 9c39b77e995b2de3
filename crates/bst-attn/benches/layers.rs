//! One layer's forward, and forward+backward, for BST:SH, BST:MH, BST:MF, SLIDE and BRECT against
//! sequence length, as in the paper's layer-speed figure (there: d = 512, 16 heads, W = 128, GPU).
//! CPU unless CUDA is available. `cargo bench -p bst-attn --bench layers` (filter with e.g.
//! `-- forward/` or `-- W512`).

use std::time::{Duration, Instant};

use bst_attn::{BlockSelfAttention, BrectCell, BstAttention, ContextVariant, LayerConfig, Mixer, MixerState};
use bst_ssm::SsmKind;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tch::{nn, Device, Kind, Tensor};

const D_MODEL: usize = 256;
const HEADS: usize = 8;
/// MF context states and BRECT recurrent states.
const STATES: usize = 64;
/// (sequence length, window): the paper's W = 512 up to 64k, and the CPU profile's W = 64.
const SHAPES: [(i64, usize); 6] = [(1024, 64), (4096, 64), (1024, 512), (4096, 512), (16384, 512), (65536, 512)];
/// forward+backward is timed up to this length (at 64k it takes minutes per layer on 2 CPU cores;
/// lower it for a quick CPU run).
const BACKWARD_MAX: i64 = 65536;

fn device() -> Device {
    Device::cuda_if_available()
}

fn timed(iters: u64, mut f: impl FnMut()) -> Duration {
    bst_core::sync(device());
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    bst_core::sync(device());
    start.elapsed()
}

/// Every layer starts from a fresh state on every call (BRECT from its initial state).
fn run(layer: &dyn Mixer, xs: &Tensor, train: bool) -> Tensor {
    layer.forward(xs, &mut MixerState::Fresh, train)
}

fn layers(vs: &nn::Path, window: usize, max_len: usize) -> Vec<(&'static str, Box<dyn Mixer>)> {
    let mut cfg = LayerConfig::small(D_MODEL, HEADS, window);
    (cfg.context_states, cfg.max_len) = (STATES, max_len);
    let bst = |name: &str, variant| -> Box<dyn Mixer> { Box::new(BstAttention::new(&(vs / name), &cfg, variant, SsmKind::S4d)) };
    vec![
        ("SLIDE", Box::new(BlockSelfAttention::new(&(vs / "slide"), &cfg))),
        ("BST:SH:S4D", bst("sh", ContextVariant::Sh)),
        ("BST:MH:S4D", bst("mh", ContextVariant::Mh)),
        ("BST:MF:S4D", bst("mf", ContextVariant::Mf)),
        ("BRECT:FIXED:SKIP", Box::new(BrectCell::new(&(vs / "brect"), &cfg))),
    ]
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("layer_d{D_MODEL}_h{HEADS}"));
    group.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    for (seq, window) in SHAPES {
        let vs = nn::VarStore::new(device());
        let xs = Tensor::randn([1, seq, D_MODEL as i64], (Kind::Float, device()));
        group.throughput(Throughput::Elements(seq as u64));
        for (name, layer) in layers(&vs.root(), window, seq as usize) {
            let id = |mode: &str| BenchmarkId::new(format!("{mode}/W{window}/{name}"), seq);
            group.bench_function(id("forward"), |b| b.iter_custom(|n| timed(n, || drop(tch::no_grad(|| run(layer.as_ref(), &xs, false))))));
            if seq <= BACKWARD_MAX {
                group.bench_function(id("forward+backward"), |b| {
                    b.iter_custom(|n| timed(n, || {
                        let xs = xs.copy().set_requires_grad(true);
                        run(layer.as_ref(), &xs, true).sum(Kind::Float).backward();
                    }))
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
