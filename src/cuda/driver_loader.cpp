// Finds and dlopen's the CUDA driver and NVRTC, once per process, recording every step.
#include <dlfcn.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "cuda/driver_api.h"

namespace af::cuda {

namespace {

template <typename F>
bool bind(void* library, const char* name, F* slot) {
  *slot = reinterpret_cast<F>(dlsym(library, name));
  return *slot != nullptr;
}

std::string dl_error() {
  const char* e = dlerror();
  return e != nullptr ? e : "unknown dlopen error";
}

DriverApi g_driver_api;
DriverState g_driver;
std::once_flag g_driver_once;

void probe_driver() {
  DriverState& s = g_driver;
  dlerror();
  void* library = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) {
    s.failure = "driver: libcuda.so.1 cannot be loaded (no NVIDIA driver installed?): " + dl_error();
    return;
  }
  s.library = "libcuda.so.1";
  DriverApi& a = g_driver_api;
  struct Symbol {
    const char* name;
    bool ok;
  };
  const Symbol symbols[] = {
      {"cuInit", bind(library, "cuInit", &a.cuInit)},
      {"cuDriverGetVersion", bind(library, "cuDriverGetVersion", &a.cuDriverGetVersion)},
      {"cuDeviceGetCount", bind(library, "cuDeviceGetCount", &a.cuDeviceGetCount)},
      {"cuDeviceGet", bind(library, "cuDeviceGet", &a.cuDeviceGet)},
      {"cuDeviceGetName", bind(library, "cuDeviceGetName", &a.cuDeviceGetName)},
      {"cuDeviceGetAttribute", bind(library, "cuDeviceGetAttribute", &a.cuDeviceGetAttribute)},
      {"cuDevicePrimaryCtxRetain", bind(library, "cuDevicePrimaryCtxRetain", &a.cuDevicePrimaryCtxRetain)},
      {"cuCtxGetCurrent", bind(library, "cuCtxGetCurrent", &a.cuCtxGetCurrent)},
      {"cuCtxPushCurrent_v2", bind(library, "cuCtxPushCurrent_v2", &a.cuCtxPushCurrent)},
      {"cuCtxPopCurrent_v2", bind(library, "cuCtxPopCurrent_v2", &a.cuCtxPopCurrent)},
      {"cuModuleLoadData", bind(library, "cuModuleLoadData", &a.cuModuleLoadData)},
      {"cuModuleGetFunction", bind(library, "cuModuleGetFunction", &a.cuModuleGetFunction)},
      {"cuFuncSetAttribute", bind(library, "cuFuncSetAttribute", &a.cuFuncSetAttribute)},
      {"cuOccupancyMaxActiveBlocksPerMultiprocessor",
       bind(library, "cuOccupancyMaxActiveBlocksPerMultiprocessor", &a.cuOccupancyMaxActiveBlocksPerMultiprocessor)},
      {"cuLaunchKernel", bind(library, "cuLaunchKernel", &a.cuLaunchKernel)},
      {"cuGetErrorString", bind(library, "cuGetErrorString", &a.cuGetErrorString)},
      {"cuMemAlloc_v2", bind(library, "cuMemAlloc_v2", &a.cuMemAlloc)},
      {"cuMemsetD8Async", bind(library, "cuMemsetD8Async", &a.cuMemsetD8Async)},
      {"cuThreadExchangeStreamCaptureMode",
       bind(library, "cuThreadExchangeStreamCaptureMode", &a.cuThreadExchangeStreamCaptureMode)},
      {"cuStreamCreate", bind(library, "cuStreamCreate", &a.cuStreamCreate)},
      {"cuStreamSynchronize", bind(library, "cuStreamSynchronize", &a.cuStreamSynchronize)},
  };
  for (const Symbol& symbol : symbols) {
    if (!symbol.ok) {
      s.failure = std::string("driver: libcuda.so.1 has no symbol ") + symbol.name + " (driver too old?)";
      return;
    }
  }
  if (!bind(library, "cuLaunchKernelEx", &a.cuLaunchKernelEx)) a.cuLaunchKernelEx = nullptr;
  if (!bind(library, "cuOccupancyMaxActiveClusters", &a.cuOccupancyMaxActiveClusters))
    a.cuOccupancyMaxActiveClusters = nullptr;
  if (!bind(library, "cuTensorMapEncodeTiled", &a.cuTensorMapEncodeTiled)) a.cuTensorMapEncodeTiled = nullptr;
  s.api = &a;
  CUresult r = a.cuInit(0);
  if (r != CUDA_SUCCESS) {
    s.failure = "driver: " + driver_error("cuInit", r);
    return;
  }
  a.cuDriverGetVersion(&s.version);
  if (s.version < 11040) {
    char buffer[160];
    std::snprintf(buffer, sizeof buffer, "driver: version %d.%d is older than the 11.4 attnforge needs",
                  s.version / 1000, s.version % 1000 / 10);
    s.failure = buffer;
    return;
  }
  int count = 0;
  r = a.cuDeviceGetCount(&count);
  if (r != CUDA_SUCCESS) {
    s.failure = "driver: " + driver_error("cuDeviceGetCount", r);
    return;
  }
  if (count == 0) {
    s.failure = "driver: no CUDA device visible (CUDA_VISIBLE_DEVICES?)";
    return;
  }
  for (int i = 0; i < count; ++i) {
    DeviceInfo d;
    if (a.cuDeviceGet(&d.handle, i) != CUDA_SUCCESS) continue;
    char name[256] = {0};
    a.cuDeviceGetName(name, sizeof name - 1, d.handle);
    d.name = name;
    a.cuDeviceGetAttribute(&d.major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, d.handle);
    a.cuDeviceGetAttribute(&d.minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, d.handle);
    a.cuDeviceGetAttribute(&d.sm_count, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, d.handle);
    a.cuDeviceGetAttribute(&d.max_smem_optin, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, d.handle);
    s.devices.push_back(d);
  }
  s.ok = true;
}

NvrtcApi g_nvrtc_api;
NvrtcState g_nvrtc;
std::once_flag g_nvrtc_once;
std::mutex g_directories_mutex;
std::string g_extra_directories;

// Loads one candidate; on failure appends the reason to s.tried.
bool try_nvrtc(const std::string& candidate, NvrtcState& s) {
  dlerror();
  void* library = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) {
    s.tried.push_back(candidate + ": " + dl_error());
    return false;
  }
  NvrtcApi& a = g_nvrtc_api;
  const bool complete =
      bind(library, "nvrtcVersion", &a.nvrtcVersion) && bind(library, "nvrtcCreateProgram", &a.nvrtcCreateProgram) &&
      bind(library, "nvrtcCompileProgram", &a.nvrtcCompileProgram) &&
      bind(library, "nvrtcGetProgramLogSize", &a.nvrtcGetProgramLogSize) &&
      bind(library, "nvrtcGetProgramLog", &a.nvrtcGetProgramLog) &&
      bind(library, "nvrtcGetCUBINSize", &a.nvrtcGetCUBINSize) && bind(library, "nvrtcGetCUBIN", &a.nvrtcGetCUBIN) &&
      bind(library, "nvrtcGetPTXSize", &a.nvrtcGetPTXSize) && bind(library, "nvrtcGetPTX", &a.nvrtcGetPTX) &&
      bind(library, "nvrtcDestroyProgram", &a.nvrtcDestroyProgram) &&
      bind(library, "nvrtcGetErrorString", &a.nvrtcGetErrorString);
  if (!complete) {
    s.tried.push_back(candidate + ": loaded but lacks nvrtcGetCUBIN and friends (NVRTC older than 11.1)");
    dlclose(library);
    return false;
  }
  bind(library, "nvrtcGetNumSupportedArchs", &a.nvrtcGetNumSupportedArchs);
  bind(library, "nvrtcGetSupportedArchs", &a.nvrtcGetSupportedArchs);
  a.nvrtcVersion(&s.major, &s.minor);
  if (a.nvrtcGetNumSupportedArchs != nullptr && a.nvrtcGetSupportedArchs != nullptr) {
    int n = 0;
    if (a.nvrtcGetNumSupportedArchs(&n) == 0 && n > 0) {
      s.supported_archs.resize(n);
      if (a.nvrtcGetSupportedArchs(s.supported_archs.data()) != 0) s.supported_archs.clear();
    }
  }
  char path[4096] = {0};
  // The loaded file's real path (dlinfo needs _GNU_SOURCE types; dladdr of a symbol is portable).
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(a.nvrtcVersion), &info) != 0 && info.dli_fname != nullptr)
    std::snprintf(path, sizeof path, "%s", info.dli_fname);
  s.library = path[0] != 0 ? path : candidate;
  s.api = &a;
  s.ok = true;
  return true;
}

