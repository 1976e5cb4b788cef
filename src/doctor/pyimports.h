// What a wheel's Python code imports when its packages are imported, read
// from the sources without running them: used to tell a compiled module the
// wheel lacks (flash-attn built without its CUDA extension) from names that
// are only functions, classes or `__version__`, imports in docstrings and
// comments, and imports inside functions or try blocks (which are optional).
#pragma once

#include <set>
#include <string>
#include <vector>

namespace af::doctor {

struct PythonSource {
  std::string module;  // dotted name: "pkg.sub" for pkg/sub.py and pkg/sub/__init__.py
  bool is_package = false;
  std::string text;
};

// One logical line of Python (continuations joined), with string literals
// emptied and comments removed; `indent` is its first physical line's indentation.
struct PythonLine {
  int indent = 0;
  std::string text;
};
std::vector<PythonLine> python_logical_lines(const std::string& source);

struct MissingModule {
  std::string module;    // "flash_attn_2_cuda", "demo._C"
  std::string importer;  // the module whose top-level statement imports it
  bool reached = false;  // imported (transitively, at top level) by importing the wheel's top-level packages
};

struct ImportScan {
  std::vector<MissingModule> missing;  // in-wheel modules imported at top level that exist nowhere in the wheel
  std::vector<std::pair<std::string, std::string>>
      external;                   // top-level names outside the wheel imported by reached modules -> importer
  std::set<std::string> reached;  // modules of `modules` that importing the top-level packages runs
};

// `modules`: every importable module of the wheel (sources, compiled modules,
// package directories). Only statements at module level count; a name taken
// `from pkg import name` is a missing module only when pkg's own source binds
// no such name (and pkg has no module __getattr__, star import or sys.modules trick).
ImportScan scan_imports(const std::vector<PythonSource>& sources, const std::set<std::string>& modules);

}  // namespace af::doctor
