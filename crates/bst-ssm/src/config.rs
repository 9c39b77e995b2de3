//! The SSM part of a run configuration (the `[ssm]` table of a sweep TOML).

use serde::{Deserialize, Serialize};

use crate::SsmError;

/// Which state-space kernel family generates the convolution kernel. It is part of a model's
/// name (`BST:SH:S4D`), so it is chosen by the model, not by the `[ssm]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SsmKind {
    /// Diagonal complex state matrix (Gu et al. 2022, "On the Parameterization and
    /// Initialization of Diagonal State Space Models"), S4D-Lin initialisation.
    S4d,
}

/// Hyper-parameters of the SSM sublayer (every kernel family reads the ones it uses). Defaults are the paper's (N = 16, d/4 projection) and
/// s4d.py's (dt in [1e-3, 1e-1]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SsmConfig {
    /// State size N (number of complex modes is N/2, as conjugate pairs). Must be even.
    pub state_size: usize,
    /// Lower end of the log-uniform initial range of the discretisation step.
    pub dt_min: f64,
    /// Upper end of the log-uniform initial range of the discretisation step.
    pub dt_max: f64,
    /// The sublayer projects d_model down by this factor before the convolution (paper: 4).
    pub proj_factor: usize,
    /// Learning rate of the SSM kernel parameters (A, dt) relative to the base learning rate.
    pub lr_scale: f64,
}

impl Default for SsmConfig {
    fn default() -> Self {
        Self { state_size: 16, dt_min: 1e-3, dt_max: 1e-1, proj_factor: 4, lr_scale: 1.0 }
    }
}

impl SsmConfig {
    /// Checks the values that serde cannot; `d_model` is the width the sublayer will see.
    pub fn validate(&self, d_model: usize) -> Result<(), SsmError> {
        if self.state_size < 2 || self.state_size % 2 != 0 {
            return Err(SsmError::invalid("state_size", self.state_size, "must be an even number >= 2"));
        }
        if !(self.dt_min > 0.0 && self.dt_min <= self.dt_max) {
            return Err(SsmError::invalid(
                "dt_min",
                self.dt_min,
                format!("need 0 < dt_min <= dt_max (dt_max = {})", self.dt_max),
            ));
        }
        if self.proj_factor == 0 || d_model % self.proj_factor != 0 {
            return Err(SsmError::invalid(
                "proj_factor",
                self.proj_factor,
                format!("must be >= 1 and divide model.d_model = {d_model}"),
            ));
        }
        if !(self.lr_scale > 0.0) {
            return Err(SsmError::invalid("lr_scale", self.lr_scale, "must be > 0"));
        }
        Ok(())
    }

    /// Channels the convolution runs over for a given model width.
    pub fn channels(&self, d_model: usize) -> usize {
        d_model / self.proj_factor
    }
}
