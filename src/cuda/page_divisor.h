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

// What the kernel computes, for host tests: __umulhi(2 r, magic) >> shift.
inline int64_t page_divide(const PageDivisor& div, int64_t r) {
  const uint32_t hi = uint32_t((uint64_t(uint32_t(r) << 1) * div.magic) >> 32);
  return int64_t(hi >> div.shift);
}

}  // namespace af::cuda

#endif  // AF_CUDA_PAGE_DIVISOR_H
