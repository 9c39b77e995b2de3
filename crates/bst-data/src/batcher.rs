//! Batches of contiguous token sequences.
//!
//! Training draws batches from a [`Sampler`], chosen by `data.sampling`:
//! - **random**: windows of `seq + 1` tokens at random offsets from a seeded ChaCha8 stream
//!   (reproducible across platforms and crate versions, and serialisable into a checkpoint);
//!   inputs are the first `seq` tokens and targets the last `seq`.
//! - **sequential** (meliad's pipeline for its stateful models): each batch row walks its own
//!   list of whole documents in order, one window after the next, so that a model carrying state
//!   (BRECT, Transformer-XL) continues row r of one batch in row r of the next. A window never
//!   spans two documents: the last window of a document is padded (inputs with token 0, targets
//!   with [`IGNORE`], which the loss skips), and the batch marks the rows that start a new
//!   document (`reset`), where the model must drop what it carries. Documents are dealt to rows
//!   in a seeded shuffled order (document i of the shuffle to row i mod batch); a row that has
//!   read all of its documents starts its list again.
//!
//! Evaluation cuts a split into `rows` contiguous stretches and walks them in step, window after
//! window, so that every predicted token is predicted once and row r of one batch continues row r
//! of the previous batch (models that carry state across windows need that).

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::{DataError, TokenStream};

/// The target id of padding positions: cross-entropy skips it (libtorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// How training windows are drawn (`data.sampling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// Sequential for models that carry state across windows (BRECT, TRSF-XL), random for the others.
    #[default]
    Auto,
    /// Independent windows at random offsets.
    Random,
    /// Consecutive windows of whole documents per batch row, with resets at document starts.
    Sequential,
}

impl std::fmt::Display for Sampling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sampling::Auto => "auto",
            Sampling::Random => "random",
            Sampling::Sequential => "sequential",
        })
    }
}

/// One training batch.
#[derive(Debug)]
pub struct Batch {
    /// `[batch, seq]` int64.
    pub inputs: Tensor,
    /// `[batch, seq]` int64; [`IGNORE`] at padding.
    pub targets: Tensor,
    /// `[batch]` bool: rows whose window starts a new document (sequential sampling only).
    pub reset: Option<Tensor>,
    /// Positions that are not padding (the work done; with an answers-only loss, more than the
    /// targets scored).
    pub tokens: usize,
}

/// Seeded sampler of random training windows.
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

/// Where one batch row stands in its list of documents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RowCursor {
    /// Its documents, as `[start, end)` token ranges, in reading order.
    docs: Vec<(usize, usize)>,
    /// Index into `docs`.
    doc: usize,
    /// Next input position (absolute token index).
    pos: usize,
}

/// Seeded sampler of consecutive windows of whole documents, one list of documents per row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequentialSampler {
    rows: Vec<RowCursor>,
    seq: usize,
    /// Only answer tokens are targets (the others are [`IGNORE`]): a synthetic task's loss on its
    /// answers alone.
    #[serde(default)]
    answers_only: bool,
}

impl SequentialSampler {
    /// Deals the documents of `stream` (at least 2 tokens each: one input, one target) to
    /// `batch_size` rows in an order shuffled by `seed`. With fewer documents than rows (a
    /// generated task is one long document), the longest are halved until every row has one.
    pub fn new(seed: u64, batch_size: usize, seq: usize, stream: &TokenStream) -> Result<Self, DataError> {
        let starts = stream.doc_starts();
        let ends = starts.iter().skip(1).copied().chain([stream.len()]);
        let mut docs: Vec<(usize, usize)> = starts.iter().copied().zip(ends).filter(|(s, e)| e - s >= 2).collect();
        while docs.len() < batch_size {
            let (i, &(s, e)) = docs.iter().enumerate().max_by_key(|(_, (s, e))| e - s).ok_or_else(|| DataError::TooShort { split: "train".into(), tokens: stream.len(), needed: 2 })?;
            if e - s < 4 {
                break;
            }
            let mid = s + (e - s) / 2;
            docs.splice(i..=i, [(s, mid), (mid, e)]);
        }
        if docs.len() < batch_size {
            return Err(DataError::TooShort { split: format!("train ({} documents of 2+ tokens for {batch_size} batch rows)", docs.len()), tokens: stream.len(), needed: batch_size * 2 });
        }
        docs.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let rows = (0..batch_size)
            .map(|r| {
                let mine: Vec<(usize, usize)> = docs.iter().skip(r).step_by(batch_size).copied().collect();
                RowCursor { pos: mine[0].0, docs: mine, doc: 0 }
            })
            .collect();
        Ok(Self { rows, seq, answers_only: false })
    }

