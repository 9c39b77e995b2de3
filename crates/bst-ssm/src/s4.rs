//! S4: the structured state-space kernel (Gu, Goel, Ré 2022) with A = Λ - P P^* (diagonal plus
//! rank one, initialised from HiPPO-LegS), bilinear discretisation, and the kernel computed from
//! its generating function at the L roots of unity with a Cauchy kernel and the Woodbury identity
//! (S4 paper, Algorithm 1), then an inverse FFT.
//!
//! Derivation used here (C is a row vector, no conjugation): for `z^L = 1`,
//! `K̂(z) = sum_{l<L} C Ā^l B̄ z^l = C̃ (I - Ā z)^{-1} B̄` with `C̃ = C (I - Ā^L)`, and for the
//! bilinear transform `(I - Ā z)^{-1} B̄ = c(z) (g(z) - A)^{-1} B` with `g(z) = (2/dt)(1-z)/(1+z)`
//! and `c(z) = 2/(1+z)`. Woodbury on `(g - Λ + P Q^*)^{-1}` with `R = (g - Λ)^{-1}`:
//! `K̂ = c [k(C̃,B) - k(C̃,P) (1 + k(Q̄,P))^{-1} k(Q̄,B)]`, `k(a,b) = sum_n a_n b_n / (g - λ_n)`.
//!
//! We learn C itself (not S4's C̃) and form `C̃ = C (I - Ā^L)` for each L, so the same parameters
//! give the kernel at any length and the step mode needs no conversion. All N eigenvalues
//! (conjugate pairs included) are kept; the kernel is the real part.

use tch::{nn, Kind, Tensor};

use bst_core::ParamGroup;

use crate::{hippo, Recurrence, SsmConfig};

/// `channels` independent S4 kernels of state size N.
#[derive(Debug)]
pub struct S4Kernel {
    log_dt: Tensor,          // [channels]
    log_lambda_real: Tensor, // [channels, N]: Re λ = -exp(.)
    lambda_imag: Tensor,     // [channels, N]
    p: Tensor,               // [channels, N, 2] complex (real view)
    b: Tensor,               // [channels, N, 2]
    c: Tensor,               // [channels, N, 2]
}

fn as_real_view(t: &Tensor) -> Tensor {
    t.to_kind(Kind::ComplexFloat).view_as_real().contiguous()
}

impl S4Kernel {
    pub fn new(vs: &nn::Path, channels: usize, cfg: &SsmConfig) -> Self {
        let (h, n) = (channels as i64, cfg.state_size as i64);
        let device = vs.device();
        let (lambda, p, b, _v) = hippo::legs_nplr(n, device);
        let per_channel = |t: &Tensor| t.unsqueeze(0).repeat([h, 1]);
        let ssm = ParamGroup::Ssm.path(vs);
        let (lo, hi) = (cfg.dt_min.ln(), cfg.dt_max.ln());
        let log_dt = ssm.var_copy("log_dt", &(Tensor::rand([h], (Kind::Float, device)) * (hi - lo) + lo));
        let log_lambda_real = ssm.var_copy("log_lambda_real", &per_channel(&lambda.real().neg().log()).to_kind(Kind::Float));
        let lambda_imag = ssm.var_copy("lambda_imag", &per_channel(&lambda.imag()).to_kind(Kind::Float));
        let p = ssm.var_copy("p", &as_real_view(&per_channel(&p)));
        let b = ssm.var_copy("b", &as_real_view(&per_channel(&b)));
        let c = ParamGroup::NoDecay.path(vs).var("c", &[h, n, 2], nn::Init::Randn { mean: 0.0, stdev: 0.5f64.sqrt() });
        Self { log_dt, log_lambda_real, lambda_imag, p, b, c }
    }

    fn lambda(&self) -> Tensor {
        Tensor::complex(&(-self.log_lambda_real.exp()), &self.lambda_imag)
    }

    /// Dense bilinear discretisation: `(Ā [h, N, N], B̄ [h, N])`, complex.
    fn discretize_dense(&self) -> (Tensor, Tensor) {
        let p = self.p.view_as_complex();
        let a = self.lambda().diag_embed(0, -2, -1) - p.unsqueeze(-1).matmul(&p.conj().unsqueeze(-2)); // [h, N, N]
        let n = a.size()[1];
        let eye = Tensor::eye(n, (Kind::ComplexFloat, a.device()));
        let half_dt_a = &a * (self.log_dt.exp() * 0.5).to_kind(Kind::ComplexFloat).view([-1, 1, 1]);
        let backward = &eye - &half_dt_a;
        let a_bar = Tensor::linalg_solve(&backward, &(&eye + &half_dt_a), true);
        let dt_b = self.b.view_as_complex() * self.log_dt.exp().to_kind(Kind::ComplexFloat).unsqueeze(-1);
        let b_bar = Tensor::linalg_solve(&backward, &dt_b.unsqueeze(-1), true).squeeze_dim(-1);
        (a_bar, b_bar)
    }

