//! Evaluation: loss, perplexity and bits per token / per byte over non-overlapping windows.
//!
//! The split is read as `rows` contiguous stretches walked in step; models that carry state
//! (BRECT, Transformer-XL) carry it from each window to the next, as in the original
//! evaluations; for the others the state is empty and nothing changes. The evaluation length may
//! differ from the training length (length generalisation). Bits per byte divide by the exact
//! bytes of the tokens scored (each target's byte length, from the tokenizer's table), not by an
//! average over the split.

use bst_data::{EvalWindows, TokenStream};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};

use crate::{Autocast, LanguageModel, LmState, ModelError, Precision};

/// Scores of a model on (part of) one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Predicted tokens (examples, for a classification run).
    pub tokens: usize,
    /// Bytes of text those tokens encode (NaN for a classification run).
    #[serde(deserialize_with = "f64_or_nan")]
    pub bytes: f64,
    /// Mean negative log-likelihood, nats per token.
    pub loss: f64,
    /// exp(loss).
    pub ppl: f64,
    pub bits_per_token: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub bits_per_byte: f64,
    /// Scores on the answer tokens alone (or on the labels of a classification run), for a synthetic long-range task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answers: Option<AnswerMetrics>,
}

/// Reads an f64 that JSON may hold as `null`: serde_json writes NaN (a metric that does not apply,
/// such as bits per byte of a classifier) as `null`.
pub fn f64_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// How well the answers of a synthetic long-range task were predicted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerMetrics {
    /// Answer tokens scored.
    pub count: usize,
    /// Fraction whose most likely prediction was the answer.
    pub accuracy: f64,
    /// Mean negative log-likelihood of an answer token, in bits.
    pub bits: f64,
    /// Accuracy by how far back each answer's source lies.
    #[serde(default)]
    pub by_distance: Vec<DistanceBucket>,
}

/// Answers whose source lies `from..to` tokens back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistanceBucket {
    pub from: usize,
    pub to: usize,
    pub count: usize,
    pub accuracy: f64,
}

/// Bucket edges of answer distances: powers of two from 16 (a bucket per doubling).
const DISTANCE_EDGES: [usize; 9] = [1, 16, 32, 64, 128, 256, 512, 1024, usize::MAX];

impl EvalMetrics {
    fn from_nll(nll_nats: f64, tokens: usize, bytes: f64) -> Self {
        let loss = nll_nats / tokens as f64;
        let bits = nll_nats / std::f64::consts::LN_2;
        Self { tokens, bytes, loss, ppl: loss.exp(), bits_per_token: bits / tokens as f64, bits_per_byte: bits / bytes, answers: None }
    }
}

/// Running sums over the answer tokens of the evaluated windows.
#[derive(Default)]
struct AnswerSums {
    count: i64,
    correct: i64,
    nll_nats: f64,
    /// (answers, correct) per distance bucket.
    buckets: [(i64, i64); DISTANCE_EDGES.len() - 1],
}

impl AnswerSums {
    /// `logits`: `[n, vocab]` f32, `nll`: `[n]`, `targets`: `[n]`, `distance`: `[n]` int64 (0:
    /// not an answer).
    fn add(&mut self, logits: &Tensor, nll: &Tensor, targets: &Tensor, distance: &Tensor) {
        let mask = distance.gt(0);
        let right = logits.argmax(-1, false).eq_tensor(targets).logical_and(&mask);
        self.count += mask.sum(Kind::Int64).int64_value(&[]);
        self.correct += right.sum(Kind::Int64).int64_value(&[]);
        self.nll_nats += nll.masked_select(&mask).sum(Kind::Double).double_value(&[]);
        for (b, edges) in DISTANCE_EDGES.windows(2).enumerate() {
            let inside = distance.ge(edges[0] as i64).logical_and(&distance.lt(edges[1].min(i64::MAX as usize) as i64));
            self.buckets[b].0 += inside.sum(Kind::Int64).int64_value(&[]);
            self.buckets[b].1 += right.logical_and(&inside).sum(Kind::Int64).int64_value(&[]);
        }
    }

    fn metrics(&self) -> Option<AnswerMetrics> {
        let by_distance = DISTANCE_EDGES
            .windows(2)
            .zip(&self.buckets)
            .filter(|(_, &(n, _))| n > 0)
            .map(|(e, &(n, c))| DistanceBucket { from: e[0], to: e[1], count: n as usize, accuracy: c as f64 / n as f64 })
            .collect();
        (self.count > 0).then(|| AnswerMetrics {
            count: self.count as usize,
            accuracy: self.correct as f64 / self.count as f64,
            bits: self.nll_nats / self.count as f64 / std::f64::consts::LN_2,
            by_distance,
        })
    }
}

/// Evaluates `model` on windows of `seq` tokens, `rows` at a time (at most `max_tokens`, 0 = all),
/// with f32 forward passes.
pub fn evaluate(
    model: &LanguageModel,
    stream: &TokenStream,
    seq: usize,
    rows: usize,
    max_tokens: usize,
    device: Device,
) -> Result<EvalMetrics, ModelError> {
    evaluate_with_precision(model, stream, seq, rows, max_tokens, device, Precision::F32)
}

