// CPU backend: FlashAttention's tiled online-softmax algorithm, fp32 accumulation,
// O(n) extra memory, on the library's own thread pool.
#pragma once

#include "problem/problem.h"

namespace af::cpu {

// Instruction sets the tile kernel is compiled for (see cpu_kernel.h).
enum class Isa { kBaseline, kAvx2, kAvx512, kAvx512Bf16 };

const char* isa_name(Isa isa);
bool isa_supported(Isa isa);  // by this CPU
Isa best_isa();               // what attention_forward uses

// Why the CPU backend cannot run p (AF_OK if it can); records the reason.
af_status supports(const AttentionProblem& p);

// Runs p, which validate_attention_args accepted and supports() allowed, with
// the best kernel for this CPU.
af_status attention_forward(const AttentionProblem& p);

// Same, with a chosen kernel (tests compare every variant the CPU can run);
// AF_ERR_UNSUPPORTED if this CPU cannot run it.
af_status attention_forward(const AttentionProblem& p, Isa isa);

}  // namespace af::cpu
