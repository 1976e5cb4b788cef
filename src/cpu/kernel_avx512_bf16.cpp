// The tile kernel for AVX-512F with AVX512-BF16 dot products for bf16 inputs
// (fp32 and fp16 inputs run the same code as kernel_avx512.cpp); flags in
// cmake/areas/cpu.cmake.
#define AF_TILE_NAMESPACE avx512_bf16
#define AF_VECTOR_BYTES 64
#ifndef AF_BF16_PAIRS  // cpu.cmake sets 0 when the compiler lacks -mavx512bf16
#define AF_BF16_PAIRS 1
#endif
#include "cpu/attention_tile.inc"
