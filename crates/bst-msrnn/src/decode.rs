//! Token-by-token decoding of several sequences at once, from an empty bounded cache: the
//! multi-state RNN view of a transformer (each step reads and updates a state of at most `k`
//! key/value entries per layer).

use tch::{Kind, Tensor};

use crate::error::Result;
use crate::kv_cache::{KvCache, Policy};
use crate::llama::{token_logprobs, Llama};

/// What one decode produced.
pub struct Decoded {
    /// `[batch, seq - 1]`: entry `t` is log p(token t+1 | the cache after token t).
    pub logprobs: Tensor,
    /// The largest number of entries any layer held between steps.
    pub max_cache_len: usize,
    /// Cache bytes (all layers, all sequences) at the end.
    pub cache_bytes: usize,
}

/// Decodes `tokens` one position at a time with `policy` and budget `k` (`None`: unbounded).
/// `on_step(t, cache)` runs after position `t` has been decoded and its eviction done.
///
/// # Shapes
/// - `tokens`: `[batch, seq]` (i64, all sequences of one length)
pub fn decode(model: &Llama, tokens: &Tensor, policy: Policy, k: Option<usize>, mut on_step: impl FnMut(i64, &KvCache)) -> Result<Decoded> {
    if let Some(k) = k {
        policy.validate(k)?;
    }
    let _guard = tch::no_grad_guard();
    let tokens = tokens.to_device(model.device()).to_kind(Kind::Int64);
    let seq = tokens.size()[1];
    let mut cache = model.new_cache(policy, k);
    let mut max_cache_len = 0;
    let mut out = Vec::with_capacity(seq.max(1) as usize - 1);
    for t in 0..seq {
        let logits = model.step(&tokens.select(1, t), t, &mut cache); // [batch, vocab]
        if t + 1 < seq {
            out.push(token_logprobs(&logits, &tokens.select(1, t + 1)));
        }
        max_cache_len = max_cache_len.max(cache.max_live());
        on_step(t, &cache);
    }
    let batch = tokens.size()[0];
    let logprobs = if out.is_empty() { Tensor::zeros([batch, 0], (Kind::Float, model.device())) } else { Tensor::stack(&out, 1) };
    Ok(Decoded { logprobs, max_cache_len, cache_bytes: cache.bytes() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llama::LlamaConfig;

    fn tiny() -> Llama {
        let cfg = LlamaConfig { n_layers: 2, d_model: 32, n_heads: 4, n_kv_heads: 2, d_ffn: 48, vocab: 50, rope_base: 1e4, rms_eps: 1e-5, max_positions: 128 };
        Llama::random(cfg, 7).unwrap()
    }

    fn tokens(batch: i64, seq: i64, seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randint(50, [batch, seq], (Kind::Int64, tch::Device::Cpu))
    }

    fn all_policies() -> Vec<Policy> {
        let mut p = Policy::PAPER.to_vec();
        p.push(Policy::Tova { head_wise: true, keep_newest: false });
        p.push(Policy::Tova { head_wise: false, keep_newest: true });
        p
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn every_policy_equals_the_full_model_when_k_covers_the_sequence() {
        let m = tiny();
        let toks = tokens(2, 24, 1);
        let full = tch::no_grad(|| m.logprobs(&toks));
        for p in all_policies() {
            let out = decode(&m, &toks, p, Some(24), |_, _| {}).unwrap();
            let d = max_diff(&out.logprobs, &full);
            assert!(d < 1e-4, "{p}: max |difference| {d}");
        }
    }

    #[test]
    fn bounded_policies_differ_from_the_full_model_and_never_exceed_k() {
        let m = tiny();
        let toks = tokens(2, 40, 2);
        let full = tch::no_grad(|| m.logprobs(&toks));
        for p in all_policies().into_iter().filter(|p| *p != Policy::Full) {
            let mut worst = 0;
            let out = decode(&m, &toks, p, Some(8), |t, cache| {
                for l in &cache.layers {
                    let live = l.positions().ge(0).sum(Kind::Int64).int64_value(&[]) / (2 * 2);
                    worst = worst.max(live);
                    assert_eq!(live as usize, l.live(), "{p} step {t}");
                }
            })
            .unwrap();
            assert!(worst <= 8 && out.max_cache_len == 8, "{p}: {worst} / {}", out.max_cache_len);
            assert!(max_diff(&out.logprobs, &full) > 1e-3, "{p} with k = 8 of 40 should change something");
            // The first k+1 predictions see at most k tokens: no eviction has happened yet.
            assert!(max_diff(&out.logprobs.narrow(1, 0, 8), &full.narrow(1, 0, 8)) < 1e-4, "{p}");
        }
    }

    #[test]
    fn a_batch_gives_the_same_numbers_as_one_sequence_at_a_time() {
        let m = tiny();
        let toks = tokens(3, 30, 3);
        for p in all_policies() {
            let together = decode(&m, &toks, p, Some(6), |_, _| {}).unwrap().logprobs;
            for i in 0..3 {
                let alone = decode(&m, &toks.narrow(0, i, 1), p, Some(6), |_, _| {}).unwrap().logprobs;
                let d = max_diff(&together.narrow(0, i, 1), &alone);
                assert!(d < 1e-4, "{p} sequence {i}: {d}");
            }
        }
    }

    #[test]
    fn window_cache_holds_exactly_the_last_k_positions() {
        let m = tiny();
        let toks = tokens(1, 20, 4);
        decode(&m, &toks, Policy::Window, Some(5), |t, cache| {
            let mut p: Vec<i64> = Vec::try_from(cache.layers[1].positions().get(0).get(1)).unwrap();
            p.retain(|&x| x >= 0);
            p.sort_unstable();
            let want: Vec<i64> = ((t - 4).max(0)..=t).collect();
            assert_eq!(p, want, "step {t}");
        })
        .unwrap();
    }
}
