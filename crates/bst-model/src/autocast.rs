//! Mixed precision: bf16 autocast for forward passes on CPU and CUDA (`train.precision = "bf16"`).
//!
//! tch 0.24 only wraps libtorch's legacy CUDA switch, whose dtype is fp16, and nothing for CPU.
//! [`Autocast`] drives libtorch's per-device autocast (`at::autocast::set_autocast_enabled`,
//! `set_autocast_dtype`, nesting and the cast cache) through the C++ shim `csrc/autocast.cpp`,
//! entering and leaving regions exactly as `torch.autocast` does.
//!
//! Inside a bf16 region, ops on libtorch's lower-precision list (linear, matmul, bmm and hence
//! einsum, scaled-dot-product attention) cast their real floating-point inputs to bfloat16; ops
//! on its fp32 list run in f32; everything else runs in the dtype of its inputs. Parameters,
//! gradients and AdamW's moments stay f32 (master weights). bf16 has f32's exponent range, so
//! unlike fp16 it needs no loss scaling.
//!
//! What must stay f32 does so without help from this module: the FFT convolution casts its
//! operands to f32 itself (`bst_ssm::causal_fft_conv`; bf16 FFTs are too coarse over long
//! kernels, and CUDA has none), and the SSM kernels are generated in complex f32, which autocast
//! never casts (only real floating-point tensors are eligible). The tests below check both.
//!
//! Autocast state is per thread in libtorch, so a region covers the ops of the thread that
//! entered it, and the guard is neither `Send` nor `Sync`. Backward passes run outside the region,
//! as torch recommends; autograd replays the casts the forward recorded.

use std::ffi::CStr;
use std::fmt;
use std::marker::PhantomData;
use std::os::raw::{c_char, c_int};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

use crate::ModelError;

/// Precision of forward passes and losses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Forward passes under bf16 autocast on the run's device (CUDA or CPU); losses, FFT
    /// convolutions, SSM kernels, weights and optimiser state in f32.
    Bf16,
}

