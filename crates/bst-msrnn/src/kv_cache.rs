//! A bounded key/value cache per attention layer and the policies that decide what it keeps
//! (Oren et al. 2024, "Transformers are Multi-State RNNs", Sec. 3-4).
//!
//! # Model-agnostic use
//!
//! Any attention layer with per-layer keys and values (grouped KV heads allowed) drives one
//! [`LayerCache`] per decoding step, in this order:
//!
//! 1. [`LayerCache::append`] the new token's key and value (keys already rotated at their absolute
//!    position, as the official TOVA code and kvpress cache them) with that position;
//! 2. attend over [`LayerCache::keys`] / [`LayerCache::values`] (at most `k + 1` entries, no mask
//!    needed: every slot in the span is live), giving the current query's post-softmax weights;
//! 3. [`LayerCache::observe`] those weights, `[batch, q_heads, span]` with query head `h` reading
//!    KV head `h / (q_heads / kv_heads)` (the usual GQA grouping); the policy updates its scores and,
//!    if the cache holds more than `k` entries, evicts one per (sequence, KV head).
//!
//! Slots are not kept in position order: an evicted slot is reused by the next token. Attention
//! is a sum over the set of cached entries and their positions live in the rotated keys, so the
//! order does not matter, and nothing is copied or gathered when an entry leaves.
//! [`LayerCache::positions`] tells which absolute positions are in the cache (`-1`: the slot the
//! last eviction freed).
//!
//! # Policies
//! - `full`: no eviction (the topline).
//! - `window`: the last `k` tokens.
//! - `window+i`: the first `i` tokens ("sinks", Xiao et al. 2023) and the last `k - i`.
//! - `h2o` (Zhang et al. 2023, FMInference/H2O `modify_llama.py`): per KV head, the attention each
//!   entry has received from all queries so far, summed over the query heads of its group; the
//!   `k/2` most recent entries are always kept; the lowest-scoring older entry is dropped. Each KV
//!   head decides for itself.
//! - `tova` (schwartz-lab-NLP/TOVA `tova_cache.py`): the current query's weights averaged over all
//!   query heads of the layer; the lowest entry is dropped, one decision for every head of the
//!   layer; the new token may be the one dropped. Options: `tova-headwise` (each KV head averages
//!   its own group and decides alone) and `tova-keepnew` (the newest entry is never dropped, as in
//!   kvpress's `TOVAPress`).

use std::fmt;
use std::str::FromStr;

use tch::{Device, Kind, Tensor};

use crate::error::{MsrnnError, Result};

/// Sinks of `window+` when no number is given.
pub const DEFAULT_SINKS: usize = 4;

/// What a bounded cache keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    Full,
    Window,
    WindowSinks { sinks: usize },
    H2o,
    Tova { head_wise: bool, keep_newest: bool },
}

impl Policy {
    /// The study's five policies, in the paper's order.
    pub const PAPER: [Policy; 5] = [
        Policy::Full,
        Policy::Window,
        Policy::WindowSinks { sinks: DEFAULT_SINKS },
        Policy::H2o,
        Policy::Tova { head_wise: false, keep_newest: false },
    ];

    /// Checks that a budget of `k` entries makes sense for this policy.
    pub fn validate(self, k: usize) -> Result<()> {
        let bad = |why: String| Err(MsrnnError::Config(format!("policy {self} with k = {k}: {why}")));
        match self {
            Policy::WindowSinks { sinks } if k <= sinks => bad(format!("k must exceed the {sinks} sinks")),
            Policy::H2o if k < 2 => bad("k must be at least 2 (k/2 recent, the rest heavy hitters)".into()),
            _ if k == 0 => bad("k must be at least 1".into()),
            _ => Ok(()),
        }
    }

