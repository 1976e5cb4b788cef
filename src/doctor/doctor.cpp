#include "doctor/doctor.h"

#include <cstdio>

namespace af::doctor {

int run_doctor_command(int, char**) {
  std::fprintf(stderr, "attnforge doctor: not implemented yet\n");
  return 2;
}

}  // namespace af::doctor
