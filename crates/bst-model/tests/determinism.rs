//! Same seed, same loss curve on CPU. This lives in its own test binary because libtorch's RNG is
//! global to the process: tests running in parallel threads would draw from it in between.

use std::ops::ControlFlow;

use bst_data::TokenStream;
use bst_model::{RunConfig, Trainer};
use tch::{nn, Device, Tensor};

fn losses(seed: u64) -> Vec<f64> {
    let text = b"It was the best of times, it was the worst of times. ".repeat(100);
    let ids: Vec<i64> = text.iter().map(|&b| b as i64).collect();
    let stream = TokenStream { tokens: Tensor::from_slice(&ids), bytes: ids.len() };
    let mut cfg: RunConfig = toml::from_str(
        r#"
        seed = 0
        [model]
        arch = "BST:SH:S4D"
        n_layers = 2
        d_model = 32
        n_heads = 2
        dropout = 0.1
        ssm_layers = [1]
        [attn]
        window = 16
        [train]
        steps = 12
        batch_size = 4
        seq_len = 32
        warmup_steps = 2
        "#,
    )
    .unwrap();
    cfg.seed = seed;
    let vs = nn::VarStore::new(Device::Cpu);
    let lm = cfg.build_model(&vs.root(), 256).unwrap();
    let mut out = Vec::new();
    Trainer::new(&lm, &vs, &cfg)
        .run(&stream, None, |m| {
            out.push(m.loss);
            ControlFlow::Continue(())
        })
        .unwrap();
    out
}

#[test]
fn same_seed_gives_the_same_loss_curve_with_dropout() {
    let a = losses(5);
    assert_eq!(a, losses(5), "CPU training must be deterministic under a fixed seed");
    assert_ne!(a, losses(6), "a different seed should give a different curve");
}
