// The tile kernel for AVX-512F; flags in cmake/areas/cpu.cmake.
#define AF_TILE_NAMESPACE avx512
#define AF_VECTOR_BYTES 64
#define AF_BF16_PAIRS 0
#include "cpu/attention_tile.inc"
