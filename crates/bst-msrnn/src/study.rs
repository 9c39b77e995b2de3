//! The paper's language-modelling protocol (Oren et al. 2024, Sec. 5.1) on our texts: chunks of
//! `C` tokens spread over the documents, each decoded from an empty cache with a policy and a
//! budget `k`; perplexity over the targets predicted with more than `from` tokens of context
//! (by default `from = k`: exactly the targets a bounded cache can change), against the full
//! model on the same targets. Also: which positions and which kinds of token TOVA keeps.

use tch::{Kind, Tensor};

use crate::error::{MsrnnError, Result};
use crate::gguf_tokenizer::GgufTokenizer;
use crate::kv_cache::Policy;
use crate::llama::Llama;

/// A window of one document's tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub doc: String,
    /// Index of the first token within the document.
    pub start: usize,
    pub tokens: Vec<i64>,
}

/// `n` non-overlapping chunks of `len` tokens, spread evenly over all windows of all documents
/// (in document order), so that long documents give more chunks than short ones.
pub fn pick_chunks(docs: &[(String, Vec<i64>)], len: usize, n: usize) -> Result<Vec<Chunk>> {
    let windows: Vec<(usize, usize)> = docs.iter().enumerate().flat_map(|(d, (_, toks))| (0..toks.len() / len).map(move |j| (d, j * len))).collect();
    if windows.len() < n || n == 0 {
        return Err(MsrnnError::Config(format!("asked for {n} chunks of {len} tokens; the texts hold {} such windows", windows.len())));
    }
    Ok((0..n)
        .map(|i| {
            let (d, start) = windows[(2 * i + 1) * windows.len() / (2 * n)];
            Chunk { doc: docs[d].0.clone(), start, tokens: docs[d].1[start..start + len].to_vec() }
        })
        .collect())
}

/// Negative log-likelihood summed over the scored targets, and their count.
///
/// # Shapes
/// - `logprobs`: `[chunks, seq - 1]`; column `j` predicts token `j + 1` from `j + 1` tokens of
///   context, so the scored columns are `j >= from`.
pub fn nll_from(logprobs: &Tensor, from: usize) -> (f64, i64) {
    let cols = logprobs.size()[1];
    let from = (from as i64).min(cols);
    let scored = logprobs.narrow(1, from, cols - from);
    (-scored.to_kind(Kind::Double).sum(Kind::Double).double_value(&[]), scored.numel() as i64)
}

/// One (policy, k) measurement of one context length.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub context: usize,
    pub policy: String,
    pub k: usize,
    /// Targets scored: tokens predicted from more than `from` tokens of context.
    pub from: usize,
    pub chunks: usize,
    pub targets: i64,
    pub ppl: f64,
    /// The full model (causal attention over the whole chunk) on the same targets.
    pub topline_ppl: f64,
    /// Largest number of entries any layer's cache held between steps.
    pub max_cache_len: usize,
    /// Bytes of keys and values per sequence at the end of the chunk (f32, all layers).
    pub cache_bytes_per_seq: usize,
    /// Decoded tokens per second (all sequences of the batch counted), wall clock.
    pub tokens_per_s: f64,
    pub batch: usize,
}

/// Kinds of token for the kept-token statistics, from the token's text in the byte-level
/// alphabet (`Ġ` is a leading space, `Ċ` a newline).
pub const TOKEN_TYPES: [&str; 8] = ["first token", "newline", "punctuation", "digit", "Capitalised word", "word start", "word piece", "other"];

pub fn token_type(tok: &GgufTokenizer, id: i64, position: i64) -> usize {
    if position == 0 {
        return 0;
    }
    let text = tok.token_text(id);
    if text.contains('Ċ') {
        return 1;
    }
    let body = text.trim_start_matches('Ġ');
    let spaced = body.len() < text.len();
    let first = body.chars().next();
    match first {
        None => 7,
        Some(c) if c.is_ascii_punctuation() && body.chars().all(|c| c.is_ascii_punctuation()) => 2,
        Some(c) if c.is_numeric() => 3,
        Some(c) if c.is_alphabetic() && c.is_uppercase() => 4,
        Some(c) if c.is_alphabetic() && spaced => 5,
        Some(c) if c.is_alphabetic() => 6,
        _ => 7,
    }
}

/// Counts of what a cache kept at snapshot steps, pooled over chunks, layers and KV heads.
#[derive(Debug, Clone, Default)]
pub struct Kept {
    /// Per age bucket (see [`age_bucket`]), the first token left out: (kept, present).
    pub by_age: Vec<(u64, u64)>,
    /// Per [`TOKEN_TYPES`] entry: (kept, present).
    pub by_type: [(u64, u64); 8],
    /// Per layer: (first token kept, snapshots).
    pub first_by_layer: Vec<(u64, u64)>,
}

/// Bucket `b` holds ages in `[2^b - 1, 2^(b+1) - 1)`: 0, 1-2, 3-6, 7-14, ...
pub fn age_bucket(age: i64) -> usize {
    (64 - (age as u64 + 1).leading_zeros() - 1) as usize
}

/// Smallest age of bucket `b`.
pub fn bucket_start(b: usize) -> i64 {
    (1i64 << b) - 1
}

