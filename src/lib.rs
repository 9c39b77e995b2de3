//! bst: a Block-State Transformer lab. Re-exports the workspace crates.
pub use bst_attn as attn;
pub use bst_data as data;
pub use bst_model as model;
pub use bst_ssm as ssm;
pub use bst_sweep as sweep;
