#include "cpu/cpu_attention.h"

#include "common/error.h"

namespace af::cpu {

af_status supports(const AttentionProblem&) { return AF_OK; }
af_status attention_forward(const AttentionProblem&) { return fail(AF_ERR_UNSUPPORTED, "CPU backend not implemented yet"); }

}  // namespace af::cpu
