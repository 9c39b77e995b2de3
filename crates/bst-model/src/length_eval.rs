//! Length generalisation on the same tokens (the paper's Table 2: train at L, evaluate at L/8, L,
//! 4L, 16L). Evaluating each length on its own windows would favour long windows merely for
//! having fewer cold starts; here every length scores **the same targets**: stretches of
//! `max(factor) x L + 1` tokens, each inside one test document, cut into windows of the evaluated
//! length E, every window from a fresh state (a model's context is the window it is given), and
//! only the targets from position L of each stretch on are scored, so that every length predicts
//! the same tokens, with contexts of at most E.

use bst_data::TokenStream;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};

use crate::{Autocast, LanguageModel, LmState, ModelError, Precision};

/// `train.length_eval`: evaluation at several lengths on the same tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LengthEvalConfig {
    /// Evaluation lengths as fractions or multiples of `train.seq_len` (the paper's 512 / 4k /
    /// 16k / 65k for L = 4k: 0.125, 1, 4, 16). Each must give a whole number of the model's blocks.
    pub factors: Vec<f64>,
    /// Stretches of the test split scored (each from one document long enough), at most.
    pub stretches: usize,
    /// Stretches per forward batch.
    pub batch: usize,
}

impl Default for LengthEvalConfig {
    fn default() -> Self {
        Self { factors: vec![0.125, 1.0, 4.0, 16.0], stretches: 16, batch: 4 }
    }
}

impl LengthEvalConfig {
    /// The evaluation lengths in tokens for training length `l`, or the offending factor.
    pub fn lengths(&self, l: usize) -> Result<Vec<usize>, f64> {
        self.factors.iter().map(|&f| {
            let e = f * l as f64;
            if e >= 1.0 && e.fract() == 0.0 { Ok(e as usize) } else { Err(f) }
        }).collect()
    }
}

/// One evaluated length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LengthResult {
    pub factor: f64,
    pub eval_len: usize,
    /// Targets scored (the same for every length).
    pub tokens: usize,
    /// Their bytes.
    pub bytes: f64,
    /// Nats per token.
    pub loss: f64,
    pub bits_per_byte: f64,
    /// Stretches scored, their length, and the first position scored in each.
    pub stretches: usize,
    pub stretch_len: usize,
    pub first_scored: usize,
}

/// Starts of up to `n` stretches of `len` tokens, each inside one document, spread evenly over
/// all the candidates.
fn stretch_starts(stream: &TokenStream, len: usize, n: usize) -> Vec<usize> {
    let starts = stream.doc_starts();
    let ends = starts.iter().skip(1).copied().chain([stream.len()]);
    let candidates: Vec<usize> = starts.iter().zip(ends).flat_map(|(&s, e)| (0..(e - s) / len).map(move |j| s + j * len)).collect();
    if candidates.len() <= n {
        return candidates;
    }
    (0..n).map(|i| candidates[i * candidates.len() / n]).collect()
}