    /// Only answer tokens are targets (see [`TokenStream::with_answers`]).
    pub fn answers_only(mut self) -> Self {
        self.answers_only = true;
        self
    }

    /// Next batch: each row's next window, padded at the end of its document.
    pub fn next_batch(&mut self, stream: &TokenStream) -> Batch {
        let (seq, n) = (self.seq, self.rows.len());
        let (mut inputs, mut targets, mut reset) = (Vec::with_capacity(n * seq), Vec::with_capacity(n * seq), Vec::with_capacity(n));
        let mut tokens = 0;
        for row in &mut self.rows {
            let (start, end) = row.docs[row.doc];
            reset.push(row.pos == start);
            tokens += (end - row.pos - 1).min(seq);
            for i in 0..seq {
                let at = row.pos + i;
                inputs.push(if at < end { i64::from(stream.get(at)) } else { 0 });
                let scored = at + 1 < end && (!self.answers_only || stream.is_answer(at + 1));
                targets.push(if scored { i64::from(stream.get(at + 1)) } else { IGNORE });
            }

            row.pos += seq;
            if row.pos + 1 >= end {
                row.doc = (row.doc + 1) % row.docs.len();
                row.pos = row.docs[row.doc].0;
            }
        }
        let shape = [n as i64, seq as i64];
        Batch { inputs: Tensor::from_slice(&inputs).view(shape), targets: Tensor::from_slice(&targets).view(shape), reset: Some(Tensor::from_slice(&reset)), tokens }
    }
}

/// The training sampler of a run, with its position (saved in checkpoints).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    Random(Batcher),
    Sequential(SequentialSampler),
}

impl Sampler {
    /// A sampler of `sampling` (`Auto` must have been resolved by the caller, who knows the model);
    /// `answers_only` scores only the answers of a synthetic task (sequential sampling only).
    pub fn new(sampling: Sampling, seed: u64, batch_size: usize, seq: usize, stream: &TokenStream, answers_only: bool) -> Result<Self, DataError> {
        match sampling {
            Sampling::Random => {
                assert!(!answers_only, "an answers-only loss needs sequential sampling (checked by the run's validation)");
                Ok(Sampler::Random(Batcher::new(seed, batch_size, seq)))
            }
            Sampling::Sequential => {
                let s = SequentialSampler::new(seed, batch_size, seq, stream)?;
                Ok(Sampler::Sequential(if answers_only { s.answers_only() } else { s }))
            }
            Sampling::Auto => panic!("data.sampling = \"auto\" must be resolved against the model before sampling"),
        }
    }

    pub fn next_batch(&mut self, stream: &TokenStream) -> Result<Batch, DataError> {
        match self {
            Sampler::Random(b) => {
                let (inputs, targets) = b.next_batch(stream)?;
                let tokens = inputs.numel();
                Ok(Batch { inputs, targets, reset: None, tokens })
            }
            Sampler::Sequential(s) => Ok(s.next_batch(stream)),
        }
    }
}