    /// The length-`seq` convolution kernel, real `[channels, seq]`.
    /// The parameters the kernel is generated from.
    pub fn parameters(&self) -> Vec<&Tensor> {
        vec![&self.log_dt, &self.log_lambda_real, &self.lambda_imag, &self.p, &self.b, &self.c]
    }

    pub fn kernel(&self, seq: i64) -> Tensor {
        let (a_bar, _) = self.discretize_dense();
        let c = self.c.view_as_complex(); // [h, N]
        let n = a_bar.size()[1];
        let eye = Tensor::eye(n, (Kind::ComplexFloat, a_bar.device()));
        let c_tilde = c.unsqueeze(-2).matmul(&(eye - a_bar.matrix_power(seq))).squeeze_dim(-2); // [h, N]

        // roots of unity in f64: near z = -1, 1 + z cancels and must keep its imaginary part
        let angle = Tensor::arange(seq, (Kind::Double, a_bar.device())) * (-2.0 * std::f64::consts::PI / seq as f64);
        let z = Tensor::complex(&angle.cos(), &angle.sin()).to_kind(Kind::ComplexFloat); // [seq]
        let dt = self.log_dt.exp().unsqueeze(-1).to_kind(Kind::ComplexFloat); // [h, 1]
        let g = ((-&z + 1.0) / (&z + 1.0)).unsqueeze(0) * (dt.reciprocal() * 2.0); // [h, seq]
        let scale = (&z + 1.0).reciprocal() * 2.0; // [seq]
        let r = (g.unsqueeze(-1) - self.lambda().unsqueeze(1)).reciprocal(); // [h, seq, N]
        let (p, b) = (self.p.view_as_complex(), self.b.view_as_complex());
        let q_bar = p.conj();
        let cauchy = |a: &Tensor, b: &Tensor| r.matmul(&(a * b).unsqueeze(-1)).squeeze_dim(-1); // [h, seq]
        let k00 = cauchy(&c_tilde, &b);
        let k01 = cauchy(&c_tilde, &p);
        let k10 = cauchy(&q_bar, &b);
        let k11 = cauchy(&q_bar, &p);
        let at_roots = (k00 - k01 * (k11 + 1.0).reciprocal() * k10) * scale;
        at_roots.fft_ifft(seq, -1, "backward").real()
    }

    /// The same system in recurrent form (dense N x N per channel).
    pub fn recurrence(&self) -> Recurrence {
        let (a, b) = self.discretize_dense();
        Recurrence::Dense { a, b, c: self.c.view_as_complex() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// The Cauchy/Woodbury kernel equals `C Ā^l B̄` with the dense discretised A powered step by step.
    #[test]
    fn cauchy_woodbury_kernel_equals_powered_dense_system() {
        tch::manual_seed(11);
        let vs = nn::VarStore::new(Device::Cpu);
        for (i, n) in [4usize, 8, 16].into_iter().enumerate() {
            let cfg = SsmConfig { state_size: n, proj_factor: 1, ..SsmConfig::default() };
            let s4 = S4Kernel::new(&(vs.root() / i), 3, &cfg);
            for seq in [1i64, 7, 32] {
                let k = s4.kernel(seq);
                assert_eq!(k.size(), vec![3, seq]);
                let (a_bar, b_bar) = s4.discretize_dense();
                let c = s4.c.view_as_complex();
                let mut x = b_bar.unsqueeze(-1); // Ā^0 B̄
                let mut taps = Vec::new();
                for _ in 0..seq {
                    taps.push(c.unsqueeze(-2).matmul(&x).squeeze_dim(-1).squeeze_dim(-1).real());
                    x = a_bar.matmul(&x);
                }
                let reference = Tensor::stack(&taps, -1);
                let err = (&k - &reference).abs().max().double_value(&[]);
                let scale = reference.abs().max().double_value(&[]).max(1e-3);
                assert!(err / scale < 1e-3, "N={n} L={seq}: relative error {}", err / scale);
            }
        }
    }

    #[test]
    fn gradients_reach_every_s4_parameter() {
        tch::manual_seed(12);
        let vs = nn::VarStore::new(Device::Cpu);
        let s4 = S4Kernel::new(&vs.root(), 2, &SsmConfig { state_size: 8, proj_factor: 1, ..SsmConfig::default() });
        s4.kernel(20).square().sum(Kind::Float).backward();
        for (name, var) in vs.variables() {
            let g = var.grad();
            assert!(g.defined() && g.isfinite().all().int64_value(&[]) == 1, "{name}: bad gradient");
            assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0, "{name}: zero gradient");
        }
    }
}
