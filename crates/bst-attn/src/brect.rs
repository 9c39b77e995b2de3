//! The Block-Recurrent Transformer cell, BRECT:FIXED:SKIP (Hutchins et al. 2022;
//! google-research/meliad `recurrent/bias_skip.gin`), the paper's strongest baseline.
//!
//! The sequence is processed **one block of W tokens after another**: the S recurrent state
//! vectors summarising earlier blocks are an input of block k and an output of block k - 1, so
//! the blocks cannot run in parallel. That sequential dependency is what BST removes.
//!
//! Per block:
//! - **vertical** (tokens): self-attention over `[previous block; own block]` under the window
//!   mask (`attn.window_mask`, meliad's sliding window by default) and, with separate queries,
//!   cross-attention to the current state; the two are concatenated and projected; the caller
//!   adds the residual and the MLP.
//! - **horizontal** (state): the state (layer-normed, plus learned state IDs) self-attends and, with
//!   separate queries, cross-attends to the block's tokens; the two are projected to an update y.
//! - keys/values of the tokens are computed once and shared by both directions; those of the state too.
//! - **FIXED** gate: `next = g * state + (1 - g) * y`, `g = sigmoid(b)` with a learned bias b only.
//! - **SKIP**: no MLP on the state path.
//!
//! State and the last block's keys/values carry across calls (training steps over consecutive
//! segments, evaluation windows), without gradient between calls; a row that starts a new text
//! restarts from the learned initial state with no previous block, as meliad's
//! `start_of_sequence`. Positions: rotary embeddings in the token self-attention, numbered per
//! block pair (previous block 0..W, current W..2W), so that only offsets matter; the state has no
//! positions (state IDs instead), as in meliad.

use bst_core::params::{layer_norm, linear, var};
use bst_core::ParamGroup;
use tch::{nn, nn::Module, Kind, Tensor};

use crate::block_attention::{block_pair_mask, split_heads, visible_values};
use crate::mixer::{mask_to_u8, named};
use crate::{BlockScope, HeadDims, LayerConfig, Mixer, MixerState, Rope};

/// What BRECT carries from one block (and one call) to the next.
#[derive(Debug)]
pub struct BrectState {
    /// `[batch, S, d_model]`.
    pub state: Tensor,
    /// Un-rotated keys and values of the last block, `[batch, W, n_heads, head_dim]` each.
    pub previous: Option<(Tensor, Tensor)>,
    /// `[batch]` bool: whether the previous block belongs to the row's current text.
    pub previous_visible: Tensor,
    /// `[batch]` bool: rows that start a new text at the next block (their state is replaced by
    /// the learned initial state there).
    pub restart: Tensor,
}

impl BrectState {
    /// A copy without gradient history, to carry into the next segment.
    pub fn detached(&self) -> Self {
        Self {
            state: self.state.detach(),
            previous: self.previous.as_ref().map(|(k, v)| (k.detach(), v.detach())),
            previous_visible: self.previous_visible.shallow_clone(),
            restart: self.restart.shallow_clone(),
        }
    }

    /// `rows` (`[batch]` bool) start a new text at the next block.
    pub fn reset_rows(&mut self, rows: &Tensor) {
        self.restart = self.restart.logical_or(rows);
        self.previous_visible = self.previous_visible.logical_and(&rows.logical_not());
    }

    pub(crate) fn tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![
            ("brect.state".to_owned(), self.state.shallow_clone()),
            ("brect.previous_visible".to_owned(), mask_to_u8(&self.previous_visible)),
            ("brect.restart".to_owned(), mask_to_u8(&self.restart)),
        ];
        if let Some((k, v)) = &self.previous {
            out.push(("brect.previous_keys".to_owned(), k.shallow_clone()));
            out.push(("brect.previous_values".to_owned(), v.shallow_clone()));
        }
        out
    }

    pub(crate) fn from_tensors(t: &[(String, Tensor)]) -> Result<Self, String> {
        let previous = match (named(t, "brect.previous_keys"), named(t, "brect.previous_values")) {
            (Ok(k), Ok(v)) => Some((k, v)),
            _ => None,
        };
        Ok(Self {
            state: named(t, "brect.state")?,
            previous,
            previous_visible: named(t, "brect.previous_visible")?.to_kind(Kind::Bool),
            restart: named(t, "brect.restart")?.to_kind(Kind::Bool),
        })
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
    scope: BlockScope,
}

