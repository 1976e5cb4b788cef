// The paged decode loader's row -> page division (src/cuda/page_divisor.h): the multiply-high and
// shift the kernel computes equals r / page_size for every row index a kernel can see.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>

#include "cuda/page_divisor.h"

namespace {

using af::cuda::page_divide;
using af::cuda::page_divisor;
using af::cuda::PageDivisor;

constexpr int64_t kMaxRow = INT32_MAX;  // rows are int32 (capacity max_blocks * page_size <= INT32_MAX)

void expect_exact(int64_t d, int64_t r) {
  const PageDivisor div = page_divisor(d);
  ASSERT_EQ(page_divide(div, r), r / d) << "page_size " << d << ", row " << r;
}

TEST(PageDivisor, PowersOfTwoAreShifts) {
  for (int l = 0; l <= 30; ++l) {
    const PageDivisor div = page_divisor(int64_t(1) << l);
    EXPECT_EQ(div.magic, 1u << 31) << "page_size 2^" << l;
    EXPECT_EQ(div.shift, l) << "page_size 2^" << l;
  }
}

TEST(PageDivisor, ExactForEveryRowOfSmallPages) {
  // Every row below 2^16 and the rows around each multiple near the top of the range.
  for (int64_t d = 1; d <= 300; ++d) {
    for (int64_t r = 0; r < (1 << 16); ++r) expect_exact(d, r);
    for (int64_t q = kMaxRow / d - 4; q <= kMaxRow / d; ++q)
      for (int64_t r = q * d - 1; r <= q * d + 1; ++r)
        if (r >= 0 && r <= kMaxRow) expect_exact(d, r);
  }
}

TEST(PageDivisor, ExactOnRandomPagesAndRows) {
  std::mt19937_64 rng(11);
  std::uniform_int_distribution<int64_t> page(1, kMaxRow), row(0, kMaxRow);
  for (int i = 0; i < 20000; ++i) {
    const int64_t d = i % 2 ? page(rng) : page(rng) % 5000 + 1;
    for (int j = 0; j < 50; ++j) expect_exact(d, row(rng));
    expect_exact(d, kMaxRow);
    expect_exact(d, d - 1);
    if (d < kMaxRow) expect_exact(d, d);
  }
}

TEST(PageDivisor, MagicFitsWithoutWrapping) {
  // The worst divisors for the bound m < 2^32: just above a power of two, and the largest.
  for (int64_t d : {int64_t(3), int64_t(5), int64_t(17), int64_t(257), (int64_t(1) << 30) + 1, kMaxRow}) {
    const PageDivisor div = page_divisor(d);
    EXPECT_GT(div.magic, 0u) << d;
    expect_exact(d, kMaxRow);
    expect_exact(d, kMaxRow - 1);
  }
}

}  // namespace
