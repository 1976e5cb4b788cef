// Constants of the fwd_sm90 family (Hopper, sm_90a), from the variant's macros (src/cuda/families.cpp):
//   AF_HEAD_DIM   compiled head dim D (64, 128 or 256); smaller real dims (multiples of 8) read as zeros
//   AF_BF16       1: bfloat16, 0: float16 (inputs and output; accumulation is fp32)
//   AF_BLOCK_M    query rows per work tile, 64 per consumer warpgroup (128: two consumers; 192, head
//                 dim 64 only: three)
//   AF_BLOCK_N    keys per main-loop step, the N of the S = Q K^T wgmma: 128 (d64, d128) or 64 (d256) by
//                 default; $ATTNFORGE_SM90_BLOCK_N (tuning) any multiple of 16 from 64 to 192 (P V's
//                 k16 steps); K/V atoms stay 1024-byte aligned (kBlockN * 128 bytes, a multiple of 8 rows)
//   AF_KV_STAGES  depth of the K and V ring (TMA loads in flight ahead of the consumers)
//   AF_SM90_SCHEDULE  the consumers' main loop: 0 v0 (serial), 1 overlap (the next block's Q K^T and
//                 softmax while this block's P V runs), 2 pingpong (overlap, the two consumers taking
//                 turns to issue their wgmmas); Sm90Schedule in src/cuda/families.h
//   AF_SM90_PERSISTENT  1: a persistent grid (each CTA loops over work tiles, the producer loading
//                 the next tile while the consumers finish this one); 0: one CTA per tile
//   AF_SM90_TMA_STORE  1 (persistent only): O leaves through shared memory and TMA stores, which
//                 run while the consumers start the next tile; 0: O stored from registers
//   AF_SM90_DYNAMIC  1 (persistent only): each CTA's next tile comes from the tile counter
//                 (FlashFwdParams::tile_counter, an atomic), not from static striding; 0: striding
//   AF_Q_BUFFERS  Q tiles in shared memory: 2 (persistent forms where it fits: src/cuda/families.cpp's
//                 sm90_q_buffers) lets the producer load the next tile's Q while the consumers work on
//                 this one; 1 otherwise
//   AF_CROSS_TILE 1 (with two Q tiles): the cross-tile pipeline below; 0 where the NVRTC's ptxas would
//                 serialise its wgmmas (12.1 to 12.8: src/cuda/families.cpp's sm90_cross_tile)
//   AF_DEFERRED_MAX 1: the overlap and pingpong main loops issue a step's P V before its S and run the exps
//                 against the reference max first, taking the block max only where a row's sum of P passes 2^8
//                 (softmax_deferred in flash_fwd_sm90.cuh); 0: S first, the block max, then the exps
//                 (src/cuda/families.cpp's sm90_deferred_max)
//   AF_EXTRAS     1: a sliding window's left edge (window_left) and softcap are compiled in; 0: the
//                 kernel ignores both (the plan sends no such call to it), so the common case pays nothing

