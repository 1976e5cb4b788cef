// GQA-packed split-KV decode: the FlashDecoding algorithm with the query heads that share a KV
// head packed into the rows of one tile, for calls where few query rows meet a long cache
// (decode steps, speculative decoding, chunked-prefill tails: seqlen_q * H / Hk small).
//
// Compiled by NVRTC with no headers; the module is attention_params.cuh, common/ptx.cuh, this
// file, common/swizzle.cuh, common/sequence.cuh, decode_fwd.cuh and common/combine.cuh (see
// src/cuda/families.cpp). Macros:
//   AF_HEAD_DIM   compiled head dim D (64, 128, 256); smaller real dims are zero-filled
//   AF_BF16       1: bfloat16, 0: float16 (inputs and output; accumulation is fp32)
//   AF_WARPS      warps per CTA; warp w takes keys [16 w, 16 w + 16) of every key block
//   AF_KV_STAGES  depth of the K/V ring (2 to 4 blocks in flight)
//   AF_EXTRAS     1: softcap and ALiBi are compiled in
//   AF_MIN_BLOCKS CTAs per SM the tile's shared memory and 128 registers per thread allow (the launch bound's
//                 minimum; Variant::ctas_per_sm)
//
// Grid (splits, Hk * m_tiles, B): one CTA per (sequence, KV head, 16 packed rows, key split).
// Packed row r of a (sequence, KV head) is query row r / G of head hk * G + r % G (G = H / Hk),
// so every K/V element is read once per (sequence, KV head) and split, not once per query head.
// Each warp keeps its own online softmax (max, sum, O) over its 16 keys of each block; the warps'
// states merge through shared memory at the end, then go to out and lse, or, with key splits,
// into one share per CTA that the tile's splits merge: on sm_90+, when the launch makes the
// splits of a tile one thread-block cluster (cluster dims (num_splits, 1, 1)), through distributed
// shared memory; otherwise through fp32 partials in global memory, merged by the tile's last CTA
// (decode_fwd.cuh). Paged K/V (any page size >= 1) resolve each key row
// through block_table in the loader, with the table read key blocks ahead of the copies that need
// it (its first entries copied into shared memory as the CTA starts); nothing is gathered beforehand.

constexpr int kHeadDim = AF_HEAD_DIM;
constexpr int kWarps = AF_WARPS;
constexpr int kThreads = kWarps * 32;
constexpr int kBlockM = 16;             // packed rows per CTA (one m16 tile)
constexpr int kBlockN = kWarps * 16;    // keys per step, 16 per warp
constexpr int kKSteps = kHeadDim / 16;  // k16 steps of Q K^T
constexpr int kDTiles = kHeadDim / 8;   // n8 tiles of O
constexpr bool kExtras = AF_EXTRAS != 0;
constexpr int kStages = AF_KV_STAGES;
constexpr int kQBytes = kBlockM * kHeadDim * 2;
constexpr int kKVBytes = kBlockN * kHeadDim * 2;

static_assert(kHeadDim == 64 || kHeadDim == 128 || kHeadDim == 256, "decode head dims: 64, 128, 256");
static_assert(kStages >= 2 && kStages <= 4, "2 to 4 K/V stages");
static_assert(kWarps == 2 || kWarps == 4 || kWarps == 8, "2, 4 or 8 warps");
