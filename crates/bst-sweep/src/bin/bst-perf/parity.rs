//! Parity with the PyTorch reference: the same weights (written by us as safetensors, loaded by
//! the reference) and the same inputs must give the same outputs and gradients, within 1e-4 in
//! f32 relative to each tensor's scale. Timings are only compared after this has passed, so that
//! both sides are known to compute the same thing.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use bst_attn::{LayerConfig, MixerState};
use bst_model::speed::LayerSpeed;
use bst_model::{LanguageModel, LayerKind, RunConfig};
use bst_core::ParamGroup;
use serde_json::json;
use tch::{nn, Device, Kind, Tensor};

use crate::worker::Worker;

/// Largest allowed `max |ours - reference| / max(1, max |reference|)` per tensor.
pub const TOLERANCE: f64 = 1e-4;

/// One compared tensor.
#[derive(Debug, Clone)]
pub struct ParityRow {
    /// What was compared: a layer name or `LM`.
    pub subject: String,
    /// `y`, `loss`, `grad.x` or `grad.<variable>`.
    pub tensor: String,
    pub max_abs_err: f64,
    /// `max(1, max |reference|)`: errors are relative to it.
    pub scale: f64,
}

impl ParityRow {
    pub fn relative(&self) -> f64 {
        self.max_abs_err / self.scale
    }

    pub fn passed(&self) -> bool {
        self.relative() <= TOLERANCE
    }
}

/// The arguments of the reference's `layer` request for a layer of ours.
pub fn layer_request(name: &str, arch: &str, cfg: &LayerConfig, weights: &Path) -> serde_json::Value {
    json!({
        "op": "layer", "name": name, "arch": arch, "d_model": cfg.dims.d_model, "n_heads": cfg.dims.n_heads,
        "window": cfg.attn.window, "state_size": cfg.ssm.state_size, "context_states": cfg.context_states,
        "weights": weights,
    })
}

/// Compares every tensor `ours` has with the reference's tensor of the same name.
fn compare(subject: &str, ours: &BTreeMap<String, Tensor>, theirs: &Path) -> Result<Vec<ParityRow>> {
    let theirs: BTreeMap<String, Tensor> = Tensor::read_safetensors(theirs).with_context(|| format!("reading {}", theirs.display()))?.into_iter().collect();
    ours.iter()
        .map(|(name, mine)| {
            let other = theirs.get(name).with_context(|| format!("{subject}: the reference returned no `{name}`"))?;
            let (mine, other) = (mine.to_device(Device::Cpu).to_kind(Kind::Double), other.to_kind(Kind::Double));
            let max_abs_err = (&mine - &other).abs().max().double_value(&[]);
            let scale = other.abs().max().double_value(&[]).max(1.0);
            Ok(ParityRow { subject: subject.to_owned(), tensor: name.clone(), max_abs_err, scale })
        })
        .collect()
}

/// Every variable's gradient, named `grad.<variable>`.
fn gradients(vs: &nn::VarStore) -> BTreeMap<String, Tensor> {
    vs.variables().into_iter().filter(|(_, v)| v.grad().defined()).map(|(n, v)| (format!("grad.{n}"), v.grad())).collect()
}

/// One layer of ours against the reference `arch`: forward in training mode from a fresh
/// state, backward of `sum(y * grad_y)` for a random `grad_y`.
pub fn layer_parity(worker: &mut Worker, dir: &Path, name: &str, layer: &LayerSpeed, arch: &str, cfg: &LayerConfig, batch: i64, seq: i64) -> Result<Vec<ParityRow>> {
    let device = layer.var_store().device();
    let weights = dir.join(format!("{name}.weights.safetensors"));
    layer.var_store().save(&weights)?;
    worker.ask(layer_request(name, arch, cfg, &weights))?;
    tch::manual_seed(11);
    let d = cfg.dims.d_model as i64;
    let x = Tensor::randn([batch, seq, d], (Kind::Float, Device::Cpu));
    let grad_y = Tensor::randn([batch, seq, d], (Kind::Float, Device::Cpu));
    let inputs = dir.join(format!("{name}.inputs.safetensors"));
    Tensor::write_safetensors(&[("x", &x), ("grad_y", &grad_y)], &inputs)?;
    let xg = x.to_device(device).set_requires_grad(true);
    let y = layer.mixer().forward(&xg, &mut MixerState::Fresh, true);
    (&y * grad_y.to_device(device)).sum(Kind::Float).backward();
    let mut ours = gradients(layer.var_store());
    ours.insert("y".into(), y.detach());
    ours.insert("grad.x".into(), xg.grad());
    let out = dir.join(format!("{name}.reference.safetensors"));
    worker.ask(json!({"op": "parity", "name": name, "inputs": inputs, "out": out}))?;
    compare(arch, &ours, &out)
}

