// Thread-local "last error" storage behind af_last_error_message().
#pragma once

#include "attnforge/attnforge.h"

namespace af {

// Records a printf-formatted message for the calling thread and returns status,
// so a failing check reads: return fail(AF_ERR_SHAPE, "q has rank %d", rank);
af_status fail(af_status status, const char* format, ...) __attribute__((format(printf, 2, 3)));

void clear_error();
const char* last_error();

// Propagates a non-OK status from an expression that already recorded its message.
#define AF_RETURN_IF_ERROR(expr)                \
  do {                                          \
    af_status af_status_ = (expr);              \
    if (af_status_ != AF_OK) return af_status_; \
  } while (0)

}  // namespace af
