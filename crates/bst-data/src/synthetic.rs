//! Synthetic long-range language-modelling streams, as printable byte text for the byte
//! tokenizer and the ordinary LM trainer.
//!
//! Each stream is a run of episodes whose "answer" bytes can only be predicted from information
//! more than `min_distance` bytes back. One SLIDE layer (own and previous block) sees fewer than
//! 2W tokens back, and n stacked layers fewer than (n + 1) W; with `min_distance` at least that, a
//! sliding-window model can do no better than chance on the answers, while a model whose state
//! spans the sequence (the BST's SSM context) can, so the accuracy on
//! [`SyntheticStream::answer_mask`] measures long-range memory at CPU scale.
//!
//! - `assoc_recall` (associative recall, as in Zoology/H3's MQAR, spread out in time):
//!   ```text
//!   keys QXJ=07 BNA=93 ...
//!   the of and time ... (filler words, more than min_distance bytes)
//!   ask BNA=93 QXJ=07 ...
//!   ```
//!   The answers are the values after `ask`: each key is bound once per episode and asked at
//!   most once, so nothing within `min_distance` bytes of an answer mentions its key.
//! - `copy_delay` (copy after a delay): `copy <string>`, filler, `paste <string>`; the answers
//!   are the pasted bytes.
//! - `mqar` (multi-query associative recall as Zoology makes it learnable, Arora et al. 2023):
//!   independent examples of exactly `example_len` bytes (one training window each), each
//!   `n_pairs` key-value bindings at the start (one byte each: keys from A-Z, values from 0-9a-z,
//!   disjoint), filler `.` elsewhere, and `n_queries` of the keys asked again further on (each key
//!   at most once), the value after each query the answer, its binding `min_distance` to
//!   `max_distance` bytes back. With `answers_only` the loss is on the answers alone.
//!
//! Values and copied strings are drawn uniformly and independently of everything else, so the
//! last `min_distance` bytes carry no information about an answer byte beyond the answer's own
//! earlier bytes: chance accuracy is `1 / value_alphabet`.

use std::collections::HashSet;

use rand::seq::index::sample;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::invalid;
use crate::lra::stream_rng;
use crate::{DataError, Document, SplitName};

/// Which synthetic task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyntheticTask {
    /// Key-value bindings, then filler, then queries of the keys.
    AssocRecall,
    /// A random string, then filler, then the string again.
    CopyDelay,
    /// Independent fixed-length examples: bindings at the start, queries further on.
    Mqar,
}

/// The `[synthetic]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    pub task: SyntheticTask,
    /// Size of the training stream in bytes (whole episodes only, so up to one episode less).
    pub train_bytes: usize,
    /// Size of the validation stream and of the test stream in bytes.
    pub eval_bytes: usize,
    /// Every answer depends only on bytes more than this far back: at least (layers + 1) W, the
    /// receptive field of stacked SLIDE layers.
    pub min_distance: usize,
    /// Key-value bindings per `assoc_recall` episode.
    pub n_pairs: usize,
    /// Keys asked per `assoc_recall` episode (at most `n_pairs`).
    pub n_queries: usize,
    /// Letters per key.
    pub key_len: usize,
    /// Distinct key letters (the first ones of A–Z).
    pub key_alphabet: usize,
    /// Symbols per value.
    pub value_len: usize,
    /// Distinct value symbols (the first ones of 0–9 then a–z); chance accuracy is its inverse.
    pub value_alphabet: usize,
    /// Symbols of the string a `copy_delay` episode copies (drawn from the value alphabet).
    pub copy_len: usize,
    /// Seed (each split uses its own random stream of it).
    pub seed: u64,
    /// `mqar`: bytes per example; must equal `train.seq_len` (one example per window).
    pub example_len: usize,
    /// `mqar`: the farthest a query's binding may lie back (0: as far as the example allows).
    pub max_distance: usize,
    /// Train on the answers alone (every other target ignored), as MQAR needs to be learnable;
    /// `mqar` requires it.
    pub answers_only: bool,
}

