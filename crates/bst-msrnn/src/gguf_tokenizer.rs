//! The tokenizer stored inside a GGUF file (`tokenizer.ggml.*`), rebuilt with the Hugging Face
//! `tokenizers` crate: a GPT-2-style byte-level BPE from the vocabulary and merge list, with the
//! pre-tokenizer that `tokenizer.ggml.pre` names.
//!
//! llama.cpp (`src/llama-vocab.cpp`) splits `smollm` / `starcoder` text first into single digits
//! (`\p{N}`), then with the GPT-2 regex; that is `Digits(individual)` followed by `ByteLevel` in
//! `tokenizers`, as in SmolLM2's own `tokenizer.json`. Other pre-tokenizer names are refused by name
//! rather than tokenised wrongly. No prefix space and no BOS are added (`add_space_prefix` and
//! `add_bos_token` are false in the SmolLM2 file).

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, TokenizerBuilder};

use crate::error::{MsrnnError, Result};
use crate::gguf::{GgufFile, Value};

/// `tokenizer.ggml.token_type` of control tokens (`<|endoftext|>`, `<|im_start|>`, ...).
const TOKEN_TYPE_CONTROL: u64 = 3;

/// Pre-tokenizer names this module reproduces.
pub const KNOWN_PRE: [&str; 3] = ["smollm", "starcoder", "gpt2"];

pub struct GgufTokenizer {
    inner: tokenizers::Tokenizer,
    tokens: Vec<String>,
    pub bos: Option<i64>,
    pub eos: Option<i64>,
}

fn tok_err(e: impl std::fmt::Display) -> MsrnnError {
    MsrnnError::Tokenizer(e.to_string())
}

fn pre_tokenizer(name: &str) -> Result<PreTokenizerWrapper> {
    let byte_level = PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
    match name {
        "smollm" | "starcoder" => Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![PreTokenizerWrapper::Digits(Digits::new(true)), byte_level]))),
        "gpt2" => Ok(byte_level),
        other => Err(MsrnnError::Tokenizer(format!("pre-tokenizer `{other}` is not reproduced: known are {}", KNOWN_PRE.join(", ")))),
    }
}

fn merges(g: &GgufFile) -> Result<Vec<(String, String)>> {
    g.get_str_array("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| tok_err(format!("merge `{m}` has no space"))))
        .collect()
}

impl GgufTokenizer {
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let model = g.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(tok_err(format!("tokenizer.ggml.model is `{model}`; only the byte-level BPE `gpt2` is supported")));
        }
        let tokens: Vec<String> = g.get_str_array("tokenizer.ggml.tokens")?.into_iter().map(String::from).collect();
        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let bpe = BPE::builder().vocab_and_merges(vocab, merges(g)?).build().map_err(tok_err)?;
        let pre = pre_tokenizer(g.get_str("tokenizer.ggml.pre").unwrap_or("gpt2"))?;
        let built = TokenizerBuilder::<BPE, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>::new()
            .with_model(bpe)
            .with_pre_tokenizer(Some(pre))
            .with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::new(false, true, true))))
            .build()
            .map_err(tok_err)?;
        let mut inner = tokenizers::Tokenizer::from(built);
        let special: Vec<AddedToken> = control_tokens(g, &tokens)?.into_iter().map(|t| AddedToken::from(t, true)).collect();
        inner.add_special_tokens(&special);
        let id = |key: &str| g.get_u64(key).ok().map(|v| v as i64);
        Ok(Self { inner, tokens, bos: id("tokenizer.ggml.bos_token_id"), eos: id("tokenizer.ggml.eos_token_id") })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// Token ids of `text` (no BOS added).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self.inner.encode_fast(text, false).map_err(tok_err)?;
        Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
    }

    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| u32::try_from(i).map_err(|_| tok_err(format!("token id {i} out of range")))).collect::<Result<_>>()?;
        self.inner.decode(&ids, false).map_err(tok_err)
    }

    /// The vocabulary entry of `id` as stored (byte-level alphabet: `Ġ` is a space, `Ċ` a newline).
    pub fn token_text(&self, id: i64) -> &str {
        usize::try_from(id).ok().and_then(|i| self.tokens.get(i)).map_or("", |s| s.as_str())
    }
}

fn control_tokens(g: &GgufFile, tokens: &[String]) -> Result<Vec<String>> {
    let Ok(types) = g.get_array("tokenizer.ggml.token_type") else { return Ok(Vec::new()) };
    Ok(types
        .iter()
        .zip(tokens)
        .filter(|(t, _)| matches!(t, Value::I32(_) | Value::U32(_)) && t.as_u64() == Some(TOKEN_TYPE_CONTROL))
        .map(|(_, s)| s.clone())
        .collect())
}
