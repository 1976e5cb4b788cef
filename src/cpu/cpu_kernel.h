// The CPU attention tile kernel: one (sequence, query head) pair, one tile of
// query rows, all of its visible keys, FlashAttention's online softmax.
//
// The kernel is compiled four times (attention_tile.inc included by
// kernel_baseline.cpp, kernel_avx2.cpp, kernel_avx512.cpp and
// kernel_avx512_bf16.cpp, each with its own -m flags) and chosen at run time. It therefore sees only the plain structs
// below: no inline function shared with other translation units may be
// instantiated inside it, or the linker could keep an AVX copy for everyone.
#pragma once

#include <cstdint>

namespace af::cpu {

// Rows of queries and keys per tile. One thread's fp32 scratch (Q and O tiles
// of 64 x D, S of 64 x 128) is 97 KiB for head_dim 128; each packed key tile
// it streams through (K^T and V, 128 keys) is 128 KiB. 128 keys per tile
// rather than 64 halve the per-row softmax bookkeeping (max, sums, rescaling
// O) per key: 5% faster at seqlen 1024, head_dim 64 and 128, on Zen 4.
constexpr int64_t kTileQ = 64;
constexpr int64_t kTileK = 128;

// Problem-wide constants.
struct KernelConfig {
  int32_t dtype;         // af_dtype of q, k, v, out
  int32_t head_dim;      // D
  int32_t padded_dim;    // Dp: D rounded up to 16 floats (the widest vector)
  float softmax_scale;   // resolved, > 0
  float softcap;         // 0: off
  int64_t window_left;   // -1: unbounded
  int64_t window_right;  // -1: unbounded (causal already folded in as 0)
};

// The keys and values of one (sequence, kv head), in the caller's layout.
// Offsets are in elements of the tensor's dtype.
struct KeyValueSource {
  const void* k;  // the tensor's element 0 plus this kv head's offset
  const void* v;
  const int64_t* k_offsets;  // (k_len): element offset of key row j (paging, left padding resolved)
  const int64_t* v_offsets;  // (k_len)
  int64_t k_len;
};

// Packed keys and values of one (sequence, kv head), fp32, tile after tile:
// key tile t (keys [t * kTileK, (t + 1) * kTileK)) is K^T (Dp, kTileK) followed
// by V (kTileK, Dp), kPackedTileFloats(Dp) floats in all; keys past k_len and
// dims past D are zero. Packed once, then read by every query tile of every
// query head of the group: the conversion to fp32 and the transposition are
// paid once per key, and the kernel streams contiguous memory.
constexpr int64_t packed_tile_floats(int64_t padded_dim) { return 2 * padded_dim * kTileK; }

// One (sequence, query head): where its query rows go. Strides in elements.
struct SequenceHead {
  const void* q;  // row 0 of the sequence, this head
  int64_t q_row_stride;
  void* out;  // row 0 of the sequence, this head
  int64_t out_row_stride;
  float* lse;  // row 0 of the sequence, this head; null when not wanted
  int64_t lse_row_stride;
  const float* packed_kv;  // the group's packed keys and values (above)
  int64_t q_len;
  int64_t k_len;
  float alibi_slope;  // 0: no ALiBi
};

// Floats of scratch one thread needs for run_tile (64-byte aligned).
constexpr int64_t tile_scratch_floats(int64_t padded_dim) {
  return 2 * kTileQ * padded_dim + kTileQ * kTileK + 2 * kTileQ + kTileQ * kTileK / 2;  // last: bf16 pairs of P
}

// Writes packed key tile `tile` of kv into dst (packed_tile_floats(Dp) floats).
using PackFunction = void (*)(const KernelConfig&, const KeyValueSource& kv, int64_t tile, float* dst);

// Computes query rows [row_begin, row_end) (at most kTileQ rows) of one SequenceHead.
using TileFunction = void (*)(const KernelConfig&, const SequenceHead&, int64_t row_begin, int64_t row_end,
                              float* scratch);

#define AF_DECLARE_TILE_KERNELS(isa)                                                                           \
  namespace isa {                                                                                              \
  void pack_tile(const KernelConfig&, const KeyValueSource& kv, int64_t tile, float* dst);                     \
  void run_tile(const KernelConfig&, const SequenceHead&, int64_t row_begin, int64_t row_end, float* scratch); \
  }
AF_DECLARE_TILE_KERNELS(baseline)
AF_DECLARE_TILE_KERNELS(avx2)
AF_DECLARE_TILE_KERNELS(avx512)
AF_DECLARE_TILE_KERNELS(avx512_bf16)
#undef AF_DECLARE_TILE_KERNELS

}  // namespace af::cpu
