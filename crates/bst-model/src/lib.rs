//! Language models built from bst layers, and the one training/evaluation engine that runs them
//! all identically, so that comparisons are fair by construction.
//!
//! A model is a decoder LM: token embedding, pre-norm residual layers (attention sublayer, then
//! MLP), a final norm and an output head. Attention sublayers are SLIDE, except at the indices in
//! `model.ssm_layers`, which are BST layers. Logits are `[batch, seq, vocab]`.

pub mod autocast; // Precision (train.precision) and the Autocast guard: bf16 autocast on CPU/CUDA via a C++ shim
pub mod classifier; // sequence classification (LRA tasks) on any backbone: pooled states, head, train/eval
pub mod checkpoint; // safetensors weights + optimiser moments + sampler state, checksummed, atomic
pub mod config; // Architecture (paper names: BST:{SH,MH,MF}:{S4D,S4,UNSTRUCT}, SLIDE) and ModelConfig ([model])
pub mod device; // DeviceChoice: auto | cpu | cuda[:N]
pub mod error; // ModelError: invalid configurations, named by key
pub mod eval; // loss, perplexity and bits per byte over a split
pub mod lm; // LanguageModel: embedding, layers, head; LmState for BRECT/XL; score
pub mod optimizer; // AdamW over tensors (its state goes into checkpoints)
pub mod run_config; // RunConfig: everything one training run needs, validated as a whole
pub mod schedule; // learning rate: linear warmup then cosine decay
pub mod train; // TrainConfig and Trainer: the training loop, resumable from checkpoints

pub use autocast::{Autocast, Precision};
pub use classifier::{evaluate_classifier, train_classifier, Classifier, ClassifyMetrics};
pub use config::{Architecture, ModelConfig};
pub use device::DeviceChoice;
pub use error::ModelError;
pub use eval::{evaluate, evaluate_with_precision, AnswerMetrics, EvalMetrics};
pub use lm::{LanguageModel, LmState};
pub use run_config::RunConfig;
pub use schedule::lr_at;
pub use train::{StepMetrics, TrainConfig, TrainOutcome, Trainer};
