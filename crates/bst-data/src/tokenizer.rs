//! Tokenizers: text bytes <-> token ids. A byte-level tokenizer, and a byte-level BPE trained
//! with the Hugging Face `tokenizers` crate (the paper uses a 32K SentencePiece vocabulary).

use std::path::Path;

use sha2::{Digest, Sha256};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, TokenizerBuilder};

use crate::DataError;

/// Maps bytes to token ids and back. `decode(encode(x)) == x` for every UTF-8 text (and for any
/// bytes with the byte tokenizer).
pub trait Tokenizer: Send + Sync {
    fn vocab_size(&self) -> usize;
    fn encode(&self, bytes: &[u8]) -> Vec<i64>;
    fn decode(&self, ids: &[i64]) -> Vec<u8>;
    /// The length in bytes of each token id's text, indexed by id: sums over the tokens scored
    /// give exact bits per byte.
    fn token_bytes(&self) -> Vec<u32>;
    /// sha256 identifying the tokenizer exactly (shards record it, so a retrained tokenizer
    /// invalidates them).
    fn fingerprint(&self) -> [u8; 32];
}

/// One token per byte (vocabulary 256): bits per token are bits per byte.
#[derive(Debug, Clone, Copy, Default)]
pub struct ByteTokenizer;

impl Tokenizer for ByteTokenizer {
    fn vocab_size(&self) -> usize {
        256
    }

    fn encode(&self, bytes: &[u8]) -> Vec<i64> {
        bytes.iter().map(|&b| i64::from(b)).collect()
    }

    fn decode(&self, ids: &[i64]) -> Vec<u8> {
        ids.iter().map(|&i| u8::try_from(i).expect("byte token out of range")).collect()
    }

    fn token_bytes(&self) -> Vec<u32> {
        vec![1; 256]
    }

    fn fingerprint(&self) -> [u8; 32] {
        Sha256::digest(b"bst byte tokenizer v1").into()
    }
}

/// Byte-level BPE (GPT-2 style: bytes mapped to printable characters, split by the GPT-2 regex,
/// merges learned from the training split). Every byte is in the base alphabet, so there is no
/// unknown token, and no prefix space is added, so decoding returns the exact input.
pub struct BpeTokenizer {
    inner: tokenizers::Tokenizer,
    json: String,
}

type Builder = TokenizerBuilder<BPE, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>;

fn byte_level() -> ByteLevel {
    ByteLevel::new(false, false, true)
}

impl BpeTokenizer {
    /// Learns a vocabulary of at most `vocab_size` tokens from `texts`.
    pub fn train<'a>(texts: impl Iterator<Item = &'a str> + Send, vocab_size: usize) -> Result<Self, DataError> {
        let failed = |e: tokenizers::Error| DataError::Tokenizer { reason: format!("training a {vocab_size}-token BPE: {e}") };
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut tokenizer = Builder::new()
            .with_model(BPE::default())
            .with_normalizer(None)
            .with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(byte_level())))
            .with_post_processor(None)
            .with_decoder(Some(DecoderWrapper::ByteLevel(byte_level())))
            .build()
            .map_err(failed)?;
        tokenizer.train(&mut trainer, texts).map_err(failed)?;
        let inner = tokenizers::Tokenizer::from(tokenizer);
        let json = inner.to_string(false).map_err(failed)?;
        Ok(Self { inner, json })
    }

    /// Loads a tokenizer saved by [`BpeTokenizer::save`] (a Hugging Face `tokenizer.json`).
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let json = std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.to_owned(), source })?;
        let inner = json.parse::<tokenizers::Tokenizer>().map_err(|e| DataError::Tokenizer { reason: format!("{}: {e}", path.display()) })?;
        Ok(Self { inner, json })
    }

    /// Writes `tokenizer.json` atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<(), DataError> {
        crate::error::write_atomically(path, self.json.as_bytes())
    }
}

/// Text the tokenizer sees: UTF-8 as is; anything else decoded as Latin-1, as the corpora are.
fn as_text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.into(),
        Err(_) => bytes.iter().map(|&b| char::from(b)).collect::<String>().into(),
    }
}

impl Tokenizer for BpeTokenizer {
    fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    fn encode(&self, bytes: &[u8]) -> Vec<i64> {
        let encoding = self.inner.encode(as_text(bytes).as_ref(), false).expect("byte-level BPE encodes any text: every byte is in its alphabet");
        encoding.get_ids().iter().map(|&i| i64::from(i)).collect()
    }

