//! The `[data]` table of a run configuration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::synthetic::SyntheticConfig;
use crate::error::invalid;
use crate::{DataError, Sampling};

/// Which corpus to train and evaluate on. Each is a stand-in for one of the paper's datasets,
/// built from registry packages by `scripts/fetch_data.sh` (see the data card of each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorpusKind {
    /// PG19 stand-in: public-domain books and speeches (`books/` under `data.dir`).
    Books,
    /// arXiv stand-in: LaTeX sources of TeX Live documentation (`latex/`).
    Latex,
    /// GitHub stand-in: Rust standard library and compiler sources (`code/`).
    Code,
    /// Another GitHub stand-in: the Go standard library without tests (`code_go/`, fetched by
    /// `scripts/fetch_data.sh data code_go`).
    CodeGo,
    /// A generated long-range task (`data.synthetic`): answers that only a model remembering more
    /// than 2W bytes back can predict.
    Synthetic,
}

impl CorpusKind {
    /// The real corpora fetched by default (not generated; `code_go` is an optional fetch).
    pub const REAL: [CorpusKind; 3] = [CorpusKind::Books, CorpusKind::Latex, CorpusKind::Code];

    /// Folder under `data.dir` (for the real corpora, the fetch step that fills it).
    pub fn folder(self) -> &'static str {
        match self {
            CorpusKind::Books => "books",
            CorpusKind::Latex => "latex",
            CorpusKind::Code => "code",
            CorpusKind::CodeGo => "code_go",
            CorpusKind::Synthetic => "synthetic",
        }
    }

    /// The paper dataset this corpus stands in for.
    pub fn stands_in_for(self) -> &'static str {
        match self {
            CorpusKind::Books => "PG19",
            CorpusKind::Latex => "arXiv",
            CorpusKind::Code | CorpusKind::CodeGo => "GitHub",
            CorpusKind::Synthetic => "none",
        }
    }

    /// What the corpus is, for reports: "stand-in for PG19", or "a generated long-range task".
    pub fn describe(self) -> String {
        match self {
            CorpusKind::Synthetic => "a generated long-range task".into(),
            real => format!("stand-in for {}", real.stands_in_for()),
        }
    }
}

impl std::fmt::Display for CorpusKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.folder())
    }
}

/// Which tokenizer turns text into ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    /// One token per byte, vocabulary 256.
    Byte,
    /// Byte-level BPE trained on the training split (`data.vocab_size` tokens), like the paper's
    /// 32K SentencePiece vocabulary.
    Bpe,
}

/// Vocabulary of a BPE tokenizer when `data.vocab_size` is not given: small enough that the
/// embedding does not dominate a CPU-sized model.
pub const DEFAULT_BPE_VOCAB: usize = 4096;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Corpus to use.
    pub corpus: CorpusKind,
    /// Folder the fetch script wrote to (relative paths are relative to the working directory).
    /// Tokenizers and token shards are cached under `<dir>/cache/`.
    pub dir: PathBuf,
    /// Tokenizer.
    pub tokenizer: TokenizerKind,
    /// Vocabulary size of the BPE tokenizer (default 4096; the paper's GPU setting is 32768).
    /// Only meaningful for `tokenizer = "bpe"`.
    pub vocab_size: Option<usize>,
    /// Fraction of the corpus's bytes held out for validation (whole documents).
    pub valid_fraction: f64,
    /// Fraction of the corpus's bytes held out for test (whole documents).
    pub test_fraction: f64,
    /// How training windows are drawn: `"auto"` (default: sequential for models that carry state
    /// across windows, BRECT and TRSF-XL, as meliad trains them; random for the others),
    /// `"random"` or `"sequential"` (see [`crate::batcher`]). Set it explicitly to hold sampling
    /// equal across a comparison.
    pub sampling: Sampling,
    /// The generated task of `corpus = "synthetic"` (its defaults when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<SyntheticConfig>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            corpus: CorpusKind::Books,
            dir: PathBuf::from("data"),
            tokenizer: TokenizerKind::Byte,
            vocab_size: None,
            valid_fraction: 0.05,
            test_fraction: 0.05,
            sampling: Sampling::Auto,
            synthetic: None,
        }
    }
}

impl DataConfig {
    pub fn validate(&self) -> Result<(), DataError> {
        for (key, v) in [("data.valid_fraction", self.valid_fraction), ("data.test_fraction", self.test_fraction)] {
            if !(v > 0.0 && v < 0.5) {
                return Err(invalid(key, v, "must be in (0, 0.5)"));
            }
        }
        match (self.corpus, &self.synthetic) {
            (CorpusKind::Synthetic, s) => {
                if self.tokenizer != TokenizerKind::Byte {
                    return Err(invalid("data.tokenizer", "bpe", "corpus = \"synthetic\" needs tokenizer = \"byte\": its answer mask is per byte"));
                }
                s.clone().unwrap_or_default().validate()?;
            }
            (other, Some(_)) => {
                return Err(invalid("data.synthetic", "a table", format!("is only read with corpus = \"synthetic\", not \"{other}\"")));
            }
            _ => {}
        }
        match (self.tokenizer, self.vocab_size) {
            (TokenizerKind::Byte, Some(v)) if v != 256 => Err(invalid("data.vocab_size", v, "the byte tokenizer has 256 tokens; vocab_size applies to tokenizer = \"bpe\"")),
            (TokenizerKind::Bpe, Some(v)) if !(512..=65536).contains(&v) => {
                Err(invalid("data.vocab_size", v, "a BPE vocabulary must hold 512..=65536 tokens (256 bytes plus merges; ids are stored as u16/u32)"))
            }
            _ => Ok(()),
        }
    }

    /// Size of the vocabulary the model needs.
    pub fn vocab(&self) -> usize {
        match self.tokenizer {
            TokenizerKind::Byte => 256,
            TokenizerKind::Bpe => self.vocab_size.unwrap_or(DEFAULT_BPE_VOCAB),
        }
    }

    /// Short name of the tokenizer, as used in cache folders and tables: `byte` or `bpe4096`.
    pub fn tokenizer_name(&self) -> String {
        match self.tokenizer {
            TokenizerKind::Byte => "byte".into(),
            TokenizerKind::Bpe => format!("bpe{}", self.vocab()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocab_size_is_checked_against_the_tokenizer() {
        let bpe = DataConfig { tokenizer: TokenizerKind::Bpe, ..Default::default() };
        assert_eq!(bpe.vocab(), DEFAULT_BPE_VOCAB);
        assert!(bpe.validate().is_ok());
        let err = DataConfig { vocab_size: Some(1000), ..Default::default() }.validate().unwrap_err().to_string();
        assert!(err.contains("vocab_size") && err.contains("bpe"), "{err}");
        let err = DataConfig { vocab_size: Some(100), ..bpe.clone() }.validate().unwrap_err().to_string();
        assert!(err.contains("512..=65536"), "{err}");
        assert_eq!(DataConfig { vocab_size: Some(32768), ..bpe }.tokenizer_name(), "bpe32768");
    }
}
