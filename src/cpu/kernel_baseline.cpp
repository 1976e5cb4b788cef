// The tile kernel for x86-64 baseline (SSE2); flags in cmake/areas/cpu.cmake.
#define AF_TILE_NAMESPACE baseline
#define AF_VECTOR_BYTES 16
#define AF_BF16_PAIRS 0
#include "cpu/attention_tile.inc"
