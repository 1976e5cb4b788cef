// Forward attention for sm_80 and newer: the FlashAttention-2 algorithm on mma.sync m16n8k16.
//
// Compiled by NVRTC with no headers; the module is attention_params.cuh, common/ptx.cuh, this file's
// constants, common/swizzle.cuh, common/sequence.cuh, this file and common/combine.cuh (see
// src/cuda/families.cpp).
// The variant is chosen by macros (see src/cuda/families.cpp, the one table of families and variants):
//   AF_HEAD_DIM   compiled head dim D (32, 64, 96, 128, 192, 256); smaller real dims are zero-filled
//   AF_BF16       1: bfloat16, 0: float16 (inputs and output; accumulation is fp32)
//   AF_WARPS      warps per CTA; each warp owns AF_M_TILES * 16 query rows
//   AF_M_TILES    m16 tiles per warp (B fragments of K and V are reused across them)
//   AF_BLOCK_N    keys per main-loop step
//   AF_EXTRAS     1: softcap and ALiBi are compiled in
//   AF_KV_STAGES  1: one K and one V buffer; 2 or 3: K/V ring of that many blocks
//   AF_MIN_BLOCKS CTAs per SM the register allocation must allow (__launch_bounds__)
//
// One CTA per (query tile, head, batch), longest causal tiles first. Per key block, the warp computes S = Q K^T into
// accumulators, applies the mask only on tiles that cross a mask edge, runs the online
// softmax in the log2 domain (exp2 with log2(e) folded into the scale), re-packs P from the
// accumulators straight into A fragments (P never touches shared memory), and accumulates
// O += P V. Key blocks run from the last to the first (the masked ones come first). K and V
// go through cp.async: with s >= 2 stages, K[n-s+1] and V[n-s+1] load into the ring during
// block n (one barrier per block); with 1 stage, V[n] loads during S = Q K[n]^T and K[n-1]
// during P V[n]. Shared memory tiles are XOR-swizzled by 16-byte chunk so ldmatrix and
// cp.async are free of bank conflicts.

constexpr int kHeadDim = AF_HEAD_DIM;
constexpr int kWarps = AF_WARPS;
constexpr int kMTiles = AF_M_TILES;
constexpr int kThreads = kWarps * 32;
constexpr int kBlockM = kWarps * 16 * kMTiles;  // query rows per CTA
constexpr int kBlockN = AF_BLOCK_N;             // keys per step
constexpr int kKSteps = kHeadDim / 16;          // k16 steps of Q K^T
constexpr int kDTiles = kHeadDim / 8;           // n8 tiles of O
constexpr int kNTiles = kBlockN / 8;            // n8 tiles of S
constexpr bool kExtras = AF_EXTRAS != 0;
constexpr int kQBytes = kBlockM * kHeadDim * 2;
constexpr int kKVBytes = kBlockN * kHeadDim * 2;
constexpr int kStages = AF_KV_STAGES;
static_assert(kStages >= 1 && kStages <= 3, "1 to 3 K/V stages");

static_assert(kHeadDim % 32 == 0 && kHeadDim <= 256, "head dim must be a multiple of 32, at most 256");
static_assert(kBlockN % 16 == 0, "block N must be a multiple of 16");
