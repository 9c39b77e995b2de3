//! Reproducibility of training: the same seed gives the same loss curve; a run stopped half-way
//! and resumed from its checkpoint equals an uninterrupted run, with random and with sequential
//! sampling (whose carried state is in the checkpoint); a corrupted checkpoint is refused; loaded
//! weights are what the next evaluation uses (no stale cached kernel).
//! libtorch's RNG is global to the process, so these tests live in their own binary and take
//! turns (`SERIAL`) rather than drawing from it in parallel threads.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Mutex;

use bst_data::TokenStream;
use bst_model::{checkpoint, ModelError, Precision, RunConfig, Trainer};
use tch::{nn, Device, Tensor};

static SERIAL: Mutex<()> = Mutex::new(());

/// 3900 bytes in 8 documents of different lengths.
fn stream() -> TokenStream {
    let text = b"Call me Ishmael. Some years ago, never mind how long precisely. ".repeat(60);
    TokenStream::from_bytes(&text).with_doc_starts(vec![0, 300, 500, 1400, 1500, 2200, 3000, 3300])
}

/// A tiny BST with dropout (so that the RNG matters) and gradient accumulation.
fn config(seed: u64) -> RunConfig {
    config_of("BST:SH:S4D", seed)
}

fn config_of(arch: &str, seed: u64) -> RunConfig {
    let ssm_layers = if arch.starts_with("BST") { "[1]" } else { "[]" };
    let mut cfg: RunConfig = toml::from_str(&format!(
        r#"
        [model]
        arch = "{arch}"
        recurrent_layer = -1
        n_layers = 2
        d_model = 32
        n_heads = 2
        dropout = 0.1
        ssm_layers = {ssm_layers}
        context_states = 4
        [attn]
        window = 16
        [train]
        steps = 12
        batch_size = 4
        seq_len = 32
        warmup_steps = 2
        grad_accum = 2
        "#
    ))
    .unwrap();
    cfg.seed = seed;
    cfg
}

/// The training loss of every step of a fresh run of `cfg` on [`stream`].
fn loss_curve(cfg: &RunConfig) -> Vec<f64> {
    let vs = nn::VarStore::new(Device::Cpu);
    let lm = cfg.build_model(&vs.root(), 256).unwrap();
    let mut out = Vec::new();
    Trainer::new(&lm, &vs, cfg, &stream())
        .unwrap()
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
fn train(cfg: &RunConfig, dir: &Path, resume: bool, stop_after: Option<usize>) -> (Vec<f64>, Vec<(String, Tensor)>) {
    let vs = nn::VarStore::new(Device::Cpu);
    let lm = cfg.build_model(&vs.root(), 256).unwrap();
    let mut trainer = Trainer::new(&lm, &vs, cfg, &stream()).unwrap();
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

/// Stops `cfg` after 5 steps, resumes it, and compares with an uninterrupted run; returns the
/// checkpoint folder of the resumed run.
fn assert_resume_is_exact(cfg: &RunConfig) -> tempfile::TempDir {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (full, full_weights) = train(cfg, a.path(), false, None);
    let (first, _) = train(cfg, b.path(), false, Some(5));
    assert!(checkpoint::exists(b.path()));
    let (rest, weights) = train(cfg, b.path(), true, None);
    assert_eq!([first, rest].concat(), full, "{}: resumed loss curve differs", cfg.model.arch);
    for ((name, x), (_, y)) in full_weights.iter().zip(&weights) {
        assert!(x.equal(y), "{}: {name} differs after resuming", cfg.model.arch);
    }
    b
}

/// BRECT and XL train on consecutive windows (sequential sampling, `auto`), carrying their state
/// from step to step: the checkpoint holds that state and a resumed run continues exactly.
#[test]
fn sequential_sampling_resumes_exactly_with_the_carried_state() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for arch in ["BRECT:FIXED:SKIP", "TRSF-XL"] {
        let mut cfg = config_of(arch, 4);
        (cfg.model.segment_len, cfg.model.memory_len) = (16, 32);
        let dir = assert_resume_is_exact(&cfg);
        let state: checkpoint::TrainState = serde_json::from_str(&std::fs::read_to_string(dir.path().join("state.json")).unwrap()).unwrap();
        assert!(state.carry_sha256.is_some(), "{arch}: the carried state is saved");
        assert!(matches!(state.progress.sampler, checkpoint::SamplerState::Lm(bst_data::Sampler::Sequential(_))), "{arch}: auto sampling is sequential");
    }
}

/// A run killed after its final checkpoint and before its result was written resumes at the
/// last step: it trains nothing and still reports the final loss (not NaN, which a result file
/// cannot hold).
#[test]
fn resuming_from_the_final_checkpoint_keeps_the_final_loss() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (cfg, dir) = (config(3), tempfile::tempdir().unwrap());
    let outcome = |resume: bool| {
        let vs = nn::VarStore::new(Device::Cpu);
        let lm = cfg.build_model(&vs.root(), 256).unwrap();
        let mut trainer = Trainer::new(&lm, &vs, &cfg, &stream()).unwrap();
        if resume {
            trainer.resume(dir.path()).unwrap();
        }
        trainer.run(&stream(), Some(dir.path()), |_| ControlFlow::Continue(())).unwrap()
    };
    let (full, resumed) = (outcome(false), outcome(true));
    assert!(full.final_loss.is_finite());
    assert_eq!((resumed.steps, resumed.tokens_seen, resumed.final_loss), (full.steps, full.tokens_seen, full.final_loss));
}

