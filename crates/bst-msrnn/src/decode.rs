//! Token-by-token decoding of several sequences at once, from an empty bounded cache: the
//! multi-state RNN view of a transformer (each step reads and updates a state of at most `k`
//! key/value entries per layer).

use tch::{Device, Kind, Tensor};

use crate::error::Result;
use crate::kv_cache::{KvCache, Policy};
use crate::llama::{token_logprobs, Llama};

/// A decoder that steps one token per row through one bounded [`KvCache`] per group of rows: the
/// pretrained [`Llama`] and the lab's own TRANSFORMER ([`crate::LabTransformer`]).
pub trait StepModel {
    fn device(&self) -> Device;
    /// Attention layers, one [`crate::LayerCache`] each.
    fn n_layers(&self) -> usize;
    /// Decodes one token per row at absolute `position`: the rows are split into `caches.len()`
    /// equal groups of consecutive rows, group `g` attending through `caches[g]`.
    ///
    /// # Shapes
    /// - `tokens`: `[batch]` (i64) -> logits `[batch, vocab]`
    fn step_groups(&self, tokens: &Tensor, position: i64, caches: &mut [KvCache]) -> Tensor;

    fn new_cache(&self, policy: Policy, budget: Option<usize>) -> KvCache {
        KvCache::new(self.n_layers(), policy, budget)
    }
}

impl StepModel for Llama {
    fn device(&self) -> Device {
        Llama::device(self)
    }
    fn n_layers(&self) -> usize {
        self.cfg.n_layers
    }
    fn step_groups(&self, tokens: &Tensor, position: i64, caches: &mut [KvCache]) -> Tensor {
        Llama::step_groups(self, tokens, position, caches)
    }
}

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
pub fn decode<M: StepModel + ?Sized>(model: &M, tokens: &Tensor, policy: Policy, k: Option<usize>, mut on_step: impl FnMut(i64, &KvCache)) -> Result<Decoded> {
    let mut out = decode_settings(model, tokens, &[(policy, k)], |t, caches| on_step(t, &caches[0]))?;
    Ok(out.remove(0))
}

/// Decodes the same `tokens` under several (policy, budget) settings at once: one batch of
/// `settings.len() * batch` rows, each setting with its own caches (see [`StepModel::step_groups`]).
/// Returns one [`Decoded`] per setting, in order; `on_step(t, caches)` sees every setting's cache.
///
/// # Shapes
/// - `tokens`: `[batch, seq]` (i64)
pub fn decode_settings<M: StepModel + ?Sized>(model: &M, tokens: &Tensor, settings: &[(Policy, Option<usize>)], mut on_step: impl FnMut(i64, &[KvCache])) -> Result<Vec<Decoded>> {
    for &(policy, k) in settings {
        if let Some(k) = k {
            policy.validate(k)?;
        }
    }
    let _guard = tch::no_grad_guard();
    let tokens = tokens.to_device(model.device()).to_kind(Kind::Int64);
    let (batch, seq) = (tokens.size()[0], tokens.size()[1]);
    let rows = tokens.repeat([settings.len() as i64, 1]); // [settings * batch, seq]
    let mut caches: Vec<KvCache> = settings.iter().map(|&(p, k)| model.new_cache(p, k)).collect();
    let mut longest = vec![0; settings.len()];
    let mut out = Vec::with_capacity(seq.max(1) as usize - 1);
    for t in 0..seq {
        let logits = model.step_groups(&rows.select(1, t), t, &mut caches); // [rows, vocab]
        if t + 1 < seq {
            out.push(token_logprobs(&logits, &rows.select(1, t + 1)));
        }
        for (l, c) in longest.iter_mut().zip(&caches) {
            *l = (*l).max(c.max_live());
        }
        on_step(t, &caches);
    }
    let logprobs = if out.is_empty() { Tensor::zeros([rows.size()[0], 0], (Kind::Float, model.device())) } else { Tensor::stack(&out, 1) };
    Ok(caches
        .iter()
        .enumerate()
        .map(|(g, c)| Decoded { logprobs: logprobs.narrow(0, g as i64 * batch, batch), max_cache_len: longest[g], cache_bytes: c.bytes() })
        .collect())
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
    fn settings_decoded_together_equal_settings_decoded_alone() {
        let m = tiny();
        let toks = tokens(2, 30, 5);
        let settings: Vec<(Policy, Option<usize>)> = all_policies().into_iter().map(|p| (p, Some(6))).chain([(Policy::Window, Some(3))]).collect();
        let together = decode_settings(&m, &toks, &settings, |_, _| {}).unwrap();
        for (&(p, k), got) in settings.iter().zip(&together) {
            let alone = decode(&m, &toks, p, k, |_, _| {}).unwrap();
            assert!(max_diff(&got.logprobs, &alone.logprobs) < 1e-4, "{p} k = {k:?}");
            assert_eq!(got.max_cache_len, alone.max_cache_len, "{p}");
        }
    }

    #[test]
    fn a_parallel_prefill_within_the_budget_equals_decoding_token_by_token() {
        let m = tiny();
        let toks = tokens(2, 20, 6);
        for p in all_policies() {
            let stepped = decode(&m, &toks, p, Some(8), |_, _| {}).unwrap();
            let _g = tch::no_grad_guard();
            let mut cache = m.new_cache(p, Some(8));
            let mut logits = m.prefill(&toks.narrow(1, 0, 8), &mut cache);
            let mut lps = vec![];
            for t in 8..20 {
                lps.push(token_logprobs(&logits, &toks.select(1, t)));
                logits = m.step(&toks.select(1, t), t, &mut cache);
            }
            let d = max_diff(&Tensor::stack(&lps, 1), &stepped.logprobs.narrow(1, 7, 12));
            assert!(d < 1e-4, "{p}: {d}");
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