impl Precision {
    /// For `skip_serializing_if`: a default (f32) run serialises as before the option existed,
    /// so run ids (hashes of the serialised configuration) of earlier sweeps stay valid.
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

extern "C" {
    fn bst_autocast_last_error() -> *const c_char;
    fn bst_autocast_is_enabled(device: c_int, enabled: *mut c_int) -> c_int;
    fn bst_autocast_set_enabled(device: c_int, enabled: c_int) -> c_int;
    fn bst_autocast_get_dtype(device: c_int, dtype: *mut c_int) -> c_int;
    fn bst_autocast_set_dtype(device: c_int, dtype: c_int) -> c_int;
    fn bst_autocast_is_cache_enabled(enabled: *mut c_int) -> c_int;
    fn bst_autocast_set_cache_enabled(enabled: c_int) -> c_int;
    fn bst_autocast_increment_nesting(depth: *mut c_int) -> c_int;
    fn bst_autocast_decrement_nesting(depth: *mut c_int) -> c_int;
    fn bst_autocast_clear_cache() -> c_int;
}

// c10::DeviceType and c10::ScalarType values; the shim static_asserts each of them.
const DEVICE_CPU: c_int = 0;
const DEVICE_CUDA: c_int = 1;
const SCALAR_HALF: c_int = 5;
const SCALAR_FLOAT: c_int = 6;
const SCALAR_BFLOAT16: c_int = 15;

/// Turns a shim status into a `Result`, with the C++ exception's message on failure.
fn check(status: c_int) -> Result<(), ModelError> {
    if status == 0 {
        return Ok(());
    }
    // SAFETY: the shim returns a pointer to a thread-local NUL-terminated string that lives until
    // the next failure on this thread; it is copied out at once.
    let message = unsafe { CStr::from_ptr(bst_autocast_last_error()) }.to_string_lossy().into_owned();
    Err(ModelError::Autocast { reason: message })
}

/// Calls a shim getter that writes one `c_int`.
fn query(f: unsafe extern "C" fn(*mut c_int) -> c_int) -> Result<c_int, ModelError> {
    let mut out = 0;
    // SAFETY: `out` is a valid, writable c_int for the duration of the call.
    check(unsafe { f(&mut out) })?;
    Ok(out)
}

fn query_device(device: c_int, f: unsafe extern "C" fn(c_int, *mut c_int) -> c_int) -> Result<c_int, ModelError> {
    let mut out = 0;
    // SAFETY: as in `query`; `device` is one of the device types the shim asserts.
    check(unsafe { f(device, &mut out) })?;
    Ok(out)
}

fn device_type(device: Device) -> Option<c_int> {
    match device {
        Device::Cpu => Some(DEVICE_CPU),
        Device::Cuda(_) => Some(DEVICE_CUDA),
        _ => None,
    }
}

/// The dtype autocast casts to on `device`'s type on this thread, or `None` when autocast is off
/// there (or the device type has none).
pub fn active_kind(device: Device) -> Result<Option<Kind>, ModelError> {
    let Some(code) = device_type(device) else { return Ok(None) };
    if query_device(code, bst_autocast_is_enabled)? == 0 {
        return Ok(None);
    }
    Ok(match query_device(code, bst_autocast_get_dtype)? {
        SCALAR_BFLOAT16 => Some(Kind::BFloat16),
        SCALAR_HALF => Some(Kind::Half),
        SCALAR_FLOAT => Some(Kind::Float),
        other => return Err(ModelError::Autocast { reason: format!("autocast dtype code {other} is not bf16, f16 or f32") }),
    })
}

/// The autocast settings of one device type before a region changed them.
#[derive(Debug)]
struct Saved {
    device: c_int,
    enabled: c_int,
    dtype: c_int,
    cache: c_int,
}

/// An autocast region, from [`Autocast::enter`] until the guard is dropped.
///
/// A `Bf16` region enables bf16 autocast on the device's type; an `F32` region disables it (as
/// `torch.autocast(enabled=False)`), which gives f32 islands inside bf16 regions. Regions nest;
/// leaving one restores exactly the settings it found, and leaving the outermost one empties
/// libtorch's cache of casted weights, as `torch.autocast.__exit__` does. Guards must be dropped
/// in the reverse order of entry (scopes do that); dropping an outer one first panics.
#[derive(Debug)]
#[must_use = "the region ends when the guard is dropped"]
pub struct Autocast {
    /// None: a region that changes nothing (f32 on a device type without autocast).
    saved: Option<Saved>,
    /// libtorch's nesting depth inside this region, once entered.
    depth: Option<c_int>,
    /// Autocast state is thread-local: the guard must be dropped on the thread that made it.
    _thread_bound: PhantomData<*const ()>,
}

impl Autocast {
    /// Enters a region of `precision` for `device`'s type (`Device::Cuda(i)`: all CUDA devices).
    ///
    /// Errors for bf16 on a device type other than CPU and CUDA, naming `train.precision`.
    pub fn enter(device: Device, precision: Precision) -> Result<Self, ModelError> {
        let mut guard = Autocast { saved: None, depth: None, _thread_bound: PhantomData };
        let Some(code) = device_type(device) else {
            return match precision {
                Precision::F32 => Ok(guard),
                Precision::Bf16 => Err(ModelError::invalid("train.precision", precision.to_string(), format!("bf16 autocast runs on CPU or CUDA, not on {device:?}"))),
            };
        };
        let saved = Saved {
            device: code,
            enabled: query_device(code, bst_autocast_is_enabled)?,
            dtype: query_device(code, bst_autocast_get_dtype)?,
            cache: query(bst_autocast_is_cache_enabled)?,
        };
        let dtype = if precision == Precision::Bf16 { SCALAR_BFLOAT16 } else { saved.dtype };
        guard.saved = Some(saved);
        // from here on an early return drops `guard`, which restores what was saved
        // SAFETY (the setters below): plain setters of thread-local libtorch state, which report
        // failures instead of throwing.
        check(unsafe { bst_autocast_set_enabled(code, c_int::from(precision == Precision::Bf16)) })?;
        check(unsafe { bst_autocast_set_dtype(code, dtype) })?;
        guard.depth = Some(query(bst_autocast_increment_nesting)?);
        check(unsafe { bst_autocast_set_cache_enabled(1) })?;
        Ok(guard)
    }

