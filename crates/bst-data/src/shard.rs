//! Token shards: a tokenised split on disk, memory-mapped, and the [`TokenStream`] view that
//! batching reads from (a shard, or ids held in memory).
//!
//! Layout (little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `BSTSHARD` |
//! | 4 | format version ([`SHARD_VERSION`]) |
//! | 4 | bytes per token id: 2 (vocabulary <= 65536) or 4 |
//! | 8 | tokens |
//! | 8 | text bytes the tokens encode (for bits per byte) |
//! | 8 | documents |
//! | 32 | sha256 of the tokenizer |
//! | 32 | sha256 of the source (corpus manifest and split settings) |
//! | 32 | sha256 of everything after the header |
//! | 8 x documents | token offset of each document |
//! | width x tokens | token ids |
//!
//! A shard whose tokenizer or source digest differs from the expected one is *stale*; one that is
//! truncated, has a bad header or fails its payload checksum is *corrupt*. Either way it is not
//! used: [`Shard::open`] says why, and the caller rebuilds it.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use crate::error::write_atomically;
use crate::DataError;

pub const SHARD_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"BSTSHARD";
const HEADER_BYTES: usize = 8 + 4 + 4 + 8 + 8 + 8 + 32 * 3;

/// What a shard must have been built from to be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardKey {
    pub tokenizer: [u8; 32],
    pub source: [u8; 32],
}

/// Why an existing shard cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardProblem {
    Missing,
    Stale(String),
    Corrupt(String),
}

impl std::fmt::Display for ShardProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardProblem::Missing => f.write_str("missing"),
            ShardProblem::Stale(why) => write!(f, "stale ({why})"),
            ShardProblem::Corrupt(why) => write!(f, "corrupt ({why})"),
        }
    }
}

/// Writes a shard of `ids` (documents starting at `doc_starts`) for `key`.
pub fn write_shard(path: &Path, ids: &[u32], doc_starts: &[u64], text_bytes: u64, vocab_size: usize, key: ShardKey) -> Result<(), DataError> {
    let width: u32 = if vocab_size <= 1 << 16 { 2 } else { 4 };
    let mut payload = Vec::with_capacity(doc_starts.len() * 8 + ids.len() * width as usize);
    payload.extend(doc_starts.iter().flat_map(|d| d.to_le_bytes()));
    for &id in ids {
        assert!((id as usize) < vocab_size, "token id {id} outside the vocabulary of {vocab_size}");
        match width {
            2 => payload.extend((id as u16).to_le_bytes()),
            _ => payload.extend(id.to_le_bytes()),
        }
    }
    let mut file = Vec::with_capacity(HEADER_BYTES + payload.len());
    file.extend(MAGIC);
    file.extend(SHARD_VERSION.to_le_bytes());
    file.extend(width.to_le_bytes());
    file.extend((ids.len() as u64).to_le_bytes());
    file.extend(text_bytes.to_le_bytes());
    file.extend((doc_starts.len() as u64).to_le_bytes());
    file.extend(key.tokenizer);
    file.extend(key.source);
    file.extend(Sha256::digest(&payload));
    file.extend(payload);
    write_atomically(path, &file)
}

/// An open, verified shard.
pub struct Shard {
    map: Mmap,
    width: usize,
    tokens: usize,
    text_bytes: usize,
    docs: usize,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

impl Shard {
    /// Maps the shard at `path` and checks it against `key` and its own checksum.
    pub fn open(path: &Path, key: ShardKey) -> Result<Shard, ShardProblem> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ShardProblem::Missing),
            Err(e) => return Err(ShardProblem::Corrupt(format!("cannot open: {e}"))),
        };
        // SAFETY: shards are written once through a rename and never modified in place; a file
        // changed under us by someone else would at worst give wrong tokens, not memory errors,
        // since every read below is bounds-checked against the mapped length.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ShardProblem::Corrupt(format!("cannot map: {e}")))?;
        let b = &map[..];
        if b.len() < HEADER_BYTES || &b[..8] != MAGIC {
            return Err(ShardProblem::Corrupt("not a bst shard (bad magic or shorter than its header)".into()));
        }
        let version = u32_at(b, 8);
        if version != SHARD_VERSION {
            return Err(ShardProblem::Stale(format!("format version {version}, this build writes {SHARD_VERSION}")));
        }
        let width = u32_at(b, 12) as usize;
        let (tokens, text_bytes, docs) = (u64_at(b, 16) as usize, u64_at(b, 24) as usize, u64_at(b, 32) as usize);
        if b[40..72] != key.tokenizer {
            return Err(ShardProblem::Stale("built with another tokenizer".into()));
        }
        if b[72..104] != key.source {
            return Err(ShardProblem::Stale("built from other corpus files or split settings".into()));
        }
        if !matches!(width, 2 | 4) {
            return Err(ShardProblem::Corrupt(format!("token width {width}")));
        }
        let expected = docs.checked_mul(8).and_then(|d| tokens.checked_mul(width).and_then(|t| t.checked_add(d))).and_then(|p| p.checked_add(HEADER_BYTES));
        if expected != Some(b.len()) {
            return Err(ShardProblem::Corrupt(format!("{} bytes on disk, the header implies {expected:?} (truncated?)", b.len())));
        }
        if Sha256::digest(&b[HEADER_BYTES..])[..] != b[104..136] {
            return Err(ShardProblem::Corrupt("payload checksum mismatch".into()));
        }
        Ok(Shard { map, width, tokens, text_bytes, docs })
    }

    fn tokens_offset(&self) -> usize {
        HEADER_BYTES + 8 * self.docs
    }

    /// Token offset of every document.
    pub fn doc_starts(&self) -> Vec<usize> {
        (0..self.docs).map(|i| u64_at(&self.map, HEADER_BYTES + 8 * i) as usize).collect()
    }
}

