//! Prepared data: corpus -> tokenizer -> memory-mapped token shards, cached under
//! `<data.dir>/cache/<corpus>-<tokenizer>-<digest>/`, with a data card beside them.
//!
//! The digest covers the corpus's `MANIFEST.sha256` (so refetched or edited files invalidate the
//! cache) and the split settings. A BPE tokenizer is trained on the training split only (no
//! valid/test text leaks into its merges), saved as `tokenizer.json` and reused. Shards are
//! verified on every open; a stale or corrupt one is rebuilt and the reason reported in
//! [`PreparedData::rebuilt`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::corpus::Cleaning;
use crate::synthetic::SyntheticStream;
use crate::error::write_atomically;
use crate::shard::{write_shard, Shard, ShardKey, ShardProblem};
use crate::stats::{DataStats, SplitStats};
use crate::{BpeTokenizer, ByteTokenizer, Corpus, CorpusKind, DataConfig, DataError, Split, SplitName, TokenStream, Tokenizer, TokenizerKind};

/// Bump when cleaning or splitting rules change, so that old caches are not reused.
const RULES_VERSION: u32 = 1;

/// A corpus ready for training: its tokenizer and one token stream per split.
pub struct PreparedData {
    pub tokenizer: Box<dyn Tokenizer>,
    pub train: TokenStream,
    pub valid: TokenStream,
    pub test: TokenStream,
    pub stats: DataStats,
    /// Folder holding tokenizer.json, the shards, stats.json and CARD.md.
    pub cache_dir: PathBuf,
    /// What this call had to (re)build, and why; empty when the cache was used as is.
    pub rebuilt: Vec<String>,
}

/// Where the cache of a data configuration lives, and the digest its shards must carry.
struct Location {
    manifest: Vec<u8>,
    source: [u8; 32],
    cache_dir: PathBuf,
}

impl Location {
    fn of(cfg: &DataConfig) -> Result<Self, DataError> {
        cfg.validate()?;
        let manifest_path = cfg.dir.join(cfg.corpus.folder()).join("MANIFEST.sha256");
        let manifest = std::fs::read(&manifest_path).map_err(|_| DataError::Missing { path: manifest_path.clone() })?;
        let source: [u8; 32] = {
            let mut h = Sha256::new();
            h.update(&manifest);
            h.update(format!("{}|{}|{}|{RULES_VERSION}", cfg.corpus, cfg.valid_fraction, cfg.test_fraction));
            h.finalize().into()
        };
        let cache_dir = cfg.dir.join("cache").join(format!("{}-{}-{}", cfg.corpus, cfg.tokenizer_name(), &bst_core::fs::hex(&source)[..12]));
        Ok(Self { manifest, source, cache_dir })
    }
}

/// The tokenizer of a prepared data configuration (for scoring text with a trained model); a BPE
/// must have been trained already, by [`PreparedData::load`] (any training run does it).
pub fn load_tokenizer(cfg: &DataConfig) -> Result<Box<dyn Tokenizer>, DataError> {
    match cfg.tokenizer {
        TokenizerKind::Byte => Ok(Box::new(ByteTokenizer)),
        TokenizerKind::Bpe => Ok(Box::new(BpeTokenizer::load(&Location::of(cfg)?.cache_dir.join("tokenizer.json"))?)),
    }
}

fn shard_path(dir: &Path, split: SplitName) -> PathBuf {
    dir.join(format!("{split}.bin"))
}

