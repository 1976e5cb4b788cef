#include "cuda/modules.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <iterator>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>

#include "common/error.h"
#include "cuda/compiler.h"
#include "cuda/families.h"

namespace af::cuda {

namespace {

// Filled once under g_load_mutex, read lock-free: the release store of kernel publishes the rest.
struct Slot {
  std::atomic<CUfunction> kernel{nullptr};
  CUfunction combine = nullptr;
  int wave_ctas = 0;
  int max_clusters[kMaxClusterCtas + 1] = {};
};
Slot g_slots[kMaxDevices][kMaxVariants];
std::atomic<CUcontext> g_contexts[kMaxDevices];
std::mutex g_load_mutex;

struct WorkspaceKey {
  int device;
  CUstream stream;
  std::thread::id thread;  // only for CU_STREAM_PER_THREAD
  bool operator<(const WorkspaceKey& o) const {
    return std::tie(device, stream, thread) < std::tie(o.device, o.stream, o.thread);
  }
};
struct Workspace {
  CUdeviceptr pointer = 0;
  size_t partial_bytes = 0;
  size_t counter_bytes = 0;
};
std::mutex g_workspace_mutex;
std::map<WorkspaceKey, Workspace> g_workspaces;
CUstream g_zero_streams[kMaxDevices];

// Clusters of n CTAs of a decode kernel (one cluster per query tile, its key splits along x) that
// are resident at once, n = 2..kMaxClusterCtas, into max_clusters (0: cannot launch). Sizes above
// the portable 8 need CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED; the CUDA documentation
// leaves them to the hardware ("may only function on the specific SKUs"), so they count only when
// the driver accepts the attribute and its occupancy query places at least one such cluster.
void count_clusters(const DriverApi& a, CUfunction kernel, unsigned threads, unsigned smem,
                    int (&max_clusters)[kMaxClusterCtas + 1]) {
  if (a.cuLaunchKernelEx == nullptr || a.cuOccupancyMaxActiveClusters == nullptr) return;
  const bool non_portable =
      a.cuFuncSetAttribute(kernel, CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1) == CUDA_SUCCESS;
  for (int n = 2; n <= kMaxClusterCtas; ++n) {
    if (n > 8 && !non_portable) break;
    CUlaunchAttribute attribute{};
    attribute.id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    attribute.value.cluster_dim = {unsigned(n), 1, 1};
    const CUlaunchConfig config{unsigned(n), 1, 1, threads, 1, 1, smem, nullptr, &attribute, 1};
    int clusters = 0;
    if (a.cuOccupancyMaxActiveClusters(&clusters, kernel, &config) == CUDA_SUCCESS && clusters > 0)
      max_clusters[n] = clusters;
  }
}

}  // namespace

ContextGuard::ContextGuard(CUcontext context) {
  const DriverApi& a = *driver().api;
  CUcontext current = nullptr;
  a.cuCtxGetCurrent(&current);
  if (current != context) pushed_ = a.cuCtxPushCurrent(context) == CUDA_SUCCESS;
}

ContextGuard::~ContextGuard() {
  if (pushed_) {
    CUcontext ignored = nullptr;
    driver().api->cuCtxPopCurrent(&ignored);
  }
}

af_status primary_context(int device, CUcontext* context) {
  *context = g_contexts[device].load(std::memory_order_acquire);
  if (*context != nullptr) return AF_OK;
  const DriverState& d = driver();
  const CUresult r = d.api->cuDevicePrimaryCtxRetain(context, d.devices[device].handle);
  if (r != CUDA_SUCCESS)
    return fail(AF_ERR_CUDA, "device %d: %s", device, driver_error("cuDevicePrimaryCtxRetain", r).c_str());
  g_contexts[device].store(*context, std::memory_order_release);
  return AF_OK;
}

af_status load_variant(int device, int index, const char* target, LoadedVariant* out) {
  Slot& slot = g_slots[device][index];
  CUfunction kernel = slot.kernel.load(std::memory_order_acquire);
  if (kernel == nullptr) {
    std::lock_guard<std::mutex> lock(g_load_mutex);
    kernel = slot.kernel.load(std::memory_order_acquire);
    if (kernel == nullptr) {
      const DriverState& d = driver();
      const Variant& v = variants()[index];
      const Family& f = family(v.family);
      const int arch = target_arch(target);
      CompiledKernel compiled;
      AF_RETURN_IF_ERROR(compile_variant(v, target, true, &compiled));
      if (!compiled.is_cubin) compiled.binary.push_back('\0');

      CUcontext context = nullptr;
      AF_RETURN_IF_ERROR(primary_context(device, &context));
      ContextGuard guard(context);
      CUmodule module = nullptr;
      CUresult r = d.api->cuModuleLoadData(&module, compiled.binary.data());
      if (r != CUDA_SUCCESS && compiled.from_cache) {
        // A cache entry that passed its checksum but does not load: rebuild it once.
        AF_RETURN_IF_ERROR(compile_variant(v, target, false, &compiled));
        if (!compiled.is_cubin) compiled.binary.push_back('\0');
        r = d.api->cuModuleLoadData(&module, compiled.binary.data());
      }
      if (r != CUDA_SUCCESS)
        return fail(AF_ERR_CUDA, "loading %s (%s) on device %d: %s", v.name.c_str(), target, device,
                    driver_error("cuModuleLoadData", r).c_str());
      CUfunction combine = nullptr;
      r = d.api->cuModuleGetFunction(&kernel, module, f.entry);
      if (r == CUDA_SUCCESS && f.combine_entry != nullptr)
        r = d.api->cuModuleGetFunction(&combine, module, f.combine_entry);
      if (r != CUDA_SUCCESS)
        return fail(AF_ERR_CUDA, "%s: %s", v.name.c_str(), driver_error("cuModuleGetFunction", r).c_str());
      const TileConfig& tile = v.tile_for(arch);
      r = d.api->cuFuncSetAttribute(kernel, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, v.smem_bytes(arch));
      if (r != CUDA_SUCCESS)
        return fail(AF_ERR_CUDA, "%s needs %d bytes of shared memory: %s", v.name.c_str(), v.smem_bytes(arch),
                    driver_error("cuFuncSetAttribute", r).c_str());
      int ctas_per_sm = 0;
      r = d.api->cuOccupancyMaxActiveBlocksPerMultiprocessor(&ctas_per_sm, kernel, tile.threads(),
                                                             size_t(v.smem_bytes(arch)));
      if (r != CUDA_SUCCESS || ctas_per_sm < 1)
        return fail(
            AF_ERR_CUDA, "%s does not fit an SM of device %d: %s", v.name.c_str(), device,
            r != CUDA_SUCCESS ? driver_error("cuOccupancyMaxActiveBlocksPerMultiprocessor", r).c_str() : "occupancy 0");
      if (v.family == kFamilyDecode && arch >= 90)
        count_clusters(*d.api, kernel, unsigned(tile.threads()), unsigned(v.smem_bytes(arch)), slot.max_clusters);
      slot.combine = combine;
      slot.wave_ctas = ctas_per_sm * d.devices[device].sm_count;
      slot.kernel.store(kernel, std::memory_order_release);
    }
  }
  out->kernel = kernel;
  out->combine = slot.combine;
  out->wave_ctas = slot.wave_ctas;
  out->sm_count = driver().devices[device].sm_count;
  std::copy(std::begin(slot.max_clusters), std::end(slot.max_clusters), out->max_clusters);
  return AF_OK;
}

bool stream_workspace(int device, CUstream stream, size_t partial_bytes, size_t counter_bytes, StreamWorkspace* out) {
  const DriverApi& a = *driver().api;
  const CUstream kPerThread = reinterpret_cast<CUstream>(uintptr_t(2));  // CU_STREAM_PER_THREAD
  const WorkspaceKey key{device, stream, stream == kPerThread ? std::this_thread::get_id() : std::thread::id()};
  std::lock_guard<std::mutex> lock(g_workspace_mutex);
  Workspace& w = g_workspaces[key];
  if (w.partial_bytes < partial_bytes || w.counter_bytes < counter_bytes) {
    // Layout: counters, then partials from a 256-byte boundary.
    const size_t counters = (std::max({counter_bytes, w.counter_bytes, size_t(4096)}) + 255) & ~size_t(255);
    const size_t partials = std::max({partial_bytes, 2 * w.partial_bytes, size_t(1) << 20});
    // Zero-filled on a stream of attnforge's own and waited for, so the caller's stream (which may
    // be capturing a graph that is never launched) is not involved.
    if (g_zero_streams[device] == nullptr &&
        a.cuStreamCreate(&g_zero_streams[device], CU_STREAM_NON_BLOCKING) != CUDA_SUCCESS) {
      g_zero_streams[device] = nullptr;
      return false;
    }
    int mode = CU_STREAM_CAPTURE_MODE_RELAXED;
    a.cuThreadExchangeStreamCaptureMode(&mode);
    CUdeviceptr pointer = 0;
    const bool ok = a.cuMemAlloc(&pointer, counters + partials) == CUDA_SUCCESS &&
                    a.cuMemsetD8Async(pointer, 0, counters, g_zero_streams[device]) == CUDA_SUCCESS &&
                    a.cuStreamSynchronize(g_zero_streams[device]) == CUDA_SUCCESS;
    a.cuThreadExchangeStreamCaptureMode(&mode);
    if (!ok) return false;
    w = Workspace{pointer, partials, counters};  // the old buffer stays allocated: a captured graph may use it
  }
  out->counters = w.pointer;
  out->partials = w.pointer + w.counter_bytes;
  return true;
}

}  // namespace af::cuda
