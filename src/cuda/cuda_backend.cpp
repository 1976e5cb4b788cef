// Placeholder until the run-time CUDA loader lands: the backend reports itself unavailable.
#include "cuda/cuda_backend.h"

#include "common/error.h"

namespace af::cuda {

af_status available() { return fail(AF_ERR_BACKEND_UNAVAILABLE, "CUDA backend not built into this version"); }
af_status supports(const AttentionProblem&) { return available(); }
af_status attention_forward(const AttentionProblem&) { return available(); }
std::string report_json() { return "{\"available\":false,\"reason\":\"not built\"}"; }
void set_nvrtc_search_path(const char*) {}
af_status warmup(const char* const*, int, af_progress_callback, void*) { return available(); }
std::string cache_dir() { return ""; }
af_status cache_list_json(std::string* json) { *json = "[]"; return AF_OK; }
af_status cache_clear() { return AF_OK; }

}  // namespace af::cuda