enum Store {
    Memory(Vec<u32>),
    Mapped(Shard),
}

/// A tokenised split: all of its documents one after another.
pub struct TokenStream {
    store: Store,
    /// Bytes of text the tokens encode (bits per byte = total bits / bytes).
    pub bytes: usize,
    /// Length in bytes of each token id's text: exact bits per byte of any scored subset.
    token_bytes: Arc<Vec<u32>>,
    /// Where each document starts (memory streams; shards store their own).
    doc_starts: Vec<usize>,
    /// The answers of a synthetic long-range task (scored on their own): for each token, how far
    /// back the information that predicts it lies (0: not an answer).
    answers: Option<Vec<u32>>,
}

impl std::fmt::Debug for TokenStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.store {
            Store::Memory(_) => "memory",
            Store::Mapped(_) => "mapped shard",
        };
        write!(f, "TokenStream {{ {} tokens, {} bytes, {kind} }}", self.len(), self.bytes)
    }
}

impl TokenStream {
    /// Ids held in memory, one document; `token_bytes[id]` is the length in bytes of token `id`.
    pub fn from_ids(ids: Vec<u32>, token_bytes: Arc<Vec<u32>>) -> Self {
        let bytes = ids.iter().map(|&i| token_bytes[i as usize] as usize).sum();
        Self { store: Store::Memory(ids), bytes, token_bytes, doc_starts: vec![0], answers: None }
    }

    /// Byte-level tokens of `text` held in memory (tests, synthetic tasks), one document.
    pub fn from_bytes(text: &[u8]) -> Self {
        Self::from_ids(text.iter().map(|&b| u32::from(b)).collect(), Arc::new(vec![1; 256]))
    }

    /// Sets where the documents of a memory stream start (the first at 0).
    pub fn with_doc_starts(mut self, starts: Vec<usize>) -> Self {
        assert!(starts.first() == Some(&0) && starts.windows(2).all(|w| w[0] < w[1]) && starts.last() < Some(&self.len().max(1)), "document starts must rise from 0 inside the stream");
        self.doc_starts = starts;
        self
    }

    /// Token offset of every document, rising from 0.
    pub fn doc_starts(&self) -> Vec<usize> {
        match &self.store {
            Store::Memory(_) => self.doc_starts.clone(),
            Store::Mapped(s) => s.doc_starts(),
        }
    }

    /// Bytes of text that the tokens `ids` encode (any shape, int64); negative ids (padding)
    /// count nothing.
    pub fn bytes_of(&self, ids: &Tensor) -> f64 {
        let table: Vec<i64> = self.token_bytes.iter().map(|&b| i64::from(b)).collect();
        let table = Tensor::from_slice(&table).to_device(ids.device());
        let valid = ids.ge(0);
        let lengths = table.index_select(0, &ids.clamp_min(0).flatten(0, -1)).view_as(ids) * valid;
        lengths.sum(Kind::Int64).int64_value(&[]) as f64
    }

    /// Marks the answer tokens of a synthetic task: `distance[i] > 0` makes token i an answer
    /// whose source lies `distance[i]` tokens back.
    pub fn with_answers(mut self, distance: Vec<u32>) -> Self {
        assert_eq!(distance.len(), self.len(), "one answer distance per token");
        self.answers = Some(distance);
        self
    }

    /// Whether token `i` is an answer.
    pub fn is_answer(&self, i: usize) -> bool {
        self.answers.as_ref().is_some_and(|a| a[i] > 0)
    }

    /// Whether this stream has answer tokens to score separately.
    pub fn has_answers(&self) -> bool {
        self.answers.is_some()
    }

