//! Batches of contiguous token sequences.
//!
//! Training takes windows of `seq + 1` tokens at random offsets from a seeded ChaCha8 stream
//! (reproducible across platforms and crate versions, and serialisable into a checkpoint);
//! inputs are the first `seq` tokens and targets the last `seq`. Evaluation cuts a split into
//! `rows` contiguous stretches and walks them in step, window after window, so that every
//! predicted token is predicted once and row r of one batch continues row r of the previous
//! batch (models that carry state across windows need that).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::{DataError, TokenStream};

/// Seeded sampler of training batches.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batcher {
    rng: ChaCha8Rng,
    batch_size: usize,
    seq: usize,
}

impl Batcher {
    pub fn new(seed: u64, batch_size: usize, seq: usize) -> Self {
        Self { rng: ChaCha8Rng::seed_from_u64(seed), batch_size, seq }
    }

    /// Next batch `(inputs, targets)`, both `[batch, seq]` int64 on the CPU.
    pub fn next_batch(&mut self, stream: &TokenStream) -> Result<(Tensor, Tensor), DataError> {
        let needed = self.seq + 1;
        if stream.len() < needed {
            return Err(DataError::TooShort { split: "train".into(), tokens: stream.len(), needed });
        }
        let max_start = stream.len() - needed;
        let starts: Vec<usize> = (0..self.batch_size).map(|_| self.rng.random_range(0..=max_start)).collect();
        let windows = stream.windows(&starts, needed); // [batch, seq + 1]
        Ok((windows.narrow(1, 0, self.seq as i64), windows.narrow(1, 1, self.seq as i64)))
    }
}

/// Evaluation windows: `rows` contiguous stretches of the split, walked in step.
#[derive(Debug)]
pub struct EvalWindows<'a> {
    stream: &'a TokenStream,
    seq: i64,
    rows: i64,
    row_len: i64,
    next_window: i64,
    windows: i64,
}

impl<'a> EvalWindows<'a> {
    /// Up to `rows` rows; at most `max_tokens` predicted tokens in all (0 = the whole split),
    /// rounded down to whole windows.
    pub fn new(stream: &'a TokenStream, seq: usize, rows: usize, max_tokens: usize) -> Result<Self, DataError> {
        let (seq, n) = (seq as i64, stream.len() as i64 - 1);
        let too_short = || DataError::TooShort { split: "evaluation".into(), tokens: stream.len(), needed: seq as usize + 1 };
        let cap = if max_tokens == 0 { n } else { (max_tokens as i64).min(n) };
        let rows = (rows as i64).min(cap / seq).max(1);
        let row_len = n / rows;
        let windows = (row_len / seq).min(cap / (rows * seq));
        if windows == 0 {
            return Err(too_short());
        }
        Ok(Self { stream, seq, rows, row_len, next_window: 0, windows })
    }

    /// Number of tokens that will be predicted.
    pub fn predicted_tokens(&self) -> usize {
        (self.rows * self.windows * self.seq) as usize
    }
}

/// One evaluation batch; row r continues row r of the previous batch.
#[derive(Debug)]
pub struct EvalBatch {
    /// `[rows, seq]` int64.
    pub inputs: Tensor,
    /// `[rows, seq]` int64: the next token of every input position.
    pub targets: Tensor,
    /// `[rows, seq]` bool: which targets are answers of a synthetic long-range task (if any).
    pub answers: Option<Tensor>,
}

impl Iterator for EvalWindows<'_> {
    type Item = EvalBatch;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next_window >= self.windows {
            return None;
        }
        let starts: Vec<usize> = (0..self.rows).map(|r| (r * self.row_len + self.next_window * self.seq) as usize).collect();
        let windows = self.stream.windows(&starts, self.seq as usize + 1);
        let answers = self.stream.answer_windows(&starts, self.seq as usize + 1).map(|a| a.narrow(1, 1, self.seq));
        self.next_window += 1;
        Some(EvalBatch { inputs: windows.narrow(1, 0, self.seq), targets: windows.narrow(1, 1, self.seq), answers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(n: u32) -> TokenStream {
        TokenStream::from_ids((0..n).collect(), n as usize)
    }

    #[test]
    fn training_batches_are_contiguous_shifted_and_seeded() {
        let s = stream(1000);
        let (x, y) = Batcher::new(7, 4, 16).next_batch(&s).unwrap();
        assert_eq!(x.size(), vec![4, 16]);
        // tokens are their own positions, so contiguity means +1 steps and targets = inputs + 1
        assert!((x.narrow(1, 1, 15) - x.narrow(1, 0, 15)).eq(1).all().int64_value(&[]) == 1);
        assert!((&y - &x).eq(1).all().int64_value(&[]) == 1);
        let (x2, _) = Batcher::new(7, 4, 16).next_batch(&s).unwrap();
        assert!(x.equal(&x2), "same seed, same batch");
        let (x3, _) = Batcher::new(8, 4, 16).next_batch(&s).unwrap();
        assert!(!x.equal(&x3), "different seed, different batch");
    }

    #[test]
    fn eval_windows_predict_each_token_once_and_rows_continue() {
        let s = stream(103); // 102 predictable tokens: 3 rows of 34, 3 windows of 10 each
        let windows = EvalWindows::new(&s, 10, 3, 0).unwrap();
        assert_eq!(windows.predicted_tokens(), 90);
        let batches: Vec<EvalBatch> = windows.collect();
        assert_eq!(batches.len(), 3);
        let mut targets: Vec<i64> = batches.iter().flat_map(|b| Vec::<i64>::try_from(b.targets.flatten(0, 1)).unwrap()).collect();
        targets.sort();
        targets.dedup();
        assert_eq!(targets.len(), 90, "no token predicted twice");
        // row 1 of batch 1 continues row 1 of batch 0
        let last: i64 = batches[0].inputs.get(1).get(9).int64_value(&[]);
        assert_eq!(batches[1].inputs.get(1).get(0).int64_value(&[]), last + 1);
        assert!(batches[0].answers.is_none());
        assert_eq!(EvalWindows::new(&s, 10, 3, 35).unwrap().predicted_tokens(), 30);
        assert!(EvalWindows::new(&stream(5), 10, 3, 0).is_err());
    }

    #[test]
    fn eval_answer_flags_follow_their_targets() {
        // every 5th token is an answer; targets are inputs shifted by one, and so must be the flags
        let s = stream(103).with_answers((0..103).map(|i| i % 5 == 0).collect());
        for b in EvalWindows::new(&s, 10, 3, 0).unwrap() {
            let flags = b.answers.expect("the stream has answers");
            let expected = b.targets.remainder(5).eq(0);
            assert!(flags.equal(&expected));
        }
    }

    #[test]
    fn batcher_state_round_trips_through_json() {
        let s = stream(1000);
        let mut a = Batcher::new(3, 2, 8);
        let _ = a.next_batch(&s).unwrap();
        let mut b: Batcher = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert!(a.next_batch(&s).unwrap().0.equal(&b.next_batch(&s).unwrap().0), "a restored sampler continues the same stream");
    }
}
