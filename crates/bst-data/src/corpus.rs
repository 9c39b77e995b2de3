//! Corpora as documents, split into train/valid/test with no overlap.
//!
//! With many documents a split would take whole documents; the default corpus has only four
//! (books), so each book is cut into three contiguous sections instead: its first
//! `1 - valid - test` of lines go to train, the next `valid` to validation and the last `test`
//! to test. Random chunks are never used: neighbouring chunks of one text would leak between
//! splits. Gutenberg licence headers and footers are removed (the text between the
//! `*** START OF` and `*** END OF` markers is kept).

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::{CorpusKind, DataConfig, DataError, Tokenizer};

/// One document: a title and its raw bytes (not necessarily UTF-8).
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

impl std::fmt::Display for SplitName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SplitName::Train => "train",
            SplitName::Valid => "valid",
            SplitName::Test => "test",
        })
    }
}

/// The documents (or document sections) of one split.
#[derive(Debug, Clone)]
pub struct Split {
    pub name: SplitName,
    pub documents: Vec<Document>,
}

/// A tokenised split: all of its documents one after another.
#[derive(Debug)]
pub struct TokenStream {
    /// `[tokens]`, int64 on the CPU.
    pub tokens: Tensor,
    /// Bytes of text the tokens encode (bits per byte = total bits / bytes).
    pub bytes: usize,
}

impl TokenStream {
    pub fn len(&self) -> usize {
        self.tokens.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes per token of this stream (1 for the byte tokenizer).
    pub fn bytes_per_token(&self) -> f64 {
        self.bytes as f64 / self.len() as f64
    }
}

impl Split {
    pub fn bytes(&self) -> usize {
        self.documents.iter().map(|d| d.bytes.len()).sum()
    }

    /// All bytes of the split, documents in order.
    pub fn concatenated(&self) -> Vec<u8> {
        self.documents.iter().flat_map(|d| d.bytes.iter().copied()).collect()
    }

    pub fn tokenize(&self, tokenizer: &dyn Tokenizer) -> TokenStream {
        let ids: Vec<i64> = self.documents.iter().flat_map(|d| tokenizer.encode(&d.bytes)).collect();
        TokenStream { tokens: Tensor::from_slice(&ids).to_kind(Kind::Int64), bytes: self.bytes() }
    }
}

/// A corpus split three ways.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub train: Split,
    pub valid: Split,
    pub test: Split,
    /// Files the corpus was read from.
    pub sources: Vec<PathBuf>,
}

impl Corpus {
    /// Loads the configured corpus from `cfg.dir` and splits it.
    pub fn load(cfg: &DataConfig) -> Result<Self, DataError> {
        cfg.validate()?;
        match cfg.corpus {
            CorpusKind::Books => {
                let path = cfg.dir.join("books").join("gutenberg_big.txt");
                let docs = gutenberg_books(&read(&path)?, &path)?;
                Ok(Self::split_sections(docs, cfg, vec![path]))
            }
        }
    }

    /// Splits every document into contiguous train/valid/test sections, cut at line starts.
    pub fn split_sections(documents: Vec<Document>, cfg: &DataConfig, sources: Vec<PathBuf>) -> Self {
        let mut splits = [SplitName::Train, SplitName::Valid, SplitName::Test]
            .map(|name| Split { name, documents: Vec::new() });
        for doc in documents {
            let n = doc.bytes.len();
            let train_end = line_start_at(&doc.bytes, n as f64 * (1.0 - cfg.valid_fraction - cfg.test_fraction));
            let valid_end = line_start_at(&doc.bytes, n as f64 * (1.0 - cfg.test_fraction)).max(train_end);
            for (split, range) in splits.iter_mut().zip([0..train_end, train_end..valid_end, valid_end..n]) {
                let title = format!("{} [{}: bytes {}..{}]", doc.title, split.name, range.start, range.end);
                split.documents.push(Document { title, bytes: doc.bytes[range].to_vec() });
            }
        }
        let [train, valid, test] = splits;
        Self { train, valid, test, sources }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => DataError::Missing { path: path.to_owned() },
        _ => DataError::Io { path: path.to_owned(), source },
    })
}

/// The first line start at or after byte `at` (or the end of the text).
fn line_start_at(bytes: &[u8], at: f64) -> usize {
    let at = (at as usize).min(bytes.len());
    match bytes[at..].iter().position(|&b| b == b'\n') {
        Some(i) if at > 0 => at + i + 1,
        _ if at == 0 => 0,
        _ => bytes.len(),
    }
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
    fn sections_are_disjoint_cover_everything_and_are_deterministic() {
        let text = format!("{}{}", book("ALPHA", 400), book("BETA", 250));
        let docs = gutenberg_books(text.as_bytes(), Path::new("x")).unwrap();
        let cfg = DataConfig::default();
        let a = Corpus::split_sections(docs.clone(), &cfg, vec![]);
        let b = Corpus::split_sections(docs.clone(), &cfg, vec![]);
        for (i, doc) in docs.iter().enumerate() {
            let parts = [&a.train, &a.valid, &a.test].map(|s| s.documents[i].bytes.clone());
            assert_eq!(parts.concat(), doc.bytes, "sections must tile the document in order");
            assert!(parts.iter().all(|p| !p.is_empty()));
            // no line appears in two splits (every line of the synthetic books is unique)
            let lines = |p: &Vec<u8>| p.split(|&c| c == b'\n').filter(|l| !l.is_empty()).map(|l| l.to_vec()).collect::<Vec<_>>();
            for x in lines(&parts[0]) {
                assert!(!lines(&parts[1]).contains(&x) && !lines(&parts[2]).contains(&x));
            }
            let frac = parts[2].len() as f64 / doc.bytes.len() as f64;
            assert!((frac - cfg.test_fraction).abs() < 0.02, "test fraction {frac}");
        }
        assert_eq!(a.test.concatenated(), b.test.concatenated());
    }
}
