// The tile kernel for AVX-512F; flags in cmake/areas/cpu.cmake.
#define AF_TILE_NAMESPACE avx512
#define AF_VECTOR_BYTES 64
#include "cpu/attention_tile.inc"
