// Argument validation: the public af_attention_args -> AttentionProblem.
#pragma once

#include "problem/problem.h"

namespace af {

// What validation may assume about the call.
enum class ValidateMode {
  kCall,   // a call about to run: every data pointer set, host index arrays read and checked
  kShapes  // a plan: shapes, strides, dtypes, devices and flags only; data pointers may be NULL
};

// Validates every field of args and fills *problem. Returns a specific status
// with a message (af::fail) on the first problem found; reads index arrays only
// when they are in host memory (and mode is kCall).
af_status validate_attention_args(const af_attention_args* args, AttentionProblem* problem,
                                  ValidateMode mode = ValidateMode::kCall);

}  // namespace af

namespace af {

// AF_OK when a call has the shapes, dtypes, device and flags a plan was made for (and strides
// alike in 16-byte alignment); else AF_ERR_INVALID_ARGUMENT naming the first field that differs.
af_status check_same_shapes(const AttentionProblem& plan, const AttentionProblem& call);

}  // namespace af