impl PreparedData {
    /// Opens the cached shards of `cfg`, building whatever is missing, stale or corrupt.
    pub fn load(cfg: &DataConfig) -> Result<Self, DataError> {
        if cfg.corpus == CorpusKind::Synthetic {
            return Self::synthetic(cfg);
        }
        let Location { manifest, source, cache_dir } = Location::of(cfg)?;
        let mut rebuilt = Vec::new();
        let mut corpus = None;
        let tokenizer = load_or_train_tokenizer(cfg, &cache_dir, &mut corpus, &mut rebuilt)?;
        let key = ShardKey { tokenizer: tokenizer.fingerprint(), source };
        let stats_path = cache_dir.join("stats.json");
        let cached_stats = std::fs::read(&stats_path).ok().and_then(|b| serde_json::from_slice::<DataStats>(&b).ok());
        let opened: Vec<Result<Shard, ShardProblem>> = SplitName::ALL.iter().map(|&s| Shard::open(&shard_path(&cache_dir, s), key)).collect();
        let token_bytes = Arc::new(tokenizer.token_bytes());
        if let (Some(stats), true) = (cached_stats, opened.iter().all(Result::is_ok)) {
            let [train, valid, test] = opened.try_into().unwrap_or_else(|_| unreachable!("three splits"));
            let stream = |s: Result<Shard, ShardProblem>| TokenStream::from_shard(s.unwrap_or_else(|_| unreachable!("checked above")), token_bytes.clone());
            return Ok(Self { tokenizer, train: stream(train), valid: stream(valid), test: stream(test), stats, cache_dir, rebuilt });
        }
        for (split, problem) in SplitName::ALL.iter().zip(&opened) {
            if let Err(p) = problem {
                rebuilt.push(format!("{split} shard: {p}"));
            }
        }
        drop(opened);
        let corpus = match corpus {
            Some(c) => c,
            None => Corpus::load(cfg)?,
        };
        let mut splits = Vec::new();
        let mut streams = Vec::new();
        for name in SplitName::ALL {
            let split = corpus.split(name);
            let path = shard_path(&cache_dir, name);
            let (ids, doc_starts) = tokenize(split, tokenizer.as_ref());
            write_shard(&path, &ids, &doc_starts, split.bytes() as u64, tokenizer.vocab_size(), key)?;
            let shard = Shard::open(&path, key).map_err(|p| DataError::Shard { path: path.clone(), reason: format!("just written, but {p}") })?;
            splits.push(SplitStats { split: name.to_string(), documents: split.documents.len(), bytes: split.bytes(), tokens: ids.len() });
            streams.push(TokenStream::from_shard(shard, token_bytes.clone()));
        }
        let (train_bytes, test_bytes) = (corpus.train.concatenated(), corpus.test.concatenated());
        let stats = DataStats {
            corpus: cfg.corpus,
            tokenizer: cfg.tokenizer_name(),
            vocab_size: tokenizer.vocab_size(),
            splits,
            cleaning: corpus.cleaning.clone(),
            unigram_entropy_bpb: crate::unigram::entropy_bits(&train_bytes),
            unigram_test_bpb: crate::unigram::cross_entropy_bits(&train_bytes, &test_bytes),
            manifest_sha256: bst_core::sha256_hex(&manifest),
            answer_chance: None,
        };
        let json = serde_json::to_vec_pretty(&stats).expect("stats serialise");
        write_atomically(&stats_path, &json)?;
        let sources = std::fs::read_to_string(cfg.dir.join(cfg.corpus.folder()).join("SOURCES.toml")).unwrap_or_default();
        write_atomically(&cache_dir.join("CARD.md"), crate::card::render(&stats, &sources, &corpus).as_bytes())?;
        let [train, valid, test]: [TokenStream; 3] = streams.try_into().unwrap_or_else(|_| unreachable!("three splits"));
        Ok(Self { tokenizer, train, valid, test, stats, cache_dir, rebuilt })
    }

