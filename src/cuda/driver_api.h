// The few CUDA driver and NVRTC declarations attnforge uses, written here so that no CUDA
// header or library is needed at build time. Both libraries are dlopen'ed at run time;
// the signatures match the stable C ABIs (driver _v2 entry points, NVRTC 11.2+).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace af::cuda {

using CUresult = int;
using CUdevice = int;
using CUcontext = struct CUctx_st*;
using CUmodule = struct CUmod_st*;
using CUfunction = struct CUfunc_st*;
using CUstream = struct CUstream_st*;
using CUdeviceptr = unsigned long long;
using nvrtcResult = int;
using nvrtcProgram = struct _nvrtcProgram*;

constexpr CUresult CUDA_SUCCESS = 0;
constexpr int CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16;
constexpr int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75;
constexpr int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76;
constexpr int CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97;
constexpr int CU_FUNC_ATTRIBUTE_NUM_REGS = 4;
constexpr int CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;
constexpr int CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED = 14;
constexpr int CU_STREAM_CAPTURE_MODE_RELAXED = 2;
constexpr unsigned CU_STREAM_NON_BLOCKING = 1;

// cuLaunchKernelEx's configuration (CUDA 12+), for programmatic dependent launch and thread-block
// clusters: the layout of CUlaunchAttribute (an id, padding to 8 bytes, a 64-byte value union) and
// CUlaunchConfig.
constexpr int CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION = 4;
constexpr int CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6;
struct CUlaunchAttribute {
  int id;
  char pad[4];
  union {
    char bytes[64];
    int programmatic_stream_serialization_allowed;
    struct {
      unsigned x, y, z;
    } cluster_dim;
  } value;
};
struct CUlaunchConfig {
  unsigned grid_x, grid_y, grid_z;
  unsigned block_x, block_y, block_z;
  unsigned shared_memory_bytes;
  CUstream stream;
  CUlaunchAttribute* attributes;
  unsigned attribute_count;
};

// TMA tensor maps (CUDA 12+): the opaque 128-byte CUtensorMap and cuTensorMapEncodeTiled's enums,
// with the values of cuda.h.
struct alignas(64) CUtensorMap {
  unsigned long long opaque[16];
};
constexpr int CU_TENSOR_MAP_DATA_TYPE_FLOAT16 = 6;
constexpr int CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 = 9;
constexpr int CU_TENSOR_MAP_INTERLEAVE_NONE = 0;
constexpr int CU_TENSOR_MAP_SWIZZLE_128B = 3;
constexpr int CU_TENSOR_MAP_L2_PROMOTION_L2_256B = 3;
constexpr int CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE = 0;  // out-of-bounds elements read as zeros

