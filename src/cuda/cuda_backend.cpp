// CUDA backend: probing, the supports() rules, module loading per device, and launches.
#include "cuda/cuda_backend.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/json.h"
#include "cuda/compiler.h"
#include "cuda/driver_api.h"
#include "cuda/kernel_cache.h"
#include "cuda/variants.h"
#include "kernels/flash_fwd_params.cuh"

namespace af::cuda {

namespace {

constexpr int kMaxDevices = 64;
constexpr int kMaxVariants = 64;

// Loaded kernels: functions[device][variant], filled once under g_load_mutex, read lock-free.
std::atomic<CUfunction> g_functions[kMaxDevices][kMaxVariants];
std::atomic<CUfunction> g_combine[kMaxDevices][kMaxVariants];  // af_flash_combine of the same module
std::atomic<CUmemoryPool> g_pools[kMaxDevices];                  // split-key workspace, created on first use
std::atomic<CUcontext> g_contexts[kMaxDevices];
std::atomic<int> g_target_arch[kMaxDevices];  // arch the device's kernels were compiled for (picks the tile)
std::atomic<int> g_wave_ctas[kMaxDevices][kMaxVariants];  // CTAs of a variant resident at once on the device
std::mutex g_load_mutex;

// Pushes the device's primary context if the thread's current context is another one.
class ContextGuard {
 public:
  explicit ContextGuard(CUcontext context) {
    const DriverApi& a = *driver().api;
    CUcontext current = nullptr;
    a.cuCtxGetCurrent(&current);
    if (current != context) pushed_ = a.cuCtxPushCurrent(context) == CUDA_SUCCESS;
  }
  ~ContextGuard() {
    if (pushed_) {
      CUcontext ignored = nullptr;
      driver().api->cuCtxPopCurrent(&ignored);
    }
  }
  ContextGuard(const ContextGuard&) = delete;
  ContextGuard& operator=(const ContextGuard&) = delete;

