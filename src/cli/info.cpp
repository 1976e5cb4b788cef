// attnforge info / warmup / cache.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "attnforge/attnforge.h"
#include "cli/commands.h"
#include "common/json.h"

namespace af::cli {

namespace {

using TextFn = af_status (*)(char*, size_t, size_t*);

// The library's two-call buffer protocol, repeated while the text keeps growing between the
// calls (a cache list while another process writes entries).
bool read_text(TextFn fn, std::string* text) {
  std::vector<char> buffer(4096);
  af_status status = AF_ERR_BUFFER_TOO_SMALL;
  for (int attempt = 0; attempt < 64 && status == AF_ERR_BUFFER_TOO_SMALL; ++attempt) {
    size_t needed = 0;
    status = fn(buffer.data(), buffer.size(), &needed);
    if (status == AF_ERR_BUFFER_TOO_SMALL) buffer.resize(std::max(needed, buffer.size()) * 2);
  }
  if (status != AF_OK) {
    std::fprintf(stderr, "attnforge: %s: %s\n", af_status_string(status), af_last_error_message());
    return false;
  }
  *text = buffer.data();
  return true;
}

std::string scalar_text(const JsonValue& v) {
  switch (v.kind) {
    case JsonValue::Kind::Null: return "null";
    case JsonValue::Kind::Bool: return v.boolean ? "yes" : "no";
    case JsonValue::Kind::Number: {
      char buffer[32];
      std::snprintf(buffer, sizeof buffer, "%g", v.number);
      return buffer;
    }
    case JsonValue::Kind::String: return v.string;
    default: return "";
  }
}

// Prints a report subtree as indented "key: value" lines; objects inside arrays
// (probing steps, devices) go on one line each.
void print_tree(const JsonValue& v, int indent) {
  for (const auto& [key, member] : v.object) {
    if (member.kind == JsonValue::Kind::Object) {
      std::printf("%*s%s:\n", indent, "", key.c_str());
      print_tree(member, indent + 2);
    } else if (member.kind == JsonValue::Kind::Array) {
      std::printf("%*s%s:\n", indent, "", key.c_str());
      for (const JsonValue& item : member.array) {
        std::string line;
        if (item.kind == JsonValue::Kind::Object) {
          for (const auto& [k, x] : item.object) line += (line.empty() ? "" : ", ") + k + "=" + scalar_text(x);
        } else {
          line = scalar_text(item);
        }
        std::printf("%*s- %s\n", indent + 2, "", line.c_str());
      }
    } else {
      std::printf("%*s%s: %s\n", indent, "", key.c_str(), scalar_text(member).c_str());
    }
  }
}

// The NVRTC versions CI compiles every kernel variant with, for sm_80/86/89/90a and without
// spills (scripts/nvrtc_matrix.sh: the oldest and newest of CUDA 12 and of CUDA 13). NVRTC
// 12.0 spills on sm_90a; 11.8 cannot target sm_90a.
constexpr int kOldestNvrtc = 12010;
constexpr int kNewestTestedNvrtc = 13050;

// "12.4" -> 12040 (CUDA's version encoding); 0 when absent.
int cuda_version(const JsonValue& v) {
  int major = 0, minor = 0;
  if (v.kind != JsonValue::Kind::String || std::sscanf(v.string.c_str(), "%d.%d", &major, &minor) != 2) return 0;
  return major * 1000 + minor * 10;
}

std::string version_text(int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); }

// The supported range, and what this machine's driver and NVRTC mean for the GPU kernels. CUDA
// keeps cubins loadable by any driver of the same major version or newer (minor version
// compatibility), not by an older major version.
void print_cuda_versions(const JsonValue& cuda) {
  const int driver = cuda_version(cuda["driver"]["version"]);
  const int nvrtc = cuda_version(cuda["nvrtc"]["version"]);
  const std::string n = version_text(nvrtc), d = version_text(driver);
  std::printf(
      "supported CUDA: NVRTC %s to %s, and a driver of the NVRTC's major version or newer\n"
      "  (NVRTC 12.x: driver >= 12.0, R525; NVRTC 13.x: driver >= 13.0, R580)\n",
      version_text(kOldestNvrtc).c_str(), version_text(kNewestTestedNvrtc).c_str());
  std::string verdict;
  if (nvrtc == 0) {
    verdict = "no NVRTC: GPU kernels cannot be compiled (pip install nvidia-cuda-nvrtc-cu12, or set ATTNFORGE_NVRTC)";
  } else if (nvrtc < kOldestNvrtc) {
    verdict = "NVRTC " + n + " is older than " + version_text(kOldestNvrtc) +
              ": some kernels fail to compile or spill; set ATTNFORGE_NVRTC to a newer libnvrtc.so";
  } else if (driver != 0 && nvrtc / 1000 > driver / 1000) {
    verdict = "NVRTC " + n + " is newer than the driver's CUDA " + d +
              ": its cubins are not guaranteed to load there; when one does not, the call fails with "
              "cuModuleLoadData's error and the Python package runs torch SDPA instead, logging why. "
              "Fix: set ATTNFORGE_NVRTC to an NVRTC " +
              std::to_string(driver / 1000) + ".x, or update the driver";
  } else if (nvrtc > kNewestTestedNvrtc) {
    verdict = "NVRTC " + n + " is newer than the newest tested (" + version_text(kNewestTestedNvrtc) + "): untested";
  } else if (driver == 0) {
    verdict =
        "NVRTC " + n + ": supported; no driver here, so kernels can be compiled (attnforge warmup --arch), not run";
  } else {
    verdict = "driver CUDA " + d + ", NVRTC " + n + ": supported";
  }
  std::printf("  this machine: %s\n", verdict.c_str());
}

bool has_flag(int argc, char** argv, const char* flag) {
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], flag)) return true;
  return false;
}

