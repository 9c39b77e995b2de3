//! Reproducibility of training: the same seed gives the same loss curve; a run stopped half-way
//! and resumed from its checkpoint equals an uninterrupted run; a corrupted checkpoint is refused.
//! libtorch's RNG is global to the process, so these tests live in their own binary and take
//! turns (`SERIAL`) rather than drawing from it in parallel threads.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Mutex;

use bst_data::TokenStream;
use bst_model::{checkpoint, ModelError, Precision, RunConfig, Trainer};
use tch::{nn, Device, Tensor};

static SERIAL: Mutex<()> = Mutex::new(());

fn stream() -> TokenStream {
    let text = b"Call me Ishmael. Some years ago, never mind how long precisely. ".repeat(60);
    let ids: Vec<u32> = text.iter().map(|&b| u32::from(b)).collect();
    let bytes = ids.len();
    TokenStream::from_ids(ids, bytes)
}

/// A tiny BST with dropout (so that the RNG matters) and gradient accumulation.
fn config(seed: u64) -> RunConfig {
    let mut cfg: RunConfig = toml::from_str(
        r#"
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
        grad_accum = 2
        "#,
    )
    .unwrap();
    cfg.seed = seed;
    cfg
}

/// The training loss of every step of a fresh run of `cfg` on [`stream`].
fn loss_curve(cfg: &RunConfig) -> Vec<f64> {
    let vs = nn::VarStore::new(Device::Cpu);
    let lm = cfg.build_model(&vs.root(), 256).unwrap();
    let mut out = Vec::new();
    Trainer::new(&lm, &vs, cfg)
        .run(&stream(), None, |m| {
            out.push(m.loss);
            ControlFlow::Continue(())
        })
        .unwrap();
    out
}

#[test]
fn same_seed_gives_the_same_loss_curve_with_dropout() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let losses = |seed| loss_curve(&config(seed));
    let a = losses(5);
    assert_eq!(a, losses(5), "CPU training must be deterministic under a fixed seed");
    assert_ne!(a, losses(6), "a different seed should give a different curve");
}

/// Trains from step 0 (or from `resume`), stopping after `stop_after` steps if given; returns
/// the losses and the final weights.
fn train(dir: &Path, resume: bool, stop_after: Option<usize>) -> (Vec<f64>, Vec<(String, Tensor)>) {
    let cfg = config(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let lm = cfg.build_model(&vs.root(), 256).unwrap();
    let mut trainer = Trainer::new(&lm, &vs, &cfg);
    if resume {
        trainer.resume(dir).unwrap();
    }
    let mut losses = Vec::new();
    let result = trainer.run(&stream(), Some(dir), |m| {
        losses.push(m.loss);
        if Some(m.step + 1) == stop_after { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    });
    match (result, stop_after) {
        (Ok(_), None) | (Err(ModelError::Interrupted { .. }), Some(_)) => {}
        (other, _) => panic!("unexpected end of training: {other:?}"),
    }
    let mut weights: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    (losses, weights)
}

#[test]
fn resumed_run_equals_uninterrupted_run_and_corruption_is_detected() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (full, full_weights) = train(a.path(), false, None);
    let (first, _) = train(b.path(), false, Some(5));
    assert!(checkpoint::exists(b.path()));
    let (rest, weights) = train(b.path(), true, None);
    assert_eq!([first, rest].concat(), full, "resumed loss curve differs");
    for ((name, x), (_, y)) in full_weights.iter().zip(&weights) {
        assert!(x.equal(y), "{name} differs after resuming");
    }

    // the final checkpoint is readable as plain safetensors
    let saved = Tensor::read_safetensors(b.path().join("model.safetensors")).unwrap();
    assert_eq!(saved.len(), weights.len());

    // flip one byte of the weights: the checksum catches it
    let model = b.path().join("model.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&model, bytes).unwrap();
    let cfg = config(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let lm = cfg.build_model(&vs.root(), 256).unwrap();
    let err = Trainer::new(&lm, &vs, &cfg).resume(b.path()).unwrap_err().to_string();
    assert!(err.contains("checksum") && err.contains("model.safetensors"), "{err}");
    // and a truncated state file is reported too
    std::fs::write(b.path().join("state.json"), "{\"format\": 1, \"st").unwrap();
    let err = Trainer::new(&lm, &vs, &cfg).resume(b.path()).unwrap_err().to_string();
    assert!(err.contains("state.json"), "{err}");
}

/// `train.precision = "bf16"` (CPU autocast here): the curve is still a function of the seed, and
/// it tracks the f32 curve of the same seed: the same initial loss to bf16 rounding, the same
/// final loss within 3%, yet not identical (the forward really ran in bf16).
#[test]
fn bf16_training_is_seeded_and_tracks_f32() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let losses = |precision| {
        let mut cfg = config(5);
        cfg.train.precision = precision;
        loss_curve(&cfg)
    };
    let bf16 = losses(Precision::Bf16);
    assert_eq!(bf16, losses(Precision::Bf16), "bf16 training must be deterministic under a fixed seed");
    let f32 = losses(Precision::F32);
    assert_ne!(bf16, f32, "bf16 autocast changed nothing: was it on?");
    let rel = |a: f64, b: f64| (a - b).abs() / b;
    assert!(rel(bf16[0], f32[0]) < 1e-2, "initial loss bf16 {} vs f32 {}", bf16[0], f32[0]);
    let (b, f) = (bf16[bf16.len() - 1], f32[f32.len() - 1]);
    assert!(rel(b, f) < 0.03, "final loss bf16 {b} vs f32 {f}: {bf16:?} / {f32:?}");
}