impl Default for SyntheticConfig {
    /// The paper's window W = 512, so min_distance = 2W = 1024.
    fn default() -> Self {
        Self {
            task: SyntheticTask::AssocRecall,
            train_bytes: 1 << 20,
            eval_bytes: 1 << 16,
            min_distance: 1024,
            n_pairs: 16,
            n_queries: 8,
            key_len: 3,
            key_alphabet: 26,
            value_len: 2,
            value_alphabet: 10,
            copy_len: 32,
            seed: 0,
            example_len: 256,
            max_distance: 0,
            answers_only: false,
        }
    }
}

const KEY_SYMBOLS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const VALUE_SYMBOLS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
/// Filler vocabulary: lower-case words, so no filler byte looks like a key.
const FILLER: &[&str] = &[
    "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not", "he",
    "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had", "they", "you", "were", "their",
    "one", "all", "we", "can", "her", "has", "there", "been", "if", "more", "when", "will", "would", "who", "so", "no",
    "time", "long", "river", "house", "light", "world", "small", "water", "under", "again",
];

impl SyntheticConfig {
    pub fn validate(&self) -> Result<(), DataError> {
        let positive = [
            ("data.synthetic.min_distance", self.min_distance),
            ("data.synthetic.n_pairs", self.n_pairs),
            ("data.synthetic.n_queries", self.n_queries),
            ("data.synthetic.key_len", self.key_len),
            ("data.synthetic.value_len", self.value_len),
            ("data.synthetic.copy_len", self.copy_len),
        ];
        if let Some((key, v)) = positive.into_iter().find(|&(_, v)| v == 0) {
            return Err(invalid(key, v, "must be at least 1"));
        }
        if self.task == SyntheticTask::Mqar {
            return self.validate_mqar();
        }
        if !(2..=KEY_SYMBOLS.len()).contains(&self.key_alphabet) {
            return Err(invalid("data.synthetic.key_alphabet", self.key_alphabet, "must be in 2..=26 (letters A-Z)"));
        }
        if !(2..=VALUE_SYMBOLS.len()).contains(&self.value_alphabet) {
            return Err(invalid("data.synthetic.value_alphabet", self.value_alphabet, "must be in 2..=36 (0-9 then a-z)"));
        }
        if self.n_queries > self.n_pairs {
            return Err(invalid(
                "data.synthetic.n_queries",
                self.n_queries,
                format!("must not exceed n_pairs = {}", self.n_pairs),
            ));
        }
        // distinct keys are drawn by rejection: keep the key space at least twice the demand
        let keys = (self.key_alphabet as f64).powi(self.key_len as i32);
        if keys < 2.0 * self.n_pairs as f64 {
            return Err(invalid(
                "data.synthetic.n_pairs",
                self.n_pairs,
                format!("needs at least {} distinct keys; key_alphabet^key_len = {keys}", 2 * self.n_pairs),
            ));
        }
        let episode = self.max_episode_len();
        for (key, v) in [("data.synthetic.train_bytes", self.train_bytes), ("data.synthetic.eval_bytes", self.eval_bytes)] {
            if v < episode {
                return Err(invalid(key, v, format!("must hold at least one episode ({episode} bytes)")));
            }
        }
        Ok(())
    }

