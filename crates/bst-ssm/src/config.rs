//! The SSM part of a run configuration (the `[ssm]` table of a sweep TOML).

use serde::{Deserialize, Serialize};

use crate::SsmError;

/// Which family generates the convolution kernel. It is part of a model's name (`BST:SH:S4D`,
/// `BST:SH:S4`, `BST:SH:UNSTRUCT`), so the model chooses it, not the `[ssm]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SsmKind {
    /// Diagonal complex state matrix (Gu, Gupta, Goel, Ré 2022).
    S4d,
    /// Diagonal plus low-rank state matrix from HiPPO-LegS (Gu, Goel, Ré 2022).
    S4,
    /// Explicit length-L filters with regularisation (Fu et al. 2023), the paper's "unstructured" SSM.
    Unstructured,
}

/// Initialisation of S4D's diagonal A (S4D paper, §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum S4dInit {
    /// `A_n = -1/2 + i*pi*n`.
    Lin,
    /// `A_n = -1/2 + i*N/pi*(N/(2n+1) - 1)`: approximates S4-LegS.
    Inv,
}

/// How the continuous-time S4D system is discretised (S4 always uses bilinear).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Discretization {
    /// Zero-order hold: `Ā = exp(dt A)`, `B̄ = (exp(dt A) - 1)/A`.
    Zoh,
    /// Bilinear (Tustin): `Ā = (1 + dt A/2)/(1 - dt A/2)`, `B̄ = dt/(1 - dt A/2)`.
    Bilinear,
}

/// How an unstructured (UNSTRUCT) filter is parameterised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnstructuredFilter {
    /// One learned value per tap, smoothed and squashed (Fu et al. 2023): `L` parameters per
    /// channel, zero past the training length.
    Explicit,
    /// Taps generated from positional features by a dense map under a decaying envelope (the
    /// paper's appendix pseudocode, Hyena-style): `filter_features + 1` parameters per channel at
    /// any length. Use it for BST:MF:UNSTRUCT at scale, whose S filters would otherwise cost
    /// `S x channels x L` parameters.
    Implicit,
}

/// Hyper-parameters of the SSM sublayer; each kernel family reads the ones it uses. Defaults are
/// the paper's (N = 16, d/4 projection), s4d.py's (dt in [1e-3, 1e-1]) and Fu et al.'s (7-tap
/// smoothing, soft-threshold squash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SsmConfig {
    /// State size N (S4D: N/2 complex conjugate pairs; S4: N). Must be even.
    pub state_size: usize,
    /// Lower end of the log-uniform initial range of the discretisation step.
    pub dt_min: f64,
    /// Upper end of the log-uniform initial range of the discretisation step.
    pub dt_max: f64,
    /// S4D initialisation of A.
    pub init: S4dInit,
    /// S4D discretisation.
    pub discretization: Discretization,
    /// The sublayer projects d_model down by this factor before the convolution (paper: 4).
    pub proj_factor: usize,
    /// Learning rate of the SSM kernel parameters (A, dt, and S4's P and B) relative to the base
    /// learning rate; they never get weight decay. S4's recipes train A and dt at 0.001 against
    /// 0.004-0.01 for the rest, a ratio of 0.1-0.25.
    pub lr_scale: f64,
    /// Unstructured: soft threshold of the squash `sign(k) * relu(|k| - squash)` (0 = off).
    /// Keep it below the initial tap scale (about 0.02) or the kernel starts dead.
    pub squash: f64,
    /// Unstructured: width of the moving-average smoothing of the taps (odd; 1 = off).
    pub smooth_window: usize,
    /// Unstructured: explicit taps or an implicit filter (`"explicit"`, `"implicit"`). Left out
    /// of the serialised config at its default, like `filter_features`, so that configurations
    /// from before these options keep their run ids.
    #[serde(skip_serializing_if = "UnstructuredFilter::is_explicit")]
    pub unstructured_filter: UnstructuredFilter,
    /// Unstructured, implicit: positional features per tap (`t` plus a cosine and a sine at each
    /// of `(filter_features - 1) / 2` frequencies); odd, >= 3 (Hyena's `emb_dim`).
    #[serde(skip_serializing_if = "is_default_filter_features")]
    pub filter_features: usize,
}

impl UnstructuredFilter {
    fn is_explicit(&self) -> bool {
        *self == UnstructuredFilter::Explicit
    }
}

const DEFAULT_FILTER_FEATURES: usize = 33;

fn is_default_filter_features(features: &usize) -> bool {
    *features == DEFAULT_FILTER_FEATURES
}

