// Loaded kernel modules per device, the device's primary context and the split-key workspaces.
#pragma once

#include "attnforge/attnforge.h"
#include "cuda/driver_api.h"

namespace af::cuda {

constexpr int kMaxDevices = 64;
// An array bound (the loaded-variant slots per device) above the variant table's size, which
// CudaVariants.TableIsConsistent checks.
constexpr int kMaxVariants = 160;

// Largest thread-block cluster a launch of attnforge's may ask for: the sm_90 hardware limit (16
// CTAs; above 8, the portable size, only with CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED).
constexpr int kMaxClusterCtas = 16;

struct LoadedVariant {
  CUfunction kernel = nullptr;
  CUfunction combine = nullptr;  // af_flash_combine of the same module
  int wave_ctas = 0;             // CTAs of the kernel resident at once on the device
  int sm_count = 0;              // the device's multiprocessors
  // The decode family on sm_90+ with cuLaunchKernelEx and cuOccupancyMaxActiveClusters: clusters of
  // n CTAs (n x 1 x 1) of this kernel resident at once on the device (cuOccupancyMaxActiveClusters),
  // for n = 2..kMaxClusterCtas; 0 where a cluster of n cannot launch, and for every n elsewhere.
  int max_clusters[kMaxClusterCtas + 1] = {};
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

// attnforge's split-key workspace for launches on `stream` of `device`: `partials` (at least
// partial_bytes) and `counters` (at least counter_bytes, zero-filled when allocated), regions that
// never overlap, so the counters stay zero between runs: the decode family's runs leave them at zero
// whatever their shapes. One per stream, so launches on different streams never share one
// (CU_STREAM_PER_THREAD: one per thread); grown by allocating a larger one. Buffers are never freed
// while the library is loaded: a CUDA graph captured with one keeps its addresses. Allowed under
// stream capture (allocated and zeroed in relaxed capture mode, off the caller's stream). The
// context must be current. False when no memory can be had.
struct StreamWorkspace {
  CUdeviceptr partials = 0;
  CUdeviceptr counters = 0;
};
bool stream_workspace(int device, CUstream stream, size_t partial_bytes, size_t counter_bytes, StreamWorkspace* out);

}  // namespace af::cuda
