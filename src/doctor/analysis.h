// `doctor so`: predicts whether the dynamic loader and Python can load one
// binary in a given environment, and explains each reason it cannot.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "doctor/elf.h"
#include "doctor/ld_cache.h"
#include "doctor/probe.h"
#include "doctor/report.h"

namespace af::doctor {

struct AnalysisContext {
  const PythonFacts* python = nullptr;        // the target interpreter; null when unknown
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
  BinaryReport analyze(const std::string& path, const std::string& display_name = "");

  // Policy check for shipping: glibc symbol versions <= max_glibc, no GLIBCXX/CXXABI
  // version needs, DT_NEEDED only from the manylinux allow-list.
  BinaryReport check_portability(const std::string& path, int max_glibc_minor);

 private:
  struct Scope;
  struct TorchIndex;

  LoadedLibrary* load(const std::string& path);
  std::string find_library(const std::string& name, const LoadedLibrary& requester,
                           const std::map<std::string, std::string>& preloaded, std::string& found_by);
  void build_scope(const LoadedLibrary& target, const std::vector<std::string>& preloaded_paths, Scope& scope);
  const TorchIndex& torch_index(const Scope& scope);

  AnalysisContext context_;
  std::map<std::string, std::unique_ptr<LoadedLibrary>> libraries_;
  std::unique_ptr<TorchIndex> torch_index_;
};

// "GLIBC_2.34" -> {2, 34}; the family is the part before '_'.
bool parse_symbol_version(const std::string& version, std::string& family, std::vector<int>& numbers);

// Demangled C++ name ("" for non-C++ names) and its dual-ABI-neutral key.
std::string demangle(const std::string& mangled);
std::string abi_neutral_key(const std::string& demangled);
bool in_torch_namespace(const std::string& demangled);

}  // namespace af::doctor