bool file_exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

const char* const kNvrtcNames[] = {"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so"};

bool try_directory(const std::string& directory, NvrtcState& s) {
  if (directory.empty()) return false;
  bool any = false;
  for (const char* name : kNvrtcNames) {
    const std::string path = directory + "/" + name;
    if (!file_exists(path)) continue;
    any = true;
    if (try_nvrtc(path, s)) return true;
  }
  if (!any) s.tried.push_back(directory + ": no libnvrtc.so.{13,12,11.2} there");
  return false;
}

void probe_nvrtc() {
  NvrtcState& s = g_nvrtc;
  // 1. $ATTNFORGE_NVRTC names the file.
  if (const char* file = std::getenv("ATTNFORGE_NVRTC"); file != nullptr && *file != 0) {
    if (try_nvrtc(file, s)) return;
  }
  // 2. Directories from af_set_nvrtc_search_path (the Python package passes torch's nvidia wheels).
  std::string extra;
  {
    std::lock_guard<std::mutex> lock(g_directories_mutex);
    extra = g_extra_directories;
  }
  size_t start = 0;
  while (start <= extra.size() && !extra.empty()) {
    const size_t end = extra.find(':', start);
    const std::string directory = extra.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (try_directory(directory, s)) return;
    if (end == std::string::npos) break;
    start = end + 1;
  }
  // 3. CUDA_HOME / CUDA_PATH, 4. the conda prefix.
  for (const char* variable : {"CUDA_HOME", "CUDA_PATH"}) {
    if (const char* root = std::getenv(variable); root != nullptr && *root != 0) {
      if (try_directory(std::string(root) + "/lib64", s) || try_directory(std::string(root) + "/lib", s)) return;
    }
  }
  if (const char* conda = std::getenv("CONDA_PREFIX"); conda != nullptr && *conda != 0) {
    if (try_directory(std::string(conda) + "/lib", s)) return;
  }
  // 5. The dynamic loader's cache and LD_LIBRARY_PATH, then the toolkit's default location.
  for (const char* name : kNvrtcNames) {
    if (try_nvrtc(name, s)) return;
  }
  if (try_directory("/usr/local/cuda/lib64", s)) return;
  s.failure = "nvrtc: not found (set ATTNFORGE_NVRTC to libnvrtc.so, or CUDA_HOME; tried " +
              std::to_string(s.tried.size()) + " candidates)";
}

}  // namespace

std::string driver_error(const char* call, CUresult result) {
  const char* text = nullptr;
  if (g_driver.api != nullptr) g_driver_api.cuGetErrorString(result, &text);
  char buffer[512];
  std::snprintf(buffer, sizeof buffer, "%s failed with CUDA error %d (%s)", call, result,
                text != nullptr ? text : "no description");
  return buffer;
}

const DriverState& driver() {
  std::call_once(g_driver_once, probe_driver);
  return g_driver;
}

const NvrtcState& nvrtc() {
  std::call_once(g_nvrtc_once, probe_nvrtc);
  return g_nvrtc;
}

void set_nvrtc_directories(const char* directories) {
  std::lock_guard<std::mutex> lock(g_directories_mutex);
  g_extra_directories = directories != nullptr ? directories : "";
}

}  // namespace af::cuda
