//! LRA Retrieval stand-in: do two byte segments come from the same document?
//!
//! LRA's Retrieval asks whether one ACL Anthology (AAN) paper cites another, from the bytes of
//! both (4000 each). The AAN corpus is not in the registries we can use, so this builds the same
//! shape of task from a corpus's documents: an example is two segments of exactly `seq_len`
//! bytes, labelled 1 when both come from one document (at non-overlapping offsets) and 0 when
//! they come from two different documents. Labels are balanced exactly. The documents, not the
//! segments, are split between train, valid and test, so no text is shared across splits.
//! Only documents of at least `2 * seq_len` bytes take part, in both classes alike, so which
//! documents occur says nothing about the label.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{shuffled, stream_rng, Example, LraConfig, LraDataset, LraTask};
use crate::{DataError, Document};

/// Byte ids 0–255, then the pad id.
pub const VOCAB_SIZE: usize = 257;
pub const PAD: u32 = 256;

/// Documents each split needs at least (a negative pairs two of them).
const MIN_DOCS_PER_SPLIT: usize = 2;

fn segment(doc: &Document, start: usize, len: usize) -> Vec<u32> {
    doc.bytes[start..start + len].iter().map(|&b| u32::from(b)).collect()
}

/// One example from `docs` (each at least `2 * len` bytes long).
pub fn generate(rng: &mut ChaCha8Rng, docs: &[&Document], len: usize, same: bool) -> Example {
    let (tokens, pair) = if same {
        let doc = docs[rng.random_range(0..docs.len())];
        // two non-overlapping windows: the first ends before the second starts
        let a = rng.random_range(0..=doc.bytes.len() - 2 * len);
        let b = rng.random_range(a + len..=doc.bytes.len() - len);
        let (first, second) = (segment(doc, a, len), segment(doc, b, len));
        // which one comes first in the text must not be a cue
        match rng.random_bool(0.5) {
            true => (first, second),
            false => (second, first),
        }
    } else {
        let i = rng.random_range(0..docs.len());
        let j = (i + rng.random_range(1..docs.len())) % docs.len(); // any other document
        let pick =
            |rng: &mut ChaCha8Rng, doc: &Document| segment(doc, rng.random_range(0..=doc.bytes.len() - len), len);
        (pick(rng, docs[i]), pick(rng, docs[j]))
    };
    Example { tokens, pair: Some(pair), label: same as u32 }
}

/// Splits the long-enough documents at random into train/valid/test by `cfg`'s fractions.
fn split_documents<'a>(
    cfg: &LraConfig,
    documents: &'a [Document],
    len: usize,
) -> Result<[Vec<&'a Document>; 3], DataError> {
    let mut eligible: Vec<&Document> = documents.iter().filter(|d| d.bytes.len() >= 2 * len).collect();
    let needed = 3 * MIN_DOCS_PER_SPLIT;
    if eligible.len() < needed {
        return Err(DataError::TooFewDocuments {
            task: "lra retrieval".into(),
            have: eligible.len(),
            needed,
            reason: format!(
                "documents of at least 2 x seq_len = {} bytes, {MIN_DOCS_PER_SPLIT} per split ({} documents given)",
                2 * len,
                documents.len()
            ),
        });
    }
    eligible.shuffle(&mut stream_rng(cfg.seed, 100));
    let n = eligible.len() as f64;
    let count = |f: f64| ((n * f).round() as usize).max(MIN_DOCS_PER_SPLIT);
    let (n_test, n_valid) = (count(cfg.test_fraction), count(cfg.valid_fraction));
    let test = eligible.split_off(eligible.len() - n_test);
    let valid = eligible.split_off(eligible.len() - n_valid);
    Ok([eligible, valid, test])
}

