//! ListOps (Nangia & Bowman 2018) as LRA generates it (`lra_benchmarks/data/listops.py`): random
//! nested prefix expressions such as `[MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]`, whose value
//! 0–9 is the label.
//!
//! The tree grammar is LRA's: below `max_depth` a node is an operator with probability 0.25
//! (else a digit), an operator takes 2..=`max_args` arguments, and the operator is uniform over
//! MIN, MAX, MED and SM (sum mod 10). Trees are drawn until their length lies in
//! `[min_len, seq_len]` tokens (LRA: 500–2000, depth 10, up to 10 arguments).
//!
//! Differences from LRA, on purpose:
//! - LRA's text also carries the `(` `)` of its binary-tree printing; they hold no information
//!   and inflate the length, so tokens here are only operators, digits and `]`.
//! - MED follows LRA's `int(np.median(xs))`: for an even count it is the mean of the two middle
//!   values rounded down, not one of the two.
//! - Examples are deduplicated across all three splits (LRA only within a split).

use std::collections::HashSet;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{invalid, stream_rng, Example, LraConfig, LraDataset, LraTask};
use crate::DataError;

/// Token ids 0–9 are the digits themselves.
pub const DIGITS: u32 = 10;
/// Closes the innermost operator.
pub const CLOSE: u32 = 14;
/// Padding id.
pub const PAD: u32 = 15;
pub const VOCAB_SIZE: usize = 16;

/// Probability that a node above the depth limit is an operator (LRA's `VALUE_P` complement).
const OPERATOR_P: f64 = 0.25;

/// A ListOps operator; its token id is `10 + op as u32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Min = 0,
    Max = 1,
    Med = 2,
    SumMod = 3,
}

impl Op {
    const ALL: [Op; 4] = [Op::Min, Op::Max, Op::Med, Op::SumMod];

    pub fn token(self) -> u32 {
        DIGITS + self as u32
    }

    pub fn from_token(token: u32) -> Option<Op> {
        Op::ALL.get(token.checked_sub(DIGITS)? as usize).copied()
    }

    /// LRA's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Op::Min => "[MIN",
            Op::Max => "[MAX",
            Op::Med => "[MED",
            Op::SumMod => "[SM",
        }
    }

    /// The operator's value on digit arguments (`args` non-empty).
    pub fn apply(self, args: &[u32]) -> u32 {
        match self {
            Op::Min => *args.iter().min().expect("no arguments"),
            Op::Max => *args.iter().max().expect("no arguments"),
            Op::SumMod => args.iter().sum::<u32>() % 10,
            Op::Med => {
                let mut sorted = args.to_vec();
                sorted.sort_unstable();
                let n = sorted.len();
                // numpy's median averages the two middle values of an even count; LRA truncates
                match n % 2 {
                    1 => sorted[n / 2],
                    _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
                }
            }
        }
    }
}

/// ListOps generator settings (the `[lra.listops]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListOpsConfig {
    /// Shortest accepted expression, in tokens (the longest is the task's `seq_len`).
    pub min_len: usize,
    /// Depth at which every node is a digit (the root is depth 1).
    pub max_depth: usize,
    /// Most arguments of one operator (at least 2).
    pub max_args: usize,
}

impl Default for ListOpsConfig {
    /// LRA's settings: lengths 500–2000, depth 10, up to 10 arguments.
    fn default() -> Self {
        Self { min_len: 500, max_depth: 10, max_args: 10 }
    }
}

impl ListOpsConfig {
    pub fn validate(&self, seq_len: usize) -> Result<(), DataError> {
        if self.max_args < 2 {
            return Err(invalid("lra.listops.max_args", self.max_args, "must be at least 2"));
        }
        if self.max_depth < 2 {
            return Err(invalid(
                "lra.listops.max_depth",
                self.max_depth,
                "must be at least 2 (the root is an operator)",
            ));
        }
        if self.min_len > seq_len {
            return Err(invalid(
                "lra.listops.min_len",
                self.min_len,
                format!("must not exceed lra.seq_len = {seq_len} (lower min_len for short sequences)"),
            ));
        }
        // the deepest tree a depth limit allows must be able to reach min_len
        let longest = (1..self.max_depth).fold(1.0f64, |len, _| 2.0 + self.max_args as f64 * len);
        if longest < self.min_len as f64 {
            return Err(invalid(
                "lra.listops.min_len",
                self.min_len,
                format!(
                    "trees of depth {} with {} arguments have at most {longest} tokens",
                    self.max_depth, self.max_args
                ),
            ));
        }
        Ok(())
    }
}

