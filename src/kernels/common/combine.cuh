// Merges the num_splits partial results of each query row (see FlashFwdParams) into out and lse:
// lse = log(sum_s exp(lse_s)), out = sum_s exp(lse_s - lse) * out_s. One warp per row, each lane
// kHeadDim / 32 consecutive columns. Grid (batch * heads, ceil(seqlen_q / 4)), 128 threads.
extern "C" __global__ void __launch_bounds__(128) af_flash_combine(const FlashFwdParams p) {
  // Launched as a programmatic dependent of the kernel on sm_90+: its partial results first.
  grid_dependency_wait();
  constexpr int kColumns = kHeadDim / 32;
  const int lane = int(threadIdx.x) & 31;
  const int row = int(blockIdx.y) * 4 + (int(threadIdx.x) >> 5);
  const int head = int(blockIdx.x) % p.heads_q;
  const int batch = int(blockIdx.x) / p.heads_q;
  const QueryRows rows = query_rows(p, batch);
  if (row >= rows.len) return;
  const long long split_stride = (long long)p.batch * p.heads_q * p.seqlen_q;
  const long long row_index = ((long long)batch * p.heads_q + head) * p.seqlen_q + row;

  float top = AF_NEG_INF;
  for (int s = lane; s < p.num_splits; s += 32) top = fmaxf(top, p.partial_lse[s * split_stride + row_index]);
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, offset));
  float total = 0.f;
  if (top != AF_NEG_INF)
    for (int s = lane; s < p.num_splits; s += 32) total += __expf(p.partial_lse[s * split_stride + row_index] - top);
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) total += __shfl_xor_sync(0xffffffffu, total, offset);
  const float lse = total > 0.f ? top + __logf(total) : AF_NEG_INF;

  float acc[kColumns];
#pragma unroll
  for (int c = 0; c < kColumns; ++c) acc[c] = 0.f;
  if (total > 0.f) {
    for (int s = 0; s < p.num_splits; ++s) {
      const float weight = __expf(p.partial_lse[s * split_stride + row_index] - lse);
      const float* partial = p.partial_out + (s * split_stride + row_index) * kHeadDim + lane * kColumns;
#pragma unroll
      for (int c = 0; c < kColumns; ++c) acc[c] += weight * partial[c];
    }
  }
  af_u16* dst = (af_u16*)p.out + (long long)batch * p.out_batch_stride +
                (long long)(rows.row0 + row) * p.out_row_stride + (long long)head * p.out_head_stride;
#pragma unroll
  for (int c = 0; c < kColumns; ++c) {
    const int col = lane * kColumns + c;
    if (col < p.head_dim) dst[col] = af_u16(pack2(acc[c], 0.f) & 0xffffu);
  }
  if (p.lse != nullptr && lane == 0)
    p.lse[(long long)batch * p.lse_batch_stride + (long long)head * p.lse_head_stride +
          (long long)(rows.row0 + row) * p.lse_row_stride] = lse;
}