 private:
  bool pushed_ = false;
};

af_status primary_context(int device, CUcontext* context) {
  *context = g_contexts[device].load(std::memory_order_acquire);
  if (*context != nullptr) return AF_OK;
  const DriverState& d = driver();
  const CUresult r = d.api->cuDevicePrimaryCtxRetain(context, d.devices[device].handle);
  if (r != CUDA_SUCCESS) return fail(AF_ERR_CUDA, "device %d: %s", device, driver_error("cuDevicePrimaryCtxRetain", r).c_str());
  g_contexts[device].store(*context, std::memory_order_release);
  return AF_OK;
}

// Compiles (or reads from the cache) and loads variant `index` on `device`, once per process.
af_status load_function(int device, int index, CUfunction* function) {
  *function = g_functions[device][index].load(std::memory_order_acquire);
  if (*function != nullptr) return AF_OK;
  std::lock_guard<std::mutex> lock(g_load_mutex);
  *function = g_functions[device][index].load(std::memory_order_acquire);
  if (*function != nullptr) return AF_OK;

  const DriverState& d = driver();
  const DeviceInfo& info = d.devices[device];
  const Variant& v = variants()[index];
  const std::string target = target_for_device(info.major, info.minor);
  if (target.empty())
    return fail(AF_ERR_BACKEND_UNAVAILABLE, "NVRTC %d.%d cannot target compute capability %d.%d", nvrtc().major,
                nvrtc().minor, info.major, info.minor);
  const int arch = target_arch(target);
  CompiledKernel kernel;
  AF_RETURN_IF_ERROR(compile_variant(v, target, true, &kernel));
  if (!kernel.is_cubin) kernel.binary.push_back('\0');

  CUcontext context = nullptr;
  AF_RETURN_IF_ERROR(primary_context(device, &context));
  ContextGuard guard(context);
  CUmodule module = nullptr;
  CUresult r = d.api->cuModuleLoadData(&module, kernel.binary.data());
  if (r != CUDA_SUCCESS && kernel.from_cache) {
    // A cache entry that passed its checksum but does not load: rebuild it once.
    AF_RETURN_IF_ERROR(compile_variant(v, target, false, &kernel));
    if (!kernel.is_cubin) kernel.binary.push_back('\0');
    r = d.api->cuModuleLoadData(&module, kernel.binary.data());
  }
  if (r != CUDA_SUCCESS)
    return fail(AF_ERR_CUDA, "loading %s (%s) on device %d: %s", v.name.c_str(), target.c_str(), device,
                driver_error("cuModuleLoadData", r).c_str());
  CUfunction f = nullptr, combine = nullptr;
  r = d.api->cuModuleGetFunction(&f, module, kKernelName);
  if (r == CUDA_SUCCESS) r = d.api->cuModuleGetFunction(&combine, module, kCombineKernelName);
  if (r != CUDA_SUCCESS) return fail(AF_ERR_CUDA, "%s: %s", v.name.c_str(), driver_error("cuModuleGetFunction", r).c_str());
  r = d.api->cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, v.smem_bytes(arch));
  if (r != CUDA_SUCCESS)
    return fail(AF_ERR_CUDA, "%s needs %d bytes of shared memory: %s", v.name.c_str(), v.smem_bytes(arch),
                driver_error("cuFuncSetAttribute", r).c_str());
  int ctas_per_sm = 0;
  r = d.api->cuOccupancyMaxActiveBlocksPerMultiprocessor(&ctas_per_sm, f, v.tile_for(arch).threads(),
                                                         size_t(v.smem_bytes(arch)));
  if (r != CUDA_SUCCESS || ctas_per_sm < 1)
    return fail(AF_ERR_CUDA, "%s does not fit an SM of device %d: %s", v.name.c_str(), device,
                r != CUDA_SUCCESS ? driver_error("cuOccupancyMaxActiveBlocksPerMultiprocessor", r).c_str()
                                  : "occupancy 0");
  g_wave_ctas[device][index].store(ctas_per_sm * info.sm_count, std::memory_order_relaxed);
  g_target_arch[device].store(arch, std::memory_order_relaxed);
  g_combine[device][index].store(combine, std::memory_order_relaxed);
  g_functions[device][index].store(f, std::memory_order_release);
  *function = f;
  return AF_OK;
}

// The device's workspace pool for split-key launches, or null when the driver has no stream-ordered
// allocator. It keeps up to 64 MB reserved between calls, so a decode step allocates from the pool
// rather than from the OS.
CUmemoryPool workspace_pool(int device) {
  CUmemoryPool pool = g_pools[device].load(std::memory_order_acquire);
  if (pool != nullptr) return pool;
  const DriverApi& a = *driver().api;
  if (a.cuMemPoolCreate == nullptr) return nullptr;
  std::lock_guard<std::mutex> lock(g_load_mutex);
  pool = g_pools[device].load(std::memory_order_acquire);
  if (pool != nullptr) return pool;
  CUmemPoolProps props{};
  props.alloc_type = 1;     // pinned device memory
  props.location_type = 1;  // on a device
  props.location_id = driver().devices[device].handle;
  if (a.cuMemPoolCreate(&pool, &props) != CUDA_SUCCESS) return nullptr;
  unsigned long long keep = 64ull << 20;
  a.cuMemPoolSetAttribute(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &keep);
  g_pools[device].store(pool, std::memory_order_release);
  return pool;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }
bool fits_int(int64_t x) { return x >= 0 && x <= INT_MAX; }

}  // namespace

af_status available() {
  const DriverState& d = driver();
  if (!d.ok) return fail(AF_ERR_BACKEND_UNAVAILABLE, "%s", d.failure.c_str());
  const NvrtcState& n = nvrtc();
  if (!n.ok) return fail(AF_ERR_BACKEND_UNAVAILABLE, "%s", n.failure.c_str());
  for (const DeviceInfo& info : d.devices)
    if (info.major >= 8) return AF_OK;
  return fail(AF_ERR_BACKEND_UNAVAILABLE, "no GPU of compute capability 8.0 or newer (found %s, %d.%d)",
              d.devices[0].name.c_str(), d.devices[0].major, d.devices[0].minor);
}

