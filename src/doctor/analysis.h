// `doctor so`: predicts whether the dynamic loader and Python can load one
// binary in a given environment, and explains each reason it cannot.
#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "doctor/elf.h"
#include "doctor/ld_cache.h"
#include "doctor/probe.h"
#include "doctor/report.h"

namespace af::doctor {

// The distribution a binary belongs to (its *.dist-info), so that fixes name it.
struct Distribution {
  std::string name;               // METADATA `Name:` ("torchvision"); "" when unknown
  std::string version;            // METADATA `Version:`
  std::string torch_requirement;  // the specifier of `Requires-Dist: torch` ("==2.1.0"), "" when none
};

// Name, Version and the torch requirement from METADATA text (RFC 822 style headers).
Distribution parse_metadata(const std::string& metadata);

// At most max_bytes of a file ("" when it cannot be read).
std::string read_text_file(const std::string& path, size_t max_bytes);

// The version without its local part: "2.15.0+cu132" -> "2.15.0".
std::string public_version(const std::string& version);

// The command (or commands) that install a build of `distribution` that loads in
// this environment: the release built for the installed torch when the
// distribution pins torch (its builds exist per torch release, with no source
// to rebuild), a forced, cache-free source build otherwise (flash-attn: with
// FLASH_ATTENTION_FORCE_BUILD and the C++ ABI torch reports).
std::string matching_build_fix(const Distribution& distribution, const PythonFacts* python);

// The forced, cache-free source build of `distribution` against the installed
// torch, with `extra_env` ("TORCH_CUDA_ARCH_LIST=... ") before it; "" when unnamed.
std::string source_build_command(const Distribution& distribution, const PythonFacts* python,
                                 const std::string& extra_env);

struct AnalysisContext {
  const PythonFacts* python = nullptr;       // the target interpreter; null when unknown
  std::vector<std::string> ld_library_path;  // $LD_LIBRARY_PATH, split
  std::vector<LdCacheEntry> ld_cache;        // /etc/ld.so.cache
  std::vector<GpuFacts> gpus;                // devices to judge GPU code against
  std::string gpu_source;                    // "--gpu", "libcuda", "torch"
};

// A parsed library plus its defined dynamic symbols by name (built on first use).
struct LoadedLibrary {
  std::string path;
  ElfFile elf;
  bool symbols_indexed = false;
  std::unordered_map<std::string, std::vector<const ElfSymbol*>> definitions;
};

class Analyzer {
 public:
  explicit Analyzer(AnalysisContext context);
  ~Analyzer();

  // Loadability of `path` in the context's environment (see the checks in docs/doctor-json-schema.md).
  // `distribution` names the package for fixes; when null it is looked up in the
  // *.dist-info/RECORD files of the directories above `path`.
  BinaryReport analyze(const std::string& path, const std::string& display_name = "",
                       const Distribution* distribution = nullptr);

  // The installed distribution whose RECORD lists `path` (empty name when none).
  Distribution owner_of(const std::string& path);

  // Policy check for shipping: glibc symbol versions <= max_glibc, no GLIBCXX/CXXABI
  // version needs, DT_NEEDED only from the manylinux allow-list.
  BinaryReport check_portability(const std::string& path, int max_glibc_minor);

 private:
  struct Scope;
  struct TorchIndex;
  struct TorchExports;

  LoadedLibrary* load(const std::string& path);
  std::string find_library(const std::string& name, const LoadedLibrary& requester,
                           const std::map<std::string, std::string>& preloaded, std::string& found_by);
  void build_scope(const LoadedLibrary& target, const std::vector<std::string>& preloaded_paths, Scope& scope);
  const TorchIndex& torch_index(const Scope& scope);
  std::vector<LoadedLibrary*> torch_libraries();  // torch/lib's own libraries, when torch is installed
  const TorchExports& torch_exports();

  AnalysisContext context_;
  std::map<std::string, std::unique_ptr<LoadedLibrary>> libraries_;
  std::unique_ptr<TorchIndex> torch_index_;
  std::unique_ptr<TorchExports> torch_exports_;
  // Per directory: each *.dist-info below it with its metadata and the paths its RECORD lists.
  std::map<std::string, std::vector<std::pair<Distribution, std::set<std::string>>>> records_;
};

// Per-build alternatives of one binary that a package chooses between at run
// time: per-CUDA (or CPU) builds (libbitsandbytes_cuda121.so / _cuda124.so /
// _cpu.so; _cu12 / _cu13) and extension modules named
// <module>.<variant>.<PEP 3149 tag>.so (mpi4py's MPI.mpich / MPI.openmpi,
// imported by file name by the package's loader). Binaries in one directory
// whose names differ only in that token form a group. When one of a group is
// healthy, the errors of the others become info. When no module variant loads
// for want of its libraries, the group gets one warning (the rest info): the
// package imports without them until one is asked for. Per-CUDA groups that
// all fail keep their errors. (A module variant with this interpreter's tag is
// info in the per-binary check, not "Python never looks at this file name".)
void judge_alternatives(std::vector<BinaryReport>& reports);

// The name with its variant token replaced by "{}" ("" when it has none):
// "libbitsandbytes_{}.so", "MPI.{}.cpython-312-x86_64-linux-gnu.so".
std::string alternative_key(const std::string& file_name);

// In a scan of many binaries (an environment, a wheel): a plain library that is
// neither an extension module nor a torch library, and that no scanned binary
// lists in DT_NEEDED, is loaded only on demand (nvshmem's transports, triton's
// plugins): its errors become warnings. A truncated file stays an error.
void judge_optional_libraries(std::vector<BinaryReport>& reports);

// "GLIBC_2.34" -> {2, 34}; the family is the part before '_'.
bool parse_symbol_version(const std::string& version, std::string& family, std::vector<int>& numbers);

// Demangled C++ name ("" for non-C++ names) and its dual-ABI-neutral key.
std::string demangle(const std::string& mangled);
std::string abi_neutral_key(const std::string& demangled);
bool in_torch_namespace(const std::string& demangled);

}  // namespace af::doctor
