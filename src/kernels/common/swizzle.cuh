// XOR-swizzled shared-memory tiles of (rows, kHeadDim) 16-bit elements, 16-byte chunks, so that
// cp.async stores and ldmatrix loads are free of bank conflicts. The including family defines
// kHeadDim before this text.

constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per smem row
static_assert(kChunks % 4 == 0, "swizzle needs at least four 16-byte chunks per row");

// Chunk position inside a row: rows of 8k chunks XOR with row % 8; rows of 4 (mod 8) chunks
// put two rows in a 128-byte line, so they XOR with (row / 2) % 4 instead.
__device__ __forceinline__ int swizzle(int row, int chunk) {
  return (kChunks % 8 == 0) ? (chunk ^ (row & 7)) : (chunk ^ ((row >> 1) & 3));
}

// Byte offset of element (row, col) of a (rows, kHeadDim) swizzled tile.
__device__ __forceinline__ af_u32 tile_offset(int row, int col) {
  return af_u32((row * kHeadDim + swizzle(row, col >> 3) * 8 + (col & 7)) * 2);
}

// ldmatrix addresses without per-step arithmetic. A lane reads row lane_row + 16 * r and chunk
// lane_chunk + 2 * c (lane_chunk is 0 or 1): the XOR mask depends only on lane_row (16-row
// steps keep row % 8 and (row / 2) % 4). Tiles and rows start on 16 * kGroup-byte boundaries,
// so the chunk pair inside a swizzle group is an XOR of the lane's base address and the
// group index a compile-time offset: one register per operand, one LOP3 per access.
constexpr int kGroup = (kChunks % 8 == 0) ? 8 : 4;  // chunks sharing one XOR pattern
__device__ __forceinline__ af_u32 fragment_base(af_u32 tile, int lane_row, int lane_chunk) {
  return tile + af_u32(lane_row * kHeadDim * 2 + 16 * (swizzle(lane_row, 0) ^ lane_chunk));
}
// Address of (lane_row + row_step, chunk 2 * chunk_pair + lane_chunk); both steps compile-time.
__device__ __forceinline__ af_u32 fragment_address(af_u32 base, int row_step, int chunk_pair) {
  const int chunk = 2 * chunk_pair;
  return (base ^ af_u32((chunk % kGroup) * 16)) + af_u32((chunk / kGroup) * kGroup * 16 + row_step * kHeadDim * 2);
}