/// Evaluation windows: `rows` contiguous stretches of the split, walked in step.
#[derive(Debug)]
pub struct EvalWindows<'a> {
    stream: &'a TokenStream,
    /// Where the documents start, rising (a window that starts one starts from a fresh state).
    doc_starts: Vec<usize>,
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
        // whole windows per row, so that every window starts at a multiple of seq (episodic data
        // such as MQAR has one example per seq tokens)
        let row_len = n / rows / seq * seq;
        let windows = (row_len / seq).min(cap / (rows * seq));
        if windows == 0 {
            return Err(too_short());
        }
        Ok(Self { stream, doc_starts: stream.doc_starts(), seq, rows, row_len, next_window: 0, windows })
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
    /// `[rows, seq]` int64: for targets that are answers of a synthetic long-range task, how far
    /// back their source lies; 0 elsewhere (absent for data without answers).
    pub answers: Option<Tensor>,
    /// `[rows]` bool: the row's window starts a document, so a carried state must not reach into
    /// it, as in training (every window of an episodic task such as MQAR is one example).
    pub reset: Tensor,
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
        let reset: Vec<bool> = starts.iter().map(|s| self.doc_starts.binary_search(s).is_ok()).collect();
        self.next_window += 1;
        Some(EvalBatch { inputs: windows.narrow(1, 0, self.seq), targets: windows.narrow(1, 1, self.seq), answers, reset: Tensor::from_slice(&reset) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(n: u32) -> TokenStream {
        TokenStream::from_ids((0..n).collect(), std::sync::Arc::new(vec![1; n as usize]))
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

    /// A window that starts a document is marked, so that a carried state does not reach from
    /// one example into the next (102 predictable tokens: rows of 30 from 0, 30, 60; windows of 10).
    #[test]
    fn eval_windows_mark_document_starts() {
        let s = stream(103).with_doc_starts(vec![0, 10, 40, 50, 98]);
        let resets: Vec<Vec<bool>> = EvalWindows::new(&s, 10, 3, 0).unwrap().map(|b| Vec::<bool>::try_from(&b.reset).unwrap()).collect();
        // window starts: [0, 30, 60], [10, 40, 70], [20, 50, 80]
        assert_eq!(resets, vec![vec![true, false, false], vec![true, true, false], vec![false, true, false]]);
    }

    #[test]
    fn eval_answer_distances_follow_their_targets() {
        // every 5th token is an answer (distance 7); targets are inputs shifted by one, and so
        // must be the answers
        let s = stream(103).with_answers((0..103).map(|i| if i % 5 == 0 { 7 } else { 0 }).collect());
        for b in EvalWindows::new(&s, 10, 3, 0).unwrap() {
            let distance = b.answers.expect("the stream has answers");
            let expected = b.targets.remainder(5).eq(0).to_kind(tch::Kind::Int64) * 7;
            assert!(distance.equal(&expected));
        }
    }

    /// Rows walk their documents window by window; the last window of a document is padded and
    /// the next one is marked as a reset; every token of every document is a target exactly once
    /// per pass (but each document's first token, which nothing predicts).
    #[test]
    fn sequential_rows_walk_whole_documents_with_resets() {
        // documents [0,10) [10,13) [13,14) (too short: dropped) [14,30)
        let s = stream(30).with_doc_starts(vec![0, 10, 13, 14]);
        let mut sampler = SequentialSampler::new(5, 2, 4, &s).unwrap();
        let mut seen = Vec::new();
        let mut windows = Vec::new();
        for _ in 0..7 {
            // a row holding [0,10) and [14,30) needs 3 + 4 windows; the other wraps around [10,13)
            let b = sampler.next_batch(&s);
            let (x, y) = (Vec::<i64>::try_from(b.inputs.flatten(0, 1)).unwrap(), Vec::<i64>::try_from(b.targets.flatten(0, 1)).unwrap());
            let reset: Vec<bool> = Vec::try_from(b.reset.unwrap()).unwrap();
            for r in 0..2 {
                let (xr, yr) = (&x[r * 4..r * 4 + 4], &y[r * 4..r * 4 + 4]);
                for i in 0..4 {
                    if yr[i] != IGNORE {
                        assert_eq!(yr[i], xr[i] + 1, "targets are the next tokens");
                        seen.push(yr[i]);
                    }
                }
                windows.push((r, xr[0], reset[r]));
            }
            assert_eq!(b.tokens, y.iter().filter(|&&t| t != IGNORE).count(), "without answers_only every real position is a target");
        }
        // row of document [10,13): window 10..13 padded, reset; then its next document restarts
        let doc_b = windows.iter().find(|w| w.1 == 10).expect("document [10,13) is read");
        assert!(doc_b.2, "a document's first window resets the row");
        assert!(windows.iter().filter(|w| w.1 == 4 || w.1 == 18).all(|w| !w.2), "later windows carry on");
        let mut once: Vec<i64> = seen.clone();
        once.sort();
        once.dedup();
        let expected: Vec<i64> = (1..30).filter(|t| ![10, 13, 14].contains(t)).collect();
        assert!(expected.iter().all(|t| once.contains(t)), "every predictable token is a target: {once:?}");
        // the same seed deals the same documents; the state round-trips
        let again = SequentialSampler::new(5, 2, 4, &s).unwrap();
        assert_eq!(again, SequentialSampler::new(5, 2, 4, &s).unwrap());
        let json = serde_json::to_string(&Sampler::Sequential(sampler.clone())).unwrap();
        let Sampler::Sequential(back) = serde_json::from_str(&json).unwrap() else { panic!("kind survives") };
        assert_eq!(back, sampler);
        assert!(SequentialSampler::new(0, 20, 4, &s).is_err(), "29 predictable tokens cannot fill 20 rows");
        // one long document is cut into as many pieces as there are rows
        let one = SequentialSampler::new(0, 4, 4, &stream(400)).unwrap();
        let mut pieces: Vec<(usize, usize)> = one.rows.iter().flat_map(|r| r.docs.clone()).collect();
        pieces.sort();
        assert_eq!(pieces, vec![(0, 100), (100, 200), (200, 300), (300, 400)]);
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
