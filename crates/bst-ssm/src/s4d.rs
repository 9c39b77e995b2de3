//! S4D: a diagonal state-space kernel (Gu, Gupta, Goel, Ré 2022), as in `state-spaces/s4`
//! `models/s4/s4d.py`.
//!
//! Per channel h and mode n (N/2 complex modes; the other half are their conjugates, hence the
//! `2 Re`): `A_n = -exp(log_a_real) + i * a_imag`, step `dt = exp(log_dt)`, discretised by ZOH
//! (`Ā = exp(dt A)`, `B̄ = (exp(dt A) - 1)/A`) or bilinear, with B = 1 folded into the complex C.
//! Kernel: `K_l = 2 Re sum_n C_n B̄_n Ā_n^l`.

use bst_core::ParamGroup;
use tch::{nn, Kind, Tensor};

use crate::vandermonde::diagonal_kernel;
use crate::{Discretization, Recurrence, S4dInit, SsmConfig};

/// `channels` independent diagonal SSM kernels.
#[derive(Debug)]
pub struct S4dKernel {
    log_dt: Tensor,     // [channels]
    c: Tensor,          // [channels, N/2, 2]: real view of the complex C
    log_a_real: Tensor, // [channels, N/2]
    a_imag: Tensor,     // [channels, N/2]
    discretization: Discretization,
}

/// Initial imaginary parts of A for `n2 = N/2` modes.
fn a_imag_init(init: S4dInit, n2: i64, device: tch::Device) -> Tensor {
    let n = Tensor::arange(n2, (Kind::Float, device));
    match init {
        S4dInit::Lin => n * std::f64::consts::PI,
        S4dInit::Inv => {
            let big_n = (2 * n2) as f64;
            ((n * 2.0 + 1.0).reciprocal() * big_n - 1.0) * (big_n / std::f64::consts::PI)
        }
    }
}

impl S4dKernel {
    /// Builds `channels` kernels. A and dt are [`ParamGroup::Ssm`] (own learning rate, no
    /// decay); C is [`ParamGroup::NoDecay`].
    pub fn new(vs: &nn::Path, channels: usize, cfg: &SsmConfig) -> Self {
        let (h, n2) = (channels as i64, (cfg.state_size / 2) as i64);
        let opts = (Kind::Float, vs.device());
        let ssm = ParamGroup::Ssm.path(vs);
        let (lo, hi) = (cfg.dt_min.ln(), cfg.dt_max.ln());
        let log_dt = ssm.var_copy("log_dt", &(Tensor::rand([h], opts) * (hi - lo) + lo));
        let log_a_real = ssm.var_copy("log_a_real", &Tensor::full([h, n2], 0.5f64.ln(), opts));
        let a_imag = ssm.var_copy("a_imag", &a_imag_init(cfg.init, n2, vs.device()).unsqueeze(0).repeat([h, 1]));
        // complex standard normal: each of Re/Im has variance 1/2
        let c = ParamGroup::NoDecay.path(vs).var("c", &[h, n2, 2], nn::Init::Randn { mean: 0.0, stdev: 0.5f64.sqrt() });
        Self { log_dt, c, log_a_real, a_imag, discretization: cfg.discretization }
    }

    /// Discretised system: `(log Ā, C B̄)`, complex `[channels, N/2]`. `Ā` is returned as its
    /// logarithm so that any power is one `exp` away.
    pub fn discretize(&self) -> (Tensor, Tensor) {
        let dt = self.log_dt.exp().unsqueeze(-1); // [h, 1]
        let a = Tensor::complex(&(-self.log_a_real.exp()), &self.a_imag); // [h, n2]
        let dt_a = &a * &dt;
        let c = self.c.view_as_complex();
        match self.discretization {
            Discretization::Zoh => {
                let cb = c * ((dt_a.exp() - 1.0) / a);
                (dt_a, cb)
            }
            Discretization::Bilinear => {
                let denom = (&dt_a * -0.5) + 1.0;
                let a_bar = ((&dt_a * 0.5) + 1.0) / &denom;
                let cb = c * dt.to_kind(Kind::ComplexFloat) / denom;
                (a_bar.log(), cb)
            }
        }
    }