/// Appends one random subtree to `out` and returns its value, or `None` as soon as `out` grows
/// past `max_len` (the caller then rejects the tree).
fn subtree(rng: &mut ChaCha8Rng, cfg: &ListOpsConfig, depth: usize, out: &mut Vec<u32>, max_len: usize) -> Option<u32> {
    // the root is always an operator: a lone digit can never reach min_len anyway
    let operator = depth == 1 || (depth < cfg.max_depth && rng.random::<f64>() <= OPERATOR_P);
    if !operator {
        let digit = rng.random_range(0..10);
        out.push(digit);
        return (out.len() <= max_len).then_some(digit);
    }
    let n_args = rng.random_range(2..=cfg.max_args);
    // LRA draws the arguments before the operator; the order of draws only changes which
    // trees a seed gives, so the operator is drawn first here to write tokens in order
    let op = Op::ALL[rng.random_range(0..Op::ALL.len())];
    out.push(op.token());
    let mut args = Vec::with_capacity(n_args);
    for _ in 0..n_args {
        args.push(subtree(rng, cfg, depth + 1, out, max_len)?);
    }
    out.push(CLOSE);
    (out.len() <= max_len).then(|| op.apply(&args))
}

/// One expression of `min_len..=max_len` tokens and its value.
pub fn generate(rng: &mut ChaCha8Rng, cfg: &ListOpsConfig, max_len: usize) -> Example {
    let mut tokens = Vec::new();
    loop {
        tokens.clear();
        if let Some(label) = subtree(rng, cfg, 1, &mut tokens, max_len) {
            if tokens.len() >= cfg.min_len {
                return Example { tokens, pair: None, label };
            }
        }
    }
}

/// LRA's text form of a token sequence, e.g. `[SM 2 6 5 ]`.
pub fn to_text(tokens: &[u32]) -> String {
    let word = |&t: &u32| match (t, Op::from_token(t)) {
        (0..=9, _) => t.to_string(),
        (CLOSE, _) => "]".to_string(),
        (_, Some(op)) => op.name().to_string(),
        _ => format!("<{t}>"),
    };
    tokens.iter().map(word).collect::<Vec<_>>().join(" ")
}

