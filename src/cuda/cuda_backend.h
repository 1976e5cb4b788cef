// CUDA backend: driver and NVRTC loaded at run time, kernels compiled for the
// device's exact architecture and cached on disk, launched on the caller's stream.
#pragma once

#include <string>

#include "api/problem.h"

namespace af::cuda {

// AF_OK if a driver, a GPU and NVRTC were found; else AF_ERR_BACKEND_UNAVAILABLE
// with the failing step recorded. Probes once, then answers from memory.
af_status available();

// Why the CUDA backend cannot run p (AF_OK if it can); records the reason.
af_status supports(const AttentionProblem& p);

// Launches p on p.cuda_stream; no host synchronisation, no host allocation.
af_status attention_forward(const AttentionProblem& p);

// JSON object with every probing step (driver, devices, NVRTC, cache), for af_runtime_report.
std::string report_json();

// Set before first use: extra ':'-separated directories to search for NVRTC.
void set_nvrtc_search_path(const char* directories);

af_status warmup(const char* const* archs, int n_archs, af_progress_callback progress, void* user_data);
std::string cache_dir();
af_status cache_list_json(std::string* json);
af_status cache_clear();

}  // namespace af::cuda
