// Subcommands of the `attnforge` command. Each takes argv with argv[0] the
// subcommand's name and returns the process exit code (0 ok, 1 failed, 2 usage).
#pragma once

namespace af::cli {

int run_info(int argc, char** argv);
int run_bench(int argc, char** argv);
int run_selftest(int argc, char** argv);
int run_warmup(int argc, char** argv);
int run_cache(int argc, char** argv);

// True when args[i] is --help or -h.
bool is_help(const char* arg);

}  // namespace af::cli
