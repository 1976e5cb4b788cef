// GPU facts straight from the CUDA driver (dlopen of libcuda.so.1), so the
// doctor knows the compute capability even when torch cannot be imported.
#pragma once

#include <string>
#include <vector>

#include "doctor/probe.h"

namespace af::doctor {

struct DriverFacts {
  bool driver_found = false;  // libcuda.so.1 could be loaded
  std::string error;          // why no GPUs were listed
  int driver_version = 0;     // cuDriverGetVersion: 13020 for 13.2
  std::vector<GpuFacts> gpus;
};

DriverFacts query_cuda_driver();

}  // namespace af::doctor