    fn needs_scores(self) -> bool {
        matches!(self, Policy::H2o)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Policy::Full => f.write_str("full"),
            Policy::Window => f.write_str("window"),
            Policy::WindowSinks { sinks } => write!(f, "window+{sinks}"),
            Policy::H2o => f.write_str("h2o"),
            Policy::Tova { head_wise: false, keep_newest: false } => f.write_str("tova"),
            Policy::Tova { head_wise: true, keep_newest: false } => f.write_str("tova-headwise"),
            Policy::Tova { head_wise: false, keep_newest: true } => f.write_str("tova-keepnew"),
            Policy::Tova { head_wise: true, keep_newest: true } => f.write_str("tova-headwise-keepnew"),
        }
    }
}

impl FromStr for Policy {
    type Err = MsrnnError;

    fn from_str(s: &str) -> Result<Self> {
        let unknown = || MsrnnError::UnknownPolicy { name: s.to_string() };
        let tova = |head_wise, keep_newest| Ok(Policy::Tova { head_wise, keep_newest });
        match s.trim() {
            "full" => Ok(Policy::Full),
            "window" => Ok(Policy::Window),
            "window+" => Ok(Policy::WindowSinks { sinks: DEFAULT_SINKS }),
            "h2o" => Ok(Policy::H2o),
            "tova" => tova(false, false),
            "tova-headwise" => tova(true, false),
            "tova-keepnew" => tova(false, true),
            "tova-headwise-keepnew" => tova(true, true),
            other => match other.strip_prefix("window+").map(str::parse::<usize>) {
                Some(Ok(sinks)) if sinks > 0 => Ok(Policy::WindowSinks { sinks }),
                _ => Err(unknown()),
            },
        }
    }
}

/// The keys and values of one attention layer, at most `budget` entries per (sequence, KV head)
/// between steps (`budget + 1` while the new token is being attended to).
pub struct LayerCache {
    policy: Policy,
    budget: Option<usize>,
    /// `[batch, kv_heads, capacity, head_dim]`
    keys: Option<Tensor>,
    values: Option<Tensor>,
    /// `[batch, kv_heads, capacity]` absolute position of each slot, -1 when empty.
    positions: Option<Tensor>,
    /// `[batch, kv_heads, capacity]` H2O's accumulated attention.
    scores: Option<Tensor>,
    /// Slots in use: the attention span.
    len: i64,
    /// Entries in the cache (the span minus a slot freed by the last eviction).
    live: i64,
    /// `[batch, kv_heads]` the slot freed by the last eviction, which the next token takes.
    free: Option<Tensor>,
    newest: i64,
}

impl LayerCache {
    /// An empty cache; `budget: None` keeps everything.
    pub fn new(policy: Policy, budget: Option<usize>) -> Self {
        let budget = if policy == Policy::Full { None } else { budget };
        Self { policy, budget, keys: None, values: None, positions: None, scores: None, len: 0, live: 0, free: None, newest: -1 }
    }

    /// Entries held now (never more than the budget between steps).
    pub fn live(&self) -> usize {
        self.live as usize
    }

