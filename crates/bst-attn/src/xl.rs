//! Transformer-XL attention (Dai et al. 2019): segment-level recurrence. The input is cut into
//! segments of `model.segment_len` tokens; each segment attends causally to itself and to a memory
//! of up to `model.memory_len` earlier layer inputs, carried without gradient (stop-gradient), as
//! in meliad's TRSF-XL baseline. Relative positions come from rotary embeddings applied at
//! absolute positions (memory first), which makes the scores depend only on query-key offsets,
//! like Transformer-XL's relative encoding.
//!
//! With no segments and no memory this is plain causal self-attention over the whole input: the
//! TRANSFORMER baseline ([`XlAttention::full`]).

use bst_core::params::linear;
use tch::{nn, nn::Module, Kind, Tensor};

use crate::block_attention::split_heads;
use crate::mixer::{mask_to_u8, named};
use crate::{HeadDims, LayerConfig, Mixer, MixerState, Rope};

/// The memory of one Transformer-XL layer.
#[derive(Debug)]
pub struct XlMemory {
    /// Earlier layer inputs, `[batch, m, d_model]`, m <= M.
    pub memory: Tensor,
    /// `[batch, m]` bool: which memory rows belong to the row's current text.
    pub valid: Tensor,
}

impl XlMemory {
    fn empty(batch: i64, d: i64, like: &Tensor) -> Self {
        Self { memory: Tensor::zeros([batch, 0, d], (like.kind(), like.device())), valid: Tensor::zeros([batch, 0], (Kind::Bool, like.device())) }
    }

    pub fn detached(&self) -> Self {
        Self { memory: self.memory.detach(), valid: self.valid.shallow_clone() }
    }

    /// `rows` (`[batch]` bool) start a new text: their memory is hidden from now on.
    pub fn reset_rows(&mut self, rows: &Tensor) {
        self.valid = self.valid.logical_and(&rows.logical_not().unsqueeze(1));
    }

    pub(crate) fn tensors(&self) -> Vec<(String, Tensor)> {
        vec![("xl.memory".to_owned(), self.memory.shallow_clone()), ("xl.valid".to_owned(), mask_to_u8(&self.valid))]
    }

    pub(crate) fn from_tensors(t: &[(String, Tensor)]) -> Result<Self, String> {
        Ok(Self { memory: named(t, "xl.memory")?, valid: named(t, "xl.valid")?.to_kind(Kind::Bool) })
    }
}

/// Multi-head causal attention over `[memory; segment]`, segment by segment.
#[derive(Debug)]
pub struct XlAttention {
    qkv: nn::Linear,
    out: nn::Linear,
    rope: Rope,
    dims: HeadDims,
    /// Tokens per segment; `None`: the whole input is one segment (full attention).
    segment: Option<i64>,
    memory_len: i64,
}

impl XlAttention {
    /// Transformer-XL: segments of `cfg.segment_len`, memory of `cfg.memory_len`.
    pub fn transformer_xl(vs: &nn::Path, cfg: &LayerConfig) -> Self {
        Self::new(vs, cfg, Some(cfg.segment_len as i64), cfg.memory_len as i64)
    }

    /// Plain causal self-attention over the whole input (the TRANSFORMER baseline).
    pub fn full(vs: &nn::Path, cfg: &LayerConfig) -> Self {
        Self::new(vs, cfg, None, 0)
    }

    fn new(vs: &nn::Path, cfg: &LayerConfig, segment: Option<i64>, memory_len: i64) -> Self {
        let d = cfg.dims.d_model as i64;
        Self {
            qkv: linear(&(vs / "qkv"), d, 3 * d),
            out: linear(&(vs / "out"), d, d),
            rope: Rope::new(cfg.dims.head_dim(), cfg.attn.rope_base, vs.device()),
            dims: cfg.dims,
            segment,
            memory_len,
        }
    }

    /// One segment over `[memory; xs]`; returns the output and the next memory: the last M rows
    /// of `[memory; xs]`, detached.
    ///
    /// # Shapes
    /// - `xs`: `[batch, seq, d_model]`, memory `[batch, m <= M, d_model]`
    /// - returns (`[batch, seq, d_model]`, memory `[batch, min(m + seq, M), d_model]`)
    pub fn attend_segment(&self, xs: &Tensor, memory: &XlMemory, train: bool) -> (Tensor, XlMemory) {
        let (b, seq, _) = xs.size3().expect("xs must be [batch, seq, d_model]");
        let m = memory.memory.size()[1];
        let all = Tensor::cat(&[&memory.memory.detach().to_kind(xs.kind()), xs], 1); // [b, m + seq, d]
        let valid = Tensor::cat(&[&memory.valid, &Tensor::ones([b, seq], (Kind::Bool, xs.device()))], 1); // [b, m + seq]
        let qkv = split_heads(&self.qkv.forward(&all), 3, &self.dims);
        let q = self.rope.apply_at(&qkv[0].narrow(1, m, seq), m); // queries of the segment only
        let k = self.rope.apply(&qkv[1]);
        // query i (absolute m + i) sees keys j <= m + i of its own text: causal with an offset of m
        let causal = Tensor::ones([seq, m + seq], (Kind::Bool, xs.device())).tril(m);
        let mask = causal.unsqueeze(0).logical_and(&valid.unsqueeze(1)).unsqueeze(1); // [b, 1, seq, m + seq]
        let dropout = if train { self.dims.dropout } else { 0.0 };
        let t = |x: &Tensor| x.transpose(1, 2);
        let y = Tensor::scaled_dot_product_attention(&t(&q), &t(&k), &t(&qkv[2]), Some(mask), dropout, false, None, false); // [b, h, seq, hd]
        let y = self.out.forward(&y.transpose(1, 2).flatten(2, 3)).dropout(self.dims.dropout, train);
        let keep = (m + seq).min(self.memory_len);
        let next = XlMemory { memory: all.narrow(1, m + seq - keep, keep).detach(), valid: valid.narrow(1, m + seq - keep, keep) };
        (y, next)
    }
}