    /// A generated long-range task: byte streams with their answer masks, held in memory (they
    /// are regenerated in well under a second, so they are not cached).
    fn synthetic(cfg: &DataConfig) -> Result<Self, DataError> {
        cfg.validate()?;
        let task = cfg.synthetic.clone().unwrap_or_default();
        let mut streams = Vec::new();
        let mut splits = Vec::new();
        let mut bytes = Vec::new();
        for name in SplitName::ALL {
            let s = SyntheticStream::generate(&task, name)?;
            splits.push(SplitStats { split: name.to_string(), documents: s.doc_starts.len(), bytes: s.len(), tokens: s.len() });
            streams.push(TokenStream::from_bytes(&s.bytes).with_answers(s.answer_distance).with_doc_starts(s.doc_starts));
            bytes.push(s.bytes);
        }
        let stats = DataStats {
            corpus: CorpusKind::Synthetic,
            tokenizer: cfg.tokenizer_name(),
            vocab_size: 256,
            splits,
            cleaning: Cleaning::default(),
            unigram_entropy_bpb: crate::unigram::entropy_bits(&bytes[0]),
            unigram_test_bpb: crate::unigram::cross_entropy_bits(&bytes[0], &bytes[2]),
            manifest_sha256: String::new(),
            answer_chance: Some(task.chance_accuracy()),
        };
        let toml = toml::to_string(&task).expect("the synthetic config serialises");
        let digest = bst_core::sha256_hex(toml.as_bytes());
        let cache_dir = cfg.dir.join("cache").join(format!("synthetic-{}", &digest[..12]));
        let card = crate::card::render_synthetic(&task, &stats);
        write_atomically(&cache_dir.join("CARD.md"), card.as_bytes())?;
        let [train, valid, test]: [TokenStream; 3] = streams.try_into().unwrap_or_else(|_| unreachable!("three splits"));
        Ok(Self { tokenizer: Box::new(ByteTokenizer), train, valid, test, stats, cache_dir, rebuilt: Vec::new() })
    }

    pub fn stream(&self, split: SplitName) -> &TokenStream {
        match split {
            SplitName::Train => &self.train,
            SplitName::Valid => &self.valid,
            SplitName::Test => &self.test,
        }
    }
}