pub(crate) fn dataset(cfg: &LraConfig, documents: &[Document]) -> Result<LraDataset, DataError> {
    let len = cfg.seq_len();
    let doc_splits = split_documents(cfg, documents, len)?;
    let doc_counts = doc_splits.each_ref().map(Vec::len);
    let sizes = cfg.split_sizes();
    let mut stream = 0..;
    let [train, valid, test] = doc_splits.map(|docs| {
        let s = stream.next().unwrap();
        let mut rng = stream_rng(cfg.seed, s);
        let n = sizes[s as usize].expect("generated tasks always have a size");
        let examples = (0..n).map(|i| generate(&mut rng, &docs, len, i % 2 == 0)).collect();
        shuffled(examples, cfg.seed, 10 + s)
    });
    Ok(LraDataset {
        task: LraTask::Retrieval,
        vocab_size: VOCAB_SIZE,
        pad_id: PAD,
        num_classes: 2,
        seq_len: len,
        train,
        valid,
        test,
        description: format!(
            "same-document matching of two {len}-byte segments, a stand-in for LRA's AAN citation matching; documents split {}/{}/{} between train/valid/test",
            doc_counts[0], doc_counts[1], doc_counts[2]
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::lra::label_counts;

    /// Documents made of 4-byte words unique to a document and position, so every segment
    /// occurs exactly once in the corpus.
    fn docs(n: usize, words: usize) -> Vec<Document> {
        (0..n)
            .map(|d| Document {
                title: format!("doc {d}"),
                bytes: (0..words).flat_map(|w| [d as u8, (w >> 8) as u8, w as u8, b' ']).collect(),
            })
            .collect()
    }

    #[test]
    fn labels_are_right_segments_disjoint_and_splits_share_no_document() {
        let corpus = docs(30, 300); // 1200 bytes each
        let cfg = LraConfig {
            task: LraTask::Retrieval,
            seq_len: Some(64),
            n_train: Some(200),
            n_valid: Some(40),
            n_test: Some(40),
            seed: 9,
            ..LraConfig::default()
        };
        let ds = LraDataset::retrieval(&cfg, &corpus).unwrap();
        assert_eq!(label_counts(&ds.train, 2), vec![100, 100]);
        assert_eq!(label_counts(&ds.test, 2), vec![20, 20]);
        let mut owner: HashMap<usize, &str> = HashMap::new();
        for (name, split) in [("train", &ds.train), ("valid", &ds.valid), ("test", &ds.test)] {
            for e in split {
                let pair = e.pair.as_ref().unwrap();
                assert_eq!((e.tokens.len(), pair.len()), (64, 64));
                let (a, b) = (start(&corpus, &e.tokens), start(&corpus, pair));
                assert_eq!(a.0 == b.0, e.label == 1, "label 1 iff same document");
                if a.0 == b.0 {
                    assert!(a.1.abs_diff(b.1) >= 64, "segments of one example never overlap");
                }
                for doc in [a.0, b.0] {
                    assert_eq!(*owner.entry(doc).or_insert(name), name, "document {doc} in two splits");
                }
            }
        }
        assert_eq!(ds.test, LraDataset::retrieval(&cfg, &corpus).unwrap().test, "deterministic");
    }

    /// Document index and offset of `segment`, found by searching the corpus (independent of
    /// how the generator chose them).
    fn start(corpus: &[Document], segment: &[u32]) -> (usize, usize) {
        let bytes: Vec<u8> = segment.iter().map(|&t| t as u8).collect();
        let hits: Vec<(usize, usize)> = corpus
            .iter()
            .enumerate()
            .flat_map(|(d, doc)| {
                doc.bytes.windows(bytes.len()).enumerate().filter(|(_, w)| *w == bytes).map(move |(o, _)| (d, o))
            })
            .collect();
        assert_eq!(hits.len(), 1, "each segment occurs once in the corpus");
        hits[0]
    }

    /// Real data: `cargo test -p bst-data --release -- --ignored real_books_retrieval --nocapture`
    /// (the books corpus: Gutenberg books, State of the Union addresses, Shakespeare).
    #[test]
    #[ignore]
    fn real_books_retrieval() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data");
        let corpus =
            crate::Corpus::load(&crate::DataConfig { dir: dir.clone(), ..crate::DataConfig::default() }).unwrap();
        let documents: Vec<Document> =
            [&corpus.train, &corpus.valid, &corpus.test].iter().flat_map(|s| s.documents.iter().cloned()).collect();
        let cfg = LraConfig { task: LraTask::Retrieval, dir, ..LraConfig::default() };
        let ds = LraDataset::retrieval(&cfg, &documents).unwrap();
        println!("{} documents given\n{}", documents.len(), ds.summary());
        assert_eq!(label_counts(&ds.train, 2), vec![2500, 2500]);
    }

    #[test]
    fn too_few_long_documents_is_an_error() {
        let cfg = LraConfig { task: LraTask::Retrieval, seq_len: Some(64), ..LraConfig::default() };
        let mut corpus = docs(5, 300);
        corpus.extend(docs(10, 20)); // 80 bytes: too short to give two segments
        let err = LraDataset::retrieval(&cfg, &corpus).unwrap_err().to_string();
        assert!(err.contains("5") && err.contains("6"), "{err}");
        assert!(LraDataset::load(&cfg).is_err(), "retrieval needs documents");
    }
}
