// CUDA backend entry points: availability and the probing report, forward through the one
// plan, warmup and the kernel cache. Device probing lives in driver_loader.cpp, modules and the
// workspace pool in modules.cpp, the selector in plan.cpp, launches in launch.cpp.
#include "cuda/cuda_backend.h"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/json.h"
#include "cuda/compiler.h"
#include "cuda/driver_api.h"
#include "cuda/kernel_cache.h"
#include "cuda/plan.h"

namespace af::cuda {

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

std::string report_json() {
  const DriverState& d = driver();
  std::string json = "{\"driver\":{\"found\":" + std::string(d.ok ? "true" : "false");
  if (!d.library.empty()) json += ",\"library\":" + json_quote(d.library);
  if (d.version > 0)
    json +=
        ",\"version\":" + json_quote(std::to_string(d.version / 1000) + "." + std::to_string(d.version % 1000 / 10));
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
    json += ",\"library\":" + json_quote(n.library) +
            ",\"version\":" + json_quote(std::to_string(n.major) + "." + std::to_string(n.minor)) +
            ",\"supported_archs\":[";
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
        return fail(AF_ERR_INVALID_ARGUMENT,
                    "warmup: '%s' is not an architecture NVRTC %d.%d can target (sm_80 or newer)",
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
      if (!v.compiles_for(target))
        jobs[i].label += " (not for this arch)";
      else
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

}  // namespace af::cuda
