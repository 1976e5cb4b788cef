// The `attnforge` command: info, bench, warmup, cache, doctor.
//
// Exit codes (every subcommand): 0 success / healthy, 1 the operation failed or
// found problems, 2 usage error or internal error.
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <string>

#include "attnforge/attnforge.h"
#include "cli/commands.h"
#include "doctor/doctor.h"

namespace {

const char kUsage[] =
    "usage: attnforge <command> [options]\n"
    "\n"
    "commands:\n"
    "  info      version, build, and which backends run on this machine (and why not)\n"
    "  bench     time the attention forward pass on one shape\n"
    "  selftest  check the CPU backend against a float64 reference on random inputs\n"
    "  warmup    compile the common GPU kernel variants into the cache\n"
    "  cache     list or clear the kernel cache\n"
    "  doctor    explain why a compiled Python extension will not load\n"
    "  version   print the version\n"
    "\n"
    "`attnforge <command> --help` describes each command.\n"
    "exit codes: 0 success, 1 failure or problems found, 2 usage or internal error\n";

int dispatch(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  if (command == "version" || command == "--version") {
    std::printf("attnforge %s\n", af_version_string());
    return 0;
  }
  if (command == "info") return af::cli::run_info(argc - 1, argv + 1);
  if (command == "bench") return af::cli::run_bench(argc - 1, argv + 1);
  if (command == "selftest") return af::cli::run_selftest(argc - 1, argv + 1);
  if (command == "warmup") return af::cli::run_warmup(argc - 1, argv + 1);
  if (command == "cache") return af::cli::run_cache(argc - 1, argv + 1);
  if (command == "doctor") return af::doctor::run_doctor_command(argc - 1, argv + 1);
  std::fprintf(stderr, "attnforge: unknown command '%s'\n\n%s", command.c_str(), kUsage);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return dispatch(argc, argv);
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "attnforge: out of memory\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "attnforge: internal error: %s\n", e.what());
  }
  return 2;
}