/// `{variable: "decay" | "no_decay" | "ssm"}` of a model, as our AdamW groups them.
pub fn optimizer_groups(vs: &nn::VarStore, run: &RunConfig) -> serde_json::Value {
    let opt = bst_model::optimizer::AdamW::new(vs, run.train.beta1, run.train.beta2, run.ssm.lr_scale);
    let groups: serde_json::Map<String, serde_json::Value> = opt
        .groups()
        .into_iter()
        .map(|(name, group)| {
            let g = match group {
                ParamGroup::Decay => "decay",
                ParamGroup::NoDecay => "no_decay",
                ParamGroup::Ssm => "ssm",
            };
            (name.to_owned(), json!(g))
        })
        .collect();
    serde_json::Value::Object(groups)
}

/// The reference model and optimiser of `run` (random weights): the fields of an `lm` request.
/// Windowed attention carries its last block from step to step when `run` does.
pub fn lm_fields(name: &str, run: &RunConfig) -> Result<serde_json::Value> {
    let (m, t) = (&run.model, &run.train);
    let plan = run.validate()?;
    let ssm_layers: Vec<usize> = plan.0.iter().enumerate().filter(|(_, k)| matches!(k, LayerKind::Bst { .. })).map(|(i, _)| i).collect();
    Ok(json!({
        "op": "lm", "name": name, "vocab": 256, "n_layers": m.n_layers, "d_model": m.d_model, "n_heads": m.n_heads,
        "window": run.attn.window, "ssm_layers": ssm_layers, "mlp_ratio": m.mlp_ratio, "state_size": run.ssm.state_size,
        "carry": run.carries_state(&plan), "lr": t.lr, "weight_decay": t.weight_decay,
        "betas": [t.beta1, t.beta2], "grad_clip": t.grad_clip, "ssm_lr_scale": run.ssm.lr_scale,
    }))
}

/// The reference's `lm` request for a model of ours: its weights and optimiser groups written to
/// `dir`; `carry = false` for a fresh state in every call.
pub fn lm_request(name: &str, dir: &Path, vs: &nn::VarStore, run: &RunConfig, carry: bool) -> Result<serde_json::Value> {
    let weights = dir.join(format!("{name}.weights.safetensors"));
    vs.save(&weights)?;
    let groups = dir.join(format!("{name}.groups.json"));
    std::fs::write(&groups, optimizer_groups(vs, run).to_string())?;
    let mut request = lm_fields(name, run)?;
    let fields = request.as_object_mut().expect("an object");
    fields.insert("carry".into(), json!(carry));
    fields.insert("weights".into(), json!(weights));
    fields.insert("groups".into(), json!(groups));
    Ok(request)
}

/// The language model's loss and every gradient from a fresh state, against the reference.
pub fn lm_parity(worker: &mut Worker, dir: &Path, lm: &LanguageModel, vs: &nn::VarStore, run: &RunConfig, batch: i64) -> Result<Vec<ParityRow>> {
    worker.ask(lm_request("lm_parity", dir, vs, run, false)?)?;
    tch::manual_seed(12);
    let seq = run.train.seq_len as i64;
    let tokens = Tensor::randint(256, [batch, seq], (Kind::Int64, Device::Cpu));
    let targets = Tensor::randint(256, [batch, seq], (Kind::Int64, Device::Cpu));
    let inputs = dir.join("lm.inputs.safetensors");
    Tensor::write_safetensors(&[("tokens", &tokens), ("targets", &targets)], &inputs)?;
    let device = vs.device();
    let loss = lm.loss(&tokens.to_device(device), &targets.to_device(device), true);
    loss.backward();
    let mut ours = gradients(vs);
    ours.insert("loss".into(), loss.detach().reshape([1]));
    let out = dir.join("lm.reference.safetensors");
    worker.ask(json!({"op": "lm_parity", "name": "lm_parity", "inputs": inputs, "out": out}))?;
    compare("LM", &ours, &out)
}
