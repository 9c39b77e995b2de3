//! Transformer-XL attention (Dai et al. 2019): segment-level recurrence. Each segment attends
//! causally to itself and to a memory of the previous segment's layer inputs, which is carried
//! without gradient (stop-gradient), as in meliad's TRSF-XL baseline. Relative positions come
//! from rotary embeddings applied at absolute positions (memory first), which makes the scores
//! depend only on query-key offsets, like Transformer-XL's relative encoding.

use tch::{nn, nn::Module, Kind, Tensor};

use crate::block_attention::split_heads;
use crate::{AttnConfig, AttnError, HeadDims, Rope};

/// Multi-head causal attention over `[memory; segment]`.
#[derive(Debug)]
pub struct XlAttention {
    qkv: nn::Linear,
    out: nn::Linear,
    rope: Rope,
    dims: HeadDims,
    memory_len: i64,
}

impl XlAttention {
    /// `memory_len` = M, the number of previous positions kept (e.g. 2048 in the GPU profile).
    pub fn new(vs: &nn::Path, dims: HeadDims, cfg: &AttnConfig, memory_len: usize) -> Result<Self, AttnError> {
        dims.validate()?;
        cfg.validate()?;
        let d = dims.d_model as i64;
        Ok(Self {
            qkv: nn::linear(vs / "qkv", d, 3 * d, Default::default()),
            out: nn::linear(vs / "out", d, d, Default::default()),
            rope: Rope::new(dims.head_dim(), cfg.rope_base, vs.device()),
            dims,
            memory_len: memory_len as i64,
        })
    }

    /// Attends over `[memory; xs]`; `memory` holds previous layer inputs `[batch, m, d_model]`
    /// (treated as constants). Returns the output and the next memory: the last M rows of
    /// `[memory; xs]`, detached.
    ///
    /// # Shapes
    /// - `xs`: `[batch, seq, d_model]`, `memory`: `[batch, m <= M, d_model]`
    /// - returns (`[batch, seq, d_model]`, `[batch, min(m + seq, M), d_model]`)
    pub fn forward_t(&self, xs: &Tensor, memory: Option<&Tensor>, train: bool) -> (Tensor, Tensor) {
        let (b, seq, d) = xs.size3().expect("xs must be [batch, seq, d_model]");
        let memory = memory.map(Tensor::detach).unwrap_or_else(|| Tensor::zeros([b, 0, d], (xs.kind(), xs.device())));
        let m = memory.size()[1];
        let all = Tensor::cat(&[&memory, xs], 1); // [b, m + seq, d]
        let qkv = split_heads(&self.qkv.forward(&all), 3, &self.dims);
        let q = self.rope.apply_at(&qkv[0].narrow(1, m, seq), m); // queries of the segment only
        let k = self.rope.apply(&qkv[1]);
        // query i (absolute m + i) sees keys j <= m + i: causal with an offset of m
        let mask = Tensor::ones([seq, m + seq], (Kind::Bool, xs.device())).tril(m);
        let dropout = if train { self.dims.dropout } else { 0.0 };
        let y = Tensor::scaled_dot_product_attention(
            &q.transpose(1, 2),
            &k.transpose(1, 2),
            &qkv[2].transpose(1, 2),
            Some(mask),
            dropout,
            false,
            None,
            false,
        ); // [b, h, seq, hd]
        let y = self.out.forward(&y.transpose(1, 2).flatten(2, 3)).dropout(self.dims.dropout, train);
        let keep = (m + seq).min(self.memory_len);
        (y, all.narrow(1, m + seq - keep, keep).detach())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::masked_attention_reference;
    use tch::Device;

    fn layer(memory_len: usize) -> (nn::VarStore, XlAttention) {
        tch::manual_seed(8);
        let vs = nn::VarStore::new(Device::Cpu);
        let dims = HeadDims { d_model: 16, n_heads: 2, dropout: 0.0 };
        let xl = XlAttention::new(&vs.root(), dims, &AttnConfig::default(), memory_len).unwrap();
        (vs, xl)
    }

    /// Two segments with memory equal one pass over both under the equivalent mask: the second
    /// segment's queries see the whole first segment and themselves causally; the first
    /// segment's queries see only their own past.
    #[test]
    fn two_segments_with_memory_equal_one_masked_pass() {
        let (_vs, xl) = layer(8);
        let xs = Tensor::randn([2, 16, 16], (Kind::Float, Device::Cpu));
        let (y1, mem) = xl.forward_t(&xs.narrow(1, 0, 8), None, false);
        let (y2, _) = xl.forward_t(&xs.narrow(1, 8, 8), Some(&mem), false);
        let segmented = Tensor::cat(&[y1, y2], 1);

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
        let (_vs, xl) = layer(5);
        let xs = Tensor::randn([1, 8, 16], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let (y, mem) = xl.forward_t(&xs, None, false);
        assert_eq!(mem.size(), vec![1, 5, 16]);
        assert!(!mem.requires_grad(), "memory must carry no gradient");
        assert!(mem.allclose(&xs.narrow(1, 3, 5), 0.0, 0.0, false));
        let xs2 = xs.detach().copy();
        let _ = xs2.narrow(1, 6, 1).fill_(9.0);
        let (y2, _) = xl.forward_t(&xs2, None, false);
        let diff = (y.narrow(1, 0, 6) - y2.narrow(1, 0, 6)).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "token 6 changed earlier outputs by {diff}");
        y.sum(Kind::Float).backward();
        assert!(xs.grad().isfinite().all().int64_value(&[]) == 1);
    }
}
