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

// Key rows [row0, row0 + len) of one sequence's padded or varlen (not paged) k/v: cu_seqlens_k's
// range, then seqused_k ends it and leftpad_k starts it, each clamped so that no index array can
// move an access out of bounds (fwd_sm80's rules, flash_fwd.cuh; fwd_sm90 reads them from here).
struct KeyRows {
  int row0, len;
};
__device__ __forceinline__ KeyRows key_rows(const AttentionParams& p, int batch) {
  int row0 = 0, len = p.seqlen_k, avail = p.seqlen_k;  // avail: rows addressable from row0
  if (p.cu_seqlens_k != nullptr) {
    row0 = clamp_int(p.cu_seqlens_k[batch], 0, p.total_k);
    avail = p.total_k - row0;
    len = clamp_int(p.cu_seqlens_k[batch + 1], row0, p.total_k) - row0;
  }
  if (p.seqused_k != nullptr) len = clamp_int(p.seqused_k[batch], 0, avail);
  if (p.leftpad_k != nullptr) {
    const int pad = clamp_int(p.leftpad_k[batch], 0, len);
    row0 += pad;
    len -= pad;
  }
  return {row0, len};
}