    fn decode(&self, ids: &[i64]) -> Vec<u8> {
        let ids: Vec<u32> = ids.iter().map(|&i| u32::try_from(i).expect("token id out of range")).collect();
        self.inner.decode(&ids, false).expect("decoding ids of this vocabulary").into_bytes()
    }

    /// Byte-level BPE spells each byte as one character of its 256-character alphabet, so a
    /// token's byte length is the number of characters of its vocabulary entry.
    fn token_bytes(&self) -> Vec<u32> {
        (0..self.vocab_size() as u32).map(|id| self.inner.id_to_token(id).map_or(0, |t| t.chars().count() as u32)).collect()
    }

    fn fingerprint(&self) -> [u8; 32] {
        Sha256::digest(self.json.as_bytes()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokenizer_round_trips_any_bytes() {
        let text: Vec<u8> = (0..=255u8).chain("Ünïcödé and Latin-1 \u{e9}".bytes()).collect();
        let ids = ByteTokenizer.encode(&text);
        assert_eq!(ids.len(), text.len());
        assert!(ids.iter().all(|&i| (0..256).contains(&i)));
        assert_eq!(ByteTokenizer.decode(&ids), text);
    }

    fn corpus() -> Vec<String> {
        (0..300).map(|i| format!("The quick brown fox {i} jumps over the lazy dog.\n  fn main() {{ let x = {i}; }}\n\\begin{{equation}} x^{i} \\end{{equation}}\n")).collect()
    }

    #[test]
    fn bpe_learns_merges_round_trips_and_survives_save_and_load() {
        let texts = corpus();
        let bpe = BpeTokenizer::train(texts.iter().map(String::as_str), 600).unwrap();
        assert!(bpe.vocab_size() > 256 && bpe.vocab_size() <= 600, "vocab {}", bpe.vocab_size());
        let sample = "The lazy dog jumps over the quick brown fox.\n";
        let ids = bpe.encode(sample.as_bytes());
        assert!(ids.len() < sample.len() / 2, "merges should compress seen words: {} tokens for {} bytes", ids.len(), sample.len());
        // text never seen in training, leading spaces, multi-byte characters, control bytes
        for text in [sample, "  zebra ∑ café 日本語\t\r\n", "\u{0}\u{1f}", ""] {
            assert_eq!(bpe.decode(&bpe.encode(text.as_bytes())), text.as_bytes(), "round trip of {text:?}");
        }
        // non-UTF-8 input is read as Latin-1, like the corpora
        assert_eq!(bpe.decode(&bpe.encode(b"caf\xe9")), "café".as_bytes());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        bpe.save(&path).unwrap();
        let loaded = BpeTokenizer::load(&path).unwrap();
        assert_eq!(loaded.encode(sample.as_bytes()), ids);
        assert_eq!(loaded.fingerprint(), bpe.fingerprint());
        assert_ne!(bpe.fingerprint(), ByteTokenizer.fingerprint());
    }

    /// Token byte lengths add up to the text's bytes, whatever the text (multi-byte characters
    /// split across tokens included); checked by hand on a short one.
    #[test]
    fn token_byte_lengths_add_up_to_the_text() {
        let texts = corpus();
        let bpe = BpeTokenizer::train(texts.iter().map(String::as_str), 600).unwrap();
        let lengths = bpe.token_bytes();
        assert_eq!(lengths.len(), bpe.vocab_size());
        for text in ["The quick brown fox", "  zebra ∑ café 日本語\t\r\n", texts[7].as_str()] {
            let total: u32 = bpe.encode(text.as_bytes()).iter().map(|&i| lengths[i as usize]).sum();
            assert_eq!(total as usize, text.len(), "{text:?}");
        }
        // "café" is 5 bytes in UTF-8 (é takes two), whatever the merges
        let ids = bpe.encode("café".as_bytes());
        assert_eq!(ids.iter().map(|&i| lengths[i as usize]).sum::<u32>(), 5);
        assert!(ByteTokenizer.token_bytes().iter().all(|&l| l == 1));
    }

    #[test]
    fn bpe_training_is_deterministic() {
        let texts = corpus();
        let a = BpeTokenizer::train(texts.iter().map(String::as_str), 500).unwrap();
        let b = BpeTokenizer::train(texts.iter().map(String::as_str), 500).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
    }
}
