//! The Block-Recurrent Transformer cell, BRECT:FIXED:SKIP (Hutchins et al. 2022;
//! google-research/meliad `recurrent/bias_skip.gin`), the paper's strongest baseline.
//!
//! The sequence is processed **one block of W tokens after another**: the S recurrent state
//! vectors summarising earlier blocks are an input of block k and an output of block k - 1, so
//! the blocks cannot run in parallel. That sequential dependency is what BST removes.
//!
//! Per block:
//! - **vertical** (tokens): self-attention over the block (causal) and the previous block, and, with
//!   separate queries, cross-attention to the current state; the two are concatenated and projected;
//!   the caller adds the residual and the MLP.
//! - **horizontal** (state): the state (layer-normed, plus learned state IDs) self-attends and, with
//!   separate queries, cross-attends to the block's tokens; the two are projected to an update y.
//! - keys/values of the tokens are computed once and shared by both directions; those of the state too.
//! - **FIXED** gate: `next = g * state + (1 - g) * y`, `g = sigmoid(b)` with a learned bias b only.
//! - **SKIP**: no MLP on the state path.
//!
//! Positions: rotary embeddings in the token self-attention, numbered per block pair (previous
//! block 0..W, current W..2W), so that only offsets matter and state can be carried across calls;
//! the state has no positions (state IDs instead), as in meliad.

use tch::{nn, nn::Module, Kind, Tensor};

use crate::block_attention::split_heads;
use crate::{AttnConfig, AttnError, HeadDims, Rope};

/// What BRECT carries from one block (and one call) to the next.
#[derive(Debug)]
pub struct BrectState {
    /// `[batch, S, d_model]`.
    pub state: Tensor,
    /// Un-rotated keys and values of the last block, `[batch, W, n_heads, head_dim]` each.
    pub previous: Option<(Tensor, Tensor)>,
}

impl BrectState {
    /// A copy without gradient history, to carry into the next segment.
    pub fn detached(&self) -> Self {
        Self { state: self.state.detach(), previous: self.previous.as_ref().map(|(k, v)| (k.detach(), v.detach())) }
    }
}

/// One BRECT recurrent layer's attention sublayer.
#[derive(Debug)]
pub struct BrectCell {
    token_qkv: nn::Linear,
    token_q_cross: nn::Linear,
    state_norm: nn::LayerNorm,
    state_qkv: nn::Linear,
    state_q_cross: nn::Linear,
    vertical_out: nn::Linear,
    horizontal_out: nn::Linear,
    state_ids: Tensor,     // [S, d]
    initial_state: Tensor, // [S, d]
    gate_bias: Tensor,     // [d]
    rope: Rope,
    dims: HeadDims,
    window: i64,
}

impl BrectCell {
    /// `states` = S, the number of recurrent state vectors (paper: 512).
    pub fn new(vs: &nn::Path, dims: HeadDims, cfg: &AttnConfig, states: usize) -> Result<Self, AttnError> {
        dims.validate()?;
        cfg.validate()?;
        if states == 0 {
            return Err(AttnError::invalid("model.recurrent_states", states, "must be >= 1"));
        }
        let (d, s) = (dims.d_model as i64, states as i64);
        let lin = |name: &str, i: i64, o: i64| nn::linear(vs / name, i, o, Default::default());
        Ok(Self {
            token_qkv: lin("token_qkv", d, 3 * d),
            token_q_cross: lin("token_q_cross", d, d),
            state_norm: nn::layer_norm(vs / "state_norm", vec![d], Default::default()),
            state_qkv: lin("state_qkv", d, 3 * d),
            state_q_cross: lin("state_q_cross", d, d),
            vertical_out: lin("vertical_out", 2 * d, d),
            horizontal_out: lin("horizontal_out", 2 * d, d),
            state_ids: vs.var("state_ids", &[s, d], nn::Init::Randn { mean: 0.0, stdev: 0.02 }),
            initial_state: vs.var("initial_state", &[s, d], nn::Init::Randn { mean: 0.0, stdev: 0.02 }),
            gate_bias: vs.var("gate_bias", &[d], nn::Init::Randn { mean: 0.0, stdev: 0.1 }),
            rope: Rope::new(dims.head_dim(), cfg.rope_base, vs.device()),
            dims,
            window: cfg.window as i64,
        })
    }

