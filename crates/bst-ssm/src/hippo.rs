//! HiPPO-LegS (Gu et al. 2020) and its normal-plus-low-rank form (S4, Gu, Goel, Ré 2022, §3).
//!
//! `A_nk = -sqrt(2n+1) sqrt(2k+1)` for n > k, `-(n+1)` for n = k, 0 above; `B_n = sqrt(2n+1)`.
//! With `P_n = sqrt(n + 1/2)`, `S = A + P P^T` is `-1/2 I` plus a skew-symmetric matrix, hence
//! normal: `S = V Λ V^*`. In the basis V, `A = Λ - P̃ P̃^*` with `P̃ = V^* P`, and `B̃ = V^* B`.

use tch::{Device, Kind, Tensor};

/// The dense LegS matrices `(A [N, N], B [N])`, f64.
pub fn legs(n: i64, device: Device) -> (Tensor, Tensor) {
    let idx = Tensor::arange(n, (Kind::Double, device));
    let s = (&idx * 2.0 + 1.0).sqrt(); // sqrt(2n+1)
    let below = s.outer(&s).tril(-1).neg();
    let a = below - (&idx + 1.0).diag(0);
    (a, s)
}

/// LegS in diagonal-plus-low-rank form: `(Λ, P̃, B̃, V)`, complex128; `A = V (Λ - P̃ P̃^*) V^*`.
pub fn legs_nplr(n: i64, device: Device) -> (Tensor, Tensor, Tensor, Tensor) {
    let (a, b) = legs(n, device);
    let idx = Tensor::arange(n, (Kind::Double, device));
    let p = (idx + 0.5).sqrt();
    let s = &a + p.outer(&p);
    // S + I/2 is real skew-symmetric, so i(S + I/2) is Hermitian: eigh gives real mu, and
    // S v = (-1/2 - i mu) v.
    let skew = &s + Tensor::eye(n, (Kind::Double, device)) * 0.5;
    let hermitian = Tensor::complex(&skew.zeros_like(), &skew);
    let (mu, v) = hermitian.linalg_eigh("L");
    let lambda = Tensor::complex(&mu.full_like(-0.5), &(-mu));
    let vh = v.conj().transpose(0, 1);
    let cplx = |t: &Tensor| Tensor::complex(t, &t.zeros_like());
    let p_t = vh.matmul(&cplx(&p).unsqueeze(-1)).squeeze_dim(-1);
    let b_t = vh.matmul(&cplx(&b).unsqueeze(-1)).squeeze_dim(-1);
    (lambda, p_t, b_t, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legs_matrix_has_the_known_entries() {
        let (a, b) = legs(3, Device::Cpu);
        let a: Vec<Vec<f64>> = Vec::try_from(a).unwrap();
        let r3 = 3f64.sqrt();
        let expected = [[-1.0, 0.0, 0.0], [-r3, -2.0, 0.0], [-5f64.sqrt(), -r3 * 5f64.sqrt(), -3.0]];
        for (row, exp) in a.iter().zip(expected) {
            for (x, e) in row.iter().zip(exp) {
                assert!((x - e).abs() < 1e-12, "{a:?}");
            }
        }
        assert!((Vec::<f64>::try_from(b).unwrap()[2] - 5f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn nplr_form_reconstructs_legs() {
        let n = 8;
        let (lambda, p, b, v) = legs_nplr(n, Device::Cpu);
        let a_nplr = lambda.diag(0) - p.unsqueeze(-1).matmul(&p.conj().unsqueeze(0));
        let vh = v.conj().transpose(0, 1);
        let a = v.matmul(&a_nplr).matmul(&vh);
        let (a_ref, b_ref) = legs(n, Device::Cpu);
        assert!((a.real() - &a_ref).abs().max().double_value(&[]) < 1e-9);
        assert!(a.imag().abs().max().double_value(&[]) < 1e-9);
        assert!((v.matmul(&b.unsqueeze(-1)).squeeze_dim(-1).real() - b_ref).abs().max().double_value(&[]) < 1e-9);
        assert!((lambda.real() + 0.5).abs().max().double_value(&[]) < 1e-9, "Re Λ = -1/2");
    }
}