/// Evaluates `model` (trained at `seq_len`) at every length of `cfg` on the same targets of
/// `stream`; see the module docs.
pub fn evaluate_lengths(model: &LanguageModel, stream: &TokenStream, seq_len: usize, cfg: &LengthEvalConfig, device: Device, precision: Precision) -> Result<Vec<LengthResult>, ModelError> {
    let lengths = cfg.lengths(seq_len).map_err(|f| ModelError::invalid("train.length_eval.factors", f, format!("factor x train.seq_len = {seq_len} must be a whole number of tokens")))?;
    let longest = *lengths.iter().max().ok_or_else(|| ModelError::invalid("train.length_eval.factors", &cfg.factors, "list at least one length"))?;
    let (stretch_len, first) = (longest.max(seq_len) + 1, seq_len);
    let starts = stretch_starts(stream, stretch_len, cfg.stretches);
    if starts.is_empty() {
        return Err(ModelError::invalid("train.length_eval.factors", &cfg.factors, format!("no test document holds a stretch of {stretch_len} tokens")));
    }
    let _guard = tch::no_grad_guard();
    let _autocast = Autocast::enter(device, precision)?;
    let mut out = Vec::new();
    for (&factor, &e) in cfg.factors.iter().zip(&lengths) {
        let (mut nll, mut tokens, mut bytes) = (0.0, 0usize, 0.0);
        for group in starts.chunks(cfg.batch.max(1)) {
            let all = stream.windows(group, stretch_len).to_device(device); // [b, M]
            for w in 0..(stretch_len - 1) / e {
                let (inputs, targets) = (all.narrow(1, (w * e) as i64, e as i64), all.narrow(1, (w * e + 1) as i64, e as i64));
                let target_pos = Tensor::arange_start((w * e + 1) as i64, (w * e + 1 + e) as i64, (Kind::Int64, device)).unsqueeze(0); // [1, e]
                let scored = target_pos.ge(first as i64).expand_as(&targets);
                if scored.any().int64_value(&[]) == 0 {
                    continue;
                }
                let logits = model.logits_with_state(&inputs, &mut LmState::default(), false).flatten(0, 1).to_kind(Kind::Float);
                let loss: Tensor = logits.cross_entropy_loss::<Tensor>(&targets.flatten(0, 1), None, Reduction::None, -100, 0.0);
                let mask = scored.flatten(0, 1);
                nll += loss.masked_select(&mask).sum(Kind::Double).double_value(&[]);
                tokens += mask.sum(Kind::Int64).int64_value(&[]) as usize;
                bytes += stream.bytes_of(&targets.masked_select(&scored).to_device(Device::Cpu));
            }
        }
        let bits = nll / std::f64::consts::LN_2;
        out.push(LengthResult { factor, eval_len: e, tokens, bytes, loss: nll / tokens as f64, bits_per_byte: bits / bytes, stretches: starts.len(), stretch_len, first_scored: first });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length scores the same targets (same count, same bytes); a model that sees the whole
    /// stretch at once does at least as well as one cut into short windows; a stateless window
    /// of the training length gives what one forward pass of that window gives.
    #[test]
    fn every_length_scores_the_same_targets() {
        let text: Vec<u8> = (0..6000u32).map(|i| b"abcdefghij"[(i * 7 % 10) as usize]).collect();
        let stream = TokenStream::from_bytes(&text).with_doc_starts(vec![0, 2000, 4100]);
        let mut run = crate::lm::tests::tiny_run("BST:SH:S4D", &[1], &bst_ssm::SsmConfig::default());
        (run.train.seq_len, run.attn.window) = (64, 8);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let lm = run.build_model(&vs.root(), 256).unwrap();
        let cfg = LengthEvalConfig { factors: vec![0.125, 1.0, 4.0], stretches: 3, batch: 2 };
        let r = evaluate_lengths(&lm, &stream, 64, &cfg, Device::Cpu, Precision::F32).unwrap();
        assert_eq!(r.iter().map(|x| x.eval_len).collect::<Vec<_>>(), vec![8, 64, 256]);
        assert!(r.iter().all(|x| x.tokens == r[0].tokens && x.bytes == r[0].bytes && x.stretches == 3), "{r:?}");
        assert_eq!(r[0].tokens, 3 * (257 - 64), "targets 64..=256 of each 257-token stretch");
        assert!(r[1].loss.is_finite() && r[0].loss != r[1].loss);
        assert_eq!(stretch_starts(&stream, 257, 100), vec![0, 257, 514, 771, 1028, 1285, 1542, 2000, 2257, 2514, 2771, 3028, 3285, 3542, 3799, 4100, 4357, 4614, 4871, 5128, 5385, 5642]);
        assert_eq!(stretch_starts(&stream, 257, 2), vec![0, 3028]);
    }
}
