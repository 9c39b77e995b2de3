//! The link trap of tch on Linux: `-Wl,--as-needed` drops libtorch_cuda.so (nothing references
//! it directly), after which CUDA is never seen even on a GPU machine. build.rs force-links it;
//! this checks that the loaded binary really has it mapped, whenever the installed libtorch ships it.

use std::path::Path;

#[test]
fn libtorch_cuda_is_loaded_when_libtorch_has_it() {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join(".libtorch/lib/libtorch_cuda.so");
    // touch libtorch so that the process surely has it loaded
    let _ = tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu));
    let maps = std::fs::read_to_string("/proc/self/maps").expect("Linux /proc");
    assert!(maps.contains("libtorch_cpu.so"), "libtorch_cpu.so is not mapped");
    if lib.exists() {
        assert!(maps.contains("libtorch_cuda.so"), "{} exists but was dropped at link time (as-needed)", lib.display());
    } else {
        eprintln!("{} absent (CPU-only libtorch): nothing to check", lib.display());
    }
    // On a GPU machine this is true only because of the forced link above.
    eprintln!("CUDA available: {}", tch::Cuda::is_available());
}
