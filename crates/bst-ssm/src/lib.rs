//! State-space sequence layers for the Block-State Transformer (Fathi et al. 2023, §3.1).
//!
//! An SSM maps a whole sequence `u: [batch, channels, seq]` to a same-length output by a causal
//! convolution `y = K * u + D u`, whose kernel `K = (CB̄, CĀB̄, …, CĀ^{L-1}B̄)` is generated from a few
//! parameters and applied with an FFT in O(L log L). Shapes follow `[batch, channels, seq]` inside
//! the kernels and `[batch, seq, d_model]` at the sublayer boundary.

pub mod config; // SsmConfig: the typed choice of kernel family and its hyper-parameters
pub mod error; // SsmError: what can go wrong when building an SSM
pub mod fft_conv; // causal FFT convolution (zero-padded to 2L) and its O(L^2) direct reference
pub mod s4d; // S4D: diagonal state-space kernel, S4D-Lin init, ZOH discretisation, D skip
pub mod sublayer; // the BST SSM sublayer: project down, S4D, GELU, project up

pub use config::{SsmConfig, SsmKind};
pub use error::SsmError;
pub use fft_conv::{causal_fft_conv, direct_causal_conv};
pub use s4d::{S4d, SSM_PARAM_GROUP};
pub use sublayer::SsmSublayer;
