// Loaded kernel modules per device, the device's primary context and the split-key workspace pool.
#pragma once

#include "attnforge/attnforge.h"
#include "cuda/driver_api.h"

namespace af::cuda {

constexpr int kMaxDevices = 64;
constexpr int kMaxVariants = 64;

struct LoadedVariant {
  CUfunction kernel = nullptr;
  CUfunction combine = nullptr;  // af_flash_combine of the same module
  int wave_ctas = 0;             // CTAs of the kernel resident at once on the device
};

// Compiles (or reads from the cache) and loads variant `index` on `device` for `target`, once
// per process; later calls answer from memory without locking.
af_status load_variant(int device, int index, const char* target, LoadedVariant* out);

af_status primary_context(int device, CUcontext* context);

// Pushes the device's primary context if the thread's current context is another one.
class ContextGuard {
 public:
  explicit ContextGuard(CUcontext context);
  ~ContextGuard();
  ContextGuard(const ContextGuard&) = delete;
  ContextGuard& operator=(const ContextGuard&) = delete;

 private:
  bool pushed_ = false;
};

// The device's pool for split-key workspaces, or null when the driver has no stream-ordered
// allocator. It keeps up to 64 MB reserved between calls, so a decode step allocates from the
// pool rather than from the OS.
CUmemoryPool workspace_pool(int device);

}  // namespace af::cuda