impl Default for SsmConfig {
    fn default() -> Self {
        Self {
            state_size: 16,
            dt_min: 1e-3,
            dt_max: 1e-1,
            init: S4dInit::Lin,
            discretization: Discretization::Zoh,
            proj_factor: 4,
            lr_scale: 0.25,
            squash: 1e-3,
            smooth_window: 7,
            unstructured_filter: UnstructuredFilter::Explicit,
            filter_features: DEFAULT_FILTER_FEATURES,
        }
    }
}

/// What an SSM layer is built from, in one struct: the `[ssm]` table, the kernel family (part of
/// the model's name) and the sizes the model decides. Layers are built only from a configuration
/// whose `ssm` passed [`SsmConfig::validate`] for `width`: their constructors do not check again.
#[derive(Debug, Clone, PartialEq)]
pub struct SsmLayerConfig {
    pub ssm: SsmConfig,
    pub kind: SsmKind,
    /// Input width (d_model); the convolution runs over `width / ssm.proj_factor` channels.
    pub width: usize,
    /// Output width of the SSM sublayer, per bank.
    pub out: usize,
    /// Independent filter banks over the same input (BST:MF's S filters, BST:MH's heads; 1 otherwise).
    pub banks: usize,
    /// Training length: the taps of explicit unstructured filters (>= 1).
    pub max_len: usize,
}

impl SsmLayerConfig {
    /// One bank of `kind` over `width` channels in and out.
    pub fn new(ssm: &SsmConfig, kind: SsmKind, width: usize, max_len: usize) -> Self {
        Self { ssm: ssm.clone(), kind, width, out: width, banks: 1, max_len }
    }

    /// Channels the convolution runs over.
    pub fn channels(&self) -> usize {
        self.ssm.channels(self.width)
    }
}

impl SsmConfig {
    /// Checks the values that serde cannot; `d_model` is the width the sublayer will see.
    pub fn validate(&self, d_model: usize) -> Result<(), SsmError> {
        self.validate_kernel()?;
        if self.proj_factor == 0 || d_model % self.proj_factor != 0 {
            return Err(SsmError::invalid("proj_factor", self.proj_factor, format!("must be >= 1 and divide model.d_model = {d_model}")));
        }
        Ok(())
    }

    /// Checks the values a kernel generator reads (everything but the projection).
    pub fn validate_kernel(&self) -> Result<(), SsmError> {
        if self.state_size < 2 || self.state_size % 2 != 0 {
            return Err(SsmError::invalid("state_size", self.state_size, "must be an even number >= 2"));
        }
        if !(self.dt_min > 0.0 && self.dt_min <= self.dt_max) {
            return Err(SsmError::invalid("dt_min", self.dt_min, format!("need 0 < dt_min <= dt_max (dt_max = {})", self.dt_max)));
        }
        if !(self.lr_scale > 0.0) {
            return Err(SsmError::invalid("lr_scale", self.lr_scale, "must be > 0"));
        }
        if !(self.squash >= 0.0) {
            return Err(SsmError::invalid("squash", self.squash, "must be >= 0"));
        }
        if self.smooth_window % 2 == 0 {
            return Err(SsmError::invalid("smooth_window", self.smooth_window, "must be odd (1 = no smoothing)"));
        }
        if self.filter_features < 3 || self.filter_features % 2 == 0 {
            return Err(SsmError::invalid("filter_features", self.filter_features, "must be odd and >= 3 (t plus a cosine and a sine per frequency)"));
        }
        Ok(())
    }

    /// Channels the convolution runs over for a given model width.
    pub fn channels(&self, d_model: usize) -> usize {
        d_model / self.proj_factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_options_parse_name_their_choices_and_are_left_out_at_their_defaults() {
        let cfg: SsmConfig = toml::from_str("unstructured_filter = \"implicit\"\nfilter_features = 17\n").unwrap();
        assert_eq!((cfg.unstructured_filter, cfg.filter_features), (UnstructuredFilter::Implicit, 17));
        let text = toml::to_string(&cfg).unwrap();
        assert!(text.contains("unstructured_filter = \"implicit\"") && text.contains("filter_features = 17"), "{text}");
        assert_eq!(toml::from_str::<SsmConfig>(&text).unwrap(), cfg);
        // defaults serialise as before the options existed, so run ids do not change
        let default = toml::to_string(&SsmConfig::default()).unwrap();
        assert!(!default.contains("unstructured_filter") && !default.contains("filter_features"), "{default}");
        let err = toml::from_str::<SsmConfig>("unstructured_filter = \"hyena\"").unwrap_err().to_string();
        assert!(err.contains("unknown variant `hyena`, expected `explicit` or `implicit`"), "{err}");
        assert!(SsmConfig { filter_features: 8, ..SsmConfig::default() }.validate_kernel().unwrap_err().to_string().contains("filter_features"));
    }
}
