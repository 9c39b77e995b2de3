//! The one signature every sequence mixer has, and the state it may carry between calls.
//!
//! A residual layer is `x + mixer(norm(x))`, whatever the mixer: SLIDE, a BST layer, BRECT's
//! recurrent cell, Transformer-XL or full attention, a GSS layer. Each mixer owns its state:
//! stateless mixers leave [`MixerState::Fresh`] alone, BRECT and Transformer-XL keep what the next
//! window needs in it. The caller only carries it, detaches it between training steps (truncated
//! backpropagation through time, as meliad) and marks the rows that start a new text.

use tch::{nn::ModuleT, Kind, Tensor};

use crate::{BrectState, KvCache, XlMemory};

/// What a mixer carries from one call to the next, per batch row.
#[derive(Debug, Default)]
pub enum MixerState {
    /// Nothing carried: the start of every row's text (and always, for stateless mixers).
    #[default]
    Fresh,
    /// Windowed self-attention (SLIDE, BST): the last block's keys/values.
    Window(KvCache),
    /// BRECT: recurrent state and the last block's keys/values.
    Brect(BrectState),
    /// Transformer-XL: the memory of earlier layer inputs.
    Xl(XlMemory),
}

impl MixerState {
    /// Cuts the gradient history, so the next call does not backpropagate into this one.
    pub fn detach(&mut self) {
        match self {
            MixerState::Fresh => {}
            MixerState::Window(c) => *c = c.detached(),
            MixerState::Brect(s) => *s = s.detached(),
            MixerState::Xl(m) => *m = m.detached(),
        }
    }

    /// Marks `rows` (`[batch]` bool) as starting a new text: whatever they carry is forgotten.
    pub fn reset_rows(&mut self, rows: &Tensor) {
        match self {
            MixerState::Fresh => {}
            MixerState::Window(c) => c.reset_rows(rows),
            MixerState::Brect(s) => s.reset_rows(rows),
            MixerState::Xl(m) => m.reset_rows(rows),
        }
    }

    /// The state as named tensors (for checkpoints); empty when fresh.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        match self {
            MixerState::Fresh => Vec::new(),
            MixerState::Window(c) => c.tensors(),
            MixerState::Brect(s) => s.tensors(),
            MixerState::Xl(m) => m.tensors(),
        }
    }

    /// Rebuilds a state from [`Self::tensors`]' output (an empty list is a fresh state).
    pub fn from_tensors(tensors: &[(String, Tensor)]) -> Result<Self, String> {
        let has = |name: &str| tensors.iter().any(|(n, _)| n == name);
        if tensors.is_empty() {
            Ok(MixerState::Fresh)
        } else if has("window.keys") {
            Ok(MixerState::Window(KvCache::from_tensors(tensors)?))
        } else if has("brect.state") {
            Ok(MixerState::Brect(BrectState::from_tensors(tensors)?))
        } else if has("xl.memory") {
            Ok(MixerState::Xl(XlMemory::from_tensors(tensors)?))
        } else {
            Err(format!("unknown mixer state tensors: {:?}", tensors.iter().map(|(n, _)| n).collect::<Vec<_>>()))
        }
    }
}

/// A tensor looked up by name in a checkpoint's list.
pub(crate) fn named(tensors: &[(String, Tensor)], name: &str) -> Result<Tensor, String> {
    tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t.shallow_clone()).ok_or_else(|| format!("mixer state has no `{name}`"))
}

/// A bool mask stored as u8 in checkpoints (safetensors readers differ on bools).
pub(crate) fn mask_to_u8(mask: &Tensor) -> Tensor {
    mask.to_kind(Kind::Uint8)
}

/// The sequence-mixing sublayer of a residual layer.
pub trait Mixer: std::fmt::Debug {
    /// Mixes along the sequence, reading and updating `state`.
    ///
    /// # Shapes
    /// - `xs`: `[batch, seq, d_model]` -> `[batch, seq, d_model]`
    fn forward(&self, xs: &Tensor, state: &mut MixerState, train: bool) -> Tensor;
}

/// An SSM sublayer alone (one bank, output as wide as its input), restarting at every call.
impl Mixer for bst_ssm::SsmSublayer {
    fn forward(&self, xs: &Tensor, _state: &mut MixerState, train: bool) -> Tensor {
        self.forward_t(xs, train).squeeze_dim(2)
    }
}

impl Mixer for bst_ssm::GssLayer {
    fn forward(&self, xs: &Tensor, _state: &mut MixerState, train: bool) -> Tensor {
        self.forward_t(xs, train)
    }
}
