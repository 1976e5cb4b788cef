// What the doctor found, in a form that prints both for people (one line per
// binary, details with -v) and as JSON (schema: docs/doctor-json-schema.md).
#pragma once

#include <string>
#include <vector>

namespace af::doctor {

enum class Severity { kInfo, kWarning, kError };

// One diagnosis. `check` is a stable identifier (see the schema document).
struct Finding {
  std::string check;
  Severity severity = Severity::kError;
  std::string summary;                // one line
  std::vector<std::string> evidence;  // symbols, versions, paths
  std::string fix;                    // the exact action that repairs it
};

struct LibraryResolution {
  std::string name;      // the DT_NEEDED entry
  std::string path;      // "" when not found
  std::string found_by;  // "already loaded", "RUNPATH", "RPATH", "LD_LIBRARY_PATH", "ld.so.cache", "default path"
};

struct FatbinSummary {
  std::vector<std::string> cubins;  // "sm_80"
  std::vector<std::string> ptx;     // "compute_90"
};

struct BinaryReport {
  std::string path;
  std::string display_name;  // e.g. a wheel member name
  bool readable = false;
  // "extension module" (exports PyInit_*), "torch library" (links libc10/libtorch:
  // loaded with torch.ops.load_library or by a module), "executable" or "library".
  std::string role;
  int cxx11_abi = -1;  // dual ABI the binary was built with, from its torch-namespace references (-1: no evidence)
  std::vector<LibraryResolution> needed;
  size_t undefined_symbols = 0;
  size_t unresolved_symbols = 0;
  bool has_fatbin = false;
  FatbinSummary fatbin;
  std::vector<Finding> findings;

  bool healthy() const;
};

const char* severity_name(Severity severity);

// JSON string literal, valid even for names holding invalid UTF-8 (such bytes become \u00XX).
std::string json_string(const std::string& text);
std::string json_string_array(const std::vector<std::string>& items);
std::string finding_json(const Finding& finding);
std::string binary_json(const BinaryReport& report);

// "  ok      path" / "  BROKEN  path: summary" plus, when verbose, evidence and fixes.
std::string binary_text(const BinaryReport& report, bool verbose);

}  // namespace af::doctor
