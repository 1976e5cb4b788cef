// The tile kernel for AVX2 + FMA; flags in cmake/areas/cpu.cmake.
#define AF_TILE_NAMESPACE avx2
#define AF_VECTOR_BYTES 32
#define AF_BF16_PAIRS 0
#include "cpu/attention_tile.inc"
