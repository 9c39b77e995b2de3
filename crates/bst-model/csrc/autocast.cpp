// libtorch's per-device autocast controls as plain C functions, for bst_model::autocast.
//
// tch 0.24 only wraps the legacy `at::autocast::set_enabled(bool)`, which switches CUDA autocast
// at its default dtype (fp16) and cannot touch CPU autocast. These wrappers expose the
// device-typed API of ATen/autocast_mode.h, the same calls `torch.autocast.__enter__/__exit__`
// make. All of this state is thread-local in libtorch.
//
// Device types and dtypes cross the boundary as the integer values of c10::DeviceType and
// c10::ScalarType; the static_asserts pin the values the Rust side hard-codes. No C++ exception
// may unwind into Rust: every entry point that can throw catches, stores the message for
// bst_autocast_last_error() and returns -1.

#include <ATen/autocast_mode.h>

#include <exception>
#include <string>

static_assert(static_cast<int>(c10::DeviceType::CPU) == 0, "bst_model::autocast hard-codes CPU = 0");
static_assert(static_cast<int>(c10::DeviceType::CUDA) == 1, "bst_model::autocast hard-codes CUDA = 1");
static_assert(static_cast<int>(c10::ScalarType::Half) == 5, "bst_model::autocast hard-codes Half = 5");
static_assert(static_cast<int>(c10::ScalarType::Float) == 6, "bst_model::autocast hard-codes Float = 6");
static_assert(static_cast<int>(c10::ScalarType::BFloat16) == 15, "bst_model::autocast hard-codes BFloat16 = 15");

namespace {

thread_local std::string last_error;

template <typename F>
int guarded(F f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown C++ exception";
  }
  return -1;
}

at::DeviceType device_type(int device) { return static_cast<at::DeviceType>(device); }

}  // namespace

extern "C" {

// The message of the last failed call on this thread (valid until the next failure).
const char* bst_autocast_last_error() { return last_error.c_str(); }

int bst_autocast_is_enabled(int device, int* enabled) {
  return guarded([&] { *enabled = at::autocast::is_autocast_enabled(device_type(device)) ? 1 : 0; });
}

int bst_autocast_set_enabled(int device, int enabled) {
  return guarded([&] { at::autocast::set_autocast_enabled(device_type(device), enabled != 0); });
}

int bst_autocast_get_dtype(int device, int* dtype) {
  return guarded([&] { *dtype = static_cast<int>(at::autocast::get_autocast_dtype(device_type(device))); });
}

int bst_autocast_set_dtype(int device, int dtype) {
  return guarded([&] { at::autocast::set_autocast_dtype(device_type(device), static_cast<at::ScalarType>(dtype)); });
}

int bst_autocast_is_cache_enabled(int* enabled) {
  return guarded([&] { *enabled = at::autocast::is_autocast_cache_enabled() ? 1 : 0; });
}

int bst_autocast_set_cache_enabled(int enabled) {
  return guarded([&] { at::autocast::set_autocast_cache_enabled(enabled != 0); });
}

// The nesting depth after the change goes to *depth.
int bst_autocast_increment_nesting(int* depth) {
  return guarded([&] { *depth = at::autocast::increment_nesting(); });
}

int bst_autocast_decrement_nesting(int* depth) {
  return guarded([&] { *depth = at::autocast::decrement_nesting(); });
}

// Drops the casts of weights cached inside autocast regions.
int bst_autocast_clear_cache() {
  return guarded([] { at::autocast::clear_cache(); });
}

}  // extern "C"
