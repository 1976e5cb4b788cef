// `doctor wheel`: judges a wheel file without installing it — its tags against
// an interpreter's supported list, RECORD hashes, a pure wheel that lacks the
// compiled module its code imports, and every compiled member through `so`.
#pragma once

#include <string>
#include <vector>

#include "doctor/analysis.h"
#include "doctor/report.h"

namespace af::doctor {

struct WheelReport {
  std::string path;
  bool readable = false;
  std::vector<std::string> tags;   // from the file name
  std::string best_tag;            // the supported tag pip would match first, "" if none
  long best_tag_index = -1;        // its position in the interpreter's ordered list
  std::vector<Finding> findings;   // wheel-level findings
  std::vector<BinaryReport> binaries;
  bool healthy() const;
};

// `python` may be null (tags are then not judged). Compiled members are
// extracted below scratch_dir and analyzed with `analyzer`.
WheelReport analyze_wheel(const std::string& path, const PythonFacts* python, Analyzer& analyzer,
                          const std::string& scratch_dir);

std::string wheel_json(const WheelReport& report);
std::string wheel_text(const WheelReport& report, bool verbose);

}  // namespace af::doctor