struct DriverApi {
  CUresult (*cuInit)(unsigned int);
  CUresult (*cuDriverGetVersion)(int*);
  CUresult (*cuDeviceGetCount)(int*);
  CUresult (*cuDeviceGet)(CUdevice*, int);
  CUresult (*cuDeviceGetName)(char*, int, CUdevice);
  CUresult (*cuDeviceGetAttribute)(int*, int, CUdevice);
  CUresult (*cuDevicePrimaryCtxRetain)(CUcontext*, CUdevice);
  CUresult (*cuCtxGetCurrent)(CUcontext*);
  CUresult (*cuCtxPushCurrent)(CUcontext);
  CUresult (*cuCtxPopCurrent)(CUcontext*);
  CUresult (*cuModuleLoadData)(CUmodule*, const void*);
  CUresult (*cuModuleGetFunction)(CUfunction*, CUmodule, const char*);
  CUresult (*cuFuncSetAttribute)(CUfunction, int, int);
  CUresult (*cuOccupancyMaxActiveBlocksPerMultiprocessor)(int*, CUfunction, int, size_t);
  CUresult (*cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                             void**, void**);
  CUresult (*cuGetErrorString)(CUresult, const char**);
  // Split-key workspaces (stream_workspace).
  CUresult (*cuMemAlloc)(CUdeviceptr*, size_t);
  CUresult (*cuMemsetD8Async)(CUdeviceptr, unsigned char, size_t, CUstream);
  CUresult (*cuThreadExchangeStreamCaptureMode)(int*);
  CUresult (*cuStreamCreate)(CUstream*, unsigned);
  CUresult (*cuStreamSynchronize)(CUstream);
  // Programmatic dependent launch (sm_90+); null when the driver lacks it (< 12.0).
  CUresult (*cuLaunchKernelEx)(const CUlaunchConfig*, CUfunction, void**, void**);
  // Clusters that fit the device at once for a launch configuration (12.0+); null when absent.
  CUresult (*cuOccupancyMaxActiveClusters)(int*, CUfunction, const CUlaunchConfig*);
  // TMA tensor maps (the fwd_sm90 family); null when the driver lacks it (< 12.0).
  CUresult (*cuTensorMapEncodeTiled)(CUtensorMap* map, int data_type, unsigned rank, void* global_address,
                                     const unsigned long long* global_dim, const unsigned long long* global_strides,
                                     const unsigned* box_dim, const unsigned* element_strides, int interleave,
                                     int swizzle, int l2_promotion, int oob_fill);
};

struct NvrtcApi {
  nvrtcResult (*nvrtcVersion)(int*, int*);
  nvrtcResult (*nvrtcGetNumSupportedArchs)(int*);  // may be null (NVRTC < 11.2)
  nvrtcResult (*nvrtcGetSupportedArchs)(int*);     // may be null
  nvrtcResult (*nvrtcCreateProgram)(nvrtcProgram*, const char*, const char*, int, const char* const*,
                                    const char* const*);
  nvrtcResult (*nvrtcCompileProgram)(nvrtcProgram, int, const char* const*);
  nvrtcResult (*nvrtcGetProgramLogSize)(nvrtcProgram, size_t*);
  nvrtcResult (*nvrtcGetProgramLog)(nvrtcProgram, char*);
  nvrtcResult (*nvrtcGetCUBINSize)(nvrtcProgram, size_t*);
  nvrtcResult (*nvrtcGetCUBIN)(nvrtcProgram, char*);
  nvrtcResult (*nvrtcGetPTXSize)(nvrtcProgram, size_t*);
  nvrtcResult (*nvrtcGetPTX)(nvrtcProgram, char*);
  nvrtcResult (*nvrtcDestroyProgram)(nvrtcProgram*);
  const char* (*nvrtcGetErrorString)(nvrtcResult);
};

struct DeviceInfo {
  CUdevice handle = 0;
  std::string name;
  int major = 0, minor = 0;
  int sm_count = 0;
  int max_smem_optin = 0;
};

// Outcome of probing the driver (once per process). ok == false: `failure` names the step.
struct DriverState {
  bool ok = false;
  std::string library;  // path or soname that loaded
  int version = 0;      // cuDriverGetVersion, e.g. 13000
  std::vector<DeviceInfo> devices;
  std::string failure;
  const DriverApi* api = nullptr;
};

// Outcome of finding NVRTC (once per process, after set_nvrtc_search_path if any).
struct NvrtcState {
  bool ok = false;
  std::string library;  // the file that loaded
  int major = 0, minor = 0;
  std::vector<int> supported_archs;  // e.g. 75, 80, 86, 89, 90, ... (empty: unknown)
  std::vector<std::string> tried;    // every candidate, with why it failed
  std::string failure;
  const NvrtcApi* api = nullptr;
};

const DriverState& driver();
const NvrtcState& nvrtc();
void set_nvrtc_directories(const char* directories);

// "cuLaunchKernel: CUDA_ERROR_INVALID_VALUE (invalid argument)"-style text for a result.
std::string driver_error(const char* call, CUresult result);

}  // namespace af::cuda
