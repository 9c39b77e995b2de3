//! S4D: a diagonal state-space kernel (Gu, Gupta, Goel, Ré 2022), as in `state-spaces/s4`
//! `models/s4/s4d.py`.
//!
//! Per channel h and mode n (N/2 complex modes, the other half are their conjugates):
//! `A_n = -exp(log_a_real) + i * a_imag` (S4D-Lin: `-1/2 + i*pi*n`), step `dt = exp(log_dt)`,
//! ZOH discretisation `Ā = exp(dt A)`, `B̄ = (exp(dt A) - 1) / A` (B = 1, folded into C), and the
//! kernel `K_l = 2 Re sum_n C_n B̄_n Ā_n^l`. The output is `y = K * u + D u`.

use tch::{nn, Kind, Tensor};

use crate::{causal_fft_conv, SsmConfig, SsmError};

/// Optimiser group of the SSM kernel parameters (A, dt): no weight decay, own learning rate.
/// bst-model maps var-store groups to optimiser settings; see `bst_model::train`.
pub const SSM_PARAM_GROUP: usize = 1;

/// A bank of `channels` independent diagonal SSMs, applied by causal FFT convolution.
#[derive(Debug)]
pub struct S4d {
    log_dt: Tensor,     // [channels]
    c: Tensor,          // [channels, N/2, 2]: real view of the complex C
    log_a_real: Tensor, // [channels, N/2]
    a_imag: Tensor,     // [channels, N/2]
    d: Tensor,          // [channels]
    channels: i64,
}

impl S4d {
    /// Builds `channels` SSMs with S4D-Lin initialisation. A and dt are created in
    /// [`SSM_PARAM_GROUP`]; C and D in the path's own group.
    pub fn new(vs: &nn::Path, channels: usize, cfg: &SsmConfig) -> Result<Self, SsmError> {
        cfg.validate(channels * cfg.proj_factor)?;
        let (h, n2) = (channels as i64, (cfg.state_size / 2) as i64);
        let opts = (Kind::Float, vs.device());
        let ssm = vs.set_group(SSM_PARAM_GROUP);
        // log-uniform dt in [dt_min, dt_max]
        let (lo, hi) = (cfg.dt_min.ln(), cfg.dt_max.ln());
        let log_dt = ssm.var_copy("log_dt", &(Tensor::rand([h], opts) * (hi - lo) + lo));
        let log_a_real = ssm.var_copy("log_a_real", &Tensor::full([h, n2], 0.5f64.ln(), opts));
        let a_imag = ssm.var_copy(
            "a_imag",
            &(Tensor::arange(n2, opts) * std::f64::consts::PI).unsqueeze(0).repeat([h, 1]),
        );
        // complex standard normal: each of Re/Im has variance 1/2
        let c = vs.var("c", &[h, n2, 2], nn::Init::Randn { mean: 0.0, stdev: 0.5f64.sqrt() });
        let d = vs.var("d", &[h], nn::Init::Randn { mean: 0.0, stdev: 1.0 });
        Ok(Self { log_dt, c, log_a_real, a_imag, d, channels: h })
    }

    /// Number of independent channels.
    pub fn channels(&self) -> i64 {
        self.channels
    }

    /// ZOH-discretised diagonal system: `(dt*A, C*B̄)`, both complex `[channels, N/2]`;
    /// `Ā = exp(dt*A)` is returned as its logarithm so that powers are one `exp` away.
    pub fn discretize(&self) -> (Tensor, Tensor) {
        let dt = self.log_dt.exp().unsqueeze(-1); // [h, 1]
        let a = Tensor::complex(&(-self.log_a_real.exp()), &self.a_imag); // [h, n2]
        let dt_a = &a * dt;
        let cb = self.c.view_as_complex() * ((dt_a.exp() - 1.0) / a);
        (dt_a, cb)
    }

    /// The length-`seq` convolution kernel, `[channels, seq]` (f32).
    ///
    /// Vandermonde form: `K[h, l] = 2 Re sum_n (C B̄)[h, n] * exp(l * dt A[h, n])`.
    pub fn kernel(&self, seq: i64) -> Tensor {
        let (dt_a, cb) = self.discretize();
        let l = Tensor::arange(seq, (Kind::Float, self.log_dt.device()));
        let powers = (dt_a.unsqueeze(-1) * l).exp(); // [h, n2, seq]
        Tensor::einsum("hn,hnl->hl", &[cb, powers], None::<i64>).real() * 2.0
    }