    /// `mqar`: one-byte keys and values from disjoint alphabets, queries that fit the example.
    fn validate_mqar(&self) -> Result<(), DataError> {
        if self.key_len != 1 || self.value_len != 1 {
            return Err(invalid("data.synthetic.key_len", self.key_len, "mqar uses one-byte keys and values (key_len = value_len = 1)"));
        }
        if self.n_pairs > self.key_alphabet {
            return Err(invalid("data.synthetic.n_pairs", self.n_pairs, format!("mqar binds distinct one-byte keys: at most key_alphabet = {}", self.key_alphabet)));
        }
        if !self.answers_only {
            return Err(invalid("data.synthetic.answers_only", false, "mqar is trained on its answers alone (Zoology): set answers_only = true"));
        }
        // every key (bound at 2i) needs a query slot q, 2n <= q <= example_len - 2, at distance
        // q - 2i in min_distance..=farthest
        let (n, far) = (self.n_pairs, self.farthest());
        let fits = |i: usize| (2 * n).max(2 * i + self.min_distance) <= (self.example_len.saturating_sub(2)).min(2 * i + far);
        if let Some(i) = (0..n).find(|&i| !fits(i)) {
            return Err(invalid(
                "data.synthetic.min_distance",
                self.min_distance,
                format!("the queries must fit: key {i} is bound at byte {}, the bindings end at byte {}, example_len = {}, distances {}..={far}", 2 * i, 2 * n, self.example_len, self.min_distance),
            ));
        }
        if self.example_len < 2 * n + 2 * self.n_queries + 2 {
            return Err(invalid("data.synthetic.example_len", self.example_len, format!("too short for {n} bindings and {} queries", self.n_queries)));
        }
        for (key, v) in [("data.synthetic.train_bytes", self.train_bytes), ("data.synthetic.eval_bytes", self.eval_bytes)] {
            if v < self.example_len {
                return Err(invalid(key, v, format!("must hold at least one example ({} bytes)", self.example_len)));
            }
        }
        Ok(())
    }

    /// `mqar`: the largest distance a query can have.
    fn farthest(&self) -> usize {
        let cap = self.example_len.saturating_sub(2);
        if self.max_distance == 0 { cap } else { self.max_distance.min(cap) }
    }

    /// Whether the stream is a sequence of independent fixed-length examples (one per window).
    pub fn is_episodic(&self) -> bool {
        self.task == SyntheticTask::Mqar
    }

    /// Longest filler: a little over `min_distance`, jittered so episodes do not line up with
    /// fixed windows.
    fn max_filler_len(&self) -> usize {
        self.min_distance + 1 + self.min_distance / 8 + 8
    }

    /// An upper bound on the bytes of one episode.
    pub fn max_episode_len(&self) -> usize {
        let body = match self.task {
            SyntheticTask::AssocRecall => (self.n_pairs + self.n_queries) * (self.key_len + self.value_len + 2) + 10,
            SyntheticTask::CopyDelay => 2 * self.copy_len + 14,
            SyntheticTask::Mqar => return self.example_len,
        };
        body + self.max_filler_len()
    }

    /// Expected accuracy on answer bytes without the long-range information.
    pub fn chance_accuracy(&self) -> f64 {
        1.0 / self.value_alphabet as f64
    }
}

/// A synthetic byte stream and which of its bytes are long-range answers.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticStream {
    /// Printable ASCII text (lines separated by `\n`).
    pub bytes: Vec<u8>,
    /// `answer_distance[i] > 0`: byte `i` is an answer, predictable only from the byte that far
    /// back (and not from the `min_distance` bytes before it); 0 for every other byte.
    pub answer_distance: Vec<u32>,
    /// Where each document starts (episodes of the byte tasks form one document; each `mqar`
    /// example is one).
    pub doc_starts: Vec<usize>,
}

/// Writes text into a stream, marking answers.
struct Writer<'a> {
    stream: &'a mut SyntheticStream,
}

impl Writer<'_> {
    fn text(&mut self, bytes: &[u8]) {
        self.stream.bytes.extend_from_slice(bytes);
        self.stream.answer_distance.extend(std::iter::repeat_n(0, bytes.len()));
    }

    /// Answer bytes copied from the bytes at `source` (a position in the stream).
    fn answer(&mut self, bytes: &[u8], source: usize) {
        let distance = (self.stream.bytes.len() - source) as u32;
        self.stream.bytes.extend_from_slice(bytes);
        self.stream.answer_distance.extend(std::iter::repeat_n(distance, bytes.len()));
    }

    fn len(&self) -> usize {
        self.stream.bytes.len()
    }
}

