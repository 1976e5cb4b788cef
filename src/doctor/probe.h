// Facts about one Python interpreter and its torch, collected by running the
// interpreter on small embedded scripts. The torch part runs in its own
// process with a time limit, so an `import torch` that crashes or hangs is
// reported instead of taking the doctor down.
#pragma once

#include <string>
#include <vector>

namespace af::doctor {

struct GpuFacts {
  std::string name;
  int major = 0, minor = 0;  // compute capability
};

struct TorchFacts {
  bool found = false;                         // importlib finds a torch package
  bool imported = false;                      // `import torch` succeeded
  std::string import_error;                   // why not (exception text, signal, timeout)
  std::string version;                        // "2.15.0+cu132"
  std::string cuda_version;                   // "13.2", "" for CPU builds
  int reported_cxx11_abi = -1;                // torch._C._GLIBCXX_USE_CXX11_ABI (0/1), -1 unknown
  std::string package_dir;                    // .../site-packages/torch
  std::vector<std::string> loaded_libraries;  // every shared object mapped after `import torch`
  bool cuda_available = false;
  std::vector<GpuFacts> gpus;
};

struct PythonFacts {
  bool ok = false;
  std::string error;
  std::string executable;  // sys.executable as the interpreter reports it (a venv's python): what to run
  std::string binary;      // its real path: the ELF the loader starts from
  int major = 0, minor = 0, micro = 0;
  bool debug_build = false;
  bool free_threaded = false;
  std::string soabi;                            // "cpython-311-x86_64-linux-gnu"
  std::vector<std::string> extension_suffixes;  // importlib.machinery.EXTENSION_SUFFIXES
  std::string glibc_version;                    // "2.36", "" on musl/unknown
  std::string machine;                          // "x86_64"
  std::vector<std::string> sys_path;
  std::vector<std::string> site_dirs;         // site-packages / dist-packages in sys.path
  std::vector<std::string> loaded_libraries;  // shared objects mapped at start-up
  bool has_manylinux_module = false;          // an importable `_manylinux` may veto tags (not evaluated)
  TorchFacts torch;
};

// Runs `python` (a path or a name on PATH). Never throws; failures land in .error / .torch.import_error.
PythonFacts probe_python(const std::string& python, bool with_torch, int torch_timeout_seconds = 120);

}  // namespace af::doctor
