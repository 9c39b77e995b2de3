//! State-space sequence layers for the Block-State Transformer (Fathi et al. 2023, §3.1).
//!
//! An SSM maps a whole sequence `u: [batch, channels, seq]` to a same-length output by a causal
//! convolution `y = K * u + D u`, whose kernel `K = (CB̄, CĀB̄, …, CĀ^{L-1}B̄)` is generated from a few
//! parameters (S4D, S4) or, unstructured, learned tap by tap or generated from positional
//! features, and applied with an FFT in O(L log L). S4D and S4 also run as recurrences, one token at a time. Shapes are
//! `[batch, channels, seq]` inside the kernels and `[batch, seq, d_model]` at the sublayer boundary.

pub mod config; // SsmConfig (the [ssm] table), SsmLayerConfig (what a layer is built from), kernel-family / init / discretisation choices
pub mod error; // SsmError: invalid configurations, unsupported modes
pub mod fft_conv; // causal FFT convolution (zero-padded to 2L) and its O(L^2) direct reference
pub mod gss; // Gated State Space layer (GSS-HYBRID baseline)
pub mod hippo; // HiPPO-LegS and its normal-plus-low-rank decomposition
pub mod implicit_filter; // unstructured filters generated from positional features (BST appendix, Hyena)
pub mod long_conv; // unstructured explicit filters with smoothing and squash (Fu et al. 2023)
pub mod recurrence; // step mode: diagonal and dense discretised systems and their state
pub mod s4; // S4: DPLR kernel via Cauchy kernel + Woodbury at the roots of unity
pub mod s4d; // S4D: diagonal kernel, S4D-Lin/Inv, ZOH/bilinear
pub mod ssm_conv; // a bank of SSM convolutions with D skip, eval cache, conv and step modes
pub mod sublayer; // the BST SSM sublayer: project down, SSM, GELU, project up
pub mod vandermonde; // chunked Vandermonde products for diagonal kernels

pub use config::{Discretization, S4dInit, SsmConfig, SsmKind, SsmLayerConfig, UnstructuredFilter};
pub use error::SsmError;
pub use fft_conv::{causal_fft_conv, direct_causal_conv};
pub use gss::GssLayer;
pub use implicit_filter::ImplicitFilterKernel;
pub use long_conv::LongConvKernel;
pub use recurrence::{Recurrence, SsmState};
pub use s4::S4Kernel;
pub use s4d::S4dKernel;
pub use ssm_conv::SsmConv;
pub use sublayer::SsmSublayer;