    /// The learned initial state for `batch` sequences.
    pub fn initial_state(&self, batch: i64) -> BrectState {
        let (s, d) = self.initial_state.size2().unwrap();
        BrectState { state: self.initial_state.unsqueeze(0).expand([batch, s, d], false), previous: None }
    }

    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<Tensor>, train: bool) -> Tensor {
        let dropout = if train { self.dims.dropout } else { 0.0 };
        let t = |x: &Tensor| x.transpose(1, 2); // [b, n, h, hd] -> [b, h, n, hd]
        Tensor::scaled_dot_product_attention(&t(q), &t(k), &t(v), mask, dropout, false, None, false).transpose(1, 2).flatten(2, 3)
    }

    /// One block: returns the block's output `[batch, W, d]` and updates `carry`.
    fn block(&self, xs: &Tensor, carry: &mut BrectState, train: bool) -> Tensor {
        let w = xs.size()[1];
        let device = xs.device();
        let tok = split_heads(&self.token_qkv.forward(xs), 3, &self.dims); // q1, k, v: [b, W, h, hd]
        let q_cross = split_heads(&self.token_q_cross.forward(xs), 1, &self.dims).remove(0);
        let state_in = self.state_norm.forward(&carry.state) + &self.state_ids; // [b, S, d]
        let st = split_heads(&self.state_qkv.forward(&state_in), 3, &self.dims); // q3, k_s, v_s
        let q_state_cross = split_heads(&self.state_q_cross.forward(&state_in), 1, &self.dims).remove(0);

        // vertical: tokens attend to [previous block; own block] (rotary positions 0..W, W..2W) and
        // to the state; block 0 has no previous block, so zeros stand in and the mask hides them
        let (prev_keys, prev_values) = match &carry.previous {
            Some((pk, pv)) => (self.rope.apply_at(pk, 0), pv.shallow_clone()),
            None => (tok[1].zeros_like(), tok[2].zeros_like()),
        };
        let keys = Tensor::cat(&[prev_keys, self.rope.apply_at(&tok[1], w)], 1); // [b, 2W, h, hd]
        let values = Tensor::cat(&[&prev_values, &tok[2]], 1);
        let previous_visible = Tensor::full([w, w], i64::from(carry.previous.is_some()), (Kind::Bool, device));
        let mask = Tensor::cat(&[previous_visible, Tensor::ones([w, w], (Kind::Bool, device)).tril(0)], 1);
        let q_self = self.rope.apply_at(&tok[0], w);
        let y_self = self.attend(&q_self, &keys, &values, Some(mask), train);
        let y_cross = self.attend(&q_cross, &st[1], &st[2], None, train);
        let out = self.vertical_out.forward(&Tensor::cat(&[y_self, y_cross], -1)).dropout(self.dims.dropout, train);

        // horizontal: the state attends to itself and to the block's tokens (shared keys/values)
        let s_self = self.attend(&st[0], &st[1], &st[2], None, train);
        let s_cross = self.attend(&q_state_cross, &tok[1], &tok[2], None, train);
        let update = self.horizontal_out.forward(&Tensor::cat(&[s_self, s_cross], -1));
        let gate = self.gate_bias.sigmoid();
        carry.state = &carry.state * &gate + update * (-&gate + 1.0);
        carry.previous = Some((tok[1].shallow_clone(), tok[2].shallow_clone()));
        out
    }

    /// Runs the blocks of `xs` in order, starting from `carry` and leaving the final state in it.
    ///
    /// # Shapes
    /// - `xs`: `[batch, seq, d_model]` (seq a multiple of W) -> `[batch, seq, d_model]`
    pub fn forward_t(&self, xs: &Tensor, carry: &mut BrectState, train: bool) -> Tensor {
        let seq = xs.size()[1];
        assert!(seq % self.window == 0, "sequence length {seq} is not a multiple of the window {}", self.window);
        let outputs: Vec<Tensor> = (0..seq / self.window).map(|k| self.block(&xs.narrow(1, k * self.window, self.window), carry, train)).collect();
        Tensor::cat(&outputs, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn cell(window: usize) -> (nn::VarStore, BrectCell) {
        tch::manual_seed(9);
        let vs = nn::VarStore::new(Device::Cpu);
        let dims = HeadDims { d_model: 16, n_heads: 2, dropout: 0.0 };
        let cell = BrectCell::new(&vs.root(), dims, &AttnConfig { window, ..AttnConfig::default() }, 3).unwrap();
        (vs, cell)
    }

    #[test]
    fn one_call_equals_two_calls_with_carried_state() {
        let (_vs, cell) = cell(4);
        let xs = Tensor::randn([2, 16, 16], (Kind::Float, Device::Cpu));
        let mut whole = cell.initial_state(2);
        let y = cell.forward_t(&xs, &mut whole, false);
        let mut carry = cell.initial_state(2);
        let y1 = cell.forward_t(&xs.narrow(1, 0, 8), &mut carry, false);
        let mut carry = carry.detached();
        let y2 = cell.forward_t(&xs.narrow(1, 8, 8), &mut carry, false);
        let err = (&y - Tensor::cat(&[y1, y2], 1)).abs().max().double_value(&[]);
        assert!(err < 1e-5, "split processing differs by {err}");
        assert!((&whole.state - &carry.state).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn causal_and_state_carries_information_forward() {
        let (vs, cell) = cell(4);
        let xs = Tensor::randn([1, 16, 16], (Kind::Float, Device::Cpu));
        let run = |x: &Tensor| cell.forward_t(x, &mut cell.initial_state(1), false);
        let y = run(&xs);
        for t in [1, 4, 6, 13] {
            let x2 = xs.copy();
            let _ = x2.narrow(1, t, 1).fill_(4.0);
            let y2 = run(&x2);
            let before = (y.narrow(1, 0, t) - y2.narrow(1, 0, t)).abs().max().double_value(&[]);
            assert!(before < 1e-5, "token {t} changed earlier outputs by {before}");
        }
        // token 0 is two blocks before token 12: only the recurrent state can carry it there
        let x2 = xs.copy();
        let _ = x2.narrow(1, 0, 1).fill_(4.0);
        let far = (y.narrow(1, 12, 4) - run(&x2).narrow(1, 12, 4)).abs().max().double_value(&[]);
        assert!(far > 1e-5, "the state should carry token 0 to block 3 ({far})");
        y.square().sum(Kind::Float).backward();
        for (name, var) in vs.variables() {
            let g = var.grad();
            assert!(g.defined() && g.isfinite().all().int64_value(&[]) == 1, "{name}: bad gradient");
        }
    }
}
