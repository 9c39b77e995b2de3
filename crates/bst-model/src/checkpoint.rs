//! Checkpoints: everything needed to resume a run exactly, in one folder.
//!
//! - `model.safetensors`: the weights, by var-store name (`layers.3.mixer.qkv.weight`); loadable
//!   from Python with `safetensors.torch.load_file`.
//! - `optim.safetensors`: the AdamW moments (`m.<name>`, `v.<name>`).
//! - `state.json`: step, optimiser steps, the batch sampler's RNG, tokens seen, elapsed time, and
//!   the SHA-256 of both tensor files.
//! - `config.toml`: the run configuration.
//!
//! The folder is written under a temporary name and renamed into place, so a crash leaves the
//! previous checkpoint or the new one, never a mix. On load both checksums are verified before
//! any tensor is read: a truncated or corrupt checkpoint is reported, never silently used.

use std::path::{Path, PathBuf};

use bst_data::Batcher;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{nn, Tensor};

use crate::optimizer::AdamW;
use crate::{ModelError, RunConfig};

/// 2: `progress` nested (serde's `flatten` cannot carry the sampler RNG's u128).
const FORMAT: u32 = 2;

/// Where training stands: what a checkpoint restores besides the tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    /// Optimiser steps completed.
    pub step: usize,
    pub tokens_seen: usize,
    /// Training wall time before this checkpoint.
    pub elapsed_s: f64,
    pub batcher: Batcher,
}

/// `state.json`: the progress, the format and the checksums of the tensor files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    pub format: u32,
    pub progress: Progress,
    pub model_sha256: String,
    pub optim_sha256: String,
}

fn sha256(path: &Path) -> Result<String, ModelError> {
    let bytes = std::fs::read(path).map_err(|e| corrupt(path, e))?;
    Ok(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
}

fn corrupt(path: &Path, reason: impl ToString) -> ModelError {
    ModelError::Checkpoint { path: path.to_owned(), reason: reason.to_string() }
}

/// Copies the weights in `path` into the variables of `vs`; every variable must be there with its shape.
pub fn load_weights(path: &Path, vs: &nn::VarStore) -> Result<(), ModelError> {
    let saved = Tensor::read_safetensors(path).map_err(|e| corrupt(path, e))?;
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            let t = saved.iter().find(|(k, _)| *k == name).map(|(_, t)| t).ok_or_else(|| corrupt(path, format!("no tensor `{name}`")))?;
            if t.size() != var.size() {
                return Err(corrupt(path, format!("`{name}` has shape {:?}, the model {:?}", t.size(), var.size())));
            }
            var.copy_(t);
        }
        Ok(())
    })
}

/// Whether `dir` holds a checkpoint (it may still be corrupt: [`load`] checks).
pub fn exists(dir: &Path) -> bool {
    dir.join("state.json").exists()
}

/// Writes a checkpoint to `dir`, replacing any previous one.
pub fn save(dir: &Path, vs: &nn::VarStore, opt: &AdamW, config: &RunConfig, progress: Progress) -> Result<(), ModelError> {
    let tmp = PathBuf::from(format!("{}.tmp", dir.display()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| corrupt(&tmp, e))?;
    let model = tmp.join("model.safetensors");
    let mut weights: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&weights, &model)?;
    let optim = tmp.join("optim.safetensors");
    Tensor::write_safetensors(&opt.state(), &optim)?;
    let state = TrainState { format: FORMAT, progress, model_sha256: sha256(&model)?, optim_sha256: sha256(&optim)? };
    let write = |name: &str, text: String| std::fs::write(tmp.join(name), text).map_err(|e| corrupt(&tmp.join(name), e));
    write("config.toml", toml::to_string_pretty(config).map_err(|e| corrupt(dir, e))?)?;
    write("state.json", serde_json::to_string_pretty(&state).map_err(|e| corrupt(dir, e))?)?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).map_err(|e| corrupt(dir, e))
}

/// Verifies and loads a checkpoint into `vs` and `opt`; returns its state.
pub fn load(dir: &Path, vs: &nn::VarStore, opt: &mut AdamW) -> Result<TrainState, ModelError> {
    let state = verify(dir)?;
    load_weights(&dir.join("model.safetensors"), vs)?;
    let optim = dir.join("optim.safetensors");
    let moments = Tensor::read_safetensors(&optim).map_err(|e| corrupt(&optim, e))?;
    opt.load_state(&moments, state.progress.step as i64).map_err(|e| corrupt(&optim, e))?;
    Ok(state)
}

/// Reads `state.json` and checks both tensor files against its checksums.
pub fn verify(dir: &Path) -> Result<TrainState, ModelError> {
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| corrupt(&state_path, e))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| corrupt(&state_path, format!("unreadable: {e}")))?;
    if state.format != FORMAT {
        return Err(corrupt(&state_path, format!("format {} is not the supported {FORMAT}", state.format)));
    }
    let (model, optim) = (dir.join("model.safetensors"), dir.join("optim.safetensors"));
    for (path, expected) in [(&model, &state.model_sha256), (&optim, &state.optim_sha256)] {
        let actual = sha256(path)?;
        if actual != *expected {
            return Err(corrupt(path, format!("checksum {actual} does not match state.json ({expected}): truncated or modified")));
        }
    }
    Ok(state)
}
