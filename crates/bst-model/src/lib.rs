//! Language models built from bst layers, and the one training/evaluation engine that runs them
//! all identically, so that comparisons are fair by construction.
//!
//! A model is a decoder LM: token embedding, pre-norm residual layers (a sequence mixer, then an
//! MLP), a final norm and an output head. Which mixer each layer has is the run's layer plan
//! (`ModelConfig::plan`: SLIDE everywhere except BST layers at `model.ssm_layers`, BRECT's cell at
//! `model.recurrent_layer`, ...), validated once. Logits are `[batch, seq, vocab]`.

pub mod autocast; // Precision (train.precision) and the Autocast guard: bf16 autocast on CPU/CUDA via a C++ shim
pub mod classifier; // sequence classification (LRA tasks) on any backbone: pooled states, head, train/eval
pub mod checkpoint; // safetensors weights + optimiser moments + sampler position + carried state, checksummed, atomic
pub mod config; // Architecture (paper names), ModelConfig ([model]) and the layer plan it yields
pub mod device; // DeviceChoice: auto | cpu | cuda[:N]
pub mod error; // ModelError: invalid configurations (full dotted key), divergence, checkpoints, autocast
pub mod eval; // loss, perplexity and bits per byte over a split
pub mod length_eval; // length generalisation: every evaluation length scored on the same targets
pub mod lm; // LanguageModel: embedding, layers from the plan, head; LmState (every mixer's carried state); score
pub mod optimizer; // AdamW over tensors, parameter groups decided at construction (its state goes into checkpoints)
pub mod run_config; // RunConfig: everything one training run needs, validated as a whole
pub mod schedule; // learning rate: linear warmup then cosine decay
pub mod speed; // one layer of any architecture timed forward and forward+backward against L (median, spread, skip past a cap)
pub mod train; // TrainConfig and Trainer: the training loop, resumable from checkpoints

pub use autocast::{Autocast, Precision};
pub use classifier::{evaluate_classifier, Classifier, ClassifierTrainer, ClassifyMetrics};
pub use config::{Architecture, LayerKind, LayerPlan, ModelConfig};
pub use device::DeviceChoice;
pub use error::ModelError;
pub use eval::{evaluate, evaluate_with_precision, AnswerMetrics, DistanceBucket, EvalMetrics};
pub use length_eval::{evaluate_lengths, LengthEvalConfig, LengthResult};
pub use lm::{LanguageModel, LmState};
pub use run_config::RunConfig;
pub use schedule::lr_at;
pub use train::{StepDone, StepMetrics, TrainConfig, TrainOutcome, Trainer};
