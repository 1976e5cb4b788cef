// `doctor wheel`: judges a wheel file without installing it — its tags against
// an interpreter's supported list, RECORD hashes, a pure wheel that lacks the
// compiled module its code imports, and every compiled member through `so`.
#pragma once

#include <set>
#include <string>
#include <vector>

#include "doctor/analysis.h"
#include "doctor/pyimports.h"
#include "doctor/report.h"

namespace af::doctor {

struct WheelReport {
  std::string path;
  bool readable = false;
  std::vector<std::string> tags;  // from the file name
  std::string best_tag;           // the supported tag pip would match first, "" if none
  long best_tag_index = -1;       // its position in the interpreter's ordered list
  std::vector<Finding> findings;  // wheel-level findings
  std::vector<BinaryReport> binaries;
  bool healthy() const;
};

// `python` may be null (tags are then not judged). Compiled members are
// extracted below scratch_dir and analyzed with `analyzer`.
WheelReport analyze_wheel(const std::string& path, const PythonFacts* python, Analyzer& analyzer,
                          const std::string& scratch_dir);

// The dotted module a path inside a wheel or site-packages defines ("pkg/sub/__init__.py" ->
// "pkg.sub", a package; "pkg/_C.cpython-311-x86_64-linux-gnu.so" -> "pkg._C"); false for other files.
bool python_module_of(const std::string& path, std::string& module, bool& is_package);

// Modules that `sources` import at import time (module level, reached from the
// top-level packages) which exist nowhere: not among `modules`, and for names
// outside them (named after the distribution, as flash_attn_2_cuda) not found by
// the interpreter either. Unreached ones come last, with reached == false.
std::vector<MissingModule> missing_extensions(const std::vector<PythonSource>& sources,
                                              const std::set<std::string>& modules, const std::string& distribution,
                                              const PythonFacts* python);
// The `missing_extension` finding for them (error when `import` reaches one), with the source build that restores it.
Finding missing_extension_finding(const std::vector<MissingModule>& absent, const Distribution& distribution,
                                  const PythonFacts* python);

std::string wheel_json(const WheelReport& report);
std::string wheel_text(const WheelReport& report, bool verbose);

}  // namespace af::doctor