constexpr int kHeadDim = AF_HEAD_DIM;
constexpr int kBlockM = AF_BLOCK_M;
constexpr int kConsumers = kBlockM / 64;  // consumer warpgroups of 64 rows each
constexpr int kBlockN = AF_BLOCK_N;
constexpr int kStages = AF_KV_STAGES;
constexpr int kSchedule = AF_SM90_SCHEDULE;
constexpr bool kPersistent = AF_SM90_PERSISTENT != 0;
constexpr bool kTmaStore = AF_SM90_TMA_STORE != 0;
constexpr bool kDynamic = AF_SM90_DYNAMIC != 0;
constexpr bool kExtras = AF_EXTRAS != 0;
constexpr int kQBuffers = AF_Q_BUFFERS;
constexpr bool kDeferredMax = AF_DEFERRED_MAX != 0;
// The persistent forms with two Q tiles carry each tile's last P V and epilogue into the next tile's first
// step (flash_fwd_sm90.cuh, "cross-tile form"): the next tile's Q must be in shared memory by then.
constexpr bool kCrossTile = kPersistent && kQBuffers == 2 && AF_CROSS_TILE != 0;
static_assert(kPersistent || !kTmaStore, "the TMA-store epilogue is a persistent form's");
static_assert(kPersistent || !kDynamic, "the dynamic tile scheduler is a persistent form's");
// O's staging tile: its own kBlockM x D buffer where it fits beside Q and the K/V ring within the
// 226 KB of dynamic shared memory (d128, 2 stages: 160 + 32 KB); else (d256; d128 with 3 stages) Q's
// buffer, which then is released to the producer only after the store has read it. src/cuda/families.h's
// sm90_o_in_q is the same rule.
constexpr int kSmemLimit = 227 * 1024 - 1024;
constexpr int kThreads = 128 * (1 + kConsumers);  // warpgroup 0: producer; 1 to kConsumers: consumers
constexpr int kAtoms = kHeadDim / 64;             // 64-column (128-byte) swizzle atoms per row
constexpr int kConsumerWarps = 4 * kConsumers;
constexpr unsigned kQBytes = kBlockM * kHeadDim * 2;
constexpr unsigned kKVBytes = kBlockN * kHeadDim * 2;
constexpr bool kOInQ = kTmaStore && 2 * kQBytes + 2 * kStages * kKVBytes + 1024 > unsigned(kSmemLimit);
static_assert(kQBuffers == 1 ||
                  (kQBuffers == 2 && kPersistent && !kOInQ &&
                   (2 + (kTmaStore ? 1 : 0)) * kQBytes + 2 * kStages * kKVBytes + 1024 <= unsigned(kSmemLimit)),
              "a second Q tile: persistent forms, beside the K/V ring and O's own staging tile");
// setmaxnreg: 128 x (24 + 240 + 240) = 64512 of the SM's 65536 registers, what 384 threads at 168
// registers (the launch's count) hold; the producer's one thread only issues TMA, the consumers hold S
// (kBlockN / 2 fp32), O (D / 2 fp32) and P (kBlockN / 4 registers of two 16-bit values). The dynamic
// form's producer also carries the fetched tile: at d64 NVRTC 12.1 spilled it at 24 registers, so
// there it gets 32 and the consumers, whose d64 tile needs far fewer, 232 (128 x 496 <= 64512).
// Three consumers (512 threads at 128 registers at entry): 32 + 3 x 160, all 65536 (FlashAttention-3's
// split for three MMA warpgroups); a d64 consumer holds S 64, P 32 and O 32 registers.
constexpr bool kWideProducer = (kDynamic && kHeadDim == 64) || kConsumers == 3;
constexpr int kProducerRegisters = kWideProducer ? 32 : 24;
constexpr int kConsumerRegisters = kConsumers == 3 ? 160 : (kWideProducer ? 232 : 240);
static_assert(128 * (kProducerRegisters + kConsumers * kConsumerRegisters) <= 65536,
              "setmaxnreg over the SM's registers");

static_assert(kHeadDim == 64 || kHeadDim == 128 || kHeadDim == 256, "fwd_sm90 compiles head dims 64, 128 and 256");
static_assert(kBlockM == 128 || (kBlockM == 192 && kHeadDim == 64), "128 query rows, or 192 at head dim 64");
static_assert(kBlockN % 16 == 0 && kBlockN >= 64 && kBlockN <= 192,
              "the S wgmma is m64nNk16 with N a multiple of 16 (P V's k16 steps) from 64 to 192");
constexpr int kSRegisters = kBlockN / 2;  // S accumulators per thread (64 rows x kBlockN keys)
static_assert(kSchedule >= 0 && kSchedule <= 2, "schedules: 0 v0, 1 overlap, 2 pingpong");
static_assert(!kCrossTile || kSchedule != 0, "the cross-tile form overlaps a step's wgmmas: overlap or pingpong");
static_assert(kStages >= 2 && kStages <= 4, "2 to 4 K/V stages");