    /// Bytes of the keys and values of the live entries.
    pub fn bytes(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| {
            let s = k.size();
            (2 * s[0] * s[1] * self.live * s[3]) as usize * k.kind().elt_size_in_bytes()
        })
    }

    /// Keys over the attention span. # Shapes: `[batch, kv_heads, span, head_dim]`.
    pub fn keys(&self) -> Tensor {
        self.keys.as_ref().expect("append before attending").narrow(2, 0, self.len)
    }

    /// Values over the attention span. # Shapes: `[batch, kv_heads, span, head_dim]`.
    pub fn values(&self) -> Tensor {
        self.values.as_ref().expect("append before attending").narrow(2, 0, self.len)
    }

    /// Absolute position of each slot of the span, -1 for a freed slot. # Shapes: `[batch, kv_heads, span]`.
    pub fn positions(&self) -> Tensor {
        self.positions.as_ref().map_or_else(|| Tensor::zeros([0], (Kind::Int64, Device::Cpu)), |p| p.narrow(2, 0, self.len))
    }

    fn allocate(&mut self, k: &Tensor) {
        let (b, h, d) = (k.size()[0], k.size()[1], k.size()[3]);
        let cap = self.budget.map_or(256, |k| k as i64 + 1);
        self.keys = Some(Tensor::zeros([b, h, cap, d], (k.kind(), k.device())));
        self.values = Some(Tensor::zeros([b, h, cap, d], (k.kind(), k.device())));
        self.positions = Some(Tensor::full([b, h, cap], -1, (Kind::Int64, k.device())));
        if self.policy.needs_scores() {
            self.scores = Some(Tensor::zeros([b, h, cap], (Kind::Float, k.device())));
        }
    }

    /// Doubles the capacity of an unbounded cache.
    fn grow(&mut self) {
        let double = |t: &mut Option<Tensor>, fill: f64| {
            if let Some(x) = t.take() {
                let pad = Tensor::full(x.size(), fill, (x.kind(), x.device()));
                *t = Some(Tensor::cat(&[x, pad], 2));
            }
        };
        double(&mut self.keys, 0.0);
        double(&mut self.values, 0.0);
        double(&mut self.positions, -1.0);
        double(&mut self.scores, 0.0);
    }

    /// Starts an empty cache with the keys and values of positions `0..seq` (a parallel prefill),
    /// and `received`, the attention each has received so far (H2O's score).
    ///
    /// # Shapes
    /// - `keys`, `values`: `[batch, kv_heads, seq, head_dim]`; `received`: `[batch, kv_heads, seq]`
    pub fn fill(&mut self, keys: &Tensor, values: &Tensor, received: &Tensor) {
        assert!(self.keys.is_none(), "fill starts an empty cache");
        let seq = keys.size()[2];
        assert!(self.budget.is_none_or(|k| seq <= k as i64), "a prefill of {seq} tokens would overflow the budget {:?}", self.budget);
        self.allocate(&keys.narrow(2, 0, 1));
        while self.keys.as_ref().is_some_and(|k| k.size()[2] < seq) {
            self.grow();
        }
        let at = |t: &Option<Tensor>| t.as_ref().expect("allocated").narrow(2, 0, seq);
        at(&self.keys).copy_(keys);
        at(&self.values).copy_(values);
        at(&self.positions).copy_(&Tensor::arange(seq, (Kind::Int64, keys.device())).expand(at(&self.positions).size(), false));
        if let Some(s) = self.scores.as_ref() {
            s.narrow(2, 0, seq).copy_(received);
        }
        self.len = seq;
        self.live = seq;
        self.newest = seq - 1;
    }

    /// Adds the new token's key and value at absolute `position`.
    ///
    /// # Shapes
    /// - `key`, `value`: `[batch, kv_heads, 1, head_dim]`
    pub fn append(&mut self, key: &Tensor, value: &Tensor, position: i64) {
        if self.keys.is_none() {
            self.allocate(key);
        }
        match self.free.take() {
            Some(slot) => self.write_at(&slot, key, value, position),
            None => {
                if self.len == self.keys.as_ref().map_or(0, |k| k.size()[2]) {
                    self.grow();
                }
                let at = |t: &Option<Tensor>| t.as_ref().map(|t| t.narrow(2, self.len, 1));
                at(&self.keys).expect("allocated").copy_(key);
                at(&self.values).expect("allocated").copy_(value);
                let _ = at(&self.positions).expect("allocated").fill_(position);
                self.len += 1;
            }
        }
        self.live += 1;
        self.newest = position;
    }

    /// Writes into the slot each (sequence, KV head) freed. `slot`: `[batch, kv_heads]`.
    fn write_at(&mut self, slot: &Tensor, key: &Tensor, value: &Tensor, position: i64) {
        let idx3 = slot.unsqueeze(-1); // [b, h, 1]
        let idx4 = idx3.unsqueeze(-1).expand(key.size(), false); // [b, h, 1, d]
        let _ = self.keys.as_mut().expect("allocated").scatter_(2, &idx4, key);
        let _ = self.values.as_mut().expect("allocated").scatter_(2, &idx4, value);
        let _ = self.positions.as_mut().expect("allocated").scatter_value_(2, &idx3, position);
        if let Some(s) = self.scores.as_mut() {
            let _ = s.scatter_value_(2, &idx3, 0.0);
        }
    }

    /// Takes the current query's attention weights over the span and lets the policy evict.
    ///
    /// # Shapes
    /// - `weights`: `[batch, q_heads, span]`, post-softmax, `q_heads` a multiple of `kv_heads`
    pub fn observe(&mut self, weights: &Tensor) {
        let kv_heads = self.keys.as_ref().expect("append before observe").size()[1];
        let w = weights.view([weights.size()[0], kv_heads, -1, self.len]); // [b, h, group, span]
        if let Some(s) = self.scores.as_mut() {
            let mut span = s.narrow(2, 0, self.len);
            span += w.sum_dim_intlist(2, false, Kind::Float);
        }
        if self.budget.is_some_and(|k| self.live > k as i64) {
            let victim = self.victim(&w);
            let _ = self.positions.as_mut().expect("allocated").scatter_value_(2, &victim.unsqueeze(-1), -1);
            self.free = Some(victim);
            self.live -= 1;
        }
    }

    /// The slot to drop for every (sequence, KV head). `w`: `[batch, kv_heads, group, span]`.
    fn victim(&self, w: &Tensor) -> Tensor {
        let pos = self.positions();
        let budget = self.budget.expect("bounded") as i64;
        match self.policy {
            Policy::Full => unreachable!("the full cache never evicts"),
            Policy::Window => pos.argmin(2, false),
            Policy::WindowSinks { sinks } => pos.masked_fill(&pos.lt(sinks as i64), i64::MAX).argmin(2, false),
            Policy::H2o => {
                let recent = pos.gt(self.newest - budget / 2);
                let s = self.scores.as_ref().expect("h2o keeps scores").narrow(2, 0, self.len);
                s.masked_fill(&recent, f64::INFINITY).argmin(2, false)
            }
            Policy::Tova { head_wise, keep_newest } => {
                let mut s = if head_wise { w.mean_dim(2, false, Kind::Float) } else { w.mean_dim([1, 2].as_slice(), true, Kind::Float).squeeze_dim(1) }; // [b, h or 1, span]
                if keep_newest {
                    s = s.masked_fill(&pos.narrow(1, 0, s.size()[1]).eq(self.newest), f64::INFINITY);
                }
                s.argmin(2, false).expand([pos.size()[0], pos.size()[1]], false)
            }
        }
    }
}

