// The paged decode loader's row -> page division (src/cuda/page_divisor.h): the multiply-high and
// shift the kernel computes equals r / page_size for every row index a kernel can see; and its
// 32-bit-factor row addressing equals the 64-bit offset wherever page_offsets_fit_32 admits it.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>

#include "cuda/page_divisor.h"

namespace {

using af::cuda::page_divide;
using af::cuda::page_divisor;
using af::cuda::page_offsets_fit_32;
using af::cuda::page_row_byte_offset;
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

TEST(PageOffsets, GuardBoundaries) {
  EXPECT_TRUE(page_offsets_fit_32(0, 0));
  EXPECT_TRUE(page_offsets_fit_32(int64_t(UINT32_MAX / 2), int64_t(UINT32_MAX)));
  EXPECT_FALSE(page_offsets_fit_32(int64_t(UINT32_MAX / 2) + 1, 1024)) << "2 * page stride needs 33 bits";
  EXPECT_FALSE(page_offsets_fit_32(1024, int64_t(UINT32_MAX) + 1)) << "row stride needs 33 bits";
  EXPECT_FALSE(page_offsets_fit_32(-1024, 1024));
  EXPECT_FALSE(page_offsets_fit_32(1024, -1));
}

// 2 * (page * page_stride + (row % page_size) * row_stride), in 64 bits.
uint64_t byte_offset(uint64_t page, int64_t row, int64_t page_size, int64_t page_stride, int64_t row_stride) {
  return 2 * (page * uint64_t(page_stride) + uint64_t(row % page_size) * uint64_t(row_stride));
}

TEST(PageOffsets, ExactWhereAdmitted) {
  // Page and row strides at and below the guard's limits, pages up to the last of a 2^31-page pool
  // (offsets far past 2^32 bytes), rows up to INT32_MAX.
  std::mt19937_64 rng(12);
  std::uniform_int_distribution<int64_t> row(0, kMaxRow), size(1, 4096), page(0, INT32_MAX);
  const int64_t page_strides[] = {0, 1, 16 * 8 * 128, 256 * 64 * 256, int64_t(UINT32_MAX / 2)};
  const int64_t row_strides[] = {0, 8, 8 * 128, 64 * 256 * 4096, int64_t(UINT32_MAX)};
  for (int64_t ps : page_strides)
    for (int64_t rs : row_strides) {
      ASSERT_TRUE(page_offsets_fit_32(ps, rs));
      for (int i = 0; i < 2000; ++i) {
        const int64_t d = i % 3 == 0 ? int64_t(1) << (i % 12) : size(rng);
        const int64_t r = i % 5 == 0 ? kMaxRow - i : row(rng);
        const uint64_t pg = i % 7 == 0 ? uint64_t(INT32_MAX) : uint64_t(page(rng));
        ASSERT_EQ(page_row_byte_offset(page_divisor(d), uint32_t(pg), r, d, ps, rs), byte_offset(pg, r, d, ps, rs))
            << "page " << pg << ", row " << r << ", page_size " << d << ", strides " << ps << "/" << rs;
      }
    }
}

TEST(PageOffsets, WrongPastTheGuard) {
  // The guard is tight: one past either limit and the 32-bit factors lose bits.
  const int64_t d = 16, r = 17;
  const int64_t big_page = int64_t(UINT32_MAX / 2) + 1, big_row = int64_t(UINT32_MAX) + 1;
  EXPECT_NE(page_row_byte_offset(page_divisor(d), 3, r, d, big_page, 1024), byte_offset(3, r, d, big_page, 1024));
  EXPECT_NE(page_row_byte_offset(page_divisor(d), 3, r, d, 1024, big_row), byte_offset(3, r, d, 1024, big_row));
}

}  // namespace