impl BrectCell {
    /// S = `cfg.context_states` recurrent state vectors (paper: 512).
    pub fn new(vs: &nn::Path, cfg: &LayerConfig) -> Self {
        let (d, s) = (cfg.dims.d_model as i64, cfg.context_states as i64);
        let lin = |name: &str, i: i64, o: i64| linear(&(vs / name), i, o);
        let learned = |name: &str, shape: &[i64], stdev: f64| var(vs, name, shape, nn::Init::Randn { mean: 0.0, stdev }, ParamGroup::NoDecay);
        Self {
            token_qkv: lin("token_qkv", d, 3 * d),
            token_q_cross: lin("token_q_cross", d, d),
            state_norm: layer_norm(&(vs / "state_norm"), d),
            state_qkv: lin("state_qkv", d, 3 * d),
            state_q_cross: lin("state_q_cross", d, d),
            vertical_out: lin("vertical_out", 2 * d, d),
            horizontal_out: lin("horizontal_out", 2 * d, d),
            state_ids: learned("state_ids", &[s, d], 0.02),
            initial_state: learned("initial_state", &[s, d], 0.02),
            gate_bias: learned("gate_bias", &[d], 0.1),
            rope: Rope::new(cfg.dims.head_dim(), cfg.attn.rope_base, vs.device()),
            dims: cfg.dims,
            window: cfg.window(),
            scope: cfg.attn.window_mask.into(),
        }
    }

