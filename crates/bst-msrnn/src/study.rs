//! The paper's language-modelling protocol (Oren et al. 2024, Sec. 5.1) on our texts: chunks of
//! `C` tokens spread over the documents, each decoded from an empty cache with a policy and a
//! budget `k`; perplexity over the targets predicted with more than `from` tokens of context
//! (by default `from = k`: exactly the targets a bounded cache can change), against the full
//! model on the same targets. Also: which positions and which kinds of token TOVA keeps.

use tch::{Kind, Tensor};

use crate::decode::decode;
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
#[derive(Debug, Clone, serde::Serialize)]
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
pub const TOKEN_TYPES: [&str; 8] = ["first token", "newline", "punctuation", "number", "capitalised word", "lowercase word start", "word continuation", "other"];

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
    /// Per age bucket (see [`age_bucket`]): (kept, present).
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
        let n_buckets = age_bucket(t) + 1;
        if self.by_age.len() < n_buckets {
            self.by_age.resize(n_buckets, (0, 0));
        }
        for (row, kept) in pos.chunks(span).enumerate() {
            let seq = &tokens[row / h as usize];
            let mut is_kept = vec![false; t as usize + 1];
            kept.iter().filter(|&&p| p >= 0).for_each(|&p| is_kept[p as usize] = true);
            for (p, &k) in is_kept.iter().enumerate() {
                let ty = token_type(tok, seq[p], p as i64);
                let a = age_bucket(t - p as i64);
                self.by_age[a].1 += 1;
                self.by_type[ty].1 += 1;
                if k {
                    self.by_age[a].0 += 1;
                    self.by_type[ty].0 += 1;
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

/// Progress callback: (tokens decoded so far in this call, label).
pub type Progress<'a> = dyn FnMut(usize, &str) + 'a;

/// Decodes `chunks` in batches of `batch` with one policy and budget; returns the log-probs
/// `[chunks, context - 1]`, the largest cache, the bytes per sequence and the decode seconds.
pub fn decode_chunks(
    model: &Llama,
    chunks: &Tensor,
    policy: Policy,
    k: Option<usize>,
    batch: usize,
    mut snapshot: impl FnMut(i64, usize, &crate::KvCache),
    progress: &mut Progress,
) -> Result<(Tensor, usize, usize, f64)> {
    let n = chunks.size()[0];
    let (mut parts, mut longest, mut bytes, mut seconds) = (Vec::new(), 0, 0, 0.0);
    for (i, s) in (0..n).step_by(batch).enumerate() {
        let rows = (batch as i64).min(n - s);
        let toks = chunks.narrow(0, s, rows);
        let t0 = std::time::Instant::now();
        let out = decode(model, &toks, policy, k, |t, cache| snapshot(t, s as usize, cache))?;
        seconds += t0.elapsed().as_secs_f64();
        longest = longest.max(out.max_cache_len);
        bytes = out.cache_bytes / rows as usize;
        parts.push(out.logprobs);
        progress((rows * chunks.size()[1]) as usize, &format!("{policy} k={} batch {}", k.map_or("all".into(), |k| k.to_string()), i + 1));
    }
    Ok((Tensor::cat(&parts, 0), longest, bytes, seconds))
}
