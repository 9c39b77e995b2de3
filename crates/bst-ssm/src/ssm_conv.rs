//! An SSM convolution layer: `banks` independent filter banks of `channels` kernels, one kernel
//! family, the D skip, and two modes that must agree: convolution over the whole sequence (FFT)
//! and recurrent steps (S4D, S4).
//!
//! Several banks in one call serve BST:MF, which runs S separate filters over the same input.
//! In evaluation mode (`train = false`) under `tch::no_grad` the kernel of the last length is
//! cached: it is a pure function of the parameters. The cache is stamped with the parameters'
//! version counters (libtorch bumps them on every in-place write: an optimiser step, a checkpoint
//! load, `copy_`), so a kernel computed from older weights is never served. With autograd on, the
//! kernel is always recomputed, so gradients are never silently lost.

use std::sync::Mutex;

use bst_core::ParamGroup;
use tch::{nn, Tensor};

use crate::{causal_fft_conv, ImplicitFilterKernel, LongConvKernel, Recurrence, S4Kernel, S4dKernel, SsmError, SsmKind, SsmLayerConfig, SsmState, UnstructuredFilter};

/// The kernel generator of one family.
#[derive(Debug)]
enum Kernel {
    S4d(S4dKernel),
    S4(S4Kernel),
    Unstructured(LongConvKernel),
    Implicit(ImplicitFilterKernel),
}

impl Kernel {
    /// The tensors the kernel is generated from.
    fn parameters(&self) -> Vec<&Tensor> {
        match self {
            Kernel::S4d(k) => k.parameters(),
            Kernel::S4(k) => k.parameters(),
            Kernel::Unstructured(k) => k.parameters(),
            Kernel::Implicit(k) => k.parameters(),
        }
    }

    fn kernel(&self, seq: i64) -> Tensor {
        match self {
            Kernel::S4d(k) => k.kernel(seq),
            Kernel::S4(k) => k.kernel(seq),
            Kernel::Unstructured(k) => k.kernel(seq),
            Kernel::Implicit(k) => k.kernel(seq),
        }
    }
}

/// Bank(s) of SSM convolutions with a D skip.
#[derive(Debug)]
pub struct SsmConv {
    kernel: Kernel,
    kind: SsmKind,
    d: Tensor, // [banks * channels]
    channels: i64,
    banks: i64,
    /// The evaluation kernel: (length, parameter version stamp, kernel).
    cache: Mutex<Option<(i64, i64, Tensor)>>,
}

impl SsmConv {
    /// `cfg.banks` banks of `cfg.channels()` kernels of family `cfg.kind` (unstructured filters
    /// have `cfg.max_len` taps; the other families ignore it).
    pub fn new(vs: &nn::Path, cfg: &SsmLayerConfig) -> Self {
        let (channels, banks, ssm) = (cfg.channels(), cfg.banks, &cfg.ssm);
        assert!(banks >= 1, "an SSM convolution needs at least one filter bank");
        let all = channels * banks;
        let kernel = match cfg.kind {
            SsmKind::S4d => Kernel::S4d(S4dKernel::new(&(vs / "s4d"), all, ssm)),
            SsmKind::S4 => Kernel::S4(S4Kernel::new(&(vs / "s4"), all, ssm)),
            SsmKind::Unstructured => match ssm.unstructured_filter {
                UnstructuredFilter::Explicit => Kernel::Unstructured(LongConvKernel::new(&(vs / "long_conv"), all, cfg.max_len, ssm)),
                UnstructuredFilter::Implicit => Kernel::Implicit(ImplicitFilterKernel::new(&(vs / "implicit_filter"), all, cfg.max_len, ssm)),
            },
        };
        let d = ParamGroup::NoDecay.path(vs).var("d", &[all as i64], nn::Init::Randn { mean: 0.0, stdev: 1.0 });
        Self { kernel, kind: cfg.kind, d, channels: channels as i64, banks: banks as i64, cache: Mutex::new(None) }
    }

    /// Whether autograd would record an operation on the parameters now (tch exposes no query of
    /// the grad mode, so probe it with a tiny op).
    fn grad_enabled(&self) -> bool {
        self.d.requires_grad() && (&self.d * 1.0).requires_grad()
    }