fn symbols(rng: &mut ChaCha8Rng, alphabet: &[u8], len: usize) -> Vec<u8> {
    (0..len).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect()
}

/// Filler words, then a newline: more than `min_distance` bytes in all.
fn filler(rng: &mut ChaCha8Rng, cfg: &SyntheticConfig, w: &mut Writer) {
    let target = cfg.min_distance + 1 + rng.random_range(0..=cfg.min_distance / 8);
    let mut line = Vec::with_capacity(target + 8);
    while line.len() + 1 < target {
        line.extend_from_slice(FILLER[rng.random_range(0..FILLER.len())].as_bytes());
        line.push(b' ');
    }
    line.pop();
    line.push(b'\n');
    w.text(&line);
}

fn assoc_recall_episode(rng: &mut ChaCha8Rng, cfg: &SyntheticConfig, w: &mut Writer) {
    let key_symbols = &KEY_SYMBOLS[..cfg.key_alphabet];
    let value_symbols = &VALUE_SYMBOLS[..cfg.value_alphabet];
    let mut keys = HashSet::new();
    let mut pairs = Vec::with_capacity(cfg.n_pairs);
    while pairs.len() < cfg.n_pairs {
        let key = symbols(rng, key_symbols, cfg.key_len);
        if keys.insert(key.clone()) {
            pairs.push((key, symbols(rng, value_symbols, cfg.value_len)));
        }
    }
    w.text(b"keys");
    let mut value_at = Vec::with_capacity(pairs.len());
    for (key, value) in &pairs {
        w.text(&[b" ", key.as_slice(), b"="].concat());
        value_at.push(w.len());
        w.text(value);
    }
    w.text(b"\n");
    filler(rng, cfg, w);
    w.text(b"ask");
    for i in sample(rng, cfg.n_pairs, cfg.n_queries) {
        let (key, value) = &pairs[i];
        w.text(&[b" ", key.as_slice(), b"="].concat());
        w.answer(value, value_at[i]);
    }
    w.text(b"\n");
}

fn copy_delay_episode(rng: &mut ChaCha8Rng, cfg: &SyntheticConfig, w: &mut Writer) {
    let string = symbols(rng, &VALUE_SYMBOLS[..cfg.value_alphabet], cfg.copy_len);
    w.text(b"copy ");
    let source = w.len();
    w.text(&[string.as_slice(), b"\n"].concat());
    filler(rng, cfg, w);
    w.text(b"paste ");
    w.answer(&string, source);
    w.text(b"\n");
}

/// The filler byte of `mqar` examples.
pub const MQAR_FILLER: u8 = b'.';