    /// The parameters the kernel is generated from.
    pub fn parameters(&self) -> Vec<&Tensor> {
        vec![&self.log_dt, &self.c, &self.log_a_real, &self.a_imag]
    }

    /// The length-`seq` convolution kernel, real `[channels, seq]`.
    pub fn kernel(&self, seq: i64) -> Tensor {
        let (log_a_bar, cb) = self.discretize();
        diagonal_kernel(&log_a_bar, &cb, seq)
    }

    /// The same system in recurrent form.
    pub fn recurrence(&self) -> Recurrence {
        let (log_a_bar, cb) = self.discretize();
        Recurrence::Diagonal { a: log_a_bar.exp(), c: cb }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vandermonde::diagonal_kernel_naive;
    use tch::Device;

    fn kernel(init: S4dInit, discretization: Discretization) -> (nn::VarStore, S4dKernel) {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = SsmConfig { state_size: 8, init, discretization, proj_factor: 1, ..SsmConfig::default() };
        let k = S4dKernel::new(&vs.root(), 3, &cfg);
        (vs, k)
    }

    /// The kernel must equal the impulse response of the discretised recurrence
    /// `x_l = Ā x_{l-1} + B̄ u_l, y_l = 2 Re(C x_l)`, powered one step at a time in f64.
    #[test]
    fn kernel_equals_powered_recurrence_for_each_init_and_discretisation() {
        for init in [S4dInit::Lin, S4dInit::Inv] {
            for disc in [Discretization::Zoh, Discretization::Bilinear] {
                let (_vs, s4d) = kernel(init, disc);
                let seq = 50;
                let k = s4d.kernel(seq).to_kind(Kind::Double);
                let (log_a, cb) = s4d.discretize();
                let (a_bar, cb) = (log_a.to_kind(Kind::ComplexDouble).exp(), cb.to_kind(Kind::ComplexDouble));
                let mut state = cb.copy(); // C B̄ Ā^0
                let mut ys = Vec::new();
                for _ in 0..seq {
                    ys.push(state.sum_dim_intlist(-1, false, None::<Kind>).real() * 2.0);
                    state = &state * &a_bar;
                }
                let err = (&k - Tensor::stack(&ys, -1)).abs().max().double_value(&[]);
                assert!(err < 1e-4, "{init:?}/{disc:?}: kernel differs from the powered recurrence by {err}");
                let naive = diagonal_kernel_naive(&log_a, &s4d.discretize().1, seq).to_kind(Kind::Double);
                assert!((&k - naive).abs().max().double_value(&[]) < 1e-4);
            }
        }
    }

    /// Each complex mode `a` as the real 2x2 matrix of multiplication by `a`.
    fn real_form(re: f64, im: f64) -> Tensor {
        Tensor::from_slice(&[re, -im, im, re]).view([2, 2])
    }

    /// ZOH and bilinear checked against the definitions in real matrix form, in f64, from the raw
    /// parameters only (not through `discretize`): ZOH by Van Loan's block matrix exponential,
    /// `exp(dt [[A, B], [0, 0]]) = [[Ā, B̄], [0, 1]]`; bilinear by solving
    /// `(I - dt A/2) Ā = I + dt A/2`, `(I - dt A/2) B̄ = dt B`. Then `K_l = 2 Re(C Ā^l B̄)`.
    #[test]
    fn discretisations_match_an_independent_matrix_form_in_f64() {
        for disc in [Discretization::Zoh, Discretization::Bilinear] {
            let (_vs, s4d) = kernel(S4dInit::Inv, disc);
            let seq = 40;
            let got = s4d.kernel(seq).to_kind(Kind::Double); // [3, seq]
            let f64s = |t: &Tensor| Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap();
            let (log_dt, log_a_re, a_im, c) = (f64s(&s4d.log_dt), f64s(&s4d.log_a_real), f64s(&s4d.a_imag), f64s(&s4d.c));
            let n2 = log_a_re.len() / 3;
            for h in 0..3 {
                let dt = log_dt[h].exp();
                let mut expected = vec![0.0; seq as usize];
                for n in 0..n2 {
                    let a = real_form(-log_a_re[h * n2 + n].exp(), a_im[h * n2 + n]);
                    let b = Tensor::from_slice(&[1.0f64, 0.0]).view([2, 1]); // B = 1
                    let (a_bar, b_bar) = match disc {
                        Discretization::Zoh => {
                            let block = Tensor::zeros([3, 3], (Kind::Double, tch::Device::Cpu));
                            block.narrow(0, 0, 2).narrow(1, 0, 2).copy_(&a);
                            block.narrow(0, 0, 2).narrow(1, 2, 1).copy_(&b);
                            let e = (block * dt).linalg_matrix_exp();
                            (e.narrow(0, 0, 2).narrow(1, 0, 2), e.narrow(0, 0, 2).narrow(1, 2, 1))
                        }
                        Discretization::Bilinear => {
                            let eye = Tensor::eye(2, (Kind::Double, tch::Device::Cpu));
                            let lhs = &eye - &a * (dt / 2.0);
                            (Tensor::linalg_solve(&lhs, &(&eye + &a * (dt / 2.0)), true), Tensor::linalg_solve(&lhs, &(b * dt), true))
                        }
                    };
                    let (c_re, c_im) = (c[(h * n2 + n) * 2], c[(h * n2 + n) * 2 + 1]);
                    let mut x = b_bar; // state after an impulse: Ā^l B̄, as [Re, Im]
                    for y in expected.iter_mut() {
                        let v = f64s(&x);
                        *y += 2.0 * (c_re * v[0] - c_im * v[1]);
                        x = a_bar.matmul(&x);
                    }
                }
                let got_h = f64s(&got.get(h as i64));
                let scale = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                let err = got_h.iter().zip(&expected).fold(0.0f64, |m, (g, e)| m.max((g - e).abs()));
                assert!(err < 1e-5 * scale.max(1.0), "{disc:?} channel {h}: kernel differs from the matrix form by {err} (scale {scale})");
            }
        }
    }

    #[test]
    fn inv_init_matches_the_s4d_paper() {
        // A_n imag = N/pi * (N/(2n+1) - 1), N = 8
        let a = a_imag_init(S4dInit::Inv, 4, Device::Cpu);
        let expected: Vec<f64> = (0..4).map(|n| 8.0 / std::f64::consts::PI * (8.0 / (2 * n + 1) as f64 - 1.0)).collect();
        let got: Vec<f64> = Vec::try_from(a.to_kind(Kind::Double)).unwrap();
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() < 1e-4, "{got:?} vs {expected:?}");
        }
    }

    #[test]
    fn bilinear_and_zoh_agree_for_small_steps() {
        // both discretisations converge to the continuous system as dt -> 0; the two kernels
        // share the very same parameter tensors
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = SsmConfig { state_size: 8, dt_min: 1e-3, dt_max: 1e-2, proj_factor: 1, ..SsmConfig::default() };
        let zoh = S4dKernel::new(&vs.root(), 3, &cfg);
        let bilinear = S4dKernel {
            log_dt: zoh.log_dt.shallow_clone(),
            c: zoh.c.shallow_clone(),
            log_a_real: zoh.log_a_real.shallow_clone(),
            a_imag: zoh.a_imag.shallow_clone(),
            discretization: Discretization::Bilinear,
        };
        let (kz, kb) = (zoh.kernel(64), bilinear.kernel(64));
        let rel = (&kz - &kb).abs().max().double_value(&[]) / kz.abs().max().double_value(&[]);
        assert!(rel < 1e-2, "ZOH and bilinear differ by {rel} (relative)");
        assert!(rel > 0.0, "they are different discretisations");
    }
}
