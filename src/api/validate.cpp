#include "api/problem.h"
#include "common/error.h"

namespace af {

af_status validate_attention_args(const af_attention_args* args, AttentionProblem* problem) {
  if (args == nullptr) return fail(AF_ERR_NULL_POINTER, "args is NULL");
  return fail(AF_ERR_UNSUPPORTED, "validation not implemented yet");
}

}  // namespace af