int unknown_option(const char* command, const char* option) {
  std::fprintf(stderr, "attnforge %s: unknown option '%s' (see --help)\n", command, option);
  return 2;
}

}  // namespace

bool is_help(const char* arg) { return !std::strcmp(arg, "--help") || !std::strcmp(arg, "-h"); }

int run_info(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (is_help(argv[i])) {
      std::puts(
          "usage: attnforge info [--json]\n\n"
          "Version, build, and each backend with whether it runs on this machine; for the\n"
          "CUDA backend every probing step (driver, devices, NVRTC, cache) and, when one\n"
          "fails, which and why.\n"
          "exit codes: 0 ok (also when only the CPU backend is available), 2 usage/internal error");
      return 0;
    }
    if (std::strcmp(argv[i], "--json") != 0) return unknown_option("info", argv[i]);
  }
  std::string text;
  if (!read_text(af_runtime_report, &text)) return 2;
  if (has_flag(argc, argv, "--json")) {
    std::puts(text.c_str());
    return 0;
  }
  JsonValue report;
  std::string error;
  if (!json_parse(text, &report, &error)) {
    std::fprintf(stderr, "attnforge info: the library's report is malformed (%s)\n", error.c_str());
    return 2;
  }
  std::printf("attnforge %s (ABI %s)\n", report["version"].string.c_str(), scalar_text(report["abi_version"]).c_str());
  std::printf("build: %s\n", report["build"].string.c_str());
  std::printf("backends:\n");
  for (const auto& [name, backend] : report["backends"].object) {
    const bool available = backend["available"].boolean;
    std::printf("  %-5s %s", name.c_str(), available ? "available" : "unavailable");
    if (!available && !backend["reason"].is_null()) std::printf(": %s", backend["reason"].string.c_str());
    std::printf("\n");
    JsonValue details = backend;
    details.object.erase(std::remove_if(details.object.begin(), details.object.end(),
                                        [](const auto& m) { return m.first == "available" || m.first == "reason"; }),
                         details.object.end());
    print_tree(details, 8);
  }
  const JsonValue& cache = report["kernel_cache"];
  std::printf("kernel cache: %s", cache["directory"].string.empty() ? "(none)" : cache["directory"].string.c_str());
  if (cache["usable"].boolean)
    std::printf("\n");
  else
    std::printf(" (not used: %s)\n", cache["reason"].string.c_str());
  print_cuda_versions(report["backends"]["cuda"]);
  return 0;
}

namespace {

void print_progress(void*, int32_t done, int32_t total, const char* item) {
  const int width = 30;
  const int filled = total > 0 ? int(int64_t(done) * width / total) : width;
  std::fprintf(stderr, "\r[%.*s%*s] %d/%d %-40.40s", filled, "##############################", width - filled, "", done,
               total, item != nullptr ? item : "");
  if (done == total) std::fputc('\n', stderr);
  std::fflush(stderr);
}

}  // namespace