impl Mixer for XlAttention {
    fn forward(&self, xs: &Tensor, state: &mut MixerState, train: bool) -> Tensor {
        let (b, seq, d) = xs.size3().expect("xs must be [batch, seq, d_model]");
        let Some(segment) = self.segment else {
            return self.attend_segment(xs, &XlMemory::empty(b, d, xs), train).0; // full attention: no state
        };
        let mut memory = match std::mem::take(state) {
            MixerState::Xl(m) => m,
            _ => XlMemory::empty(b, d, xs),
        };
        let mut outputs = Vec::new();
        for start in (0..seq).step_by(segment as usize) {
            let (y, next) = self.attend_segment(&xs.narrow(1, start, segment.min(seq - start)), &memory, train);
            outputs.push(y);
            memory = next;
        }
        *state = MixerState::Xl(memory);
        Tensor::cat(&outputs, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::masked_attention_reference;
    use tch::Device;

    fn layer(segment: usize, memory_len: usize) -> (nn::VarStore, XlAttention) {
        tch::manual_seed(8);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut cfg = LayerConfig::small(16, 2, 4);
        (cfg.segment_len, cfg.memory_len) = (segment, memory_len);
        let xl = XlAttention::transformer_xl(&vs.root(), &cfg);
        (vs, xl)
    }

    /// Two segments with memory equal one pass over both under the equivalent mask: the second
    /// segment's queries see the whole first segment and themselves causally; the first
    /// segment's queries see only their own past.
    #[test]
    fn two_segments_with_memory_equal_one_masked_pass() {
        let (_vs, xl) = layer(8, 8);
        let xs = Tensor::randn([2, 16, 16], (Kind::Float, Device::Cpu));
        let segmented = xl.forward(&xs, &mut MixerState::Fresh, false);

        let qkv = split_heads(&xl.qkv.forward(&xs), 3, &xl.dims);
        let (q, k) = (xl.rope.apply(&qkv[0]), xl.rope.apply(&qkv[1]));
        let pos = Tensor::arange(16, (Kind::Int64, Device::Cpu));
        let (qp, kp) = (pos.unsqueeze(1), pos.unsqueeze(0));
        let segment_start = qp.divide_scalar_mode(8, "floor") * 8;
        let mask = kp.le_tensor(&qp).logical_and(&kp.ge_tensor(&(segment_start - 8)));
        let reference = xl.out.forward(&masked_attention_reference(&q, &k, &qkv[2], &mask).flatten(2, 3));
        let err = (&segmented - &reference).abs().max().double_value(&[]);
        assert!(err < 1e-5, "segmented XL differs from the one-pass reference by {err}");
    }

    #[test]
    fn memory_is_truncated_detached_and_attention_is_causal() {
        let (_vs, xl) = layer(8, 5);
        let xs = Tensor::randn([1, 8, 16], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut state = MixerState::Fresh;
        let y = xl.forward(&xs, &mut state, false);
        let MixerState::Xl(mem) = &state else { panic!("XL keeps a memory") };
        assert_eq!(mem.memory.size(), vec![1, 5, 16]);
        assert!(!mem.memory.requires_grad(), "memory must carry no gradient");
        assert!(mem.memory.allclose(&xs.narrow(1, 3, 5), 0.0, 0.0, false));
        let xs2 = xs.detach().copy();
        let _ = xs2.narrow(1, 6, 1).fill_(9.0);
        let y2 = xl.forward(&xs2, &mut MixerState::Fresh, false);
        let diff = (y.narrow(1, 0, 6) - y2.narrow(1, 0, 6)).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "token 6 changed earlier outputs by {diff}");
        y.sum(Kind::Float).backward();
        assert!(xs.grad().isfinite().all().int64_value(&[]) == 1);
    }

    /// A reset row forgets its memory: it continues exactly as a fresh text would.
    #[test]
    fn reset_rows_hide_their_memory() {
        let (_vs, xl) = layer(4, 8);
        let (first, second) = (Tensor::randn([2, 8, 16], (Kind::Float, Device::Cpu)), Tensor::randn([2, 4, 16], (Kind::Float, Device::Cpu)));
        let mut state = MixerState::Fresh;
        let _ = xl.forward(&first, &mut state, false);
        let back = MixerState::from_tensors(&state.tensors()).unwrap();
        state.reset_rows(&Tensor::from_slice(&[false, true]));
        let y = xl.forward(&second, &mut state, false);
        let fresh = xl.forward(&second, &mut MixerState::Fresh, false);
        let continued = xl.forward(&second, &mut { back }, false);
        assert!((y.get(1) - fresh.get(1)).abs().max().double_value(&[]) < 1e-6, "row 1 restarted");
        assert!((y.get(0) - continued.get(0)).abs().max().double_value(&[]) < 1e-6, "row 0 kept its memory");
        assert!((fresh.get(0) - continued.get(0)).abs().max().double_value(&[]) > 1e-4, "memory matters");
    }
}