/// The three splits, each from its own random stream, with no expression in two places.
pub(crate) fn dataset(cfg: &LraConfig) -> LraDataset {
    let seq_len = cfg.seq_len();
    let mut seen = HashSet::new();
    let mut splits = cfg.split_sizes().into_iter().enumerate().map(|(stream, n)| {
        let mut rng = stream_rng(cfg.seed, stream as u64);
        let n = n.expect("generated tasks always have a size");
        let mut examples = Vec::with_capacity(n);
        while examples.len() < n {
            let example = generate(&mut rng, &cfg.listops, seq_len);
            if seen.insert(example.tokens.clone()) {
                examples.push(example);
            }
        }
        examples
    });
    let (train, valid, test) = (splits.next().unwrap(), splits.next().unwrap(), splits.next().unwrap());
    LraDataset {
        task: LraTask::ListOps,
        vocab_size: VOCAB_SIZE,
        pad_id: PAD,
        num_classes: 10,
        seq_len,
        train,
        valid,
        test,
        description: format!(
            "ListOps generated as in LRA (MIN/MAX/MED/SM, depth {}, up to {} arguments, {}–{seq_len} tokens, no parentheses)",
            cfg.listops.max_depth, cfg.listops.max_args, cfg.listops.min_len
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An evaluator written apart from the generator: a stack of open operators over the token
    /// sequence, with each operator's semantics written out again (median via floats as numpy
    /// does). Panics on a malformed sequence.
    fn evaluate(tokens: &[u32]) -> u32 {
        let mut stack: Vec<(u32, Vec<u32>)> = Vec::new();
        let mut result = None;
        for &t in tokens {
            let value = match t {
                0..=9 => t,
                10..=13 => {
                    stack.push((t, Vec::new()));
                    continue;
                }
                14 => {
                    let (op, args) = stack.pop().expect("unbalanced ]");
                    assert!(args.len() >= 2, "operator with {} arguments", args.len());
                    match op {
                        10 => args.iter().fold(9, |a, &b| a.min(b)),
                        11 => args.iter().fold(0, |a, &b| a.max(b)),
                        12 => {
                            let mut xs: Vec<f64> = args.iter().map(|&x| x as f64).collect();
                            xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
                            let m = xs.len();
                            let median = if m % 2 == 1 { xs[m / 2] } else { 0.5 * (xs[m / 2 - 1] + xs[m / 2]) };
                            median.floor() as u32
                        }
                        13 => args.iter().fold(0, |a, &b| (a + b) % 10),
                        _ => unreachable!(),
                    }
                }
                _ => panic!("unexpected token {t}"),
            };
            match stack.last_mut() {
                Some((_, args)) => args.push(value),
                None => {
                    assert!(result.is_none(), "tokens after the root expression");
                    result = Some(value);
                }
            }
        }
        assert!(stack.is_empty(), "unclosed operator");
        result.expect("empty expression")
    }

    #[test]
    fn independent_evaluator_agrees_on_known_expressions() {
        // [MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ] = max(4, 3, 2, 1, 0, 5) = 5
        let tokens = [11, 4, 3, 10, 2, 3, 14, 1, 0, 12, 1, 5, 8, 9, 2, 14, 14];
        assert_eq!(evaluate(&tokens), 5);
        assert_eq!(to_text(&tokens), "[MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]");
        assert_eq!(evaluate(&[13, 7, 8, 9, 14]), 4); // (7 + 8 + 9) mod 10
        assert_eq!(Op::Med.apply(&[1, 4]), 2); // numpy: median 2.5 -> int 2
        assert_eq!(Op::Med.apply(&[9, 2, 3, 8]), 5); // median 5.5 -> 5
        assert_eq!(Op::Med.apply(&[7, 1, 3]), 3);
    }

    #[test]
    fn generated_labels_match_the_independent_evaluator() {
        let cfg = ListOpsConfig::default();
        let mut rng = stream_rng(11, 0);
        let mut classes = [0usize; 10];
        let mut ops_seen = HashSet::new();
        for _ in 0..400 {
            let ex = generate(&mut rng, &cfg, 2000);
            assert!((500..=2000).contains(&ex.tokens.len()), "length {}", ex.tokens.len());
            assert_eq!(evaluate(&ex.tokens), ex.label, "{}", to_text(&ex.tokens));
            assert!(ex.tokens.iter().all(|&t| (t as usize) < VOCAB_SIZE && t != PAD));
            classes[ex.label as usize] += 1;
            ops_seen.extend(ex.tokens.iter().filter_map(|&t| Op::from_token(t)));
        }
        assert!(classes.iter().all(|&c| c > 0), "every class appears: {classes:?}");
        assert!(classes.iter().all(|&c| c < 200), "no class dominates: {classes:?}");
        assert_eq!(ops_seen.len(), 4);
    }

    #[test]
    fn dataset_respects_sizes_and_short_lengths_and_is_deterministic() {
        let cfg = LraConfig {
            seq_len: Some(120),
            n_train: Some(60),
            n_valid: Some(20),
            n_test: Some(20),
            seed: 5,
            listops: ListOpsConfig { min_len: 40, ..ListOpsConfig::default() },
            ..LraConfig::default()
        };
        let a = LraDataset::load(&cfg).unwrap();
        assert_eq!((a.train.len(), a.valid.len(), a.test.len()), (60, 20, 20));
        let all: Vec<&Example> = a.train.iter().chain(&a.valid).chain(&a.test).collect();
        assert!(all.iter().all(|e| (40..=120).contains(&e.tokens.len()) && evaluate(&e.tokens) == e.label));
        let unique: HashSet<&Vec<u32>> = all.iter().map(|e| &e.tokens).collect();
        assert_eq!(unique.len(), all.len(), "no expression in two places");
        let b = LraDataset::load(&cfg).unwrap();
        assert_eq!(a.test, b.test, "same seed, same data");
        let c = LraDataset::load(&LraConfig { seed: 6, ..cfg.clone() }).unwrap();
        assert_ne!(a.test, c.test, "different seed, different data");
        let more = LraDataset::load(&LraConfig { n_train: Some(80), ..cfg.clone() }).unwrap();
        assert_eq!(a.train[..], more.train[..60], "growing the training set keeps its prefix");
    }

    #[test]
    fn impossible_lengths_are_rejected() {
        let cfg = LraConfig { seq_len: Some(100), ..LraConfig::default() };
        assert!(matches!(LraDataset::load(&cfg), Err(DataError::Invalid(e)) if e.key == "lra.listops.min_len"));
        let shallow = ListOpsConfig { max_depth: 2, max_args: 3, min_len: 10 };
        assert!(shallow.validate(2000).is_err(), "depth 2 with 3 arguments has at most 5 tokens");
    }
}
