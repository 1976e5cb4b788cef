// CPU backend: FlashAttention's tiled online-softmax algorithm, fp32 accumulation,
// O(n) extra memory, on the library's own thread pool.
#pragma once

#include "api/problem.h"

namespace af::cpu {

// Why the CPU backend cannot run p (AF_OK if it can); records the reason.
af_status supports(const AttentionProblem& p);

// Runs p, which validate_attention_args accepted and supports() allowed.
af_status attention_forward(const AttentionProblem& p);

}  // namespace af::cpu
