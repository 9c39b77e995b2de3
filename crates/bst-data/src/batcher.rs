//! Batches of contiguous token sequences.
//!
//! Training takes windows of `seq + 1` tokens at random offsets from a seeded ChaCha8 stream
//! (reproducible across platforms and crate versions); inputs are the first `seq` tokens and
//! targets the last `seq`. Evaluation walks a split in consecutive, non-overlapping windows so
//! that every token after the first is predicted exactly once.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use crate::{DataError, TokenStream};

/// Seeded sampler of training batches.
#[derive(Debug, Clone)]
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
        let starts: Vec<i64> = (0..self.batch_size).map(|_| self.rng.random_range(0..=max_start) as i64).collect();
        let index = Tensor::from_slice(&starts).unsqueeze(1) + Tensor::arange(needed as i64, (Kind::Int64, tch::Device::Cpu));
        let windows = stream.tokens.take(&index); // [batch, seq + 1]
        Ok((windows.narrow(1, 0, self.seq as i64), windows.narrow(1, 1, self.seq as i64)))
    }
}

/// Consecutive evaluation windows over a stream, in batches.
#[derive(Debug)]
pub struct EvalWindows<'a> {
    stream: &'a TokenStream,
    seq: i64,
    batch_size: i64,
    next_window: i64,
    windows: i64,
}

impl<'a> EvalWindows<'a> {
    /// At most `max_tokens` predicted tokens (rounded down to whole windows; 0 = the whole split).
    pub fn new(stream: &'a TokenStream, seq: usize, batch_size: usize, max_tokens: usize) -> Result<Self, DataError> {
        let available = (stream.len().saturating_sub(1) / seq) as i64;
        let cap = if max_tokens == 0 { available } else { (max_tokens / seq) as i64 };
        let windows = available.min(cap);
        if windows == 0 {
            return Err(DataError::TooShort { split: "evaluation".into(), tokens: stream.len(), needed: seq + 1 });
        }
        Ok(Self { stream, seq: seq as i64, batch_size: batch_size as i64, next_window: 0, windows })
    }

    /// Number of tokens that will be predicted.
    pub fn predicted_tokens(&self) -> usize {
        (self.windows * self.seq) as usize
    }
}

impl Iterator for EvalWindows<'_> {
    /// `(inputs, targets)`, both `[n, seq]`.
    type Item = (Tensor, Tensor);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next_window >= self.windows {
            return None;
        }
        let n = self.batch_size.min(self.windows - self.next_window);
        let starts = (Tensor::arange(n, (Kind::Int64, tch::Device::Cpu)) + self.next_window) * self.seq;
        let index = starts.unsqueeze(1) + Tensor::arange(self.seq + 1, (Kind::Int64, tch::Device::Cpu));
        let windows = self.stream.tokens.take(&index);
        self.next_window += n;
        Some((windows.narrow(1, 0, self.seq), windows.narrow(1, 1, self.seq)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(n: i64) -> TokenStream {
        TokenStream { tokens: Tensor::arange(n, (Kind::Int64, tch::Device::Cpu)), bytes: n as usize }
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
    fn eval_windows_predict_each_token_once() {
        let s = stream(103);
        let windows = EvalWindows::new(&s, 10, 3, 0).unwrap();
        assert_eq!(windows.predicted_tokens(), 100);
        let targets: Vec<i64> = windows.flat_map(|(_, y)| Vec::<i64>::try_from(y.flatten(0, 1)).unwrap()).collect();
        assert_eq!(targets, (1..=100).collect::<Vec<i64>>());
        assert_eq!(EvalWindows::new(&s, 10, 3, 35).unwrap().predicted_tokens(), 30);
        assert!(EvalWindows::new(&stream(5), 10, 3, 0).is_err());
    }
}
