// Where one sequence's query rows live, shared by the kernels and the combine step.

// Query rows [row0, row0 + len) of one sequence, clamped into [0, total_q] for varlen batches.
// The prologue and the epilogue each call this (re-reading cu_seqlens_q is cheaper than keeping
// two registers live across the main loop).
struct QueryRows {
  int row0, len;
};
__device__ __forceinline__ QueryRows query_rows(const AttentionParams& p, int batch) {
  if (p.cu_seqlens_q == nullptr) return {0, p.seqlen_q};
  const int row0 = clamp_int(p.cu_seqlens_q[batch], 0, p.total_q);
  return {row0, clamp_int(p.cu_seqlens_q[batch + 1], row0, p.total_q) - row0};
}