/// One decoding step of attention for one layer: the batch is split into `caches.len()` equal
/// groups of consecutive rows, group `g` appending its new key/value to `caches[g]`, attending
/// over it and letting its policy evict. Any model's step attention goes through here, so every
/// model is bounded by the same code.
///
/// # Shapes
/// - `q`: `[batch, q_heads, head_dim]`, rotated and already scaled by 1/sqrt(head_dim)
/// - `k`, `v`: `[batch, kv_heads, head_dim]` (`k` rotated at `position`); `q_heads` a multiple of `kv_heads`
/// - returns `[batch, q_heads * head_dim]`
pub fn attend_step(q: &Tensor, k: &Tensor, v: &Tensor, caches: &mut [&mut LayerCache], position: i64) -> Tensor {
    let (batch, nh, hd) = q.size3().expect("q must be [batch, q_heads, head_dim]");
    let nkv = k.size()[1];
    let per = batch / caches.len() as i64;
    let outs: Vec<Tensor> = caches
        .iter_mut()
        .enumerate()
        .map(|(g, cache)| {
            let rows = |t: &Tensor| t.narrow(0, g as i64 * per, per);
            cache.append(&rows(k).unsqueeze(2), &rows(v).unsqueeze(2), position);
            let q = rows(q).view([per, nkv, nh / nkv, hd]); // [per, kv, group, hd]
            let w = q.matmul(&cache.keys().transpose(2, 3)).softmax(-1, Kind::Float); // [per, kv, group, span]
            let out = w.matmul(&cache.values()).view([per, nh * hd]);
            cache.observe(&w.view([per, nh, -1]));
            out
        })
        .collect();
    if outs.len() == 1 { outs.into_iter().next().expect("one group") } else { Tensor::cat(&outs, 0) }
}

