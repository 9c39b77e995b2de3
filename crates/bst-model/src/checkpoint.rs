//! Checkpoints: everything needed to resume a run exactly, in one folder.
//!
//! - `model.safetensors`: the weights, by var-store name (`layers.3.mixer.qkv.weight`); loadable
//!   from Python with `safetensors.torch.load_file`.
//! - `optim.safetensors`: the AdamW moments (`m.<name>`, `v.<name>`).
//! - `carry.safetensors`: the state that stateful models carry from one training step to the
//!   next under sequential sampling (`layers.<i>.brect.state`, ...); absent when there is none.
//! - `state.json`: step, optimiser steps, the sampler's position, tokens seen, elapsed time, and
//!   the SHA-256 of the tensor files.
//! - `config.toml`: the run configuration.
//!
//! The folder is written under a temporary name, every file fsync'd, and renamed into place, so a
//! crash or `kill -9` at any moment leaves the previous checkpoint or the new one, never a mix. On
//! load every checksum is verified before any tensor is read: a truncated or corrupt checkpoint is
//! reported, never silently used.

use std::path::{Path, PathBuf};

use bst_core::fs::sync_dir;
use bst_core::sha256_file;
use bst_data::lra::LraSampler;
use bst_data::Sampler;
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::optimizer::AdamW;
use crate::{ModelError, RunConfig};

/// 4: the sampler of a language model (random or sequential) or of a classification task, and
/// the carried state.
const FORMAT: u32 = 4;

/// The training sampler's position.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerState {
    /// A language model's windows.
    Lm(Sampler),
    /// A classification task's shuffled examples.
    Lra(LraSampler),
}

/// Where training stands: what a checkpoint restores besides the tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    /// Optimiser steps completed.
    pub step: usize,
    pub tokens_seen: usize,
    /// Training wall time before this checkpoint.
    pub elapsed_s: f64,
    pub sampler: SamplerState,
    /// The training loss of the last step: a run resumed from its final checkpoint trains no
    /// step and still reports it (absent in checkpoints written before it was kept).
    #[serde(default)]
    pub last_loss: Option<f64>,
}

/// `state.json`: the progress, the format and the checksums of the tensor files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    pub format: u32,
    pub progress: Progress,
    pub model_sha256: String,
    pub optim_sha256: String,
    /// Present when the run carries state across steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carry_sha256: Option<String>,
}

/// What a checkpoint holds besides the weights and the optimiser.
#[derive(Debug)]
pub struct Loaded {
    pub state: TrainState,
    /// The carried training state, as named tensors (empty when none).
    pub carry: Vec<(String, Tensor)>,
}

fn corrupt(path: &Path, reason: impl ToString) -> ModelError {
    ModelError::Checkpoint { path: path.to_owned(), reason: reason.to_string() }
}

fn sha256(path: &Path) -> Result<String, ModelError> {
    sha256_file(path).map_err(|e| corrupt(path, e))
}

fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>, ModelError> {
    Tensor::read_safetensors(path).map_err(|e| corrupt(path, e))
}

/// Copies the weights in `path` into the variables of `vs`; every variable must be there with its
/// shape. (Cached SSM kernels notice: they are stamped with the weights' version counters.)
pub fn load_weights(path: &Path, vs: &nn::VarStore) -> Result<(), ModelError> {
    let saved = read_tensors(path)?;
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

/// Writes named tensors to `path` and flushes them to disk; returns their sha256.
fn write_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<String, ModelError> {
    Tensor::write_safetensors(tensors, path)?;
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| corrupt(path, e))?;
    sha256(path)
}

/// Writes a checkpoint to `dir`, replacing any previous one; `carry` is the state carried across
/// training steps (empty when none).
pub fn save(dir: &Path, vs: &nn::VarStore, opt: &AdamW, carry: &[(String, Tensor)], config: &RunConfig, progress: Progress) -> Result<(), ModelError> {
    let tmp = PathBuf::from(format!("{}.tmp", dir.display()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| corrupt(&tmp, e))?;
    let mut weights: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    let model_sha256 = write_tensors(&tmp.join("model.safetensors"), &weights)?;
    let optim_sha256 = write_tensors(&tmp.join("optim.safetensors"), &opt.state())?;
    let carry_sha256 = if carry.is_empty() { None } else { Some(write_tensors(&tmp.join("carry.safetensors"), carry)?) };
    let state = TrainState { format: FORMAT, progress, model_sha256, optim_sha256, carry_sha256 };
    let write = |name: &str, text: String| bst_core::write_atomically(&tmp.join(name), text.as_bytes()).map_err(|e| corrupt(&tmp.join(name), e));
    write("config.toml", toml::to_string_pretty(config).map_err(|e| corrupt(dir, e))?)?;
    write("state.json", serde_json::to_string_pretty(&state).map_err(|e| corrupt(dir, e))?)?;
    sync_dir(&tmp).map_err(|e| corrupt(&tmp, e))?;
    // the old checkpoint goes only once the new one is complete on disk; a crash between the two
    // steps leaves `dir.tmp` complete and `dir` absent, which a resume treats as no checkpoint
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).map_err(|e| corrupt(dir, e))?;
    sync_dir(dir.parent().unwrap_or(Path::new("."))).map_err(|e| corrupt(dir, e))
}

/// Verifies and loads a checkpoint into `vs` and `opt`; returns its state and carried tensors.
pub fn load(dir: &Path, vs: &nn::VarStore, opt: &mut AdamW) -> Result<Loaded, ModelError> {
    let state = verify(dir)?;
    load_weights(&dir.join("model.safetensors"), vs)?;
    let optim = dir.join("optim.safetensors");
    opt.load_state(&read_tensors(&optim)?, state.progress.step as i64).map_err(|e| corrupt(&optim, e))?;
    let carry = match state.carry_sha256 {
        Some(_) => read_tensors(&dir.join("carry.safetensors"))?,
        None => Vec::new(),
    };
    Ok(Loaded { state, carry })
}

/// Reads `state.json` and checks every tensor file against its checksum.
pub fn verify(dir: &Path) -> Result<TrainState, ModelError> {
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| corrupt(&state_path, e))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| corrupt(&state_path, format!("unreadable (format {FORMAT} expected): {e}")))?;
    if state.format != FORMAT {
        return Err(corrupt(&state_path, format!("format {} is not the supported {FORMAT}", state.format)));
    }
    let files = [("model.safetensors", Some(&state.model_sha256)), ("optim.safetensors", Some(&state.optim_sha256)), ("carry.safetensors", state.carry_sha256.as_ref())];
    for (name, expected) in files {
        let Some(expected) = expected else { continue };
        let path = dir.join(name);
        let actual = sha256(&path)?;
        if actual != *expected {
            return Err(corrupt(&path, format!("checksum {actual} does not match state.json ({expected}): truncated or modified")));
        }
    }
    Ok(state)
}
