// Runs a child process with a time limit and collects its output; used to ask a
// Python interpreter about itself without trusting it not to crash or hang.
#pragma once

#include <string>
#include <vector>

namespace af::doctor {

struct ProcessResult {
  bool started = false;
  bool timed_out = false;
  int exit_code = -1;  // valid when exited normally
  int signal = 0;      // the terminating signal, if any
  std::string output;  // stdout
  std::string errors;  // stderr (last 64 KiB)
};

// argv[0] is looked up on PATH when it has no '/'.
ProcessResult run_process(const std::vector<std::string>& argv, int timeout_seconds);

// First executable named `name` on $PATH; "" if none.
std::string find_on_path(const std::string& name);

}  // namespace af::doctor
