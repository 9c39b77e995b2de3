//! A llama-architecture decoder for inference in f32 (Touvron et al. 2023; the layout of
//! Hugging Face's `LlamaForCausalLM`): RMSNorm, rotary positions (half-split, base from the file),
//! grouped-query attention, SwiGLU, tied or separate output head.
//!
//! Weights come from a GGUF file ([`Llama::from_gguf`]) or are drawn at random for tests
//! ([`Llama::random`]). llama.cpp's converter permutes the rows of Q and K so that its kernel can
//! rotate adjacent pairs; [`unpermute_rows`] undoes that at load, so the stored model is in the
//! Hugging Face layout and rotates the two halves of each head (a test checks that both agree).
//!
//! Two ways to run it: [`Llama::step`] decodes one token per sequence against a [`KvCache`]
//! (any [`Policy`](crate::Policy)), and [`Llama::logprobs`] runs whole sequences with a causal mask
//! (the unbounded reference).

use tch::{Device, Kind, Tensor};

use crate::error::{MsrnnError, Result};
use crate::gguf::GgufFile;
use crate::kv_cache::{attend_step, KvCache, LayerCache};

/// Sizes of a llama model (GGUF keys `llama.*`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaConfig {
    /// Decoder blocks (`block_count`; SmolLM2-135M: 30).
    pub n_layers: usize,
    /// Residual width (`embedding_length`; 576).
    pub d_model: usize,
    /// Query heads (`attention.head_count`; 9).
    pub n_heads: usize,
    /// Key/value heads (`attention.head_count_kv`; 3), a divisor of `n_heads`.
    pub n_kv_heads: usize,
    /// SwiGLU hidden width (`feed_forward_length`; 1536).
    pub d_ffn: usize,
    /// Vocabulary (rows of `token_embd`; 49152).
    pub vocab: usize,
    /// Rotary base (`rope.freq_base`; 1e5).
    pub rope_base: f64,
    /// RMSNorm epsilon (`attention.layer_norm_rms_epsilon`; 1e-5).
    pub rms_eps: f64,
    /// Trained context (`context_length`; 8192): the rotary tables cover it.
    pub max_positions: usize,
}

