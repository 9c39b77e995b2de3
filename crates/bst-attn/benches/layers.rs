//! Forward and forward+backward of one SLIDE layer and one BST:SH:S4D layer at the CPU profile's
//! width, against sequence length. `cargo bench -p bst-attn` (add `-- --quick` for a short run).

use bst_attn::{AttnConfig, BlockScope, BlockSelfAttention, BstAttention, ContextVariant, HeadDims};
use bst_ssm::{SsmConfig, SsmKind};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tch::{nn, nn::ModuleT, Device, Kind, Tensor};

const D_MODEL: usize = 128;
const HEADS: usize = 4;
const WINDOW: usize = 64;
const LENGTHS: [i64; 3] = [256, 1024, 4096];

fn layers(c: &mut Criterion) {
    let dims = HeadDims { d_model: D_MODEL, n_heads: HEADS, dropout: 0.0 };
    let attn = AttnConfig { window: WINDOW, ..AttnConfig::default() };
    let vs = nn::VarStore::new(Device::Cpu);
    let slide = BlockSelfAttention::new(&(vs.root() / "slide"), dims, &attn, BlockScope::OwnAndPrevious).unwrap();
    let bst = BstAttention::new(&(vs.root() / "bst"), dims, &attn, ContextVariant::Sh, SsmKind::S4d, &SsmConfig::default(), *LENGTHS.last().unwrap() as usize).unwrap();
    let named: [(&str, &dyn ModuleT); 2] = [("SLIDE", &slide), ("BST:SH:S4D", &bst)];
    let mut group = c.benchmark_group(format!("layer_d{D_MODEL}_w{WINDOW}"));
    group.sample_size(10);
    for seq in LENGTHS {
        let xs = Tensor::randn([1, seq, D_MODEL as i64], (Kind::Float, Device::Cpu));
        group.throughput(Throughput::Elements(seq as u64));
        for (name, layer) in named {
            group.bench_with_input(BenchmarkId::new(format!("{name}/forward"), seq), &seq, |b, _| {
                b.iter(|| tch::no_grad(|| layer.forward_t(&xs, false)))
            });
            group.bench_with_input(BenchmarkId::new(format!("{name}/forward+backward"), seq), &seq, |b, _| {
                b.iter(|| {
                    let xs = xs.copy().set_requires_grad(true);
                    layer.forward_t(&xs, true).sum(Kind::Float).backward();
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, layers);
criterion_main!(benches);