/// [`evaluate`] with the forward passes at `precision` (a run evaluates at its
/// `train.precision`, so that the numbers describe the model as trained and run); the
/// cross-entropy is computed in f32 either way.
pub fn evaluate_with_precision(
    model: &LanguageModel,
    stream: &TokenStream,
    seq: usize,
    rows: usize,
    max_tokens: usize,
    device: Device,
    precision: Precision,
) -> Result<EvalMetrics, ModelError> {
    let windows = EvalWindows::new(stream, seq, rows, max_tokens)?;
    let tokens = windows.predicted_tokens();
    let mut state = LmState::default();
    // one region for the whole split: the weights do not change, so their bf16 casts are cached
    let _autocast = Autocast::enter(device, precision)?;
    let mut answers = AnswerSums::default();
    let mut bytes = 0.0;
    let nll = tch::no_grad(|| {
        windows
            .map(|batch| {
                bytes += stream.bytes_of(&batch.targets);
                state.reset_rows(&batch.reset.to_device(device));
                let logits = model.logits_with_state(&batch.inputs.to_device(device), &mut state, false).flatten(0, 1).to_kind(Kind::Float);
                state.detach();
                let targets = batch.targets.to_device(device).flatten(0, 1);
                let nll: Tensor = logits.cross_entropy_loss::<Tensor>(&targets, None, Reduction::None, -100, 0.0);
                if let Some(distance) = &batch.answers {
                    answers.add(&logits, &nll, &targets, &distance.to_device(device).flatten(0, 1));
                }
                nll.sum(Kind::Double).double_value(&[])
            })
            .sum::<f64>()
    });
    let mut metrics = EvalMetrics::from_nll(nll, tokens, bytes);
    metrics.answers = answers.metrics();
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_sums_count_only_masked_tokens() {
        // 4 positions over a vocabulary of 3; positions 1 and 3 are answers (20 and 100 tokens
        // from their sources), only 1 is right
        let logits = Tensor::from_slice(&[5.0f32, 0., 0., 0., 5., 0., 0., 0., 5., 5., 0., 0.]).view([4, 3]);
        let targets = Tensor::from_slice(&[0i64, 1, 0, 2]);
        let mask = Tensor::from_slice(&[0i64, 20, 0, 100]);
        let nll = logits.cross_entropy_loss::<Tensor>(&targets, None, Reduction::None, -100, 0.0);
        let mut sums = AnswerSums::default();
        sums.add(&logits, &nll, &targets, &mask);
        let m = sums.metrics().unwrap();
        assert_eq!(m.count, 2);
        assert!((m.accuracy - 0.5).abs() < 1e-12);
        let expected = (nll.double_value(&[1]) + nll.double_value(&[3])) / 2.0 / std::f64::consts::LN_2;
        assert!((m.bits - expected).abs() < 1e-6);
        let buckets: Vec<(usize, usize, usize, f64)> = m.by_distance.iter().map(|b| (b.from, b.to, b.count, b.accuracy)).collect();
        assert_eq!(buckets, vec![(16, 32, 1, 1.0), (64, 128, 1, 0.0)]);
        assert!(AnswerSums::default().metrics().is_none(), "no answers, no metrics");
    }

    /// Bits per byte divide the total nats by the bytes of exactly the targets scored: a
    /// hand-made vocabulary of 4 tokens spelling 1, 2, 3 and 4 bytes, a stream of 9 tokens, so the
    /// 8 predicted targets are checked by hand.
    #[test]
    fn bits_per_byte_count_the_bytes_of_the_scored_tokens() {
        let ids: Vec<u32> = vec![3, 0, 1, 2, 3, 3, 1, 0, 2]; // targets: 0 1 2 3 3 1 0 2
        let stream = TokenStream::from_ids(ids, std::sync::Arc::new(vec![1, 2, 3, 4]));
        assert_eq!(stream.bytes, 4 + 1 + 2 + 3 + 4 + 4 + 2 + 1 + 3);
        let target_bytes = 1.0 + 2.0 + 3.0 + 4.0 + 4.0 + 2.0 + 1.0 + 3.0; // 20, by hand
        let mut run = crate::lm::tests::tiny_run("SLIDE", &[], &bst_ssm::SsmConfig::default());
        (run.attn.window, run.train.seq_len) = (4, 8);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let lm = run.build_model(&vs.root(), 4).unwrap();
        let m = evaluate(&lm, &stream, 8, 1, 0, Device::Cpu).unwrap();
        assert_eq!((m.tokens, m.bytes), (8, target_bytes));
        let nll: f64 = lm.score(&(0..9).map(|i| i64::from(stream.get(i))).collect::<Vec<_>>(), Device::Cpu).iter().map(|l| -l).sum();
        assert!((m.bits_per_byte - nll / std::f64::consts::LN_2 / target_bytes).abs() < 1e-6, "{} vs {}", m.bits_per_byte, nll / std::f64::consts::LN_2 / target_bytes);
        assert!((m.bits_per_token - nll / std::f64::consts::LN_2 / 8.0).abs() < 1e-6);
    }

    #[test]
    fn metrics_convert_units_consistently() {
        // a uniform model over 256 bytes: 8 bits per byte, perplexity 256
        let tokens = 1000;
        let m = EvalMetrics::from_nll(tokens as f64 * 256f64.ln(), tokens, tokens as f64);
        assert!((m.bits_per_byte - 8.0).abs() < 1e-9);
        assert!((m.ppl - 256.0).abs() < 1e-6);
        // two bytes per token halve the bits per byte
        let m2 = EvalMetrics::from_nll(tokens as f64 * 256f64.ln(), tokens, 2.0 * tokens as f64);
        assert!((m2.bits_per_byte - 4.0).abs() < 1e-9 && (m2.bits_per_token - 8.0).abs() < 1e-9);
    }
}