    /// Applies the SSM to every channel.
    ///
    /// # Shapes
    /// - `u`: `[batch, channels, seq]` -> `[batch, channels, seq]`
    pub fn forward(&self, u: &Tensor) -> Tensor {
        let (_, channels, seq) = u.size3().expect("S4d input must be [batch, channels, seq]");
        assert_eq!(channels, self.channels, "S4d has {} channels, input has {channels}", self.channels);
        let k = self.kernel(seq);
        causal_fft_conv(u, &k) + u * self.d.unsqueeze(-1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::direct_causal_conv;
    use tch::Device;

    fn layer(channels: usize, state_size: usize) -> (nn::VarStore, S4d) {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = SsmConfig { state_size, proj_factor: 1, ..SsmConfig::default() };
        let s4d = S4d::new(&vs.root(), channels, &cfg).unwrap();
        (vs, s4d)
    }

    /// The kernel must equal the impulse response of the discretised recurrence
    /// `x_l = Ā x_{l-1} + B̄ u_l, y_l = 2 Re(C x_l)`, stepped one token at a time in f64.
    #[test]
    fn kernel_equals_powered_recurrence() {
        let (_vs, s4d) = layer(3, 8);
        let seq = 50;
        let k = s4d.kernel(seq).to_kind(Kind::Double);
        let (dt_a, cb) = s4d.discretize();
        let (a_bar, cb) = (dt_a.to_kind(Kind::ComplexDouble).exp(), cb.to_kind(Kind::ComplexDouble));
        let mut state = cb.zeros_like(); // C B̄ folded in: state_n = C_n B̄_n Ā_n^l
        let mut ys = Vec::new();
        for l in 0..seq {
            state = if l == 0 { cb.copy() } else { &state * &a_bar };
            ys.push(state.sum_dim_intlist(-1, false, None::<Kind>).real() * 2.0);
        }
        let reference = Tensor::stack(&ys, -1);
        let err = (&k - &reference).abs().max().double_value(&[]);
        assert!(err < 1e-4, "kernel differs from the powered recurrence by {err}");
    }

    #[test]
    fn forward_is_conv_plus_skip_and_causal() {
        let (_vs, s4d) = layer(4, 16);
        let u = Tensor::randn([2, 4, 37], (Kind::Float, Device::Cpu));
        let y = s4d.forward(&u);
        assert_eq!(y.size(), vec![2, 4, 37]);
        let k = s4d.kernel(37);
        let reference = direct_causal_conv(&u, &k) + &u * s4d.d.unsqueeze(-1);
        let err = (&y - reference).abs().max().double_value(&[]);
        assert!(err < 1e-4, "forward differs from direct conv + D skip by {err}");

        let t = 11;
        let u2 = u.copy();
        let _ = u2.narrow(-1, t, 1).fill_(-3.0);
        let y2 = s4d.forward(&u2);
        let before = (y.narrow(-1, 0, t) - y2.narrow(-1, 0, t)).abs().max().double_value(&[]);
        assert!(before < 1e-5, "output before t changed by {before}");
    }

    #[test]
    fn gradients_reach_every_parameter() {
        let (vs, s4d) = layer(2, 4);
        let u = Tensor::randn([1, 2, 9], (Kind::Float, Device::Cpu));
        s4d.forward(&u).square().sum(Kind::Float).backward();
        for (name, var) in vs.variables() {
            let g = var.grad();
            assert!(g.defined(), "{name} has no gradient");
            assert!(g.isfinite().all().int64_value(&[]) == 1, "{name} has a non-finite gradient");
            assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0, "{name} has an all-zero gradient");
        }
    }

    #[test]
    fn rejects_odd_state_size() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = SsmConfig { state_size: 7, proj_factor: 1, ..SsmConfig::default() };
        let err = S4d::new(&vs.root(), 2, &cfg).unwrap_err().to_string();
        assert!(err.contains("state_size"), "{err}");
    }
}