    /// Restores the saved settings; `Err` also when regions were left out of order (which
    /// restores the wrong settings), after doing what it can.
    fn leave(&mut self) -> Result<(), ModelError> {
        let Some(saved) = &self.saved else { return Ok(()) };
        let mut in_order = true;
        if let Some(depth) = self.depth.take() {
            let after = query(bst_autocast_decrement_nesting)?;
            if after == 0 {
                // SAFETY: clears libtorch's thread-local cache; no tensor of ours refers to it
                check(unsafe { bst_autocast_clear_cache() })?;
            }
            in_order = after == depth - 1;
        }
        // SAFETY: setters of thread-local state, as in `enter`
        check(unsafe { bst_autocast_set_enabled(saved.device, saved.enabled) })?;
        check(unsafe { bst_autocast_set_dtype(saved.device, saved.dtype) })?;
        check(unsafe { bst_autocast_set_cache_enabled(saved.cache) })?;
        if !in_order {
            return Err(ModelError::Autocast { reason: "regions left out of order: guards must be dropped innermost first".into() });
        }
        Ok(())
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // A failure leaves libtorch in a precision nobody asked for, so stop loudly (unless
        // already unwinding: a second panic would abort). Restoring settings that `enter` has
        // just read cannot fail in practice; leaving regions out of order is a bug of the caller.
        if let Err(e) = self.leave() {
            if !std::thread::panicking() {
                panic!("leaving an autocast region: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bst_ssm::{causal_fft_conv, SsmConfig, SsmConv, SsmKind, UnstructuredFilter};
    use tch::{nn, nn::Module, nn::ModuleT, Tensor};

    const CPU: Device = Device::Cpu;

    fn linear_kind(lin: &nn::Linear) -> Kind {
        lin.forward(&Tensor::ones([2, 4], (Kind::Float, CPU))).kind()
    }

    #[test]
    fn linear_is_bf16_inside_a_region_and_f32_outside() {
        let vs = nn::VarStore::new(CPU);
        let lin = bst_core::params::linear(&vs.root(), 4, 3);
        assert_eq!(active_kind(CPU).unwrap(), None);
        assert_eq!(linear_kind(&lin), Kind::Float);
        {
            let _bf16 = Autocast::enter(CPU, Precision::Bf16).unwrap();
            assert_eq!(active_kind(CPU).unwrap(), Some(Kind::BFloat16));
            assert_eq!(linear_kind(&lin), Kind::BFloat16);
            let x = Tensor::ones([3, 3], (Kind::Float, CPU));
            assert_eq!(x.matmul(&x).kind(), Kind::BFloat16);
            assert_eq!(lin.ws.kind(), Kind::Float, "master weights are not cast in place");
        }
        assert_eq!(active_kind(CPU).unwrap(), None);
        assert_eq!(linear_kind(&lin), Kind::Float);
        let _f32 = Autocast::enter(CPU, Precision::F32).unwrap();
        assert_eq!(linear_kind(&lin), Kind::Float);
    }

    #[test]
    fn regions_nest_and_restore_what_they_found() {
        let vs = nn::VarStore::new(CPU);
        let lin = bst_core::params::linear(&vs.root(), 4, 3);
        {
            let _outer = Autocast::enter(CPU, Precision::Bf16).unwrap();
            {
                let _island = Autocast::enter(CPU, Precision::F32).unwrap();
                assert_eq!(active_kind(CPU).unwrap(), None);
                assert_eq!(linear_kind(&lin), Kind::Float);
                {
                    let _inner = Autocast::enter(CPU, Precision::Bf16).unwrap();
                    assert_eq!(linear_kind(&lin), Kind::BFloat16);
                }
                assert_eq!(linear_kind(&lin), Kind::Float, "leaving the inner region restores the f32 island");
            }
            assert_eq!(active_kind(CPU).unwrap(), Some(Kind::BFloat16), "leaving the island restores bf16");
            assert_eq!(linear_kind(&lin), Kind::BFloat16);
        }
        assert_eq!(active_kind(CPU).unwrap(), None);
        assert_eq!(query(bst_autocast_is_cache_enabled).unwrap(), 1, "libtorch's default cache flag is back");
        // a region on CPU leaves CUDA's settings (default dtype fp16, off) alone
        let _bf16 = Autocast::enter(CPU, Precision::Bf16).unwrap();
        assert_eq!(query_device(DEVICE_CUDA, bst_autocast_is_enabled).unwrap(), 0);
        assert_eq!(query_device(DEVICE_CUDA, bst_autocast_get_dtype).unwrap(), SCALAR_HALF);
    }

    #[test]
    fn leaving_regions_out_of_order_panics() {
        let outer = Autocast::enter(CPU, Precision::Bf16).unwrap();
        let inner = Autocast::enter(CPU, Precision::F32).unwrap();
        let drop_panics = |guard: Autocast| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(guard))).is_err();
        assert!(drop_panics(outer), "the outer region was left first");
        assert!(drop_panics(inner), "the inner region no longer matches libtorch's nesting");
        // SAFETY: resets this thread's CPU autocast, which the out-of-order exits left on
        check(unsafe { bst_autocast_set_enabled(DEVICE_CPU, 0) }).unwrap();
    }

    #[test]
    fn autocast_is_per_thread() {
        let _bf16 = Autocast::enter(CPU, Precision::Bf16).unwrap();
        let other = std::thread::spawn(|| active_kind(CPU).unwrap()).join().unwrap();
        assert_eq!(other, None, "another thread is not in this region");
        assert_eq!(active_kind(CPU).unwrap(), Some(Kind::BFloat16));
    }

    #[test]
    fn bf16_is_refused_on_devices_without_autocast() {
        let err = Autocast::enter(Device::Mps, Precision::Bf16).unwrap_err().to_string();
        assert!(err.contains("train.precision") && err.contains("CPU or CUDA"), "{err}");
        let _nothing = Autocast::enter(Device::Mps, Precision::F32).unwrap();
    }

    /// The FFT convolution under bf16 autocast: its FFTs run in complex f32 (not bf16/complex
    /// half), so with f32 operands it gives the f32 result to f32 rounding, whereas the same
    /// convolution with its operands rounded to bf16 is off by ~1e-3 relative.
    #[test]
    fn fft_convolution_stays_f32_under_bf16_autocast() {
        tch::manual_seed(3);
        let u = Tensor::randn([2, 8, 512], (Kind::Float, CPU));
        let k = Tensor::randn([8, 512], (Kind::Float, CPU)) * (-Tensor::arange(512, (Kind::Float, CPU)) / 64.0).exp();
        let reference = causal_fft_conv(&u, &k);
        let _bf16 = Autocast::enter(CPU, Precision::Bf16).unwrap();
        let spectrum = u.fft_rfft(1024, -1, "backward");
        assert_eq!(spectrum.kind(), Kind::ComplexFloat, "rfft was cast under autocast");
        assert_eq!(spectrum.fft_irfft(1024, -1, "backward").kind(), Kind::Float, "irfft was cast under autocast");
        let y = causal_fft_conv(&u, &k);
        assert_eq!(y.kind(), Kind::Float);
        let scale = reference.abs().max().double_value(&[]);
        let err = (&y - &reference).abs().max().double_value(&[]) / scale;
        assert!(err < 1e-6, "FFT convolution under autocast differs from f32 by {err} (relative)");
        let rounded = causal_fft_conv(&u.to_kind(Kind::BFloat16), &k.to_kind(Kind::BFloat16)).to_kind(Kind::Float);
        let bf16_err = (&rounded - &reference).abs().max().double_value(&[]) / scale;
        assert!(bf16_err > 100.0 * err.max(1e-8), "bf16 operands should be visibly worse ({bf16_err} vs {err})");
    }

    /// SSM kernel generation (S4D's Vandermonde product, S4's Cauchy/Woodbury solve, the smoothed
    /// unstructured taps, the implicit filters' dense map) and a whole SSM convolution are
    /// unaffected by bf16 autocast when fed f32.
    #[test]
    fn ssm_kernels_and_convolution_are_not_downcast() {
        let (explicit, implicit) = (UnstructuredFilter::Explicit, UnstructuredFilter::Implicit);
        for (kind, filter) in [(SsmKind::S4d, explicit), (SsmKind::S4, explicit), (SsmKind::Unstructured, explicit), (SsmKind::Unstructured, implicit)] {
            tch::manual_seed(4);
            let vs = nn::VarStore::new(CPU);
            let cfg = SsmConfig { state_size: 16, proj_factor: 1, unstructured_filter: filter, ..SsmConfig::default() };
            let conv = SsmConv::new(&vs.root(), &bst_ssm::SsmLayerConfig { banks: 2, ..bst_ssm::SsmLayerConfig::new(&cfg, kind, 4, 256) });
            let u = Tensor::randn([2, 4, 256], (Kind::Float, CPU));
            let (k32, y32) = (conv.kernel(256, true), conv.forward_t(&u, true));
            let _bf16 = Autocast::enter(CPU, Precision::Bf16).unwrap();
            let (k, y) = (conv.kernel(256, true), conv.forward_t(&u, true));
            let kind = format!("{kind:?}/{filter:?}");
            assert_eq!((k.kind(), y.kind()), (Kind::Float, Kind::Float), "{kind}");
            let rel = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1e-12);
            assert!(rel(&k, &k32) < 1e-6, "{kind}: kernel under autocast differs by {} (relative)", rel(&k, &k32));
            assert!(rel(&y, &y32) < 1e-6, "{kind}: convolution under autocast differs by {} (relative)", rel(&y, &y32));
        }
    }

    #[test]
    fn precision_parses_from_toml_and_names_the_choices() {
        #[derive(Debug, Deserialize)]
        struct T {
            precision: Precision,
        }
        assert_eq!(toml::from_str::<T>("precision = \"bf16\"").unwrap().precision, Precision::Bf16);
        assert_eq!(toml::from_str::<T>("precision = \"f32\"").unwrap().precision, Precision::F32);
        let err = toml::from_str::<T>("precision = \"fp16\"").unwrap_err().to_string();
        assert!(err.contains("unknown variant `fp16`, expected `f32` or `bf16`"), "{err}");
    }
}
