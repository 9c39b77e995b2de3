//! What a prepared corpus holds: documents, bytes and tokens per split, the cleaning done and
//! the no-context baselines (stored as `stats.json` beside the shards, rendered in the data card).

use serde::{Deserialize, Serialize};

use crate::corpus::Cleaning;
use crate::CorpusKind;

/// Size of one split, as the data card reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitStats {
    pub split: String,
    pub documents: usize,
    pub bytes: usize,
    pub tokens: usize,
}

/// Everything the data card says about a prepared corpus (stored as `stats.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataStats {
    pub corpus: CorpusKind,
    pub tokenizer: String,
    pub vocab_size: usize,
    pub splits: Vec<SplitStats>,
    pub cleaning: Cleaning,
    /// Entropy of the training split's byte distribution (bits per byte).
    pub unigram_entropy_bpb: f64,
    /// Test bits per byte of the add-one-smoothed byte unigram model fitted on train.
    pub unigram_test_bpb: f64,
    /// sha256 of the corpus's MANIFEST.sha256 when the shards were built.
    pub manifest_sha256: String,
    /// Accuracy on the answers of a synthetic task without long-range memory (chance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_chance: Option<f64>,
}

