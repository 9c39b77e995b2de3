//! Evaluation: loss, perplexity and bits per token / per byte over non-overlapping windows.
//!
//! The split is read as `rows` contiguous stretches walked in step; models that carry state
//! (BRECT, Transformer-XL) carry it from each window to the next, as in the original
//! evaluations; for the others the state is empty and nothing changes. The evaluation length may
//! differ from the training length (length generalisation).

use bst_data::{EvalWindows, TokenStream};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};

use crate::{LanguageModel, LmState, ModelError};

/// Scores of a model on (part of) one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Predicted tokens.
    pub tokens: usize,
    /// Bytes of text those tokens encode.
    pub bytes: f64,
    /// Mean negative log-likelihood, nats per token.
    pub loss: f64,
    /// exp(loss).
    pub ppl: f64,
    pub bits_per_token: f64,
    pub bits_per_byte: f64,
}

impl EvalMetrics {
    fn from_nll(nll_nats: f64, tokens: usize, bytes: f64) -> Self {
        let loss = nll_nats / tokens as f64;
        let bits = nll_nats / std::f64::consts::LN_2;
        Self { tokens, bytes, loss, ppl: loss.exp(), bits_per_token: bits / tokens as f64, bits_per_byte: bits / bytes }
    }
}

/// Evaluates `model` on windows of `seq` tokens, `rows` at a time (at most `max_tokens`, 0 = all).
pub fn evaluate(
    model: &LanguageModel,
    stream: &TokenStream,
    seq: usize,
    rows: usize,
    max_tokens: usize,
    device: Device,
) -> Result<EvalMetrics, ModelError> {
    let windows = EvalWindows::new(stream, seq, rows, max_tokens)?;
    let tokens = windows.predicted_tokens();
    let mut state = LmState::default();
    let nll = tch::no_grad(|| {
        windows
            .map(|(inputs, targets)| {
                let logits = model.logits_with_state(&inputs.to_device(device), &mut state, false).flatten(0, 1).to_kind(Kind::Float);
                state.detach();
                let nll: Tensor = logits.cross_entropy_loss::<Tensor>(&targets.to_device(device).flatten(0, 1), None, Reduction::Sum, -100, 0.0);
                nll.double_value(&[])
            })
            .sum::<f64>()
    });
    Ok(EvalMetrics::from_nll(nll, tokens, tokens as f64 * stream.bytes_per_token()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
