//! The small vocabulary every bst crate shares, kept in one place so that no crate grows its own
//! copy: one configuration error naming the full dotted key, the optimiser's parameter groups
//! (decided where a parameter is created), durable atomic file writes and sha256 digests, and the
//! device synchronisation that timing and end-of-training need.

pub mod device; // sync(device): wait for queued CUDA work (no-op on CPU)
pub mod error; // InvalidConfig { key, value, reason }: the one configuration error, full dotted key
pub mod fs; // write_atomically (tempfile + fsync + rename + directory fsync), sha256 of bytes and files
pub mod params; // ParamGroup and the constructors that put each parameter in its group

pub use device::sync;
pub use error::InvalidConfig;
pub use fs::{sha256_file, sha256_hex, write_atomically};
pub use params::ParamGroup;