#[test]
fn resumed_run_equals_uninterrupted_run_and_corruption_is_detected() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let b = assert_resume_is_exact(&config(3));
    let weights: Vec<(String, Tensor)> = {
        let vs = nn::VarStore::new(Device::Cpu);
        let _ = config(3).build_model(&vs.root(), 256).unwrap();
        checkpoint::load_weights(&b.path().join("model.safetensors"), &vs).unwrap();
        vs.variables().into_iter().collect()
    };

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
    let err = Trainer::new(&lm, &vs, &cfg, &stream()).unwrap().resume(b.path()).unwrap_err().to_string();
    assert!(err.contains("checksum") && err.contains("model.safetensors"), "{err}");
    // and a truncated state file is reported too
    std::fs::write(b.path().join("state.json"), "{\"format\": 1, \"st").unwrap();
    let err = Trainer::new(&lm, &vs, &cfg, &stream()).unwrap().resume(b.path()).unwrap_err().to_string();
    assert!(err.contains("state.json"), "{err}");
}

/// An evaluation after loading other weights uses them, though the SSM kernel of the previous
/// evaluation is cached: the cache notices the load.
#[test]
fn loading_weights_reaches_the_next_evaluation() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (_, _) = train(&config(3), dir.path(), false, None); // trained weights in dir
    let eval = |lm: &bst_model::LanguageModel| bst_model::evaluate(lm, &stream(), 32, 2, 256, Device::Cpu).unwrap().loss;
    let vs = nn::VarStore::new(Device::Cpu);
    let lm = config(3).build_model(&vs.root(), 256).unwrap();
    let untrained = eval(&lm); // caches the kernel of the initial weights
    checkpoint::load_weights(&dir.path().join("model.safetensors"), &vs).unwrap();
    let loaded = eval(&lm);
    let fresh_vs = nn::VarStore::new(Device::Cpu);
    let fresh = config(3).build_model(&fresh_vs.root(), 256).unwrap();
    checkpoint::load_weights(&dir.path().join("model.safetensors"), &fresh_vs).unwrap();
    assert_eq!(loaded, eval(&fresh), "the reloaded model evaluates as a fresh model with those weights");
    assert!(loaded < untrained, "training lowered the loss ({untrained} -> {loaded})");
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

/// A classification run (generated ListOps) stopped half-way and resumed from its checkpoint
/// ends with the losses and weights of an uninterrupted one.
#[test]
fn a_resumed_classification_run_equals_an_uninterrupted_one() {
    use bst_model::{Classifier, ClassifierTrainer};
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cfg: RunConfig = toml::from_str(
        r#"
        seed = 3
        [model]
        arch = "SLIDE"
        n_layers = 2
        d_model = 32
        n_heads = 2
        [attn]
        window = 32
        [train]
        steps = 10
        batch_size = 8
        seq_len = 128
        warmup_steps = 2
        [lra]
        task = "listops"
        seq_len = 128
        listops = { min_len = 60 }
        n_train = 64
        n_valid = 16
        n_test = 16
        "#,
    )
    .unwrap();
    let data = bst_data::lra::LraDataset::load(cfg.lra.as_ref().unwrap()).unwrap();
    let train = |dir: &Path, stop_after: Option<usize>, resume: bool| {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Classifier::new(&vs.root(), &cfg, &data).unwrap();
        let mut trainer = ClassifierTrainer::new(&model, &vs, &cfg, &data);
        if resume {
            trainer.resume(dir).unwrap();
        }
        let mut losses = Vec::new();
        let _ = trainer.run(Some(dir), |m| {
            losses.push(m.loss);
            if Some(m.step + 1) == stop_after { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        });
        let mut weights: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        weights.sort_by(|a, b| a.0.cmp(&b.0));
        (losses, weights)
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (full, full_weights) = train(a.path(), None, false);
    let (first, _) = train(b.path(), Some(4), false);
    let (rest, weights) = train(b.path(), None, true);
    assert_eq!([first, rest].concat(), full, "resumed loss curve differs");
    for ((name, x), (_, y)) in full_weights.iter().zip(&weights) {
        assert!(x.equal(y), "{name} differs after resuming");
    }
}
