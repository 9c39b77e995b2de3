//! Transformers as multi-state RNNs (Oren et al. 2024, arXiv 2401.06104): a pretrained llama
//! (SmolLM2-135M from a GGUF file) decoded token by token with a key/value cache bounded to `k`
//! entries per layer, under the compression policies the paper compares (Window, Window+i, H2O,
//! TOVA), and the perplexity study of the paper's Sec. 5 on our held-out books.
//!
//! Shapes follow the workspace convention: `[batch, seq, d_model]`, heads as `[batch, heads, seq,
//! head_dim]`.
//!
//! # Using the bounded cache from another model
//!
//! The cache knows nothing of llama: any attention layer with per-layer keys and values (grouped
//! KV heads or not) can decode through it. Per layer and per step (see [`kv_cache`] for details):
//!
//! ```ignore
//! let mut cache = KvCache::new(n_layers, "tova".parse::<Policy>()?, Some(k)); // per sequence batch
//! // inside layer `l`, one new token per sequence at absolute position `t`:
//! let layer = &mut cache.layers[l];
//! layer.append(&k_rotated, &v, t);                  // [batch, kv_heads, 1, head_dim] each
//! let w = scores(&q, &layer.keys()).softmax(-1, Kind::Float); // over at most k + 1 entries
//! let out = w.matmul(&layer.values());
//! layer.observe(&w.view([batch, q_heads, -1]));     // the policy scores and evicts one if over k
//! ```
//!
//! The policy decides from the current query's post-softmax weights only (plus, for H2O, the
//! weights it has accumulated), so it needs nothing from the model but those weights. [`decode`]
//! and [`Llama::step_groups`] show the whole loop, several policies sharing one batch;
//! [`attend_step`] is that loop's attention, which [`LabTransformer`] (the lab's own trained
//! TRANSFORMER) shares with the llama.

pub mod decode; // token-by-token engine over a batch of equal-length sequences
pub mod error; // MsrnnError: files, metadata keys, tensor types, policies, by name
pub mod gguf; // GGUF v2/v3 reader; dequantises F32, F16, Q4_1, Q8_0 to f32 tensors
pub mod gguf_tokenizer; // the byte-level BPE stored in a GGUF, rebuilt with `tokenizers`
pub mod kv_cache; // bounded per-layer KV cache and the policies: full, window, window+i, h2o, tova
pub mod lab_model; // the lab's own trained TRANSFORMER (bst-model weights) stepped through the same caches
pub mod llama; // the llama decoder (inference, f32): step mode on a cache, full causal mode
pub mod plot; // PNG/SVG line and bar charts in the workspace's house style
pub mod study; // chunks of texts, perplexity per (policy, k), kept-token statistics

pub use decode::{decode, decode_settings, Decoded, StepModel};
pub use error::{MsrnnError, Result};
pub use gguf::GgufFile;
pub use gguf_tokenizer::GgufTokenizer;
pub use kv_cache::{attend_step, KvCache, LayerCache, Policy};
pub use lab_model::LabTransformer;
pub use llama::{Llama, LlamaConfig};