impl Kept {
    /// Adds one snapshot at step `t` of one layer: `positions` `[batch, kv_heads, span]` (-1 free),
    /// `tokens[b][p]` the token ids.
    pub fn add(&mut self, tok: &GgufTokenizer, layer: usize, t: i64, positions: &Tensor, tokens: &[Vec<i64>]) {
        let (b, h) = (positions.size()[0], positions.size()[1]);
        let pos: Vec<i64> = Vec::<i64>::try_from(positions.to_device(tch::Device::Cpu).contiguous().view([-1])).unwrap_or_default();
        let span = pos.len() / (b * h).max(1) as usize;
        if self.first_by_layer.len() <= layer {
            self.first_by_layer.resize(layer + 1, (0, 0));
        }
        // Ages of positions 1..=t reach t - 1 (position 0 is counted apart).
        let n_buckets = age_bucket((t - 1).max(0)) + 1;
        if self.by_age.len() < n_buckets {
            self.by_age.resize(n_buckets, (0, 0));
        }
        for (row, kept) in pos.chunks(span).enumerate() {
            let seq = &tokens[row / h as usize];
            let mut is_kept = vec![false; t as usize + 1];
            kept.iter().filter(|&&p| p >= 0).for_each(|&p| is_kept[p as usize] = true);
            for (p, &k) in is_kept.iter().enumerate() {
                let ty = token_type(tok, seq[p], p as i64);
                self.by_type[ty].1 += 1;
                self.by_type[ty].0 += u64::from(k);
                // The first token has its own statistic; by age it would stand alone in the last bucket.
                if p > 0 {
                    let a = age_bucket(t - p as i64);
                    self.by_age[a].1 += 1;
                    self.by_age[a].0 += u64::from(k);
                }
            }
            self.first_by_layer[layer].1 += 1;
            self.first_by_layer[layer].0 += u64::from(is_kept[0]);
        }
    }
}

/// The steps at which TOVA's cache is inspected: every quarter of the chunk past the first `k` tokens.
pub fn snapshot_steps(context: usize, k: usize) -> Vec<i64> {
    (1..=4).map(|q| (q * context / 4) as i64 - 1).filter(|&t| t as usize >= k).collect()
}

/// Progress callback: (tokens decoded since the last call, label).
pub type Progress<'a> = dyn FnMut(usize, &str) + 'a;

/// One setting's result over all chunks.
pub struct SettingResult {
    /// `[chunks, context - 1]`
    pub logprobs: Tensor,
    pub max_cache_len: usize,
    pub cache_bytes_per_seq: usize,
}

/// Decodes `chunks` under every setting at once (one batch row per chunk and setting, see
/// [`crate::decode_settings`]), `batch` chunks at a time. `snapshot(t, first_chunk, setting,
/// cache)` sees each setting's cache after step `t`.
pub fn decode_chunks<M: crate::StepModel + ?Sized>(
    model: &M,
    chunks: &Tensor,
    settings: &[(Policy, Option<usize>)],
    batch: usize,
    mut snapshot: impl FnMut(i64, usize, usize, &crate::KvCache),
    progress: &mut Progress,
) -> Result<Vec<SettingResult>> {
    let (n, c) = (chunks.size()[0], chunks.size()[1]);
    let mut parts: Vec<Vec<Tensor>> = settings.iter().map(|_| Vec::new()).collect();
    let mut results: Vec<SettingResult> = Vec::new();
    for s in (0..n).step_by(batch) {
        let rows = (batch as i64).min(n - s);
        let label = format!("chunks {}-{} of {n}, {} settings", s + 1, s + rows, settings.len());
        let every = 64;
        let out = crate::decode_settings(model, &chunks.narrow(0, s, rows), settings, |t, caches| {
            for (i, cache) in caches.iter().enumerate() {
                snapshot(t, s as usize, i, cache);
            }
            if (t + 1) % every == 0 || t + 1 == c {
                let steps = if (t + 1) % every == 0 { every } else { (t + 1) % every };
                progress((steps * rows) as usize * settings.len(), &label);
            }
        })?;
        for (i, d) in out.into_iter().enumerate() {
            parts[i].push(d.logprobs);
            match results.get_mut(i) {
                Some(r) => r.max_cache_len = r.max_cache_len.max(d.max_cache_len),
                None => results.push(SettingResult { logprobs: Tensor::zeros([0], (Kind::Float, tch::Device::Cpu)), max_cache_len: d.max_cache_len, cache_bytes_per_seq: d.cache_bytes / rows as usize }),
            }
        }
    }
    for (r, p) in results.iter_mut().zip(parts) {
        r.logprobs = Tensor::cat(&p, 0);
    }
    Ok(results)
}

/// Steady-state decode speed of one setting: `chunks` (a batch) prefilled in parallel up to
/// the budget `k` (for the full cache: up to `timed` steps before the end), then `timed` steps
/// decoded and timed with the cache full. Returns tokens per second.
///
/// # Shapes
/// - `chunks`: `[batch, seq]`, `seq >= k + timed`
pub fn steady_speed(model: &Llama, chunks: &Tensor, policy: Policy, k: Option<usize>, timed: usize) -> Result<f64> {
    let (batch, seq) = (chunks.size()[0], chunks.size()[1]);
    let fill = k.map_or(seq - timed as i64, |k| k as i64);
    if fill < 1 || fill + timed as i64 > seq {
        return Err(MsrnnError::Config(format!("timing {timed} steps after a cache of {fill} needs chunks longer than {seq}")));
    }
    let _guard = tch::no_grad_guard();
    let mut cache = model.new_cache(policy, k);
    let mut logits = model.prefill(&chunks.narrow(1, 0, fill), &mut cache);
    let t0 = std::time::Instant::now();
    for t in fill..fill + timed as i64 {
        let lp = crate::llama::token_logprobs(&logits, &chunks.select(1, t));
        logits = model.step(&chunks.select(1, t), t, &mut cache);
        drop(lp);
    }
    Ok((batch as f64 * timed as f64) / t0.elapsed().as_secs_f64())
}
