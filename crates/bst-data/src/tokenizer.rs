//! Tokenizers: text bytes <-> token ids.

/// Maps bytes to token ids and back. `decode(encode(x)) == x` for every byte string.
pub trait Tokenizer: Send + Sync {
    fn vocab_size(&self) -> usize;
    fn encode(&self, bytes: &[u8]) -> Vec<i64>;
    fn decode(&self, ids: &[i64]) -> Vec<u8>;
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
}