// "sm_XY", "sm_XYa", "compute_XY" or "XY" (what af_warmup accepts); the library also
// checks that NVRTC can target it.
bool is_arch_name(const std::string& arch) {
  size_t begin = arch.rfind("sm_", 0) == 0 ? 3 : arch.rfind("compute_", 0) == 0 ? 8 : 0;
  size_t end = arch.size();
  if (begin == 3 && end > begin && arch[end - 1] == 'a') --end;
  if (end - begin < 2 || end - begin > 3) return false;
  for (size_t i = begin; i < end; ++i)
    if (arch[i] < '0' || arch[i] > '9') return false;
  return true;
}

int run_warmup(int argc, char** argv) {
  std::vector<const char*> archs;
  for (int i = 1; i < argc; ++i) {
    if (is_help(argv[i])) {
      std::puts(
          "usage: attnforge warmup [--arch sm_XX ...]\n\n"
          "Compiles the common kernel variants with NVRTC into the kernel cache, for the\n"
          "given architectures (sm_80, sm_86, sm_89, sm_90a, ...) or, by default, for the\n"
          "GPUs of this machine. Needs NVRTC, not a GPU: build an image once, run it air-gapped.\n"
          "exit codes: 0 every kernel is in the cache, 1 compilation, NVRTC or cache failure\n"
          "(nothing is reported ready that could not be stored), 2 usage error");
      return 0;
    }
    if (!std::strcmp(argv[i], "--arch")) {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "attnforge warmup: --arch needs a value (see --help)\n");
        return 2;
      }
      if (!is_arch_name(argv[++i])) {
        std::fprintf(stderr,
                     "attnforge warmup: --arch '%s' is not an architecture (sm_80, sm_86, sm_89, sm_90a, ...)\n",
                     argv[i]);
        return 2;
      }
      archs.push_back(argv[i]);
    } else {
      return unknown_option("warmup", argv[i]);
    }
  }
  const af_status status =
      af_warmup(archs.data(), int32_t(archs.size()), isatty(2) ? print_progress : nullptr, nullptr);
  if (status != AF_OK) {
    std::fprintf(stderr, "attnforge warmup: %s: %s\n", af_status_string(status), af_last_error_message());
    return status == AF_ERR_INVALID_ARGUMENT ? 2 : 1;
  }
  std::string dir;
  if (read_text(af_cache_dir, &dir)) std::printf("kernel cache ready in %s\n", dir.c_str());
  return 0;
}

int run_cache(int argc, char** argv) {
  const char* usage =
      "usage: attnforge cache list [--json] | clear | dir\n\n"
      "list: the compiled kernels in the cache; clear: remove them; dir: print the cache directory\n"
      "($ATTNFORGE_CACHE_DIR, else $XDG_CACHE_HOME/attnforge, else ~/.cache/attnforge).\n"
      "exit codes: 0 ok, 1 failure, 2 usage error";
  if (argc < 2 || is_help(argv[1])) {
    std::fprintf(argc < 2 ? stderr : stdout, "%s\n", usage);
    return argc < 2 ? 2 : 0;
  }
  const std::string action = argv[1];
  if (action != "list" && action != "clear" && action != "dir") return unknown_option("cache", argv[1]);
  bool json = false;
  for (int i = 2; i < argc; ++i) {
    if (action == "list" && !std::strcmp(argv[i], "--json")) {
      json = true;
    } else {
      std::fprintf(stderr, "attnforge cache %s: unexpected argument '%s' (see --help)\n", action.c_str(), argv[i]);
      return 2;
    }
  }
  std::string text;
  if (action == "dir") {
    if (!read_text(af_cache_dir, &text)) return 1;
    std::puts(text.c_str());
    return 0;
  }
  if (action == "clear") {
    const af_status status = af_cache_clear();
    if (status != AF_OK) {
      std::fprintf(stderr, "attnforge cache clear: %s: %s\n", af_status_string(status), af_last_error_message());
      return 1;
    }
    std::puts("kernel cache cleared");
    return 0;
  }
  if (!read_text(af_cache_list, &text)) return 1;
  if (json) {
    std::puts(text.c_str());
    return 0;
  }
  JsonValue entries;
  std::string error;
  if (!json_parse(text, &entries, &error)) {
    std::fprintf(stderr, "attnforge cache list: malformed list (%s)\n", error.c_str());
    return 2;
  }
  if (entries.array.empty()) std::puts("(the kernel cache is empty)");
  for (const JsonValue& entry : entries.array) {
    std::string line;
    for (const auto& [k, x] : entry.object) line += (line.empty() ? "" : "  ") + k + "=" + scalar_text(x);
    std::puts(line.c_str());
  }
  return 0;
}

}  // namespace af::cli