    /// The learned initial state for `batch` sequences.
    pub fn initial_state(&self, batch: i64) -> BrectState {
        let (s, d) = self.initial_state.size2().expect("initial state is [S, d]");
        let none = Tensor::zeros([batch], (Kind::Bool, self.initial_state.device()));
        BrectState { state: self.initial_state.unsqueeze(0).expand([batch, s, d], false), previous: None, previous_visible: none.shallow_clone(), restart: none }
    }

    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<Tensor>, train: bool) -> Tensor {
        let dropout = if train { self.dims.dropout } else { 0.0 };
        let t = |x: &Tensor| x.transpose(1, 2); // [b, n, h, hd] -> [b, h, n, hd]
        Tensor::scaled_dot_product_attention(&t(q), &t(k), &t(v), mask, dropout, false, None, false).transpose(1, 2)
    }

    /// The tokens' self-attention over `[previous block; own block]`: `[b, W, h, hd]`.
    fn token_self_attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, carry: &BrectState, train: bool) -> Tensor {
        let w = q.size()[1];
        let (prev_keys, prev_values) = match &carry.previous {
            Some((pk, pv)) => (self.rope.apply_at(pk, 0), visible_values(pv, &carry.previous_visible)),
            None => (k.zeros_like(), v.zeros_like()),
        };
        let keys = Tensor::cat(&[prev_keys, self.rope.apply_at(k, w)], 1); // [b, 2W, h, hd]
        let values = Tensor::cat(&[&prev_values, v], 1);
        let mask = block_pair_mask(self.scope, w, &carry.previous_visible); // [b, 1, W, 2W]
        self.attend(&self.rope.apply_at(q, w), &keys, &values, Some(mask), train)
    }

    /// One block: returns the block's output `[batch, W, d]` and updates `carry`.
    fn block(&self, xs: &Tensor, carry: &mut BrectState, train: bool) -> Tensor {
        let restart = carry.restart.view([-1, 1, 1]);
        carry.state = carry.state.where_self(&restart.logical_not(), &self.initial_state.unsqueeze(0));
        let tok = split_heads(&self.token_qkv.forward(xs), 3, &self.dims); // q1, k, v: [b, W, h, hd]
        let q_cross = split_heads(&self.token_q_cross.forward(xs), 1, &self.dims).remove(0);
        let state_in = self.state_norm.forward(&carry.state) + &self.state_ids; // [b, S, d]
        let st = split_heads(&self.state_qkv.forward(&state_in), 3, &self.dims); // q3, k_s, v_s
        let q_state_cross = split_heads(&self.state_q_cross.forward(&state_in), 1, &self.dims).remove(0);

        // vertical: tokens attend to [previous block; own block] and, separately, to the state
        let y_self = self.token_self_attention(&tok[0], &tok[1], &tok[2], carry, train).flatten(2, 3);
        let y_cross = self.attend(&q_cross, &st[1], &st[2], None, train).flatten(2, 3);
        let out = self.vertical_out.forward(&Tensor::cat(&[y_self, y_cross], -1)).dropout(self.dims.dropout, train);

        // horizontal: the state attends to itself and to the block's tokens (shared keys/values)
        let s_self = self.attend(&st[0], &st[1], &st[2], None, train).flatten(2, 3);
        let s_cross = self.attend(&q_state_cross, &tok[1], &tok[2], None, train).flatten(2, 3);
        let update = self.horizontal_out.forward(&Tensor::cat(&[s_self, s_cross], -1));
        let gate = self.gate_bias.sigmoid();
        carry.state = &carry.state * &gate + update * (-&gate + 1.0);
        carry.previous = Some((tok[1].shallow_clone(), tok[2].shallow_clone()));
        carry.previous_visible = carry.previous_visible.ones_like();
        carry.restart = carry.restart.zeros_like();
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

impl Mixer for BrectCell {
    fn forward(&self, xs: &Tensor, state: &mut MixerState, train: bool) -> Tensor {
        let mut carry = match std::mem::take(state) {
            MixerState::Brect(b) => b,
            _ => self.initial_state(xs.size()[0]),
        };
        let y = self.forward_t(xs, &mut carry, train);
        *state = MixerState::Brect(carry);
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::sliding_window_mask;
    use crate::WindowMask;
    use tch::Device;

    fn cell(window: usize, mask: WindowMask) -> (nn::VarStore, BrectCell) {
        tch::manual_seed(9);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut cfg = LayerConfig::small(16, 2, window);
        cfg.context_states = 3;
        cfg.attn.window_mask = mask;
        let cell = BrectCell::new(&vs.root(), &cfg);
        (vs, cell)
    }

    /// Softmax attention for one head, written out: `q [n, d]`, `k, v [m, d]`, `mask [n, m]`.
    fn head_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let scores = q.matmul(&k.tr()) / (q.size()[1] as f64).sqrt();
        let scores = match mask {
            Some(m) => scores.masked_fill(&m.logical_not(), f64::NEG_INFINITY),
            None => scores,
        };
        scores.softmax(-1, Kind::Double).nan_to_num(0.0, None, None).matmul(v)
    }

    /// Multi-head attention, head by head: `q [n, d]`, `k, v [m, d]` -> `[n, d]`.
    fn heads(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, h: i64) -> Tensor {
        let hd = q.size()[1] / h;
        let out: Vec<Tensor> = (0..h).map(|i| head_attention(&q.narrow(1, i * hd, hd), &k.narrow(1, i * hd, hd), &v.narrow(1, i * hd, hd), mask)).collect();
        Tensor::cat(&out, 1)
    }

    /// An independent reference of the cell for one sequence, in f64, written from the module
    /// docs: rotary positions over the block pair, meliad's window from the dense mask definition
    /// (`sliding_window_mask` over the 2W pair positions, previous block absent for block 0),
    /// separate queries, the fixed gate.
    fn reference(cell: &BrectCell, xs: &Tensor) -> Tensor {
        let d64 = |t: &Tensor| t.to_kind(Kind::Double);
        let lin = |l: &nn::Linear, x: &Tensor| x.matmul(&d64(&l.ws).tr()) + d64(l.bs.as_ref().unwrap());
        let (w, h, d) = (cell.window, cell.dims.n_heads as i64, cell.dims.d_model as i64);
        let rope = |x: &Tensor, start: i64| cell.rope.apply_at(&x.to_kind(Kind::Float).view([1, w, h, d / h]), start).view([w, d]).to_kind(Kind::Double);
        let xs = d64(xs);
        let mut state = d64(&cell.initial_state);
        let mut previous: Option<(Tensor, Tensor)> = None;
        let mut outputs = Vec::new();
        for k in 0..xs.size()[0] / w {
            let x = xs.narrow(0, k * w, w);
            let qkv = lin(&cell.token_qkv, &x);
            let (q, key, v) = (qkv.narrow(1, 0, d), qkv.narrow(1, d, d), qkv.narrow(1, 2 * d, d));
            let (pk, pv) = match &previous {
                Some((pk, pv)) => (pk.shallow_clone(), pv.shallow_clone()),
                None => (key.zeros_like(), v.zeros_like()),
            };
            let keys = Tensor::cat(&[rope(&pk, 0), rope(&key, w)], 0);
            let values = Tensor::cat(&[&pv, &v], 0);
            let mask = sliding_window_mask(2 * w, w, Device::Cpu).narrow(0, w, w).copy(); // queries at W..2W
            if previous.is_none() {
                let _ = mask.narrow(1, 0, w).fill_(0);
            }
            let y_self = heads(&rope(&q, w), &keys, &values, Some(&mask), h);
            let s_in = state.layer_norm([d], Some(d64(cell.state_norm.ws.as_ref().unwrap())), Some(d64(cell.state_norm.bs.as_ref().unwrap())), 1e-5, false) + d64(&cell.state_ids);
            let sqkv = lin(&cell.state_qkv, &s_in);
            let (sq, sk, sv) = (sqkv.narrow(1, 0, d), sqkv.narrow(1, d, d), sqkv.narrow(1, 2 * d, d));
            let y_cross = heads(&lin(&cell.token_q_cross, &x), &sk, &sv, None, h);
            outputs.push(lin(&cell.vertical_out, &Tensor::cat(&[y_self, y_cross], 1)));
            let s_self = heads(&sq, &sk, &sv, None, h);
            let s_cross = heads(&lin(&cell.state_q_cross, &s_in), &key, &v, None, h);
            let update = lin(&cell.horizontal_out, &Tensor::cat(&[s_self, s_cross], 1));
            let g = d64(&cell.gate_bias).sigmoid();
            state = &state * &g + update * (-&g + 1.0);
            previous = Some((key, v));
        }
        Tensor::cat(&outputs, 0)
    }

    #[test]
    fn matches_an_independent_reference_of_the_cell() {
        let (_vs, cell) = cell(4, WindowMask::Sliding);
        let xs = Tensor::randn([2, 12, 16], (Kind::Float, Device::Cpu));
        let y = tch::no_grad(|| cell.forward_t(&xs, &mut cell.initial_state(2), false));
        for b in 0..2 {
            let expected = reference(&cell, &xs.get(b));
            let err = (y.get(b).to_kind(Kind::Double) - expected).abs().max().double_value(&[]);
            assert!(err < 1e-5, "row {b}: BRECT differs from the reference by {err}");
        }
    }

    #[test]
    fn one_call_equals_two_calls_with_carried_state() {
        for mask in [WindowMask::Sliding, WindowMask::Block] {
            let (_vs, cell) = cell(4, mask);
            let xs = Tensor::randn([2, 16, 16], (Kind::Float, Device::Cpu));
            let mut whole = cell.initial_state(2);
            let y = cell.forward_t(&xs, &mut whole, false);
            let mut carry = cell.initial_state(2);
            let y1 = cell.forward_t(&xs.narrow(1, 0, 8), &mut carry, false);
            let mut carry = carry.detached();
            let y2 = cell.forward_t(&xs.narrow(1, 8, 8), &mut carry, false);
            let err = (&y - Tensor::cat(&[y1, y2], 1)).abs().max().double_value(&[]);
            assert!(err < 1e-5, "{mask:?}: split processing differs by {err}");
            assert!((&whole.state - &carry.state).abs().max().double_value(&[]) < 1e-5);
        }
    }

    /// A reset row continues as if it were a new text; the other row carries on.
    #[test]
    fn reset_rows_restart_from_the_initial_state() {
        let (_vs, cell) = cell(4, WindowMask::Sliding);
        let first = Tensor::randn([2, 8, 16], (Kind::Float, Device::Cpu));
        let second = Tensor::randn([2, 8, 16], (Kind::Float, Device::Cpu));
        let mut carry = cell.initial_state(2);
        let _ = cell.forward_t(&first, &mut carry, false);
        let continued = cell.forward_t(&second, &mut carry.detached(), false);
        carry.reset_rows(&Tensor::from_slice(&[true, false]));
        let y = cell.forward_t(&second, &mut carry, false);
        let fresh = cell.forward_t(&second, &mut cell.initial_state(2), false);
        assert!((y.get(0) - fresh.get(0)).abs().max().double_value(&[]) < 1e-5, "row 0 restarted");
        assert!((y.get(1) - continued.get(1)).abs().max().double_value(&[]) < 1e-5, "row 1 carried on");
        assert!((fresh.get(1) - continued.get(1)).abs().max().double_value(&[]) > 1e-4, "carrying matters");
    }

    #[test]
    fn causal_and_state_carries_information_forward() {
        let (vs, cell) = cell(4, WindowMask::Sliding);
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

    #[test]
    fn state_round_trips_through_named_tensors() {
        let (_vs, cell) = cell(4, WindowMask::Sliding);
        let mut carry = cell.initial_state(2);
        let _ = cell.forward_t(&Tensor::randn([2, 8, 16], (Kind::Float, Device::Cpu)), &mut carry, false);
        carry.reset_rows(&Tensor::from_slice(&[false, true]));
        let back = BrectState::from_tensors(&carry.tensors()).unwrap();
        let next = Tensor::randn([2, 4, 16], (Kind::Float, Device::Cpu));
        let (a, b) = (cell.forward_t(&next, &mut carry.detached(), false), cell.forward_t(&next, &mut back.detached(), false));
        assert!(a.allclose(&b, 0.0, 0.0, false));
    }
}
