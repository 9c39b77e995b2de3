//! Device synchronisation.

use tch::Device;

/// Waits until every kernel queued on `device` has finished (CUDA launches are asynchronous, so a
/// timer read without this measures the launch, not the work). A no-op on the CPU.
pub fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}