impl LlamaConfig {
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |why: &str| Err(MsrnnError::Config(format!("llama {self:?}: {why}")));
        if self.n_heads == 0 || self.d_model % self.n_heads != 0 {
            return bad("d_model must be a multiple of n_heads");
        }
        if self.n_kv_heads == 0 || self.n_heads % self.n_kv_heads != 0 {
            return bad("n_heads must be a multiple of n_kv_heads");
        }
        if self.head_dim() % 2 != 0 {
            return bad("the head dimension must be even (rotary pairs)");
        }
        Ok(())
    }

    fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch = g.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(MsrnnError::Config(format!("{}: architecture `{arch}`; only `llama` is supported", g.path.display())));
        }
        let u = |k: &str| g.get_u64(&format!("llama.{k}")).map(|v| v as usize);
        let vocab = g.info("token_embd.weight")?.shape[0] as usize;
        let cfg = Self {
            n_layers: u("block_count")?,
            d_model: u("embedding_length")?,
            n_heads: u("attention.head_count")?,
            n_kv_heads: u("attention.head_count_kv")?,
            d_ffn: u("feed_forward_length")?,
            vocab,
            rope_base: g.get_f64("llama.rope.freq_base").unwrap_or(10_000.0),
            rms_eps: g.get_f64("llama.attention.layer_norm_rms_epsilon")?,
            max_positions: u("context_length")?,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Undoes llama.cpp's Q/K row permutation (`convert_hf_to_gguf.py`, `LlamaModel.permute`:
/// `w.reshape(heads, 2, head_dim/2, d).swapaxes(1, 2)`), giving the Hugging Face row order.
///
/// # Shapes
/// - `w`: `[heads * head_dim, d_model]` -> same
pub fn unpermute_rows(w: &Tensor, heads: i64) -> Tensor {
    let (rows, cols) = (w.size()[0], w.size()[1]);
    w.view([heads, rows / heads / 2, 2, cols]).transpose(1, 2).reshape([rows, cols])
}

/// The weights of one decoder block, Q/K/V and gate/up fused so that each is one matmul.
struct Block {
    attn_norm: Tensor,
    /// `[(n_heads + 2 n_kv_heads) head_dim, d_model]`, Q rows pre-scaled by 1/sqrt(head_dim).
    w_qkv: Tensor,
    w_o: Tensor,
    ffn_norm: Tensor,
    /// `[2 d_ffn, d_model]`: gate rows, then up rows.
    w_gate_up: Tensor,
    w_down: Tensor,
}

/// One block's weights in the Hugging Face layout, before fusing.
pub struct BlockWeights {
    pub attn_norm: Tensor,
    pub wq: Tensor,
    pub wk: Tensor,
    pub wv: Tensor,
    pub wo: Tensor,
    pub ffn_norm: Tensor,
    pub w_gate: Tensor,
    pub w_up: Tensor,
    pub w_down: Tensor,
}

pub struct Llama {
    pub cfg: LlamaConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    head: Tensor,
    /// `[max_positions, head_dim/2]`
    cos: Tensor,
    sin: Tensor,
}

impl Llama {
    /// Loads every weight of a llama GGUF, dequantised to f32.
    pub fn from_gguf(g: &GgufFile, device: Device) -> Result<Self> {
        let cfg = LlamaConfig::from_gguf(g)?;
        let t = |name: String| g.tensor(&name);
        let mut blocks = Vec::new();
        for i in 0..cfg.n_layers {
            let b = |s: &str| t(format!("blk.{i}.{s}.weight"));
            blocks.push(BlockWeights {
                attn_norm: b("attn_norm")?,
                wq: unpermute_rows(&b("attn_q")?, cfg.n_heads as i64),
                wk: unpermute_rows(&b("attn_k")?, cfg.n_kv_heads as i64),
                wv: b("attn_v")?,
                wo: b("attn_output")?,
                ffn_norm: b("ffn_norm")?,
                w_gate: b("ffn_gate")?,
                w_up: b("ffn_up")?,
                w_down: b("ffn_down")?,
            });
        }
        let embed = t("token_embd.weight".into())?;
        let head = if g.info("output.weight").is_ok() { Some(t("output.weight".into())?) } else { None };
        Self::from_weights(cfg, embed, blocks, t("output_norm.weight".into())?, head, device)
    }

    /// Builds the model from Hugging Face-layout weights; `head: None` ties it to the embedding.
    pub fn from_weights(cfg: LlamaConfig, embed: Tensor, blocks: Vec<BlockWeights>, norm: Tensor, head: Option<Tensor>, device: Device) -> Result<Self> {
        cfg.validate()?;
        let hd = cfg.head_dim() as i64;
        let dev = |x: Tensor| x.to_device(device).to_kind(Kind::Float).contiguous();
        let scale = 1.0 / (hd as f64).sqrt();
        let blocks = blocks
            .into_iter()
            .map(|w| Block {
                attn_norm: dev(w.attn_norm),
                w_qkv: dev(Tensor::cat(&[w.wq * scale, w.wk, w.wv], 0)),
                w_o: dev(w.wo),
                ffn_norm: dev(w.ffn_norm),
                w_gate_up: dev(Tensor::cat(&[w.w_gate, w.w_up], 0)),
                w_down: dev(w.w_down),
            })
            .collect();
        let embed = dev(embed);
        let head = head.map(dev).unwrap_or_else(|| embed.shallow_clone());
        let (cos, sin) = rope_tables(cfg.max_positions, hd, cfg.rope_base, device);
        Ok(Self { cfg, embed, blocks, norm: dev(norm), head, cos, sin })
    }

    /// A model with random weights (tests): N(0, 0.02) matrices, norms near 1.
    pub fn random(cfg: LlamaConfig, seed: i64) -> Result<Self> {
        cfg.validate()?;
        tch::manual_seed(seed);
        let (d, hd, f) = (cfg.d_model as i64, cfg.head_dim() as i64, cfg.d_ffn as i64);
        let (nh, nkv) = (cfg.n_heads as i64, cfg.n_kv_heads as i64);
        let m = |r: i64, c: i64| Tensor::randn([r, c], (Kind::Float, Device::Cpu)) * 0.3 / (c as f64).sqrt();
        let norm = || Tensor::rand([d], (Kind::Float, Device::Cpu)) * 0.4 + 0.8;
        let blocks = (0..cfg.n_layers)
            .map(|_| BlockWeights {
                attn_norm: norm(),
                wq: m(nh * hd, d) * 4.0,
                wk: m(nkv * hd, d) * 4.0,
                wv: m(nkv * hd, d),
                wo: m(d, nh * hd),
                ffn_norm: norm(),
                w_gate: m(f, d),
                w_up: m(f, d),
                w_down: m(d, f),
            })
            .collect();
        let embed = Tensor::randn([cfg.vocab as i64, d], (Kind::Float, Device::Cpu));
        Self::from_weights(cfg, embed, blocks, norm(), None, Device::Cpu)
    }

    pub fn device(&self) -> Device {
        self.embed.device()
    }

    /// A cache with one layer per block.
    pub fn new_cache(&self, policy: crate::Policy, budget: Option<usize>) -> KvCache {
        KvCache::new(self.cfg.n_layers, policy, budget)
    }

    /// Decodes one token per sequence at absolute `position`, updating `cache`.
    ///
    /// # Shapes
    /// - `tokens`: `[batch]` (i64) -> logits `[batch, vocab]`
    pub fn step(&self, tokens: &Tensor, position: i64, cache: &mut KvCache) -> Tensor {
        self.step_groups(tokens, position, std::slice::from_mut(cache))
    }

    /// [`Llama::step`] for several caches side by side: the batch is split into
    /// `caches.len()` equal groups of consecutive rows, group `g` attending through `caches[g]`.
    /// The matrix products run once over the whole batch, so decoding the same chunks under
    /// several policies reads the weights once per step instead of once per policy.
    ///
    /// # Shapes
    /// - `tokens`: `[batch]` (i64), `batch` a multiple of `caches.len()` -> logits `[batch, vocab]`
    pub fn step_groups(&self, tokens: &Tensor, position: i64, caches: &mut [KvCache]) -> Tensor {
        let batch = tokens.size()[0];
        assert!(!caches.is_empty() && batch % caches.len() as i64 == 0, "{batch} rows cannot be split into {} groups", caches.len());
        assert!(caches.iter().all(|c| c.layers.len() == self.blocks.len()), "cache layers vs model blocks");
        let cos = self.cos.get(position); // [head_dim/2]
        let sin = self.sin.get(position);
        let mut x = self.embed.index_select(0, tokens); // [batch, d_model]
        for (l, block) in self.blocks.iter().enumerate() {
            let mut layers: Vec<&mut LayerCache> = caches.iter_mut().map(|c| &mut c.layers[l]).collect();
            x = self.step_block(block, &x, &cos, &sin, &mut layers, position);
        }
        x.rms_norm([self.cfg.d_model as i64], Some(&self.norm), self.cfg.rms_eps).linear::<Tensor>(&self.head, None)
    }

    fn step_block(&self, b: &Block, x: &Tensor, cos: &Tensor, sin: &Tensor, caches: &mut [&mut LayerCache], position: i64) -> Tensor {
        let (nh, nkv, hd) = (self.cfg.n_heads as i64, self.cfg.n_kv_heads as i64, self.cfg.head_dim() as i64);
        let batch = x.size()[0];
        let h = x.rms_norm([self.cfg.d_model as i64], Some(&b.attn_norm), self.cfg.rms_eps);
        let qkv = h.linear::<Tensor>(&b.w_qkv, None).view([batch, nh + 2 * nkv, hd]);
        let qk = rope(&qkv.narrow(1, 0, nh + nkv), cos, sin); // [batch, nh + nkv, hd]; q pre-scaled in w_qkv
        let attn = attend_step(&qk.narrow(1, 0, nh), &qk.narrow(1, nh, nkv), &qkv.narrow(1, nh + nkv, nkv), caches, position);
        let x = x + attn.linear::<Tensor>(&b.w_o, None);
        x.shallow_clone() + self.ffn(b, &x)
    }

    fn ffn(&self, b: &Block, x: &Tensor) -> Tensor {
        let h = x.rms_norm([self.cfg.d_model as i64], Some(&b.ffn_norm), self.cfg.rms_eps);
        let gu = h.linear::<Tensor>(&b.w_gate_up, None);
        let f = self.cfg.d_ffn as i64;
        (gu.narrow(-1, 0, f).silu() * gu.narrow(-1, f, f)).linear::<Tensor>(&b.w_down, None)
    }

    /// Final hidden states of whole sequences under full causal attention.
    ///
    /// # Shapes
    /// - `tokens`: `[batch, seq]` -> `[batch, seq, d_model]`
    pub fn hidden(&self, tokens: &Tensor) -> Tensor {
        self.forward(tokens, None)
    }

    /// Runs the first `seq` tokens in parallel and leaves their keys and values in `cache`, as
    /// if they had been decoded one by one: exact while `seq` is within every layer's budget
    /// (nothing would have been evicted), including H2O's scores (the attention each entry
    /// received, summed over the queries). Returns the logits of the last position.
    ///
    /// # Shapes
    /// - `tokens`: `[batch, seq]` -> `[batch, vocab]`
    pub fn prefill(&self, tokens: &Tensor, cache: &mut KvCache) -> Tensor {
        let h = self.forward(tokens, Some(cache));
        h.select(1, h.size()[1] - 1).linear::<Tensor>(&self.head, None)
    }

    fn forward(&self, tokens: &Tensor, mut cache: Option<&mut KvCache>) -> Tensor {
        let (batch, seq) = (tokens.size()[0], tokens.size()[1]);
        let (nh, nkv, hd) = (self.cfg.n_heads as i64, self.cfg.n_kv_heads as i64, self.cfg.head_dim() as i64);
        let cos = self.cos.narrow(0, 0, seq).view([1, seq, 1, hd / 2]);
        let sin = self.sin.narrow(0, 0, seq).view([1, seq, 1, hd / 2]);
        let mask = Tensor::ones([seq, seq], (Kind::Bool, self.device())).triu(1); // true above the diagonal
        let mut x = self.embed.index_select(0, &tokens.flatten(0, 1)).view([batch, seq, -1]);
        for (l, b) in self.blocks.iter().enumerate() {
            let h = x.rms_norm([self.cfg.d_model as i64], Some(&b.attn_norm), self.cfg.rms_eps);
            let qkv = h.linear::<Tensor>(&b.w_qkv, None).view([batch, seq, nh + 2 * nkv, hd]);
            let qk = rope(&qkv.narrow(2, 0, nh + nkv), &cos, &sin);
            let q = qk.narrow(2, 0, nh).view([batch, seq, nkv, nh / nkv, hd]).permute([0, 2, 3, 1, 4]); // [b, kv, g, seq, hd]
            let k = qk.narrow(2, nh, nkv).permute([0, 2, 1, 3]); // [b, kv, seq, hd]
            let v = qkv.narrow(2, nh + nkv, nkv).permute([0, 2, 1, 3]);
            let w = q.matmul(&k.unsqueeze(2).transpose(3, 4)).masked_fill(&mask, f64::NEG_INFINITY).softmax(-1, Kind::Float);
            if let Some(c) = cache.as_deref_mut() {
                c.layers[l].fill(&k, &v, &w.sum_dim_intlist([2, 3].as_slice(), false, Kind::Float));
            }
            let attn = w.matmul(&v.unsqueeze(2)).permute([0, 3, 1, 2, 4]).reshape([batch, seq, nh * hd]); // [b, seq, d]
            x = &x + attn.linear::<Tensor>(&b.w_o, None);
            x = &x + self.ffn(b, &x);
        }
        x.rms_norm([self.cfg.d_model as i64], Some(&self.norm), self.cfg.rms_eps)
    }

    /// Log-probability of each next token under full causal attention, one sequence at a time
    /// (bounds the `[heads, seq, seq]` attention memory).
    ///
    /// # Shapes
    /// - `tokens`: `[batch, seq]` -> `[batch, seq - 1]`: entry `t` is log p(token t+1 | tokens <= t)
    pub fn logprobs(&self, tokens: &Tensor) -> Tensor {
        let rows: Vec<Tensor> = (0..tokens.size()[0])
            .map(|i| {
                let seq = tokens.narrow(0, i, 1);
                let h = self.hidden(&seq).squeeze_dim(0); // [seq, d]
                let n = h.size()[0] - 1;
                let targets = seq.squeeze_dim(0).narrow(0, 1, n);
                let parts: Vec<Tensor> = (0..n)
                    .step_by(256)
                    .map(|s| {
                        let len = 256.min(n - s);
                        token_logprobs(&h.narrow(0, s, len).linear::<Tensor>(&self.head, None), &targets.narrow(0, s, len))
                    })
                    .collect();
                Tensor::cat(&parts, 0)
            })
            .collect();
        Tensor::stack(&rows, 0)
    }
}

/// log softmax(logits)[target] without materialising the whole log-softmax.
///
/// # Shapes
/// - `logits`: `[n, vocab]`, `targets`: `[n]` -> `[n]`
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> Tensor {
    logits.gather(1, &targets.unsqueeze(1), false).squeeze_dim(1) - logits.logsumexp([1].as_slice(), false)
}

/// cos/sin of `position * base^(-2i/head_dim)`, computed in f64, stored in f32.
///
/// # Shapes
/// -> two `[max_positions, head_dim/2]` tensors
pub fn rope_tables(max_positions: usize, head_dim: i64, base: f64, device: Device) -> (Tensor, Tensor) {
    let inv_freq = Tensor::arange_start_step(0, head_dim, 2, (Kind::Double, Device::Cpu)).divide_scalar(head_dim as f64);
    let inv_freq = Tensor::from(base).pow(&inv_freq).reciprocal();
    let pos = Tensor::arange(max_positions as i64, (Kind::Double, Device::Cpu));
    let angles = pos.outer(&inv_freq);
    (angles.cos().to_kind(Kind::Float).to_device(device), angles.sin().to_kind(Kind::Float).to_device(device))
}

/// Rotates the two halves of the last dimension (Hugging Face's `rotate_half` convention).
///
/// # Shapes
/// - `x`: `[..., head_dim]`; `cos`, `sin`: broadcastable to `[..., head_dim/2]` -> `[..., head_dim]`
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    let (x1, x2) = (x.narrow(-1, 0, half), x.narrow(-1, half, half));
    Tensor::cat(&[&x1 * cos - &x2 * sin, &x2 * cos + &x1 * sin], -1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The adjacent-pair rotation llama.cpp applies to the permuted rows.
    fn rope_adjacent(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let s = x.size();
        let p = x.view([-1, s[s.len() - 1] / 2, 2]);
        let (a, b) = (p.select(2, 0), p.select(2, 1));
        Tensor::stack(&[&a * cos - &b * sin, &b * cos + &a * sin], -1).view(s.as_slice())
    }

    #[test]
    fn unpermuted_weights_with_half_rotation_equal_permuted_weights_with_pair_rotation() {
        tch::manual_seed(0);
        let (heads, hd, d) = (3i64, 8i64, 5i64);
        let w_hf = Tensor::randn([heads * hd, d], (Kind::Float, Device::Cpu));
        // The converter's permutation, as in convert_hf_to_gguf.py.
        let w_gguf = w_hf.view([heads, 2, hd / 2, d]).transpose(1, 2).reshape([heads * hd, d]);
        assert!(unpermute_rows(&w_gguf, heads).equal(&w_hf));
        let x = Tensor::randn([d], (Kind::Float, Device::Cpu));
        let (cos, sin) = rope_tables(16, hd, 1e4, Device::Cpu);
        let (c, s) = (cos.get(7), sin.get(7));
        let hf = rope(&w_hf.mv(&x).view([heads, hd]), &c, &s);
        let gg = rope_adjacent(&w_gguf.mv(&x).view([heads, hd]), &c, &s);
        // Same rotated vectors up to the row order within each head: dot products agree.
        let y = Tensor::randn([heads * hd, d], (Kind::Float, Device::Cpu)).mv(&x).view([heads, hd]);
        let y_gguf = y.view([heads, 2, hd / 2]).transpose(1, 2).reshape([heads, hd]);
        let (qk_hf, qk_gg) = ((hf * rope(&y, &c, &s)).sum(Kind::Float), (gg * rope_adjacent(&y_gguf, &c, &s)).sum(Kind::Float));
        assert!((qk_hf - qk_gg).abs().double_value(&[]) < 1e-4);
    }

    #[test]
    fn rope_preserves_norms_and_relative_positions() {
        let (cos, sin) = rope_tables(64, 8, 1e4, Device::Cpu);
        let q = Tensor::randn([8], (Kind::Float, Device::Cpu));
        let k = Tensor::randn([8], (Kind::Float, Device::Cpu));
        let dot = |i: i64, j: i64| (rope(&q, &cos.get(i), &sin.get(i)) * rope(&k, &cos.get(j), &sin.get(j))).sum(Kind::Float).double_value(&[]);
        assert!((dot(10, 3) - dot(40, 33)).abs() < 1e-4);
    }
}
