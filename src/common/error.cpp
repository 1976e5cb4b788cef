#include "common/error.h"

#include <cstdarg>
#include <cstdio>
#include <string>

namespace af {

namespace {
thread_local std::string t_last_error;
}

af_status fail(af_status status, const char* format, ...) {
  char buffer[1024];
  va_list args;
  va_start(args, format);
  std::vsnprintf(buffer, sizeof buffer, format, args);
  va_end(args);
  t_last_error = buffer;
  return status;
}

void clear_error() { t_last_error.clear(); }

const char* last_error() { return t_last_error.c_str(); }

}  // namespace af