    /// The sum of the kernel parameters' version counters: it grows with every in-place write
    /// to any of them (counters only increase), so an unchanged sum means unchanged weights.
    fn weights_version(&self) -> i64 {
        self.kernel.parameters().iter().map(|p| p.internal_version()).sum()
    }

    /// Kernels of every bank, `[banks, channels, seq]` (cached in evaluation mode under no_grad).
    pub fn kernel(&self, seq: i64, train: bool) -> Tensor {
        if train || self.grad_enabled() {
            return self.kernel.kernel(seq).view([self.banks, self.channels, seq]);
        }
        let mut cache = self.cache.lock().expect("kernel cache poisoned");
        let version = self.weights_version();
        if let Some((len, v, k)) = cache.as_ref() {
            if *len == seq && *v == version {
                return k.shallow_clone();
            }
        }
        let k = self.kernel.kernel(seq).view([self.banks, self.channels, seq]);
        *cache = Some((seq, version, k.shallow_clone()));
        k
    }
}

impl nn::ModuleT for SsmConv {
    /// Convolution mode.
    ///
    /// # Shapes
    /// - `u`: `[batch, channels, seq]` -> `[batch, banks, channels, seq]`
    fn forward_t(&self, u: &Tensor, train: bool) -> Tensor {
        let (_, channels, seq) = u.size3().expect("SSM input must be [batch, channels, seq]");
        assert_eq!(channels, self.channels, "SSM has {} channels, input has {channels}", self.channels);
        let u = u.unsqueeze(1); // [b, 1, h, l]
        let d = self.d.view([self.banks, self.channels, 1]);
        causal_fft_conv(&u, &self.kernel(seq, train)) + &u * d
    }
}

impl SsmConv {
    /// The discretised system in recurrent form (S4D, S4).
    pub fn recurrence(&self) -> Result<Recurrence, SsmError> {
        match &self.kernel {
            Kernel::S4d(k) => Ok(k.recurrence()),
            Kernel::S4(k) => Ok(k.recurrence()),
            Kernel::Unstructured(_) | Kernel::Implicit(_) => Err(SsmError::NoRecurrentMode { kind: self.kind }),
        }
    }

