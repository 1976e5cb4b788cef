// attnforge doctor: reads ELF files, fatbins and wheels to explain why a compiled
// Python extension will not load. Linked into the attnforge command, not into
// libattnforge.so.
#pragma once

namespace af::doctor {

// Entry point for `attnforge doctor ...`; argv[0] is "doctor". Returns the exit
// code: 0 healthy, 1 problems found, 2 usage or internal error.
int run_doctor_command(int argc, char** argv);

}  // namespace af::doctor
