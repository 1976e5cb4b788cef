// The library's own worker pool (not OpenMP, whose runtime clashes with torch's).
#pragma once

#include <cstdint>
#include <functional>

namespace af {

// Calls body(begin, end) on disjoint chunks covering [0, n), at most
// num_threads() at a time, the calling thread included; returns when all are
// done. Chunks hold about `grain` items. Nested calls run serially.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body);

// The most threads the pool runs; callers refuse larger requests.
constexpr int kMaxThreads = 1024;

// n < 1 restores the default: $ATTNFORGE_NUM_THREADS (a decimal integer, clamped to
// 1..kMaxThreads; anything else is ignored), else hardware concurrency. n must not exceed kMaxThreads.
void set_num_threads(int n);
int num_threads();

}  // namespace af