af_status supports(const AttentionProblem& p) {
  if (p.device_type != AF_DEVICE_CUDA) return fail(AF_ERR_DEVICE, "cuda backend: tensors are not in CUDA memory");
  if (p.dtype != AF_DTYPE_BFLOAT16 && p.dtype != AF_DTYPE_FLOAT16)
    return fail(AF_ERR_UNSUPPORTED, "cuda backend: dtype %d is not bfloat16 or float16 (float32 runs on CPU or torch)",
                int(p.dtype));
  if (p.head_dim < 1 || p.head_dim > 256)
    return fail(AF_ERR_UNSUPPORTED, "cuda backend: head_dim %lld is outside 1..256", (long long)p.head_dim);
  if (p.paged) return fail(AF_ERR_UNSUPPORTED, "cuda backend: paged KV (block_table) is not implemented yet");
  if (p.kv_batch_idx != nullptr) return fail(AF_ERR_UNSUPPORTED, "cuda backend: kv_batch_idx is not implemented yet");
  const DriverState& d = driver();
  if (!d.ok) return fail(AF_ERR_BACKEND_UNAVAILABLE, "%s", d.failure.c_str());
  if (p.device_index < 0 || p.device_index >= int(d.devices.size()) || p.device_index >= kMaxDevices)
    return fail(AF_ERR_DEVICE, "cuda backend: device %d does not exist (%zu visible)", p.device_index, d.devices.size());
  const DeviceInfo& info = d.devices[p.device_index];
  if (info.major < 8)
    return fail(AF_ERR_UNSUPPORTED, "cuda backend: %s is compute capability %d.%d; the kernels need 8.0+",
                info.name.c_str(), info.major, info.minor);
  const int index = find_variant(p.dtype, int(p.head_dim), p.softcap > 0 || p.alibi_slopes != nullptr);
  if (index < 0 || index >= kMaxVariants) return fail(AF_ERR_INTERNAL, "cuda backend: no variant for head_dim %lld", (long long)p.head_dim);
  const int arch = info.major * 10 + info.minor;
  if (variants()[index].smem_bytes(arch) > info.max_smem_optin)
    return fail(AF_ERR_UNSUPPORTED, "cuda backend: %s needs %d bytes of shared memory, %s allows %d",
                variants()[index].name.c_str(), variants()[index].smem_bytes(arch), info.name.c_str(),
                info.max_smem_optin);
  // 16-byte vector loads and stores: pointers 16-byte aligned, every stride a multiple of 8 elements.
  if (!aligned16(p.q) || !aligned16(p.k) || !aligned16(p.v) || !aligned16(p.out))
    return fail(AF_ERR_UNSUPPORTED, "cuda backend: q, k, v and out must be 16-byte aligned");
  const int64_t strides[] = {p.q_batch_stride, p.q_row_stride, p.q_head_stride, p.k_batch_stride, p.k_row_stride,
                             p.k_head_stride,  p.v_batch_stride, p.v_row_stride, p.v_head_stride, p.out_batch_stride,
                             p.out_row_stride, p.out_head_stride};
  for (int64_t s : strides)
    if (s % 8 != 0)
      return fail(AF_ERR_UNSUPPORTED, "cuda backend: every batch, row and head stride must be a multiple of 8 elements (got %lld)",
                  (long long)s);
  if (!fits_int(p.seqlen_q) || !fits_int(p.seqlen_k) || !fits_int(p.total_q) || !fits_int(p.total_k) ||
      p.batch * p.heads_q > INT_MAX || p.window_left > INT_MAX || p.window_right > INT_MAX ||
      (p.seqlen_q + variants()[index].tile_for(arch).block_m() - 1) / variants()[index].tile_for(arch).block_m() > 65535)
    return fail(AF_ERR_UNSUPPORTED, "cuda backend: a size exceeds the kernel's 32-bit row indices or grid limits");
  return AF_OK;
}

namespace {

// (batch, head) pairs per CTA scheduling group (see tile_index in flash_fwd.cuh). Without a mask
// every tile costs the same: one pair per group, so the CTAs running at once share K/V in L2.
// With a causal mask or a window, groups of about one wave run longest-first. $ATTNFORGE_PAIR_GROUP
// (a positive number) overrides this for tuning runs.
int pair_group(int pairs, int m_blocks, int wave_ctas, bool masked) {
  static const int forced = [] {
    const char* text = std::getenv("ATTNFORGE_PAIR_GROUP");
    return text != nullptr ? std::atoi(text) : 0;
  }();
  const int group = std::max(1, std::min(forced > 0 ? forced : (masked ? wave_ctas / m_blocks : 1), pairs));
  return std::max(group, (pairs + 65534) / 65535);  // gridDim.z (groups) is at most 65535
}

// Key splits per query tile (flash-decoding). When the query tiles fill at most half of one
// wave (decode steps, small batches), each tile's key blocks are shared out among enough CTAs to
// fill about a wave, at least 4 key blocks each, at most 64 splits. $ATTNFORGE_NUM_SPLITS (a
// positive number, up to 256) forces a count for tuning runs and tests.
int split_count(int ctas, int key_blocks, int wave_ctas) {
  static const int forced = [] {
    const char* text = std::getenv("ATTNFORGE_NUM_SPLITS");
    return text != nullptr ? std::min(std::atoi(text), 256) : 0;
  }();
  if (forced > 0) return forced;
  if (2 * ctas > wave_ctas) return 1;
  return std::max(1, std::min({wave_ctas / ctas, key_blocks / 4, 64}));
}

}  // namespace