/// The byte tokenizer, or the cached BPE (trained on the training split if absent or unreadable).
fn load_or_train_tokenizer(cfg: &DataConfig, dir: &Path, corpus: &mut Option<Corpus>, rebuilt: &mut Vec<String>) -> Result<Box<dyn Tokenizer>, DataError> {
    if cfg.tokenizer == TokenizerKind::Byte {
        return Ok(Box::new(ByteTokenizer));
    }
    let path = dir.join("tokenizer.json");
    match BpeTokenizer::load(&path) {
        Ok(t) => return Ok(Box::new(t)),
        Err(DataError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => rebuilt.push("tokenizer: missing".into()),
        Err(e) => rebuilt.push(format!("tokenizer: unreadable ({e})")),
    }
    let c = corpus.insert(Corpus::load(cfg)?);
    let texts: Vec<&str> = c.train.documents.iter().map(|d| std::str::from_utf8(&d.bytes).expect("documents are UTF-8 after cleaning")).collect();
    let bpe = BpeTokenizer::train(texts.into_iter(), cfg.vocab())?;
    bpe.save(&path)?;
    Ok(Box::new(bpe))
}

/// Token ids of a split's documents, one after another, and where each document starts.
fn tokenize(split: &Split, tokenizer: &dyn Tokenizer) -> (Vec<u32>, Vec<u64>) {
    let per_doc: Vec<Vec<i64>> = split.documents.par_iter().map(|d| tokenizer.encode(&d.bytes)).collect();
    let mut ids = Vec::with_capacity(per_doc.iter().map(Vec::len).sum());
    let mut starts = Vec::with_capacity(per_doc.len());
    for doc in per_doc {
        starts.push(ids.len() as u64);
        ids.extend(doc.into_iter().map(|i| u32::try_from(i).expect("token ids are non-negative")));
    }
    (ids, starts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    /// A tiny corpus folder in the fetch script's layout.
    fn code_corpus(dir: &Path) {
        let files = dir.join("code/files");
        std::fs::create_dir_all(&files).unwrap();
        for i in 0..60 {
            let text = format!("// file {i}\nfn f{i}(x: u32) -> u32 {{\n    let y = x * {i} + 1;\n    y.wrapping_add({i})\n}}\n").repeat(5);
            std::fs::write(files.join(format!("f{i}.rs")), text).unwrap();
        }
        std::fs::write(dir.join("code/MANIFEST.sha256"), "fake manifest v1\n").unwrap();
        std::fs::write(dir.join("code/SOURCES.toml"), "[[source]]\npackage = \"test\"\nversion = \"1\"\nlicence = \"MIT\"\ncontent = \"files/\"\n").unwrap();
    }

    fn cfg(dir: &Path, tokenizer: TokenizerKind) -> DataConfig {
        let vocab_size = (tokenizer == TokenizerKind::Bpe).then_some(600);
        DataConfig { corpus: CorpusKind::Code, dir: dir.to_owned(), tokenizer, vocab_size, valid_fraction: 0.1, test_fraction: 0.1, ..Default::default() }
    }

    #[test]
    fn prepares_once_reuses_the_cache_and_rebuilds_what_is_stale_or_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        code_corpus(dir.path());
        let cfg = cfg(dir.path(), TokenizerKind::Bpe);
        let first = PreparedData::load(&cfg).unwrap();
        assert!(first.rebuilt.iter().any(|r| r.starts_with("tokenizer")), "{:?}", first.rebuilt);
        let tokens: usize = first.stats.splits.iter().map(|s| s.tokens).sum();
        let bytes: usize = first.stats.splits.iter().map(|s| s.bytes).sum();
        assert!(tokens * 2 < bytes, "BPE compresses: {tokens} tokens for {bytes} bytes");
        assert!(first.cache_dir.join("CARD.md").exists());
        // the shards decode back to the split's text
        let corpus = Corpus::load(&cfg).unwrap();
        let ids: Vec<i64> = (0..first.valid.len()).map(|i| i64::from(first.valid.get(i))).collect();
        assert_eq!(first.tokenizer.decode(&ids), corpus.valid.concatenated());
        // exact byte counts: the token lengths of a split add up to its text
        let all = Tensor::from_slice(&ids);
        assert_eq!(first.valid.bytes_of(&all) as usize, corpus.valid.bytes());
        assert_eq!(first.valid.doc_starts().len(), corpus.valid.documents.len());
        drop(first);

        let second = PreparedData::load(&cfg).unwrap();
        assert!(second.rebuilt.is_empty(), "nothing to rebuild: {:?}", second.rebuilt);
        let card = std::fs::read_to_string(second.cache_dir.join("CARD.md")).unwrap();
        drop(second);

        let test_shard = shard_path(&PreparedData::load(&cfg).unwrap().cache_dir, SplitName::Test);
        let mut bytes = std::fs::read(&test_shard).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        std::fs::write(&test_shard, bytes).unwrap();
        let third = PreparedData::load(&cfg).unwrap();
        assert_eq!(third.rebuilt.len(), 1, "{:?}", third.rebuilt);
        assert!(third.rebuilt[0].contains("test shard: corrupt"), "{:?}", third.rebuilt);
        assert_eq!(std::fs::read_to_string(third.cache_dir.join("CARD.md")).unwrap(), card, "the rebuilt data is the same");

        // a changed corpus gets its own cache folder
        std::fs::write(dir.path().join("code/MANIFEST.sha256"), "fake manifest v2\n").unwrap();
        let fourth = PreparedData::load(&cfg).unwrap();
        assert_ne!(fourth.cache_dir, third.cache_dir);
    }

    #[test]
    fn a_missing_corpus_names_the_fetch_script() {
        let dir = tempfile::tempdir().unwrap();
        let err = PreparedData::load(&cfg(dir.path(), TokenizerKind::Byte)).err().unwrap().to_string();
        assert!(err.contains("MANIFEST.sha256") && err.contains("fetch_data.sh"), "{err}");
    }
}
