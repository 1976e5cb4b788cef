#include "doctor/probe.h"

#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "doctor/process.h"

namespace af::doctor {
namespace {

// Both scripts print one "key<TAB>value" line per fact (repeated keys form lists),
// so the doctor needs no JSON parser and a partial output is still usable.
constexpr const char* kBasicProbe = R"PY(
import sys, os, sysconfig, importlib.machinery, importlib.util, platform
def out(k, v): print(k + "\t" + str(v).replace("\t", " ").replace("\n", " "))
out("executable", sys.executable)
out("binary", os.path.realpath(sys.executable))
out("version", "%d.%d.%d" % sys.version_info[:3])
out("debug", int(hasattr(sys, "gettotalrefcount")))
out("free_threaded", int(bool(sysconfig.get_config_var("Py_GIL_DISABLED"))))
out("soabi", sysconfig.get_config_var("SOABI") or "")
for s in importlib.machinery.EXTENSION_SUFFIXES: out("suffix", s)
try: out("glibc", os.confstr("CS_GNU_LIBC_VERSION").split()[1])
except Exception: out("glibc", "")
out("machine", platform.machine())
for p in sys.path: out("path", p)
try:
    import site
    for p in site.getsitepackages() + [site.getusersitepackages()]: out("site", p)
except Exception: pass
out("manylinux_module", int(importlib.util.find_spec("_manylinux") is not None))
spec = importlib.util.find_spec("torch")
if spec is not None and spec.submodule_search_locations:
    out("torch_dir", os.path.realpath(list(spec.submodule_search_locations)[0]))
with open("/proc/self/maps") as maps:
    seen = set()
    for line in maps:
        parts = line.split(None, 5)
        if len(parts) == 6 and ".so" in parts[5] and parts[5].strip() not in seen:
            seen.add(parts[5].strip()); out("loaded", parts[5].strip())
)PY";

constexpr const char* kTorchProbe = R"PY(
import sys, os
def out(k, v): print(k + "\t" + str(v).replace("\t", " ").replace("\n", " "), flush=True)
import torch
out("version", torch.__version__)
out("cuda", torch.version.cuda or "")
try: out("cxx11", int(bool(torch._C._GLIBCXX_USE_CXX11_ABI)))
except Exception: pass
with open("/proc/self/maps") as maps:
    seen = set()
    for line in maps:
        parts = line.split(None, 5)
        if len(parts) == 6 and ".so" in parts[5] and parts[5].strip() not in seen:
            seen.add(parts[5].strip()); out("loaded", parts[5].strip())
try:
    if torch.cuda.is_available():
        out("cuda_available", 1)
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out("gpu", "%d.%d %s" % (p.major, p.minor, p.name))
except Exception as e:
    out("cuda_error", repr(e))
)PY";

std::vector<std::pair<std::string, std::string>> parse_lines(const std::string& text) {
  std::vector<std::pair<std::string, std::string>> facts;
  std::istringstream stream(text);
  std::string line;
  while (std::getline(stream, line)) {
    size_t tab = line.find('\t');
    if (tab != std::string::npos) facts.emplace_back(line.substr(0, tab), line.substr(tab + 1));
  }
  return facts;
}

std::string last_line(const std::string& text) {
  size_t end = text.find_last_not_of("\n ");
  if (end == std::string::npos) return "";
  size_t start = text.rfind('\n', end);
  return text.substr(start == std::string::npos ? 0 : start + 1,
                     end - (start == std::string::npos ? 0 : start + 1) + 1);
}

void probe_torch(const std::string& python, int timeout_seconds, TorchFacts& torch) {
  ProcessResult run = run_process({python, "-c", kTorchProbe}, timeout_seconds);
  for (auto& [key, value] : parse_lines(run.output)) {
    if (key == "version")
      torch.version = value;
    else if (key == "cuda")
      torch.cuda_version = value;
    else if (key == "cxx11")
      torch.reported_cxx11_abi = std::atoi(value.c_str());
    else if (key == "loaded")
      torch.loaded_libraries.push_back(value);
    else if (key == "cuda_available")
      torch.cuda_available = true;
    else if (key == "gpu") {
      GpuFacts gpu;
      size_t space = value.find(' ');
      std::sscanf(value.c_str(), "%d.%d", &gpu.major, &gpu.minor);
      if (space != std::string::npos) gpu.name = value.substr(space + 1);
      torch.gpus.push_back(gpu);
    }
  }
  if (run.timed_out)
    torch.import_error = "`import torch` did not finish within " + std::to_string(timeout_seconds) + " s";
  else if (run.signal)
    torch.import_error = "`import torch` killed the interpreter with signal " + std::to_string(run.signal);
  else if (run.exit_code != 0)
    torch.import_error = "`import torch` failed: " + last_line(run.errors);
  torch.imported = torch.import_error.empty() && !torch.version.empty();
}

}  // namespace

PythonFacts probe_python(const std::string& python, bool with_torch, int torch_timeout_seconds) {
  PythonFacts facts;
  std::string program = python.empty() ? find_on_path("python3") : python;
  if (program.empty()) {
    facts.error = "no python3 on PATH (use --python PATH)";
    return facts;
  }
  ProcessResult run = run_process({program, "-c", kBasicProbe}, 60);
  if (!run.started || run.exit_code != 0) {
    facts.error = "cannot run " + program + ": " +
                  (run.timed_out          ? std::string("timed out")
                   : run.exit_code == 127 ? "not executable"
                                          : last_line(run.errors));
    return facts;
  }
  for (auto& [key, value] : parse_lines(run.output)) {
    if (key == "executable")
      facts.executable = value;
    else if (key == "binary")
      facts.binary = value;
    else if (key == "version")
      std::sscanf(value.c_str(), "%d.%d.%d", &facts.major, &facts.minor, &facts.micro);
    else if (key == "debug")
      facts.debug_build = value == "1";
    else if (key == "free_threaded")
      facts.free_threaded = value == "1";
    else if (key == "soabi")
      facts.soabi = value;
    else if (key == "suffix")
      facts.extension_suffixes.push_back(value);
    else if (key == "glibc")
      facts.glibc_version = value;
    else if (key == "machine")
      facts.machine = value;
    else if (key == "path")
      facts.sys_path.push_back(value);
    else if (key == "site")
      facts.site_dirs.push_back(value);
    else if (key == "manylinux_module")
      facts.has_manylinux_module = value == "1";
    else if (key == "torch_dir") {
      facts.torch.found = true;
      facts.torch.package_dir = value;
    } else if (key == "loaded")
      facts.loaded_libraries.push_back(value);
  }
  facts.ok = facts.major > 0 && !facts.executable.empty() && !facts.binary.empty();
  if (!facts.ok) facts.error = "unexpected answer from " + program;
  if (facts.ok && with_torch && facts.torch.found) probe_torch(program, torch_timeout_seconds, facts.torch);
  return facts;
}

}  // namespace af::doctor