/// One `mqar` example of exactly `example_len` bytes: `n_pairs` bindings `k v` at the start, then
/// `n_queries` of the keys again at positions drawn so that each answer's binding lies
/// `min_distance..=max_distance` back; filler everywhere else.
fn mqar_example(rng: &mut ChaCha8Rng, cfg: &SyntheticConfig, w: &mut Writer) -> Result<(), DataError> {
    let start = w.len();
    let (n, len) = (cfg.n_pairs, cfg.example_len);
    let keys: Vec<u8> = sample(rng, cfg.key_alphabet, n).into_iter().map(|i| KEY_SYMBOLS[i]).collect();
    let values: Vec<u8> = (0..n).map(|_| VALUE_SYMBOLS[rng.random_range(0..cfg.value_alphabet)]).collect();
    let mut example = vec![MQAR_FILLER; len];
    let mut distance = vec![0u32; len];
    for i in 0..n {
        (example[2 * i], example[2 * i + 1]) = (keys[i], values[i]);
    }
    // the most constrained keys (bound first, so their ranges end first) are placed first, each at
    // a position drawn uniformly from the slots still free in its range
    let mut asked = sample(rng, n, cfg.n_queries).into_vec();
    asked.sort_unstable();
    for i in asked {
        // the query key at q, its answer at q + 1, bound at 2i + 1: distance q - 2i
        let (lo, hi) = ((2 * n).max(2 * i + cfg.min_distance), (len - 2).min(2 * i + cfg.farthest()));
        let free: Vec<usize> = (lo..=hi).filter(|&q| example[q - 1] == MQAR_FILLER && example[q] == MQAR_FILLER && example[q + 1] == MQAR_FILLER).collect();
        if free.is_empty() {
            return Err(invalid("data.synthetic.n_queries", cfg.n_queries, "the queries do not fit the example at these distances: fewer queries, wider distances or a longer example_len"));
        }
        let q = free[rng.random_range(0..free.len())];
        (example[q], example[q + 1]) = (keys[i], values[i]);
        distance[q + 1] = (q - 2 * i) as u32;
    }
    w.stream.bytes.extend_from_slice(&example);
    w.stream.answer_distance.extend_from_slice(&distance);
    w.stream.doc_starts.push(start);
    Ok(())
}