    /// Recurrent mode: one token for every bank.
    ///
    /// # Shapes
    /// - `u`: `[batch, channels]` -> `[batch, banks, channels]`
    pub fn step(&self, recurrence: &Recurrence, u: &Tensor, state: &mut SsmState) -> Tensor {
        let batch = u.size()[0];
        let u_all = u.unsqueeze(1).expand([batch, self.banks, self.channels], false).reshape([batch, -1]);
        let y = recurrence.step(&u_all, state) + &u_all * &self.d;
        y.view([batch, self.banks, self.channels]).to_kind(u.kind())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{direct_causal_conv, SsmConfig};
    use tch::{nn::ModuleT, Device, Kind};

    /// Every kernel family, unstructured with both filter parameterisations.
    const KINDS: [(SsmKind, UnstructuredFilter); 4] = [
        (SsmKind::S4d, UnstructuredFilter::Explicit),
        (SsmKind::S4, UnstructuredFilter::Explicit),
        (SsmKind::Unstructured, UnstructuredFilter::Explicit),
        (SsmKind::Unstructured, UnstructuredFilter::Implicit),
    ];

    fn layer((kind, filter): (SsmKind, UnstructuredFilter), banks: usize) -> (nn::VarStore, SsmConv) {
        tch::manual_seed(7);
        let vs = nn::VarStore::new(Device::Cpu);
        let ssm = SsmConfig { state_size: 8, proj_factor: 1, unstructured_filter: filter, ..SsmConfig::default() };
        let conv = SsmConv::new(&vs.root(), &SsmLayerConfig { banks, ..SsmLayerConfig::new(&ssm, kind, 3, 40) });
        (vs, conv)
    }

    #[test]
    fn conv_mode_equals_direct_convolution_plus_skip() {
        for kind in KINDS {
            let (_vs, conv) = layer(kind, 2);
            let u = Tensor::randn([2, 3, 37], (Kind::Float, Device::Cpu));
            let y = conv.forward_t(&u, true);
            assert_eq!(y.size(), vec![2, 2, 3, 37]);
            let k = conv.kernel(37, true).view([6, 37]);
            let u6 = u.repeat([1, 2, 1]); // both banks see the same input
            let reference = (direct_causal_conv(&u6, &k) + &u6 * conv.d.unsqueeze(-1)).view([2, 2, 3, 37]);
            let err = (&y - reference).abs().max().double_value(&[]);
            assert!(err < 1e-4, "{kind:?}: conv mode differs from direct convolution by {err}");
        }
    }

    #[test]
    fn recurrent_mode_equals_convolution_mode() {
        for kind in [KINDS[0], KINDS[1]] {
            let (_vs, conv) = layer(kind, 2);
            let u = Tensor::randn([2, 3, 33], (Kind::Float, Device::Cpu));
            let y_conv = conv.forward_t(&u, false);
            let rec = conv.recurrence().unwrap();
            let mut state = rec.zero_state(2);
            let steps: Vec<Tensor> = (0..33).map(|t| conv.step(&rec, &u.select(2, t), &mut state)).collect();
            let y_rec = Tensor::stack(&steps, -1);
            let err = (&y_conv - &y_rec).abs().max().double_value(&[]);
            let scale = y_conv.abs().max().double_value(&[]);
            assert!(err / scale < 1e-3, "{kind:?}: recurrent and convolution modes differ by {err} (scale {scale})");
        }
        for kind in [KINDS[2], KINDS[3]] {
            let (_vs, conv) = layer(kind, 1);
            assert!(matches!(conv.recurrence(), Err(SsmError::NoRecurrentMode { .. })));
        }
    }

    #[test]
    fn causal_for_every_kind_odd_lengths_and_batch_one() {
        for kind in KINDS {
            let (_vs, conv) = layer(kind, 1);
            for seq in [1i64, 9, 40, 53] {
                let u = Tensor::randn([1, 3, seq], (Kind::Float, Device::Cpu));
                let y = conv.forward_t(&u, true);
                assert_eq!(y.size(), vec![1, 1, 3, seq]);
                let t = seq / 2;
                let u2 = u.copy();
                let _ = u2.narrow(2, t, seq - t).fill_(3.0);
                let y2 = conv.forward_t(&u2, true);
                if t > 0 {
                    let before = (y.narrow(3, 0, t) - y2.narrow(3, 0, t)).abs().max().double_value(&[]);
                    assert!(before < 1e-5, "{kind:?} L={seq}: output before {t} changed by {before}");
                }
            }
        }
    }

    #[test]
    fn gradients_reach_every_parameter_of_every_kind() {
        for kind in KINDS {
            let (vs, conv) = layer(kind, 2);
            let u = Tensor::randn([2, 3, 24], (Kind::Float, Device::Cpu));
            conv.forward_t(&u, true).square().sum(Kind::Float).backward();
            for (name, var) in vs.variables() {
                let g = var.grad();
                assert!(g.defined(), "{kind:?} {name}: no gradient");
                assert!(g.isfinite().all().int64_value(&[]) == 1, "{kind:?} {name}: non-finite gradient");
                assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0, "{kind:?} {name}: all-zero gradient");
            }
        }
    }

    #[test]
    fn eval_kernel_is_cached_under_no_grad_until_the_weights_change() {
        for kind in KINDS {
            let (vs, conv) = layer(kind, 1);
            let eval = |seq| tch::no_grad(|| conv.kernel(seq, false));
            let k1 = eval(16);
            assert_eq!(k1.data_ptr(), eval(16).data_ptr(), "{kind:?}: a second eval call must reuse the cached kernel");
            let with_grad = conv.kernel(16, false);
            assert!(with_grad.requires_grad() && with_grad.data_ptr() != k1.data_ptr(), "{kind:?}: with autograd on, no cache");
            // loading other weights (as a checkpoint load does: copy_ under no_grad) invalidates it
            let saved: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(n, v)| (n, v.detach().copy())).collect();
            tch::no_grad(|| {
                for (_, mut v) in vs.variables() {
                    v.copy_(&(&v + 0.01));
                }
            });
            let k2 = eval(16);
            assert!(!k1.allclose(&k2, 1e-7, 1e-7, false), "{kind:?}: after a weight change the kernel must be recomputed");
            tch::no_grad(|| {
                for (name, t) in &saved {
                    vs.variables()[name].shallow_clone().copy_(t);
                }
            });
            assert!(k1.allclose(&eval(16), 1e-6, 1e-6, false), "{kind:?}: restoring the weights restores the kernel");
            assert!(eval(24).size() == vec![1, 3, 24], "{kind:?}: a new length is recomputed");
        }
    }
}