    /// Answer distances of the same windows as [`Self::windows`]: `[starts.len(), len]` int64
    /// (0: not an answer).
    pub fn answer_windows(&self, starts: &[usize], len: usize) -> Option<Tensor> {
        let distance = self.answers.as_ref()?;
        let d: Vec<i64> = starts.iter().flat_map(|&s| distance[s..s + len].iter().map(|&d| i64::from(d))).collect();
        Some(Tensor::from_slice(&d).view([starts.len() as i64, len as i64]))
    }

    /// A stream reading a memory-mapped shard; `token_bytes[id]` is the length of token `id`.
    pub fn from_shard(shard: Shard, token_bytes: Arc<Vec<u32>>) -> Self {
        let bytes = shard.text_bytes;
        Self { store: Store::Mapped(shard), bytes, token_bytes, doc_starts: Vec::new(), answers: None }
    }

    pub fn len(&self) -> usize {
        match &self.store {
            Store::Memory(ids) => ids.len(),
            Store::Mapped(s) => s.tokens,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Token `i`.
    pub fn get(&self, i: usize) -> u32 {
        match &self.store {
            Store::Memory(ids) => ids[i],
            Store::Mapped(s) => {
                let at = s.tokens_offset() + i * s.width;
                let b = &s.map[at..at + s.width];
                match s.width {
                    2 => u32::from(u16::from_le_bytes([b[0], b[1]])),
                    _ => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                }
            }
        }
    }

    /// Tokens `start..start + len` of every start: `[starts.len(), len]` int64 on the CPU.
    pub fn windows(&self, starts: &[usize], len: usize) -> Tensor {
        let mut ids = Vec::with_capacity(starts.len() * len);
        for &s in starts {
            assert!(s + len <= self.len(), "window {s}..{} past the end of a {}-token stream", s + len, self.len());
            ids.extend((s..s + len).map(|i| i64::from(self.get(i))));
        }
        Tensor::from_slice(&ids).view([starts.len() as i64, len as i64]).to_kind(Kind::Int64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: ShardKey = ShardKey { tokenizer: [1; 32], source: [2; 32] };

    fn write(dir: &Path, vocab: usize) -> (std::path::PathBuf, Vec<u32>) {
        let ids: Vec<u32> = (0..1000u32).map(|i| (i * 7919) % vocab as u32).collect();
        let path = dir.join("train.bin");
        write_shard(&path, &ids, &[0, 400, 900], 2345, vocab, KEY).unwrap();
        (path, ids)
    }

    #[test]
    fn shards_round_trip_with_both_widths() {
        let dir = tempfile::tempdir().unwrap();
        for vocab in [300, 70_000] {
            let (path, ids) = write(dir.path(), vocab);
            let shard = Shard::open(&path, KEY).unwrap();
            assert_eq!(shard.width, if vocab == 300 { 2 } else { 4 });
            assert_eq!(shard.doc_starts(), vec![0, 400, 900]);
            let stream = TokenStream::from_shard(shard, Arc::new(vec![1; vocab]));
            assert_eq!((stream.len(), stream.bytes), (1000, 2345));
            assert_eq!(stream.doc_starts(), vec![0, 400, 900]);
            assert_eq!((0..1000).map(|i| stream.get(i)).collect::<Vec<_>>(), ids);
            let w = stream.windows(&[3, 990], 10);
            assert_eq!(w.size(), vec![2, 10]);
            assert_eq!(w.int64_value(&[1, 9]), i64::from(ids[999]));
        }
    }

    #[test]
    fn stale_and_corrupt_shards_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write(dir.path(), 300);
        assert_eq!(Shard::open(&dir.path().join("none.bin"), KEY).err(), Some(ShardProblem::Missing));
        let other_tok = ShardKey { tokenizer: [9; 32], ..KEY };
        assert!(matches!(Shard::open(&path, other_tok), Err(ShardProblem::Stale(w)) if w.contains("tokenizer")));
        let other_src = ShardKey { source: [9; 32], ..KEY };
        assert!(matches!(Shard::open(&path, other_src), Err(ShardProblem::Stale(w)) if w.contains("corpus")));

        let good = std::fs::read(&path).unwrap();
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(matches!(Shard::open(&path, KEY), Err(ShardProblem::Corrupt(w)) if w.contains("checksum")));
        std::fs::write(&path, &good[..good.len() - 3]).unwrap();
        assert!(matches!(Shard::open(&path, KEY), Err(ShardProblem::Corrupt(w)) if w.contains("truncated")));
        std::fs::write(&path, b"hello").unwrap();
        assert!(matches!(Shard::open(&path, KEY), Err(ShardProblem::Corrupt(w)) if w.contains("magic")));
    }
}