impl SyntheticStream {
    /// The stream of one split: whole episodes up to `train_bytes` (train) or `eval_bytes`.
    pub fn generate(cfg: &SyntheticConfig, split: SplitName) -> Result<Self, DataError> {
        cfg.validate()?;
        let (budget, stream) = match split {
            SplitName::Train => (cfg.train_bytes, 0),
            SplitName::Valid => (cfg.eval_bytes, 1),
            SplitName::Test => (cfg.eval_bytes, 2),
        };
        let mut rng = stream_rng(cfg.seed, stream);
        let mut out = Self { bytes: Vec::with_capacity(budget), answer_distance: Vec::with_capacity(budget), doc_starts: Vec::new() };
        if !cfg.is_episodic() {
            out.doc_starts.push(0);
        }
        // an episode is at most max_episode_len bytes, so stopping when one might not fit
        // keeps the stream within budget
        while out.bytes.len() + cfg.max_episode_len() <= budget {
            let mut w = Writer { stream: &mut out };
            match cfg.task {
                SyntheticTask::AssocRecall => assoc_recall_episode(&mut rng, cfg, &mut w),
                SyntheticTask::CopyDelay => copy_delay_episode(&mut rng, cfg, &mut w),
                SyntheticTask::Mqar => mqar_example(&mut rng, cfg, &mut w)?,
            }
        }
        Ok(out)
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Number of answer bytes.
    pub fn answers(&self) -> usize {
        self.answer_distance.iter().filter(|&&d| d > 0).count()
    }

    /// `answer_mask()[i]`: byte `i` is an answer.
    pub fn answer_mask(&self) -> Vec<bool> {
        self.answer_distance.iter().map(|&d| d > 0).collect()
    }

    /// The stream as one document (for the corpus and tokenizer code).
    pub fn document(&self, title: impl Into<String>) -> Document {
        Document { title: title.into(), bytes: self.bytes.clone() }
    }

    /// `[len]` bool: the answer mask, aligned with the byte tokens.
    pub fn mask_tensor(&self) -> Tensor {
        Tensor::from_slice(&self.answer_mask())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn small(task: SyntheticTask) -> SyntheticConfig {
        SyntheticConfig {
            task,
            train_bytes: 40_000,
            eval_bytes: 8_000,
            min_distance: 128,
            seed: 4,
            ..SyntheticConfig::default()
        }
    }

    /// Whether `needle` occurs in `hay[from..to]`.
    fn occurs(hay: &[u8], from: usize, to: usize, needle: &[u8]) -> bool {
        hay[from..to].windows(needle.len()).any(|w| w == needle)
    }

    /// Parses the stream line by line, independently of the generator, and checks every answer:
    /// its value is the latest binding of its key, that binding is more than `d` bytes back,
    /// and the `d` bytes before the answer never mention the key except in the query itself.
    #[test]
    fn assoc_recall_answers_are_correct_and_out_of_window() {
        let cfg = small(SyntheticTask::AssocRecall);
        let s = SyntheticStream::generate(&cfg, SplitName::Train).unwrap();
        let d = cfg.min_distance;
        assert_eq!(s.answer_distance.len(), s.bytes.len());
        assert!(s.bytes.iter().all(|&b| b == b'\n' || (b' '..=b'~').contains(&b)), "printable ASCII");
        let mut bindings: HashMap<Vec<u8>, (Vec<u8>, usize)> = HashMap::new();
        let mut expected_mask = vec![false; s.len()];
        let mut expected_distance = vec![0u32; s.len()];
        let mut offset = 0;
        let (mut asked, mut bound) = (0, 0);
        for line in s.bytes.split_inclusive(|&b| b == b'\n') {
            let words = line[..line.len() - 1].split(|&b| b == b' ');
            let mut at = offset;
            let mut tag = None;
            for word in words {
                match tag {
                    None => tag = Some(word.to_vec()),
                    Some(ref t) if t == b"keys" || t == b"ask" => {
                        let eq = word.iter().position(|&b| b == b'=').expect("key=value");
                        let (key, value) = (&word[..eq], &word[eq + 1..]);
                        let value_at = at + eq + 1;
                        if t == b"keys" {
                            bindings.insert(key.to_vec(), (value.to_vec(), value_at));
                            bound += 1;
                        } else {
                            let (bound, bound_at) = &bindings[key];
                            assert_eq!(value, bound.as_slice(), "answer is the bound value");
                            for k in 0..value.len() {
                                let i = value_at + k;
                                expected_mask[i] = true;
                                expected_distance[i] = (i - (bound_at + k)) as u32;
                                assert!(i - (bound_at + k) > d, "binding only {} bytes back", i - bound_at - k);
                                let mention = [key, b"="].concat();
                                assert!(!occurs(&s.bytes, i - d, at, &mention), "key mentioned within the window");
                            }
                            asked += 1;
                        }
                    }
                    Some(_) => {}
                }
                at += word.len() + 1;
            }
            offset += line.len();
        }
        assert_eq!(s.answer_mask(), expected_mask, "mask = exactly the asked values");
        assert_eq!(s.answer_distance, expected_distance, "each answer's distance is to its binding");
        assert_eq!(asked * cfg.n_pairs, bound * cfg.n_queries, "n_queries of every n_pairs bindings are asked");
        assert!(asked > 100 && s.len() <= cfg.train_bytes && s.len() > cfg.train_bytes - cfg.max_episode_len());
        assert_eq!(s.answers(), asked * cfg.value_len);
    }

    #[test]
    fn copy_delay_answers_are_correct_and_out_of_window() {
        let cfg = small(SyntheticTask::CopyDelay);
        let s = SyntheticStream::generate(&cfg, SplitName::Valid).unwrap();
        let d = cfg.min_distance;
        let text = String::from_utf8(s.bytes.clone()).unwrap();
        let mut expected_mask = vec![false; s.len()];
        let mut source: Option<(String, usize)> = None;
        let mut offset = 0;
        for line in text.split_inclusive('\n') {
            if let Some(string) = line.strip_prefix("copy ") {
                source = Some((string.trim_end().to_string(), offset + 5));
            } else if let Some(string) = line.strip_prefix("paste ") {
                let (copied, copied_at) = source.take().expect("paste without copy");
                assert_eq!(string.trim_end(), copied);
                let start = offset + 6;
                for k in 0..copied.len() {
                    expected_mask[start + k] = true;
                    // the whole copy line lies before the window of the k-th answer
                    assert!(copied_at + copied.len() < start + k - d);
                    assert!(!occurs(&s.bytes, start + k - d, start + k, b"copy "));
                }
            }
            offset += line.len();
        }
        assert_eq!(s.answer_mask(), expected_mask);
        assert!(s.answers() >= 20 * cfg.copy_len);
    }

    #[test]
    fn streams_are_deterministic_and_splits_differ() {
        let cfg = small(SyntheticTask::AssocRecall);
        let a = SyntheticStream::generate(&cfg, SplitName::Test).unwrap();
        assert_eq!(a, SyntheticStream::generate(&cfg, SplitName::Test).unwrap());
        assert_ne!(a.bytes, SyntheticStream::generate(&cfg, SplitName::Valid).unwrap().bytes);
        let other = SyntheticConfig { seed: 5, ..cfg.clone() };
        assert_ne!(a.bytes, SyntheticStream::generate(&other, SplitName::Test).unwrap().bytes);
        assert_eq!(a.mask_tensor().size(), vec![a.len() as i64]);
        assert_eq!(a.document("t").bytes, a.bytes);
    }

    #[test]
    fn values_are_near_uniform() {
        // chance accuracy 1/value_alphabet assumes uniform answers
        let cfg = SyntheticConfig { train_bytes: 200_000, ..small(SyntheticTask::AssocRecall) };
        let s = SyntheticStream::generate(&cfg, SplitName::Train).unwrap();
        let mut counts = [0usize; 10];
        s.bytes.iter().zip(&s.answer_mask()).filter(|(_, &m)| m).for_each(|(&b, _)| counts[(b - b'0') as usize] += 1);
        let mean = s.answers() as f64 / 10.0;
        assert!(counts.iter().all(|&c| (c as f64 - mean).abs() < 0.2 * mean), "{counts:?}");
        assert!((cfg.chance_accuracy() - 0.1).abs() < 1e-12);
    }

    /// Shows the start of each task's stream and its answer density:
    /// `cargo test -p bst-data -- --ignored synthetic_samples --nocapture`.
    #[test]
    #[ignore]
    fn synthetic_samples() {
        for task in [SyntheticTask::AssocRecall, SyntheticTask::CopyDelay] {
            let cfg = SyntheticConfig { task, ..SyntheticConfig::default() };
            let s = SyntheticStream::generate(&cfg, SplitName::Train).unwrap();
            let marked: String = s.bytes.iter().zip(&s.answer_mask()).map(|(&b, &m)| if m { '^' } else { b as char }).collect();
            println!(
                "{task:?}: {} bytes, {} answers ({:.2}%)",
                s.len(),
                s.answers(),
                100.0 * s.answers() as f64 / s.len() as f64
            );
            println!("{}\n{}\n", String::from_utf8_lossy(&s.bytes[..1500]), &marked[..1500]);
        }
    }

    fn mqar(n_pairs: usize, min_distance: usize, max_distance: usize) -> SyntheticConfig {
        let task = SyntheticTask::Mqar;
        SyntheticConfig { task, n_pairs, n_queries: n_pairs, key_len: 1, value_len: 1, example_len: 128, min_distance, max_distance, answers_only: true, train_bytes: 128 * 200, eval_bytes: 128 * 20, value_alphabet: 36, seed: 9, ..SyntheticConfig::default() }
    }

    /// MQAR examples: fixed length, one document each; keys, values and filler from disjoint
    /// vocabularies; every key bound once and asked at most once, at the configured distance.
    #[test]
    fn mqar_examples_have_disjoint_vocabularies_and_the_configured_gaps() {
        for (pairs, lo, hi) in [(1, 64, 0), (4, 64, 100), (8, 2, 31)] {
            let cfg = mqar(pairs, lo, hi);
            let s = SyntheticStream::generate(&cfg, SplitName::Train).unwrap();
            assert_eq!(s.len(), 200 * 128);
            assert_eq!(s.doc_starts, (0..200).map(|i| i * 128).collect::<Vec<_>>());
            for ex in 0..200 {
                let e = &s.bytes[ex * 128..(ex + 1) * 128];
                let d = &s.answer_distance[ex * 128..(ex + 1) * 128];
                let (keys, values): (Vec<u8>, Vec<u8>) = (0..pairs).map(|i| (e[2 * i], e[2 * i + 1])).unzip();
                assert!(keys.iter().all(u8::is_ascii_uppercase) && values.iter().all(|v| v.is_ascii_digit() || v.is_ascii_lowercase()));
                let mut unique = keys.clone();
                unique.sort_unstable();
                unique.dedup();
                assert_eq!(unique.len(), pairs, "keys are unique in an example");
                assert!(e[2 * pairs..].iter().all(|&b| b == MQAR_FILLER || keys.contains(&b) || values.contains(&b)));
                let answers: Vec<usize> = (0..128).filter(|&i| d[i] > 0).collect();
                assert_eq!(answers.len(), pairs, "every key asked once");
                for &a in &answers {
                    let i = keys.iter().position(|&k| k == e[a - 1]).expect("a query is a bound key");
                    assert_eq!(e[a], values[i], "the answer is the bound value");
                    assert_eq!(d[a] as usize, a - (2 * i + 1), "distance to the binding");
                    let far = if hi == 0 { 126 } else { hi };
                    assert!((lo..=far).contains(&(d[a] as usize)), "distance {} outside {lo}..={far}", d[a]);
                }
            }
        }
    }

    /// A hand-written lookup (remember every binding, answer each query from it) solves every
    /// answer; chance is 1/36.
    #[test]
    fn a_lookup_solves_mqar_exactly() {
        let cfg = mqar(8, 40, 0);
        let s = SyntheticStream::generate(&cfg, SplitName::Test).unwrap();
        let mut correct = 0;
        for ex in s.bytes.chunks(128) {
            let table: HashMap<u8, u8> = (0..8).map(|i| (ex[2 * i], ex[2 * i + 1])).collect();
            for i in 16..127 {
                if let Some(&v) = table.get(&ex[i]) {
                    correct += usize::from(ex[i + 1] == v);
                }
            }
        }
        assert_eq!(correct, s.answers());
        assert!((cfg.chance_accuracy() - 1.0 / 36.0).abs() < 1e-12);
    }

    #[test]
    fn bad_settings_name_the_key() {
        let err = SyntheticConfig { answers_only: false, ..mqar(4, 8, 0) }.validate().unwrap_err().to_string();
        assert!(err.contains("data.synthetic.answers_only"), "{err}");
        let err = mqar(8, 120, 0).validate().unwrap_err().to_string();
        assert!(err.contains("data.synthetic.min_distance") && err.contains("fit"), "{err}");
        let cfg = SyntheticConfig { n_queries: 20, ..SyntheticConfig::default() };
        assert!(SyntheticStream::generate(&cfg, SplitName::Train)
            .unwrap_err()
            .to_string()
            .contains("data.synthetic.n_queries"));
        let cfg = SyntheticConfig { key_len: 1, key_alphabet: 4, ..SyntheticConfig::default() };
        assert!(cfg.validate().unwrap_err().to_string().contains("data.synthetic.n_pairs"));
        let cfg = SyntheticConfig { eval_bytes: 100, ..SyntheticConfig::default() };
        assert!(cfg.validate().unwrap_err().to_string().contains("data.synthetic.eval_bytes"));
        assert!(serde_json::from_str::<SyntheticConfig>(r#"{"task": "copy_delay", "window": 3}"#).is_err());
        let cfg: SyntheticConfig = serde_json::from_str(r#"{"task": "copy_delay"}"#).unwrap();
        assert_eq!(cfg.min_distance, 1024);
    }
}
