#include "doctor/gpu.h"

#include <dlfcn.h>

namespace af::doctor {

DriverFacts query_cuda_driver() {
  DriverFacts facts;
  void* driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!driver) {
    facts.error = "libcuda.so.1 not found (no NVIDIA driver)";
    return facts;
  }
  facts.driver_found = true;
  // Driver API signatures (CUresult is an int, CUdevice an int).
  using InitFn = int (*)(unsigned);
  using VersionFn = int (*)(int*);
  using CountFn = int (*)(int*);
  using GetFn = int (*)(int*, int);
  using AttributeFn = int (*)(int*, int, int);
  using NameFn = int (*)(char*, int, int);
  auto init = reinterpret_cast<InitFn>(dlsym(driver, "cuInit"));
  auto version = reinterpret_cast<VersionFn>(dlsym(driver, "cuDriverGetVersion"));
  auto count = reinterpret_cast<CountFn>(dlsym(driver, "cuDeviceGetCount"));
  auto get = reinterpret_cast<GetFn>(dlsym(driver, "cuDeviceGet"));
  auto attribute = reinterpret_cast<AttributeFn>(dlsym(driver, "cuDeviceGetAttribute"));
  auto name = reinterpret_cast<NameFn>(dlsym(driver, "cuDeviceGetName"));
  if (!init || !version || !count || !get || !attribute || !name) {
    facts.error = "libcuda.so.1 lacks the driver API entry points";
    return facts;
  }
  version(&facts.driver_version);
  int status = init(0);
  if (status != 0) {
    facts.error = "cuInit failed with CUDA error " + std::to_string(status);
    return facts;
  }
  int devices = 0;
  count(&devices);
  constexpr int kComputeCapabilityMajor = 75, kComputeCapabilityMinor = 76;
  for (int i = 0; i < devices; ++i) {
    int device = 0;
    if (get(&device, i) != 0) continue;
    GpuFacts gpu;
    attribute(&gpu.major, kComputeCapabilityMajor, device);
    attribute(&gpu.minor, kComputeCapabilityMinor, device);
    char buffer[256] = {};
    if (name(buffer, sizeof buffer - 1, device) == 0) gpu.name = buffer;
    facts.gpus.push_back(gpu);
  }
  // The driver stays loaded: unloading a CUDA driver after cuInit is not supported.
  return facts;
}

}  // namespace af::doctor