/// One [`LayerCache`] per layer, all with the same policy and budget.
pub struct KvCache {
    pub layers: Vec<LayerCache>,
}

impl KvCache {
    pub fn new(n_layers: usize, policy: Policy, budget: Option<usize>) -> Self {
        Self { layers: (0..n_layers).map(|_| LayerCache::new(policy, budget)).collect() }
    }

    /// The largest number of entries any layer holds now.
    pub fn max_live(&self) -> usize {
        self.layers.iter().map(LayerCache::live).max().unwrap_or(0)
    }

    pub fn bytes(&self) -> usize {
        self.layers.iter().map(LayerCache::bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends positions `0..weights.len()` with dummy keys, observing the given query weights
    /// (`weights[t][q_head]` over the span at step t); returns the kept positions per KV head.
    fn run(policy: Policy, k: usize, kv_heads: i64, weights: &[Vec<Vec<f32>>]) -> Vec<Vec<i64>> {
        let mut c = LayerCache::new(policy, Some(k));
        for (t, w) in weights.iter().enumerate() {
            let kv = Tensor::full([1, kv_heads, 1, 1], t as f64, (Kind::Float, Device::Cpu));
            c.append(&kv, &kv, t as i64);
            let span = w[0].len() as i64;
            assert_eq!(span, c.keys().size()[2], "step {t}: the test's weights must cover the span");
            let flat: Vec<f32> = w.iter().flatten().copied().collect();
            c.observe(&Tensor::from_slice(&flat).view([1, w.len() as i64, span]));
            assert!(policy == Policy::Full || c.live() <= k, "step {t}: {} entries with k = {k}", c.live());
        }
        kept(&c)
    }

    fn kept(c: &LayerCache) -> Vec<Vec<i64>> {
        let p = c.positions();
        (0..p.size()[1])
            .map(|h| {
                let mut v: Vec<i64> = Vec::try_from(p.get(0).get(h)).unwrap();
                v.retain(|&x| x >= 0);
                v.sort_unstable();
                v
            })
            .collect()
    }

    fn uniform(steps: usize) -> Vec<Vec<Vec<f32>>> {
        (1..=steps).map(|n| vec![vec![1.0 / n as f32; n]]).collect()
    }

    /// Span sizes when k = 3 and 5 tokens arrive: 1, 2, 3, 4, 4.
    fn spans(k: usize, steps: usize) -> Vec<usize> {
        (1..=steps).map(|n| n.min(k + 1)).collect()
    }

    #[test]
    fn policy_names_round_trip() {
        for name in ["full", "window", "window+4", "window+1", "h2o", "tova", "tova-headwise", "tova-keepnew"] {
            assert_eq!(name.parse::<Policy>().unwrap().to_string(), name);
        }
        assert_eq!("window+".parse::<Policy>().unwrap(), Policy::WindowSinks { sinks: 4 });
        let e = "tovaa".parse::<Policy>().unwrap_err().to_string();
        assert!(e.contains("`tovaa`") && e.contains("window+I"), "{e}");
        assert!(Policy::WindowSinks { sinks: 4 }.validate(4).is_err());
    }

    #[test]
    fn window_keeps_the_last_k() {
        let w: Vec<Vec<Vec<f32>>> = spans(4, 6).iter().map(|&n| vec![vec![1.0 / n as f32; n]]).collect();
        assert_eq!(run(Policy::Window, 4, 1, &w), vec![vec![2, 3, 4, 5]]);
    }

    #[test]
    fn window_with_sinks_keeps_the_first_i_and_the_last_k_minus_i() {
        let w: Vec<Vec<Vec<f32>>> = spans(4, 7).iter().map(|&n| vec![vec![1.0 / n as f32; n]]).collect();
        assert_eq!(run(Policy::WindowSinks { sinks: 2 }, 4, 1, &w), vec![vec![0, 1, 5, 6]]);
    }

    #[test]
    fn full_keeps_everything() {
        let w = uniform(5);
        assert_eq!(run(Policy::Full, 2, 1, &w), vec![vec![0, 1, 2, 3, 4]]);
    }

    /// Steps 0-2 fill a k = 3 cache; at step 3 the two query heads weigh positions 0..3 as
    /// A = [.15 .5 .3 .05], B = [.5 .2 .05 .25]: mean [.325 .35 .175 .15].
    fn tova_example() -> Vec<Vec<Vec<f32>>> {
        let fill = |n: usize| vec![vec![1.0 / n as f32; n]; 2];
        vec![fill(1), fill(2), fill(3), vec![vec![0.15, 0.5, 0.3, 0.05], vec![0.5, 0.2, 0.05, 0.25]]]
    }

    #[test]
    fn tova_drops_the_lowest_mean_weight_even_the_new_token() {
        let tova = Policy::Tova { head_wise: false, keep_newest: false };
        assert_eq!(run(tova, 3, 1, &tova_example()), vec![vec![0, 1, 2]]);
        // One decision per layer: with two KV heads (one query head each), both drop position 3.
        assert_eq!(run(tova, 3, 2, &tova_example()), vec![vec![0, 1, 2], vec![0, 1, 2]]);
    }

    #[test]
    fn tova_options_keep_the_newest_or_decide_per_head() {
        let keepnew = Policy::Tova { head_wise: false, keep_newest: true };
        assert_eq!(run(keepnew, 3, 1, &tova_example()), vec![vec![0, 1, 3]]);
        let headwise = Policy::Tova { head_wise: true, keep_newest: false };
        assert_eq!(run(headwise, 3, 2, &tova_example()), vec![vec![0, 1, 2], vec![0, 1, 3]]);
    }

    #[test]
    fn tova_reuses_the_freed_slot_and_keeps_deciding_over_the_live_set() {
        let tova = Policy::Tova { head_wise: false, keep_newest: false };
        let mut w = tova_example();
        // Step 4: position 4 takes position 3's slot, so the span holds positions [0 1 2 4].
        w.push(vec![vec![0.1, 0.2, 0.3, 0.4], vec![0.1, 0.4, 0.3, 0.2]]);
        assert_eq!(run(tova, 3, 1, &w), vec![vec![1, 2, 4]]);
    }

    /// k = 4 (2 recent, 2 heavy), 2 KV heads with 2 query heads each. Accumulated scores at step 4,
    /// summed over each group: KV head 0 [4.1 1.6 1.5 1.6 1.2], KV head 1 [4.2 1.2 1.9 1.5 1.2].
    /// Positions 3 and 4 are recent (kept whatever their score); among 0-2 the lowest goes.
    #[test]
    fn h2o_drops_the_lowest_accumulated_score_outside_the_recent_half_per_kv_head() {
        let same = |v: Vec<f32>| vec![v.clone(), v.clone(), v.clone(), v];
        let w = vec![
            same(vec![1.0]),
            vec![vec![0.5, 0.5], vec![0.9, 0.1], vec![0.5, 0.5], vec![0.9, 0.1]],
            same(vec![0.2, 0.2, 0.6]),
            same(vec![0.1, 0.1, 0.1, 0.7]),
            vec![vec![0.1, 0.1, 0.1, 0.1, 0.6], vec![0.0, 0.3, 0.0, 0.1, 0.6], vec![0.1, 0.0, 0.2, 0.1, 0.6], vec![0.1, 0.0, 0.3, 0.0, 0.6]],
        ];
        assert_eq!(run(Policy::H2o, 4, 2, &w), vec![vec![0, 1, 3, 4], vec![0, 2, 3, 4]]);
    }

    #[test]
    fn cache_bytes_count_live_entries() {
        let mut c = LayerCache::new(Policy::Window, Some(2));
        for t in 0..5 {
            let kv = Tensor::zeros([3, 2, 1, 8], (Kind::Float, Device::Cpu));
            c.append(&kv, &kv, t);
            c.observe(&Tensor::ones([3, 4, c.keys().size()[2]], (Kind::Float, Device::Cpu)));
        }
        assert_eq!(c.bytes(), 2 * 3 * 2 * 2 * 8 * 4);
    }
}