af_status attention_forward(const AttentionProblem& p) {
  AF_RETURN_IF_ERROR(available());
  AF_RETURN_IF_ERROR(supports(p));
  const bool extras = p.softcap > 0 || p.alibi_slopes != nullptr;
  const int index = find_variant(p.dtype, int(p.head_dim), extras);
  const Variant& v = variants()[index];
  CUfunction function = nullptr;
  AF_RETURN_IF_ERROR(load_function(p.device_index, index, &function));
  if (p.batch == 0 || p.seqlen_q == 0 || p.heads_q == 0) return AF_OK;

  FlashFwdParams k{};
  k.q = p.q;
  k.k = p.k;
  k.v = p.v;
  k.out = p.out;
  k.lse = p.lse;
  k.q_batch_stride = p.q_batch_stride, k.q_row_stride = p.q_row_stride, k.q_head_stride = p.q_head_stride;
  k.k_batch_stride = p.k_batch_stride, k.k_row_stride = p.k_row_stride, k.k_head_stride = p.k_head_stride;
  k.v_batch_stride = p.v_batch_stride, k.v_row_stride = p.v_row_stride, k.v_head_stride = p.v_head_stride;
  k.out_batch_stride = p.out_batch_stride, k.out_row_stride = p.out_row_stride, k.out_head_stride = p.out_head_stride;
  k.lse_batch_stride = p.lse_batch_stride, k.lse_head_stride = p.lse_head_stride, k.lse_row_stride = p.lse_row_stride;
  k.cu_seqlens_q = p.varlen ? p.cu_seqlens_q : nullptr;
  k.cu_seqlens_k = p.varlen ? p.cu_seqlens_k : nullptr;
  k.seqused_k = p.seqused_k;
  k.leftpad_k = p.leftpad_k;
  k.alibi_slopes = p.alibi_slopes;
  k.alibi_batch_stride = p.alibi_batch_stride;
  k.alibi_head_stride = p.alibi_head_stride;
  k.batch = int(p.batch);
  k.heads_q = int(p.heads_q);
  k.heads_kv = int(p.heads_kv);
  k.head_dim = int(p.head_dim);
  k.seqlen_q = int(p.seqlen_q);
  k.seqlen_k = int(p.seqlen_k);
  k.total_q = int(p.total_q);
  k.total_k = int(p.total_k);
  k.window_left = p.window_left < 0 ? -1 : int(p.window_left);
  k.window_right = p.causal ? 0 : (p.window_right < 0 ? -1 : int(p.window_right));
  constexpr float kLog2e = 1.4426950408889634f;
  if (p.softcap > 0) {
    k.softcap_in = p.softmax_scale / p.softcap;
    k.scale_log2 = p.softcap * kLog2e;
  } else {
    k.softcap_in = 0.f;
    k.scale_log2 = p.softmax_scale * kLog2e;
  }

  const int arch = g_target_arch[p.device_index].load(std::memory_order_relaxed);
  const TileConfig& tile = v.tile_for(arch);
  const int pairs = int(p.batch * p.heads_q);
  const int m_blocks = int((p.seqlen_q + tile.block_m() - 1) / tile.block_m());
  const int wave_ctas = g_wave_ctas[p.device_index][index].load(std::memory_order_relaxed);
  const int group = pair_group(pairs, m_blocks, wave_ctas, k.window_left >= 0 || k.window_right >= 0);
  const int groups = (pairs + group - 1) / group;
  const DriverApi& a = *driver().api;
  const CUstream stream = static_cast<CUstream>(p.cuda_stream);
  CUcontext context = nullptr;
  AF_RETURN_IF_ERROR(primary_context(p.device_index, &context));
  ContextGuard guard(context);

  // Split keys only where the workspace can be allocated in stream order (from attnforge's pool;
  // under CUDA-graph capture from the device's default pool, which the graph then owns as a memory
  // node) and the grid fits its limits; otherwise the unsplit launch computes the same result.
  int splits = split_count(pairs * m_blocks, int((p.seqlen_k + tile.block_n - 1) / tile.block_n), wave_ctas);
  const size_t workspace_bytes = size_t(splits) * size_t(pairs) * size_t(p.seqlen_q) * (v.head_dim + 1) * 4;
  int capturing = CU_STREAM_CAPTURE_STATUS_NONE;
  CUmemoryPool pool = splits > 1 ? workspace_pool(p.device_index) : nullptr;
  CUdeviceptr workspace = 0;
  if (pool == nullptr || workspace_bytes > (256u << 20) || int64_t(groups) * splits > 65535 || p.seqlen_q > 4 * 65535 ||
      a.cuStreamIsCapturing(stream, &capturing) != CUDA_SUCCESS ||
      (capturing == CU_STREAM_CAPTURE_STATUS_NONE ? a.cuMemAllocFromPoolAsync(&workspace, workspace_bytes, pool, stream)
                                                  : a.cuMemAllocAsync(&workspace, workspace_bytes, stream)) != CUDA_SUCCESS)
    splits = 1;
  k.num_splits = splits;
  if (splits > 1) {
    k.partial_out = reinterpret_cast<float*>(workspace);
    k.partial_lse = k.partial_out + size_t(splits) * pairs * p.seqlen_q * v.head_dim;
  }
  void* args[] = {&k};
  CUresult r = a.cuLaunchKernel(function, unsigned(group), unsigned(m_blocks), unsigned(groups * splits),
                                unsigned(tile.threads()), 1, 1, unsigned(v.smem_bytes(arch)), stream, args, nullptr);
  if (r == CUDA_SUCCESS && splits > 1) {
    // Rows in groups of 4 (one warp each) over (batch * heads, row groups).
    r = a.cuLaunchKernel(g_combine[p.device_index][index].load(std::memory_order_relaxed), unsigned(pairs),
                         unsigned((p.seqlen_q + 3) / 4), 1, 128, 1, 1, 0, stream, args, nullptr);
  }
  if (splits > 1) a.cuMemFreeAsync(workspace, stream);
  if (r != CUDA_SUCCESS) return fail(AF_ERR_CUDA, "%s: %s", v.name.c_str(), driver_error("cuLaunchKernel", r).c_str());
  return AF_OK;
}

