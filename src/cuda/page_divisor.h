// Division of key rows by the page size without a division instruction, for the paged loader of
// the decode kernel (src/kernels/decode/decode_fwd.cuh).
//
// For a divisor d >= 1, let l = ceil(log2 d) and m = ceil(2^(31 + l) / d). Then for every
// 0 <= r < 2^31:  r / d == floor(r * m / 2^(31 + l)) == __umulhi(2 r, m) >> l.
// Why it is exact: m = 2^(31+l)/d + e with 0 <= e < 1, so r m / 2^(31+l) = r/d + r e / 2^(31+l),
// and r e / 2^(31+l) < 2^-l <= 1/d, which cannot carry r/d (at most q + (d-1)/d) past q + 1.
// m < 2^32 because d > 2^(l-1) (and m = 2^31 for d = 1); 2 r fits in 32 bits because r < 2^31.
// A power of two d = 2^l gives m = 2^31, i.e. a plain shift by l.
#ifndef AF_CUDA_PAGE_DIVISOR_H
#define AF_CUDA_PAGE_DIVISOR_H

#include <cstdint>

namespace af::cuda {

struct PageDivisor {
  uint32_t magic = 0;  // m
  int shift = 0;       // l
};

// d in [1, 2^31 - 1] (a page size; validation keeps it >= 1 and max_blocks * d within int32).
inline PageDivisor page_divisor(int64_t d) {
  PageDivisor out;
  if (d < 1 || d > INT32_MAX) return out;
  int l = 0;
  while ((int64_t(1) << l) < d) ++l;
  const uint64_t numerator = uint64_t(1) << (31 + l);
  out.magic = uint32_t((numerator + uint64_t(d) - 1) / uint64_t(d));
  out.shift = l;
  return out;
}

// Whether the decode loader's shared-page path may address one tensor of a paged cache with
// 32-bit factors: it forms base + page * (2 page_stride) + (2 in-page row) * row_stride as two
// 32x32 -> 64-bit multiply-adds, exact for any pool size when 2 page_stride and row_stride fit
// 32 bits unsigned (2 in-page row < 2 page_size < 2^32). Strides in 2-byte elements, >= 0. A page
// stride of 2^31 elements or more, or a row stride of 2^32 (views of huge caches with the page
// and row dimensions swapped), take the loader's 64-bit path instead.
inline bool page_offsets_fit_32(int64_t page_stride, int64_t row_stride) {
  return page_stride >= 0 && row_stride >= 0 && page_stride <= int64_t(UINT32_MAX / 2) &&
         row_stride <= int64_t(UINT32_MAX);
}

// What the kernel computes, for host tests: __umulhi(2 r, magic) >> shift.
inline int64_t page_divide(const PageDivisor& div, int64_t r) {
  const uint32_t hi = uint32_t((uint64_t(uint32_t(r) << 1) * div.magic) >> 32);
  return int64_t(hi >> div.shift);
}

// What the shared-page loader computes for the byte offset of key row `row` in page `page` (an
// entry already clamped into the pool), for host tests: page * (2 page_stride) + in_page2 *
// row_stride with in_page2 = 2 row - index * 2 page_size in 32-bit arithmetic, each product
// 32x32 -> 64 bits. Equals 2 (page * page_stride + (row % page_size) * row_stride) when
// page_offsets_fit_32(page_stride, row_stride).
inline uint64_t page_row_byte_offset(const PageDivisor& div, uint32_t page, int64_t row, int64_t page_size,
                                     int64_t page_stride, int64_t row_stride) {
  const uint32_t row2 = uint32_t(row) << 1;
  const uint32_t index = uint32_t((uint64_t(row2) * div.magic) >> 32) >> div.shift;
  const uint32_t in_page2 = row2 + index * (0u - 2u * uint32_t(page_size));
  return uint64_t(page) * (uint32_t(page_stride) * 2u) + uint64_t(in_page2) * uint32_t(row_stride);
}

}  // namespace af::cuda

#endif  // AF_CUDA_PAGE_DIVISOR_H
