// The kvcache family: flash_attn_with_kvcache's rotary embedding and in-place append on the GPU,
// one small kernel before the attention on the same stream (KvAppendParams in
// attention_params.cuh). Compiled by NVRTC with no headers after attention_params.cuh and
// common/ptx.cuh; AF_BF16 picks the 16-bit type.
//
// Grid (ceil(vectors / 4)), 128 threads: warp w of CTA c takes vector 4c + w, first the
// B * S_new * Hk new k/v rows, then the B * Sq * H query rows. A lane takes whole rotary pairs, so
// each pair is read before it is written (q_out may be q itself).

__device__ __forceinline__ float to_float(af_u16 x) {
  float f;
  if (kBf16) {
    f = __uint_as_float(af_u32(x) << 16);
  } else {
    asm("cvt.f32.f16 %0, %1;\n" : "=f"(f) : "h"(x));
  }
  return f;
}
__device__ __forceinline__ af_u16 to_16(float x) { return af_u16(pack2(x, 0.f) & 0xffffu); }

// Rotates (or copies) one vector of head_dim elements from src to dst at rotary position pos.
__device__ __forceinline__ void rotate_vector(const KvAppendParams& p, const af_u16* src, af_u16* dst, int pos) {
  const int lane = int(threadIdx.x) & 31;
  const int half = p.rotary_dim / 2;
  if (p.rotary_dim > 0) {
    const af_u16* cos_row = (const af_u16*)p.rotary_cos + (long long)pos * p.cos_row_stride;
    const af_u16* sin_row = (const af_u16*)p.rotary_sin + (long long)pos * p.sin_row_stride;
    for (int i = lane; i < half; i += 32) {
      const int a = p.interleaved ? 2 * i : i;
      const int b = p.interleaved ? 2 * i + 1 : i + half;
      const float c = to_float(cos_row[i]), s = to_float(sin_row[i]);
      const float x1 = to_float(src[a]), x2 = to_float(src[b]);
      dst[a] = to_16(x1 * c - x2 * s);
      dst[b] = to_16(x1 * s + x2 * c);
    }
  }
  for (int e = p.rotary_dim + lane; e < p.head_dim; e += 32) dst[e] = src[e];
}

extern "C" __global__ void __launch_bounds__(128) af_kvcache_append(const KvAppendParams p) {
  if (p.seqused_out != nullptr && blockIdx.x == 0)
    for (int b = int(threadIdx.x); b < p.batch; b += 128) p.seqused_out[b] = p.cache_seqlens[b] + p.seqlen_new;
  const long long vector = (long long)blockIdx.x * 4 + (threadIdx.x >> 5);
  const long long kv_vectors = (long long)p.batch * p.seqlen_new * p.heads_kv;
  if (vector < kv_vectors) {
    const int head = int(vector % p.heads_kv);
    const int t = int(vector / p.heads_kv % p.seqlen_new);
    const int b = int(vector / p.heads_kv / p.seqlen_new);
    const int row = p.cache_seqlens[b] + t;
    if (row < 0 || (p.rotary_dim > 0 && row >= p.seqlen_ro)) return;
    long long kc_off, vc_off;
    if (p.block_table != nullptr) {
      const int block = row / p.page_size;
      if (block >= p.max_blocks_per_seq) return;
      const int page = p.block_table[(long long)b * p.block_table_batch_stride + block];
      if (page < 0 || page >= p.num_pages) return;
      const int in_page = row - block * p.page_size;
      kc_off = (long long)page * p.kc_batch_stride + (long long)in_page * p.kc_row_stride;
      vc_off = (long long)page * p.vc_batch_stride + (long long)in_page * p.vc_row_stride;
    } else {
      const int cb = p.cache_batch_idx != nullptr ? p.cache_batch_idx[b] : b;
      if (cb < 0 || cb >= p.cache_batches || row >= p.cache_rows) return;
      kc_off = (long long)cb * p.kc_batch_stride + (long long)row * p.kc_row_stride;
      vc_off = (long long)cb * p.vc_batch_stride + (long long)row * p.vc_row_stride;
    }
    const af_u16* k = (const af_u16*)p.k + (long long)b * p.k_batch_stride + (long long)t * p.k_row_stride +
                      (long long)head * p.k_head_stride;
    const af_u16* v = (const af_u16*)p.v + (long long)b * p.v_batch_stride + (long long)t * p.v_row_stride +
                      (long long)head * p.v_head_stride;
    af_u16* k_dst = (af_u16*)p.k_cache + kc_off + (long long)head * p.kc_head_stride;
    af_u16* v_dst = (af_u16*)p.v_cache + vc_off + (long long)head * p.vc_head_stride;
    rotate_vector(p, k, k_dst, row);
    for (int e = int(threadIdx.x & 31); e < p.head_dim; e += 32) v_dst[e] = v[e];
    return;
  }
  const long long q_vector = vector - kv_vectors;
  if (q_vector >= (long long)p.batch * p.seqlen_q * p.heads_q) return;
  const int head = int(q_vector % p.heads_q);
  const int t = int(q_vector / p.heads_q % p.seqlen_q);
  const int b = int(q_vector / p.heads_q / p.seqlen_q);
  const int pos = clamp_int(p.cache_seqlens[b] + (p.q_per_row ? t : 0), 0, p.seqlen_ro > 0 ? p.seqlen_ro - 1 : 0);
  const af_u16* q = (const af_u16*)p.q + (long long)b * p.q_batch_stride + (long long)t * p.q_row_stride +
                    (long long)head * p.q_head_stride;
  af_u16* q_out = (af_u16*)p.q_out + (long long)b * p.qo_batch_stride + (long long)t * p.qo_row_stride +
                  (long long)head * p.qo_head_stride;
  rotate_vector(p, q, q_out, pos);
}