std::string report_json() {
  const DriverState& d = driver();
  std::string json = "{\"driver\":{\"found\":" + std::string(d.ok ? "true" : "false");
  if (!d.library.empty()) json += ",\"library\":" + json_quote(d.library);
  if (d.version > 0) json += ",\"version\":" + json_quote(std::to_string(d.version / 1000) + "." + std::to_string(d.version % 1000 / 10));
  if (!d.ok) json += ",\"failure\":" + json_quote(d.failure);
  json += ",\"devices\":[";
  const NvrtcState& n = nvrtc();
  for (size_t i = 0; i < d.devices.size(); ++i) {
    const DeviceInfo& info = d.devices[i];
    json += std::string(i ? "," : "") + "{\"index\":" + std::to_string(i) + ",\"name\":" + json_quote(info.name) +
            ",\"compute_capability\":" + json_quote(std::to_string(info.major) + "." + std::to_string(info.minor)) +
            ",\"multiprocessors\":" + std::to_string(info.sm_count) +
            ",\"max_shared_memory_per_block\":" + std::to_string(info.max_smem_optin) +
            ",\"target\":" + json_quote(n.ok ? target_for_device(info.major, info.minor) : "") + "}";
  }
  json += "]},\"nvrtc\":{\"found\":" + std::string(n.ok ? "true" : "false");
  if (n.ok) {
    json += ",\"library\":" + json_quote(n.library) + ",\"version\":" +
            json_quote(std::to_string(n.major) + "." + std::to_string(n.minor)) + ",\"supported_archs\":[";
    for (size_t i = 0; i < n.supported_archs.size(); ++i) json += (i ? "," : "") + std::to_string(n.supported_archs[i]);
    json += "]";
  } else {
    json += ",\"failure\":" + json_quote(n.failure);
  }
  json += ",\"tried\":[";
  for (size_t i = 0; i < n.tried.size(); ++i) json += (i ? "," : "") + json_quote(n.tried[i]);
  json += "]}";
  if (d.ok && n.ok && n.major * 1000 > d.version)
    json += ",\"warning\":" + json_quote("NVRTC " + std::to_string(n.major) + "." + std::to_string(n.minor) +
                                          " is newer than the driver (CUDA " + std::to_string(d.version / 1000) + "." +
                                          std::to_string(d.version % 1000 / 10) +
                                          "); its cubins may not load: point ATTNFORGE_NVRTC at an older NVRTC");
  json += ",\"cache_dir\":" + json_quote(cache_directory()) + ",\"variants\":" + std::to_string(variants().size());
  const af_status status = available();
  json += ",\"available\":" + std::string(status == AF_OK ? "true" : "false");
  if (status != AF_OK) json += ",\"reason\":" + json_quote(last_error());
  return json + "}";
}

