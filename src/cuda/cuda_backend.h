// CUDA backend: driver and NVRTC loaded at run time, kernels compiled for the
// device's exact architecture and cached on disk, launched on the caller's stream.
// Which kernel runs a call, and how, comes from the one selector in plan.h.
#pragma once

#include <string>

#include "problem/problem.h"

namespace af::cuda {

// AF_OK if a driver, a GPU and NVRTC were found; else AF_ERR_BACKEND_UNAVAILABLE
// with the failing step recorded. Probes once, then answers from memory.
af_status available();

// JSON object with every probing step (driver, devices, NVRTC, cache), for af_runtime_report.
std::string report_json();

// Set before first use: extra ':'-separated directories to search for NVRTC.
void set_nvrtc_search_path(const char* directories);

// Compiles every variant of every family for each target (or this machine's GPUs) into the cache.
af_status warmup(const char* const* archs, int n_archs, af_progress_callback progress, void* user_data);
std::string cache_dir();
af_status cache_list_json(std::string* json);
af_status cache_clear();

}  // namespace af::cuda
