// The one selector: answers "supported?", "why not?" and "which backend?" for
// af_attention_supported and af_attention_forward alike, so they cannot disagree.
#pragma once

#include "api/problem.h"

namespace af {

af_status select_backend(const AttentionProblem& p, af_backend requested, af_backend* selected);

}  // namespace af