void set_nvrtc_search_path(const char* directories) { set_nvrtc_directories(directories); }

af_status warmup(const char* const* archs, int n_archs, af_progress_callback progress, void* user_data) {
  const NvrtcState& n = nvrtc();
  if (!n.ok) return fail(AF_ERR_BACKEND_UNAVAILABLE, "warmup needs NVRTC: %s", n.failure.c_str());
  std::vector<std::string> targets;
  if (n_archs > 0) {
    for (int i = 0; i < n_archs; ++i) {
      const std::string target = archs[i] != nullptr ? normalise_target(archs[i]) : "";
      if (target.empty())
        return fail(AF_ERR_INVALID_ARGUMENT, "warmup: '%s' is not an architecture NVRTC %d.%d can target (sm_80 or newer)",
                    archs[i] != nullptr ? archs[i] : "(null)", n.major, n.minor);
      targets.push_back(target);
    }
  } else {
    const DriverState& d = driver();
    if (!d.ok) return fail(AF_ERR_BACKEND_UNAVAILABLE, "warmup without --arch needs a GPU: %s", d.failure.c_str());
    for (const DeviceInfo& info : d.devices) {
      const std::string target = info.major >= 8 ? target_for_device(info.major, info.minor) : "";
      bool seen = target.empty();
      for (const std::string& t : targets) seen = seen || t == target;
      if (!seen) targets.push_back(target);
    }
  }
  // Independent NVRTC programs compile concurrently; workers compile, this thread reports
  // progress (so the callback always runs on the caller's thread) and the first error.
  const int total = int(targets.size() * variants().size());
  struct Job {
    std::string label;
    af_status status = AF_OK;
    std::string error;
  };
  std::vector<Job> jobs(total);
  std::mutex mutex;
  std::condition_variable finished_cv;
  int next = 0;
  std::vector<int> finished;
  auto worker = [&] {
    for (;;) {
      int i;
      {
        std::lock_guard<std::mutex> lock(mutex);
        if (next == total) return;
        i = next++;
      }
      const std::string& target = targets[i / variants().size()];
      const Variant& v = variants()[i % variants().size()];
      CompiledKernel kernel;
      jobs[i].label = target + " " + v.name;
      jobs[i].status = compile_variant(v, target, true, &kernel);
      if (jobs[i].status != AF_OK) jobs[i].error = last_error();
      {
        std::lock_guard<std::mutex> lock(mutex);
        finished.push_back(i);
      }
      finished_cv.notify_one();
    }
  };
  const unsigned hardware = std::thread::hardware_concurrency();
  const int n_workers = std::max(1, std::min({total, int(hardware == 0 ? 2 : hardware), 8}));
  std::vector<std::thread> workers;
  for (int w = 0; w < n_workers; ++w) workers.emplace_back(worker);
  af_status status = AF_OK;
  std::string error;
  for (int reported = 0; reported < total; ++reported) {
    int i;
    {
      std::unique_lock<std::mutex> lock(mutex);
      finished_cv.wait(lock, [&] { return !finished.empty(); });
      i = finished.front();
      finished.erase(finished.begin());
    }
    if (jobs[i].status != AF_OK && status == AF_OK) {
      status = jobs[i].status;
      error = jobs[i].error;
    }
    if (progress != nullptr) progress(user_data, reported + 1, total, jobs[i].label.c_str());
  }
  for (std::thread& t : workers) t.join();
  if (status != AF_OK) return fail(status, "%s", error.c_str());
  return AF_OK;
}

std::string cache_dir() { return cache_directory(); }

af_status cache_list_json(std::string* json) {
  *json = cache_list();
  return AF_OK;
}

af_status cache_clear() { return cache_remove_all(); }

}  // namespace af::cuda
