#include "cuda/compiler.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common/error.h"
#include "cuda/driver_api.h"
#include "cuda/kernel_cache.h"

namespace af::cuda {

namespace {

bool nvrtc_knows(int arch) {
  const NvrtcState& n = nvrtc();
  if (n.supported_archs.empty()) return arch >= 80 && arch <= 90;  // NVRTC 11.x without the query
  for (int a : n.supported_archs)
    if (a == arch) return true;
  return false;
}

// The integer just before `suffix` in the ptxas report ("Used 96 registers"), or -1.
int number_before(const std::string& log, const char* suffix) {
  const size_t at = log.find(suffix);
  if (at == std::string::npos) return -1;
  size_t begin = at;
  while (begin > 0 && log[begin - 1] == ' ') --begin;
  size_t digits = begin;
  while (digits > 0 && log[digits - 1] >= '0' && log[digits - 1] <= '9') --digits;
  if (digits == begin) return -1;
  return std::atoi(log.c_str() + digits);
}

// The ptxas report lists each entry function ("Compiling entry function 'name'") with its
// resources: registers and stack of the family's kernel, spills as the largest of any entry.
void parse_resources(const char* entry, CompiledKernel* k) {
  const std::string marker = "Compiling entry function '";
  size_t at = k->log.find(marker);
  while (at != std::string::npos) {
    const size_t next = k->log.find(marker, at + marker.size());
    const std::string section = k->log.substr(at, next == std::string::npos ? std::string::npos : next - at);
    if (section.compare(marker.size(), std::strlen(entry) + 1, std::string(entry) + "'") == 0) {
      k->registers = number_before(section, " registers");
      k->stack_bytes = number_before(section, " bytes stack frame");
    }
    k->spill_store_bytes = std::max(k->spill_store_bytes, number_before(section, " bytes spill stores"));
    k->spill_load_bytes = std::max(k->spill_load_bytes, number_before(section, " bytes spill loads"));
    at = next;
  }
}

}  // namespace

std::string target_for_device(int major, int minor) {
  const int arch = major * 10 + minor;
  if (nvrtc_knows(arch)) return arch == 90 ? "sm_90a" : "sm_" + std::to_string(arch);
  int best = 0;
  const NvrtcState& n = nvrtc();
  for (int a : n.supported_archs)
    if (a <= arch && a > best) best = a;
  return best >= 80 ? "compute_" + std::to_string(best) : "";
}

std::string normalise_target(const std::string& arch) {
  // Exactly "sm_XY", "sm_XYa", "compute_XY" or "XY": anything else (spaces, "evil;80") is refused
  // rather than mined for digits.
  const bool compute = arch.rfind("compute_", 0) == 0;
  const size_t begin = compute ? 8 : arch.rfind("sm_", 0) == 0 ? 3 : 0;
  size_t end = arch.size();
  if (begin == 3 && end > begin && arch[end - 1] == 'a') --end;
  if (end - begin < 2 || end - begin > 3) return "";
  for (size_t i = begin; i < end; ++i)
    if (arch[i] < '0' || arch[i] > '9') return "";
  const std::string digits = arch.substr(begin, end - begin);
  const int value = std::atoi(digits.c_str());
  if (value < 80 || !nvrtc_knows(value)) return "";
  if (compute) return "compute_" + digits;
  return value == 90 ? "sm_90a" : "sm_" + digits;
}

af_status compile_variant(const Variant& v, const std::string& target, bool use_cache, CompiledKernel* out) {
  const NvrtcState& n = nvrtc();
  if (!n.ok) return fail(AF_ERR_BACKEND_UNAVAILABLE, "%s", n.failure.c_str());
  const auto start = std::chrono::steady_clock::now();
  const std::vector<std::string> options = compile_options(v, target, n.major, n.minor);
  const CacheKey key = make_cache_key(module_source(v.family), options, target, n.major, n.minor);
  const bool is_cubin = target.rfind("sm_", 0) == 0;
  *out = CompiledKernel{};
  out->is_cubin = is_cubin;
  if (use_cache && cache_load(key, &out->binary)) {
    out->from_cache = true;
    out->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return AF_OK;
  }

  const NvrtcApi& a = *n.api;
  nvrtcProgram program = nullptr;
  nvrtcResult r =
      a.nvrtcCreateProgram(&program, module_source(v.family).c_str(),
                           (std::string("attnforge_") + family(v.family).name + ".cu").c_str(), 0, nullptr, nullptr);
  if (r != 0) return fail(AF_ERR_COMPILE, "nvrtcCreateProgram(%s): %s", v.name.c_str(), a.nvrtcGetErrorString(r));
  std::vector<const char*> argv;
  for (const std::string& option : options) argv.push_back(option.c_str());
  r = a.nvrtcCompileProgram(program, int(argv.size()), argv.data());
  size_t log_size = 0;
  a.nvrtcGetProgramLogSize(program, &log_size);
  out->log.assign(log_size, '\0');
  if (log_size > 0) a.nvrtcGetProgramLog(program, &out->log[0]);
  while (!out->log.empty() && out->log.back() == '\0') out->log.pop_back();
  if (r != 0) {
    const std::string log = out->log.substr(0, 800);
    a.nvrtcDestroyProgram(&program);
    return fail(AF_ERR_COMPILE, "NVRTC %d.%d failed to compile %s for %s: %s\n%s", n.major, n.minor, v.name.c_str(),
                target.c_str(), a.nvrtcGetErrorString(r), log.c_str());
  }
  size_t size = 0;
  r = is_cubin ? a.nvrtcGetCUBINSize(program, &size) : a.nvrtcGetPTXSize(program, &size);
  if (r == 0 && size > 0) {
    out->binary.resize(size);
    r = is_cubin ? a.nvrtcGetCUBIN(program, out->binary.data()) : a.nvrtcGetPTX(program, out->binary.data());
  }
  a.nvrtcDestroyProgram(&program);
  if (r != 0 || size == 0)
    return fail(AF_ERR_COMPILE, "NVRTC returned no %s for %s (%s)", is_cubin ? "cubin" : "PTX", v.name.c_str(),
                target.c_str());
  parse_resources(family(v.family).entry, out);
  out->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // A cache that cannot be written costs speed, not correctness: the kernel is still usable.
  if (use_cache) cache_store(key, target + " " + v.name, out->binary);
  return AF_OK;
}

}  // namespace af::cuda
