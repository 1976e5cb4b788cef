// The one selector: answers "supported?", "why not?" and "which backend and kernel?" for
// af_attention_supported, af_attention_forward and af_attention_plan_create alike, so they
// cannot disagree.
#pragma once

#include "cuda/plan.h"
#include "problem/problem.h"

namespace af {

struct Selection {
  af_backend backend = AF_BACKEND_CPU;
  cuda::Choice cuda;  // the kernel, when backend is AF_BACKEND_CUDA
};

af_status select_backend(const AttentionProblem& p, af_backend requested, Selection* selected);

}  // namespace af
