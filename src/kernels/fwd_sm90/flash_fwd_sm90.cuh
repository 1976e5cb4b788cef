// Forward attention for Hopper (sm_90a): wgmma + TMA + warp specialisation, FlashAttention-2's
// semantics (the fwd_sm80 family's masks, GQA and LSE).
//
// Module: attention_params.cuh, common/ptx.cuh, flash_fwd_sm90_config.cuh, sm90_ptx.cuh,
// common/sequence.cuh, this file (src/cuda/families.cpp). Padded (B, S, H, D) batches with any
// 16-byte-aligned batch, row and head strides, or varlen ones (packed (total, H, D) rows,
// cu_seqlens_q/k); seqused_k and leftpad_k (key_rows in common/sequence.cuh: fwd_sm80's rules);
// causal (bottom-right) or a window's right edge (window_right); GQA; softmax_lse; in the extras
// variants (AF_EXTRAS) also a sliding window's left edge (window_left) and softcap, with fwd_sm80's
// (FlashAttention-2's) semantics: key j is visible to query row i of a sequence iff
// i + k_len - q_len - window_left <= j <= i + k_len - q_len + window_right (a negative window
// unbounded on its side), and with softcap the score is softcap * tanh(scale * q.k / softcap). The
// plan sends everything else (paged caches, kv_batch_idx, ALiBi, split keys) to fwd_sm80.
//
// Sequences: the tensor maps see padded tensors as (batch, rows, heads, head_dim) and varlen ones
// as one batch of the packed rows; a tile's Q box starts at its sequence's first row
// (cu_seqlens_q[b]) and its K/V boxes at the first used key (cu_seqlens_k[b] + leftpad_k[b]). A
// box that runs past the sequence reads the next sequence's rows or unused cache rows, not the
// map's zeros: such query rows are computed and never stored, such keys are masked to -inf in S,
// and such rows of V (which P's zeros would multiply, 0 x NaN being NaN) are zeroed in shared
// memory before P V reads them (clear_v_tail). Tiles past their sequence's last query row (the
// grid is sized by max_seqlen_q) do nothing.
//
// Work tiles of kBlockM query rows of one (batch, head): 128, or 192 at head dim 64 (AF_BLOCK_M);
// one CTA of a producer warpgroup and kBlockM / 64 consumer warpgroups per tile, grid (query
// tiles, heads, batch), or in the persistent form (AF_SM90_PERSISTENT) at most one wave of CTAs,
// each looping over tiles in the order tile_at() gives (longest first under a causal mask; with a
// sliding window the tiles cost about the same, the first ones of each sequence less): CTA i
// takes tiles i, i + gridDim.x, ..., or in the dynamic form (AF_SM90_DYNAMIC) tile i and then
// whichever tile the counter hands out next when its producer starts a tile (one tile ahead; it
// passes the index to the consumers through a 2-slot ring of shared ints with mbarriers), so a CTA
// that drew short tiles takes more of them:
// - warpgroup 0, the producer, drops to 24 registers (some forms 32: kProducerRegisters); one
//   thread issues the TMA loads: Q once per tile (a "full" mbarrier, and in the persistent form an
//   "empty" one the consumers arrive on after their last Q K^T of the tile, so the next tile's Q
//   lands while they finish this one; with two Q buffers (AF_Q_BUFFERS) it lands while they work on
//   this one, into the buffer the tile before released), then K and V of each key block into a kStages-deep ring,
//   each stage with a "full" mbarrier (transaction bytes) and an "empty" one (one arrival per
//   consumer warp); the ring's position continues from tile to tile;
// - warpgroups 1 to kConsumers, the consumers, rise to 240 registers (three consumers: 160) and
//   own 64 query rows each: per key block, S = Q K^T (wgmma m64nNk16 with N = kBlockN, both
//   operands from shared memory, K-major), softcap's tanh (extras variants, when set), the mask
//   only on blocks that cross the end of the keys or a window edge (the causal diagonal is the right
//   one), the online softmax in fp32 with exp2, P packed from the S accumulators
//   into A fragments (registers), O += P V (wgmma m64n128k16 per two 64-column atoms of V,
//   m64n64k16 at d64; A from registers, V transposed by the instruction).
// A tile's key blocks are those that hold a key visible to one of its rows: from the block of its
// first row's left window edge (extras variants; else block 0) to that of its last row's right
// edge or the end of the keys; a tile with none (rows that see no key) loads nothing and stores
// zeros and an LSE of -inf, as fwd_sm80's. Key blocks run from the last to the first (masked ones
// first), as in fwd_sm80. Two schedules of
// the consumers' loop (AF_SM90_SCHEDULE): v0 waits for each wgmma group as it issues it; overlap
// (FlashAttention-3's intra-warpgroup overlap) issues block i's Q K^T with block i - 1's P V and
// runs block i's softmax while P V is in flight, so the tensor cores work during the exps;
// pingpong is overlap with the consumers taking turns in a ring (named barriers 1 to kConsumers) to
// issue each step's two wgmma groups, so one warpgroup's softmax runs while another's GEMMs do.
// LSE is stored from registers, and so is O except in the TMA-store forms (AF_SM90_TMA_STORE; see
// the epilogue).

extern "C" __global__ void __launch_bounds__(kThreads, 1)
    af_flash_fwd_sm90(const __grid_constant__ FlashFwdParams p, const __grid_constant__ CUtensorMap q_map,
                      const __grid_constant__ CUtensorMap k_map, const __grid_constant__ CUtensorMap v_map,
                      const __grid_constant__ CUtensorMap o_map) {
  extern __shared__ __align__(128) unsigned char smem[];
  // q_full of each Q buffer, then per stage: k_full, k_empty, v_full, v_empty; then q_empty of each Q
  // buffer; dynamic form: then tile_full and tile_empty of each tile slot.
  __shared__ __align__(8) unsigned long long barriers[2 * kQBuffers + 4 * kStages + (kDynamic ? 4 : 0)];
  // Dynamic form: the n-th tile of this CTA in slot n % 2.
  __shared__ int tile_slots[2];
  const af_u32 sQ = (shared_address(smem) + 1023u) & ~1023u;  // kQBuffers x (kBlockM, kHeadDim): kAtoms atoms
  const af_u32 sK = sQ + kQBuffers * kQBytes;                 // kStages x (kBlockN, kHeadDim)
  const af_u32 sV = sK + kStages * kKVBytes;                  // kStages x (kBlockN, kHeadDim)
  // The TMA-store epilogue's staging tile of O, laid out as Q: its own buffer, or Q's (d256).
  const af_u32 sO = kOInQ ? sQ : sV + kStages * kKVBytes;
  const af_u32 bars = shared_address(barriers);
  auto q_full = [&](int b) { return bars + 8u * af_u32(b); };
  auto k_full = [&](int s) { return bars + 8u * af_u32(kQBuffers + 4 * s); };
  auto k_empty = [&](int s) { return bars + 8u * af_u32(kQBuffers + 1 + 4 * s); };
  auto v_full = [&](int s) { return bars + 8u * af_u32(kQBuffers + 2 + 4 * s); };
  auto v_empty = [&](int s) { return bars + 8u * af_u32(kQBuffers + 3 + 4 * s); };
  auto q_empty = [&](int b) { return bars + 8u * af_u32(kQBuffers + 4 * kStages + b); };
  auto tile_full = [&](int n) { return bars + 8u * af_u32(2 * kQBuffers + 4 * kStages + (n & 1)); };
  auto tile_empty = [&](int n) { return bars + 8u * af_u32(2 * kQBuffers + 4 * kStages + 2 + (n & 1)); };
  // A CTA's c-th tile with keys uses Q buffer c % kQBuffers for the (c / kQBuffers)-th time: the buffer
  // and that use's parity from c's low bits (kQBits of them).
  constexpr int kQBits = kQBuffers == 2 ? 2 : 1;
  auto q_buffer = [&](int c) { return kQBuffers == 2 ? c & 1 : 0; };
  auto q_parity = [&](int c) { return af_u32(c >> (kQBits - 1)) & 1u; };

  const bool varlen_q = p.cu_seqlens_q != nullptr;
  // Rows of k/v the map addresses from a sequence's first key row to the end of the tensor bound
  // that row's batch: past them TMA reads zeros, before them another sequence's or unused rows.
  const int k_extent = p.cu_seqlens_k != nullptr ? p.total_k : p.seqlen_k;
  const int m_blocks = (p.seqlen_q + kBlockM - 1) / kBlockM;  // of max_seqlen_q when varlen
  const int pairs = p.batch * p.heads_q;
  // Work tiles (batch, head, m_block). Persistent: tile t (blockIdx.x + i * gridDim.x, or in the
  // dynamic form from the counter) of m_blocks * pairs, in groups of p.tile_pair_group (batch,
  // head) pairs (the pairs whose K and V share the L2; 1 without a causal mask), each group's tiles
  // in descending m_block (under a causal mask, the longest first) with its pairs innermost.
  // Otherwise one tile per CTA from (blockIdx.x reversed, blockIdx.y, blockIdx.z). The tile count
  // of a varlen batch is that of B sequences of max_seqlen_q rows (the lengths are on the GPU): a
  // tile past its sequence's last row has no key blocks and stores nothing, as fwd_sm80's CTAs
  // past the end return.
  const int tile_count = kPersistent ? m_blocks * pairs : 1;
  const int tile_first = kPersistent ? int(blockIdx.x) : 0;
  const int tile_stride = kPersistent ? int(gridDim.x) : 1;
  struct Tile {
    int m_block, head, batch, n_blocks;
    int q_row0, q_len;  // the sequence's query rows in q's map (varlen: packed rows)
    int k_row0, k_len;  // its used key rows in k's and v's maps
    int n_first;        // the first of its n_blocks key blocks (0 unless a left window edge cuts them)
  };
  auto tile_at = [&](int t) {
    Tile w;
    if constexpr (kPersistent) {
      const int group_tiles = p.tile_pair_group * m_blocks;
      const int group = t / group_tiles;
      const int first_pair = group * p.tile_pair_group;
      const int width = min(p.tile_pair_group, pairs - first_pair);
      const int r = t - group * group_tiles;
      const int pair = first_pair + r % width;
      w.m_block = m_blocks - 1 - r / width;
      w.head = pair % p.heads_q;
      w.batch = pair / p.heads_q;
    } else {
      w.m_block = int(gridDim.x) - 1 - int(blockIdx.x);  // longest causal tiles first
      w.head = int(blockIdx.y);
      w.batch = int(blockIdx.z);
    }
    const QueryRows query = query_rows(p, w.batch);
    const KeyRows keys = key_rows(p, w.batch);
    w.q_row0 = query.row0, w.q_len = query.len, w.k_row0 = keys.row0, w.k_len = keys.len;
    const int last_row = min((w.m_block + 1) * kBlockM, w.q_len) - 1;
    int key_end = w.k_len;
    if (p.window_right >= 0) key_end = min(key_end, last_row + (w.k_len - w.q_len) + p.window_right + 1);
    // Keys from the tile's first row's left window edge (fwd_sm80's key_begin); 0 without one.
    const int key_begin =
        kExtras && p.window_left >= 0 ? max(0, w.m_block * kBlockM + (w.k_len - w.q_len) - p.window_left) : 0;
    w.n_first = key_begin / kBlockN;
    w.n_blocks =
        key_end > key_begin && w.m_block * kBlockM < w.q_len ? (key_end + kBlockN - 1) / kBlockN - w.n_first : 0;
    return w;
  };

  if (threadIdx.x == 0) {
    for (int b = 0; b < kQBuffers; ++b) {
      mbarrier_init(q_full(b), 1);
      mbarrier_init(q_empty(b), kOInQ ? kConsumers : kConsumerWarps);
    }
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(k_full(s), 1);
      mbarrier_init(k_empty(s), kConsumerWarps);
      mbarrier_init(v_full(s), 1);
      mbarrier_init(v_empty(s), kConsumerWarps);
    }
    if constexpr (kDynamic)
      for (int n = 0; n < 2; ++n) {
        mbarrier_init(tile_full(n), 1);
        mbarrier_init(tile_empty(n), kConsumerWarps * 32);  // every consumer thread: see the reader
      }
    // The initialised barriers visible to the other threads and to the TMA unit.
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  const int warpgroup = int(threadIdx.x) / 128;
  if (warpgroup == 0) {
    setmaxnreg_dec<kProducerRegisters>();
    if (threadIdx.x != 0) return;
    // The ring's position (steps) and Q's uses continue from tile to tile, as the consumers' do:
    // the next tile's Q lands once the consumers release its buffer (after their last Q K^T of the
    // tile before: with two buffers, the previous tile's, so it loads while they work on this one),
    // and its K and V fill the stages as they free up, while the consumers finish this tile.
    // In one register (the producer has 24; a separate tile count spilled): the low kQBits bits count
    // the tiles that loaded Q (q_buffer, q_parity), the bits above them the tiles published so far
    // (dynamic form).
    int steps = 0, uses = 0;
    for (int tile = tile_first;; uses += 1 << kQBits) {
      if constexpr (kDynamic) {
        // Tile n goes to slot n % 2 once the consumers have read that slot's previous tile (n - 2).
        const int n = uses >> kQBits;
        mbarrier_wait(tile_empty(n), af_u32((n >> 1) & 1) ^ 1);
        tile_slots[n & 1] = tile;
        mbarrier_arrive(tile_full(n));  // release: the store above is seen by the waiters
      }
      if (tile >= tile_count) break;
      // The next tile, fetched now so that the atomic's latency passes while this tile's loads
      // are issued (its result is first used at the next slot's store).
      const int next = kDynamic && p.tile_counter != nullptr
                           ? int(atomic_inc_wrap(p.tile_counter, af_u32(tile_count - 1))) + tile_stride
                           : tile + tile_stride;
      const Tile w = tile_at(tile);
      tile = next;
      if (w.n_blocks == 0) continue;
      const int head_kv = w.head / (p.heads_q / p.heads_kv);
      const int qb = q_buffer(uses);
      if constexpr (kPersistent) mbarrier_wait(q_empty(qb), q_parity(uses) ^ 1);
      mbarrier_arrive_expect_tx(q_full(qb), kQBytes);
#pragma unroll
      for (int a = 0; a < kAtoms; ++a)
        tma_load_4d(sQ + qb * kQBytes + a * kBlockM * 128, &q_map, q_full(qb), a * 64, w.q_row0 + w.m_block * kBlockM,
                    w.head, varlen_q ? 0 : w.batch);
      uses = (uses & ~((1 << kQBits) - 1)) | ((uses + 1) & ((1 << kQBits) - 1));
      const int kv_batch = p.cu_seqlens_k != nullptr ? 0 : w.batch;
      // Key blocks last to first, by their first row (one register fewer than a block index: the
      // d256 dynamic form spilled with one).
      const int k_first = w.k_row0 + w.n_first * kBlockN;
      for (int n0 = k_first + (w.n_blocks - 1) * kBlockN; n0 >= k_first; n0 -= kBlockN, ++steps) {
        const int stage = steps % kStages;
        const af_u32 parity = ((steps / kStages) & 1) ^ 1;  // the consumers' release of this stage's last use
        const af_u32 offset = stage * kKVBytes;
        mbarrier_wait(k_empty(stage), parity);
        mbarrier_arrive_expect_tx(k_full(stage), kKVBytes);
#pragma unroll
        for (int a = 0; a < kAtoms; ++a)
          tma_load_4d(sK + offset + a * kBlockN * 128, &k_map, k_full(stage), a * 64, n0, head_kv, kv_batch);
        mbarrier_wait(v_empty(stage), parity);
        mbarrier_arrive_expect_tx(v_full(stage), kKVBytes);
#pragma unroll
        for (int a = 0; a < kAtoms; ++a)
          tma_load_4d(sV + offset + a * kBlockN * 128, &v_map, v_full(stage), a * 64, n0, head_kv, kv_batch);
      }
    }
    return;
  }

  setmaxnreg_inc<kConsumerRegisters>();
  const int consumer = warpgroup - 1;  // rows [64 * consumer, 64 * consumer + 64) of the tile
  const int warp = (int(threadIdx.x) >> 5) & 3;
  const int lane = int(threadIdx.x) & 31;
  const int g = lane >> 2, t = lane & 3;
  // Accumulator layout (wgmma m64nN, per warp as mma.m16n8): element 4j + e of a thread is row
  // warp_row + g + 8 * (e / 2), column 8j + 2t + e % 2, where warp_row = m0 + 64 * consumer + 16 * warp.
  // Per tile (set at the top of the tile loop below): the ring position of the tile's first key
  // block, and the end of the visible keys of this thread's rows g and g + 8: the sequence's used
  // keys, cut by the causal diagonal (bottom-right: query row i sees keys up to i + k_len - q_len).
  // Two registers through the main loop, where the sequence's k_len, diagonal and the warp's
  // first row would take three (the d256 TMA-store form spills with those). Extras variants: also
  // the first visible key of row g (left window edge; row g + 8's is 8 further), kNoLeftEdge without
  // a left window.
  int steps = 0;
  int key_end[2];
  float o[kAtoms][32];                          // (64 rows, 64 dims) per atom of O
  float row_max[2] = {AF_NEG_INF, AF_NEG_INF};  // rows g and g + 8: the reference max of S * scale (softmax below)
  float row_sum[2] = {0.f, 0.f};                // this thread's partial sums of exp2
  const float scale = p.scale_log2;
  int key_begin = 0;
  constexpr int kNoLeftEdge = -8;                  // row g + 8's edge at 0: no key is left of it
  const af_u32 q_atom = sQ + consumer * 64 * 128;  // this warpgroup's 64 rows of atom 0
  // Named barriers (0 is __syncthreads()'s): pingpong's turns kTurnBarrier + c (consumer c's), the
  // epilogue's kStoreBarrier + c (one warpgroup's 128 threads), V's tail kVTailBarrier (all
  // consumers): 1-2, 3-4 and 5 with two consumers, 1-3, 4-6 and 7 with three.
  constexpr int kTurnBarrier = 1, kStoreBarrier = kTurnBarrier + kConsumers;
  constexpr int kVTailBarrier = kStoreBarrier + kConsumers;
  constexpr int kConsumerThreads = 128 * kConsumers;
  // The descriptor of this warpgroup's 64 rows of Q's atom 0, broadcast from lane 0: ptxas then
  // keeps the S wgmmas' Q descriptors in uniform registers (from a thread-index value it kept them
  // in 16 vector registers and moved them over with two R2UR per wgmma).
  const af_u32 q_desc = __shfl_sync(0xffffffffu, smem_descriptor_lo(q_atom), 0);
  // The descriptor of the tile's Q buffer (the address field counts 16-byte units); which buffer it is
  // follows from it (one register fewer than a buffer index beside it: the 192-row TMA-store form spilled).
  af_u32 q_desc_tile = q_desc;

  // S = Q K^T of one key block, issued as one wgmma group (not waited for).
  auto issue_s = [&](float(&s)[kSRegisters], af_u32 k_tile) {
    const af_u32 k_desc = smem_descriptor_lo(k_tile);
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < kHeadDim / 16; ++ks) {
      const af_u32 column = af_u32((ks % 4) * 32);  // k16 step inside the atom: 32 bytes along the line
      const unsigned long long desc_q = smem_descriptor_at(q_desc_tile + (((ks / 4) * kBlockM * 128 + column) >> 4));
      const unsigned long long desc_k = smem_descriptor_at(k_desc + (((ks / 4) * kBlockN * 128 + column) >> 4));
      wgmma_ss(s, desc_q, desc_k, ks > 0 ? 1 : 0);  // m64nNk16, N = kBlockN (s's size)
    }
    wgmma_commit();
  };
  // Keeps the compiler from moving O's accumulators across a wgmma issue or wait.
  auto fence_o = [&] {
#pragma unroll
    for (int a = 0; a < kAtoms; ++a)
#pragma unroll
      for (int e = 0; e < 32; ++e) fence_operand(o[a][e]);
  };
  // O += P V of one key block, issued as one wgmma group (not waited for); pa must stay untouched
  // until the group completes (the instruction reads it asynchronously). Per k16 step one m64n128k16
  // per two atoms of V (the descriptor's leading offset steps from one to the next), m64n64k16 at d64.
  auto issue_pv = [&](const af_u32(&pa)[kBlockN / 16][4], af_u32 v_tile) {
    const af_u32 v_desc = smem_descriptor_lo(v_tile, kBlockN * 128);
    fence_o();
    wgmma_fence();
#pragma unroll
    for (int a = 0; a < kAtoms; a += 2)
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        const unsigned long long desc = smem_descriptor_at(v_desc + ((a * kBlockN * 128 + kk * 16 * 128) >> 4));
        if constexpr (kAtoms == 1)
          wgmma_rs_n64(o[0], pa[kk], desc);
        else
          wgmma_rs_n128(o[a], o[a + 1], pa[kk], desc);
      }
    wgmma_commit();
  };
  // -inf where a key is past the end, past the right window edge (the causal diagonal) or, in the
  // extras variants, before the left window edge; only on blocks that cross one of them (row g's keys
  // end first, row g + 8's begin last).
  auto mask = [&](float(&s)[kSRegisters], int n_block) {
    const int n0 = n_block * kBlockN;
    // Element e is key n0 + 2t + (8 * (e / 4) + e % 2): its constant part against one bound per row
    // (an immediate compare per element instead of an add and a compare). One branch per edge, each
    // taken only by blocks that cross it (a single branch for both edges was if-converted by ptxas
    // into selects on every block).
    if (n0 + kBlockN > key_end[0]) {
      const int bound[2] = {key_end[0] - n0 - 2 * t, key_end[1] - n0 - 2 * t};
#pragma unroll
      for (int e = 0; e < kSRegisters; ++e)
        if (8 * (e >> 2) + (e & 1) >= bound[(e >> 1) & 1]) s[e] = AF_NEG_INF;
    }
    if (kExtras && n0 < key_begin + 8) {
      const int first[2] = {key_begin - n0 - 2 * t, key_begin + 8 - n0 - 2 * t};
#pragma unroll
      for (int e = 0; e < kSRegisters; ++e)
        if (8 * (e >> 2) + (e & 1) < first[(e >> 1) & 1]) s[e] = AF_NEG_INF;
    }
  };
  // Extras variants with softcap: S becomes tanh(S * softmax_scale / softcap), which the softmax's
  // scale (softcap * log2(e), attention_params.cuh) turns into log2-domain scores: FlashAttention-2's
  // softcap * tanh(scale * q.k / softcap), as fwd_sm80 computes it, with one multiply fewer. Before
  // the mask, so masked keys stay -inf.
  auto apply_softcap = [&](float(&s)[kSRegisters]) {
    if constexpr (kExtras)
      if (p.softcap_in != 0.f) {
#pragma unroll
        for (int e = 0; e < kSRegisters; ++e) s[e] = tanh_approx(s[e] * p.softcap_in);
      }
  };
  // Online softmax with a lazy reference max (FlashAttention-4's conditional rescale): P = exp2(S * scale -
  // row_max) extends row_sum, where row_max (scaled: log2 units) moves only when a block's max exceeds it by
  // more than kRescaleLog2. P then stays at most 2^8 (exact in the 16-bit types' range, and their relative
  // precision does not depend on the magnitude), and O, row_sum and the LSE are measured from whatever
  // reference their row holds, so the result is the same. The rescale (row_sum here, O by correction in the
  // caller, which must wait for P V first) runs only when some row of the warp moved: the same in all lanes.
  // With the exact max it ran on most blocks (any of a warp's 16 rows finding a new max), 64 FMULs each.
  constexpr float kRescaleLog2 = 8.f;
  // This block's max of S * scale of rows g and g + 8 (over the row's 4 threads), and whether any row of the
  // warp moves its reference (a row with no visible key keeps -inf: -inf > -inf + 8 is false).
  auto block_max_moved = [&](const float(&s)[kSRegisters], float(&block_max)[2]) {
    bool moved = false;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float m = fmaxf(s[2 * half], s[2 * half + 1]);
#pragma unroll
      for (int j = 1; j < kBlockN / 8; ++j) m = fmaxf(m, fmaxf(s[4 * j + 2 * half], s[4 * j + 2 * half + 1]));
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
      block_max[half] = m * scale;
      moved = moved || block_max[half] > row_max[half] + kRescaleLog2;
    }
    return __any_sync(0xffffffffu, moved) != 0;
  };
  auto move_reference = [&](const float(&block_max)[2], float(&correction)[2]) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const float top = fmaxf(row_max[half], block_max[half]);
      // exp2(-inf - 0) = 0 for a row's first visible keys; rows still without any keep -inf.
      correction[half] = exp2_approx(row_max[half] - (top == AF_NEG_INF ? 0.f : top));
      row_sum[half] *= correction[half];
      row_max[half] = top;
    }
  };
  // P = exp2(S * scale - row_max), each row's sum added to sum; store(e, p0, p1) keeps elements e and e + 1.
  auto exps = [&](const float(&s)[kSRegisters], float(&sum)[2], auto&& store) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      // Subtracting 0 from a row still at -inf gives exp2(-inf) = 0 for its (masked) scores.
      const float base = row_max[half] == AF_NEG_INF ? 0.f : row_max[half];
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j) {
        const float p0 = exp2_approx(fmaf(s[4 * j + 2 * half], scale, -base));
        const float p1 = exp2_approx(fmaf(s[4 * j + 2 * half + 1], scale, -base));
        store(4 * j + 2 * half, p0, p1);
        sum[half] += p0 + p1;
      }
    }
  };
  // S becomes P in place: the block max first, then the exps.
  auto softmax = [&](float(&s)[kSRegisters], float(&correction)[2]) {
    float block_max[2];
    const bool rescale = block_max_moved(s, block_max);
    if (rescale) move_reference(block_max, correction);
    exps(s, row_sum, [&](int e, float p0, float p1) {
      s[e] = p0;
      s[e + 1] = p1;
    });
    return rescale;
  };
  // The same P, packed into pa, with the block max off the exps' path (AF_DEFERRED_MAX): the exps run against
  // the reference first; every P is at most its thread's block sum, so only where a sum passes 2^8 (inf too) or
  // a row has no reference yet does the block max decide, as in softmax, and the exps run again if a row moved.
  // S stays in s for that, P goes straight into pa (the main loop issues the previous block's P V before this
  // block's S, so both are done here). A NaN sum compares false: NaN stays in P and the row sum, as in softmax.
  auto softmax_deferred = [&](const float(&s)[kSRegisters], af_u32(&pa)[kBlockN / 16][4], float(&correction)[2]) {
    // Element e = 8kk + 2r (+1) of S is register r of P's k16 step kk (pack_p).
    const auto store = [&](int e, float p0, float p1) { pa[e >> 3][(e & 7) >> 1] = pack2(p0, p1); };
    float sum[2] = {0.f, 0.f};
    exps(s, sum, store);
    bool rescale = false;
    constexpr float kMaxP = float(1 << int(kRescaleLog2));
    const bool check = sum[0] > kMaxP || sum[1] > kMaxP || row_max[0] == AF_NEG_INF || row_max[1] == AF_NEG_INF;
    if (__any_sync(0xffffffffu, check)) {
      float block_max[2];
      rescale = block_max_moved(s, block_max);
      if (rescale) {
        move_reference(block_max, correction);
        sum[0] = sum[1] = 0.f;
        exps(s, sum, store);
      }
    }
    row_sum[0] += sum[0];
    row_sum[1] += sum[1];
    return rescale;
  };
  auto rescale_o = [&](const float(&correction)[2]) {
#pragma unroll
    for (int half = 0; half < 2; ++half)
#pragma unroll
      for (int a = 0; a < kAtoms; ++a)
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          o[a][4 * j + 2 * half] *= correction[half];
          o[a][4 * j + 2 * half + 1] *= correction[half];
        }
  };
  // P as the A fragments of the k16 steps of P V: keys 16kk.. are columns j = 2kk, 2kk + 1.
  auto pack_p = [&](const float(&s)[kSRegisters], af_u32(&pa)[kBlockN / 16][4]) {
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      pa[kk][0] = pack2(s[8 * kk + 0], s[8 * kk + 1]);
      pa[kk][1] = pack2(s[8 * kk + 2], s[8 * kk + 3]);
      pa[kk][2] = pack2(s[8 * kk + 4], s[8 * kk + 5]);
      pa[kk][3] = pack2(s[8 * kk + 6], s[8 * kk + 7]);
    }
  };
  // Rows [valid_rows, kBlockN) of a V tile: another sequence's rows or unused cache rows (read by
  // a box that runs past the sequence's keys; see the top of the file), zeroed by all the consumers'
  // threads after the tile has landed and before any consumer's P V reads it (kVTailBarrier),
  // since P's zeros there would still turn a NaN or inf into NaN. The writes are the generic
  // proxy's, wgmma reads through the async proxy: hence the proxy fence before the barrier.
  auto clear_v_tail = [&](af_u32 tile, int valid_rows) {
    const int rows = kBlockN - valid_rows;
    for (int c = int(threadIdx.x) - 128; c < kAtoms * rows * 32; c += kConsumerThreads) {
      const int line = c >> 5;  // (atom, row) of a 128-byte line, 32 words each
      st_shared_u32(tile + af_u32((line / rows) * kBlockN * 128 + (valid_rows + line % rows) * 128 + (c & 31) * 4), 0u);
    }
    fence_proxy_async_shared();
    named_barrier_sync(kVTailBarrier, kConsumerThreads);
  };
  // Step i of the tile (key block n_blocks - 1 - i: the last first) uses ring stage (steps + i) %
  // kStages (unsigned: a mask and a shift at 2 stages, where the signed forms took 3 more uniform
  // instructions each).
  auto stage = [&](int i) { return af_u32(steps + i) % kStages; };
  auto k_tile = [&](int i) { return sK + stage(i) * kKVBytes; };
  auto v_tile = [&](int i) { return sV + stage(i) * kKVBytes; };
  auto parity = [&](int i) { return (af_u32(steps + i) / kStages) & 1; };
  // The S wait of the tile's last step ends this warp's reads of Q: the producer may load the next
  // tile's (persistent form).
  auto release_q = [&](int i, int n_blocks) {
    if constexpr (kPersistent && !kOInQ)
      if (i == n_blocks - 1 && lane == 0) mbarrier_arrive(q_empty(q_desc_tile == q_desc ? 0 : 1));
  };

  // The epilogue of the tile of query rows [m0, m0 + kBlockM) of (batch, head): normalise O by the
  // row sums stats_sum, LSE in natural log from stats_max (plain stores); zeros and an LSE of -inf
  // without keys (has_keys false: O is not read). O from registers (pairs of
  // columns), or (kTmaStore, a tile with keys) through shared memory: each consumer writes its 64
  // rows into the staging tile (Q's swizzled layout), and one thread of it stores them with TMA
  // (boxes of 64 columns x 64 rows; the map's bounds clip rows past seqlen_q and columns past
  // head_dim) while the warpgroup goes on to the next tile. An empty tile (rows that see no key)
  // takes the register path: it loaded no Q, so Q's buffer may be the next tile's by then. So does
  // every tile of a varlen call: out's map would clip a sequence's last rows only at total_q, over
  // the next sequence's (another tile's) rows; the register path guards each row. (Choosing per
  // 64 rows, the TMA store inside a sequence and the register path or a guarded copy from the
  // staging tile at its end, made ptxas spill 24-84 bytes in the d256 overlap form.)
  auto epilogue = [&](int m0, int head, int batch, bool has_keys, const float(&stats_max)[2],
                      const float(&stats_sum)[2]) {
    const float ln2 = 0.6931471805599453f;
    // The query rows again rather than kept live through the main loop, as fwd_sm80's epilogue does.
    const QueryRows query = query_rows(p, batch);
    const int q_len = query.len;
    const bool staged = kTmaStore && has_keys && !varlen_q;
    const bool issuer = (threadIdx.x & 127) == 0;
    // This warpgroup's 64 rows of the staging tile, as an offset from q_atom (sO - sQ is a constant):
    // addressed from sO, ptxas spilled 4 bytes of the 192-row overlap-persistent-tma-store consumers
    // (160 registers) with NVRTC 12.1 to 13.5.
    const af_u32 o_rows = q_atom + (sO - sQ);
    if (staged && !kOInQ) {
      // The previous tile's store has read the staging tile.
      if (issuer) bulk_wait_group_read<0>();
      named_barrier_sync(kStoreBarrier + consumer, 128);
    }
    af_u16* out_base = (af_u16*)p.out + (long long)batch * p.out_batch_stride +
                       (long long)query.row0 * p.out_row_stride + (long long)head * p.out_head_stride + 2 * t;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float sum = stats_sum[half];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const float inverse = sum > 0.f ? 1.f / sum : 0.f;
      const int row = m0 + 64 * consumer + 16 * warp + g + 8 * half;
      if (staged) {
        // Row r of the tile, 16-byte chunk j at chunk j ^ (r % 8) of its line, and r % 8 == g.
        const af_u32 line = o_rows + af_u32(16 * warp + g + 8 * half) * 128u + 4u * t;
#pragma unroll
        for (int a = 0; a < kAtoms; ++a)
#pragma unroll
          for (int j = 0; j < 8; ++j)
            st_shared_u32(line + a * kBlockM * 128 + ((j ^ g) << 4),
                          pack2(o[a][4 * j + 2 * half] * inverse, o[a][4 * j + 2 * half + 1] * inverse));
      }
      if (row >= q_len) continue;
      if (!staged) {
        af_u16* dst = out_base + (long long)row * p.out_row_stride;
#pragma unroll
        for (int a = 0; a < kAtoms; ++a)
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            const int col = 64 * a + 8 * j;
            if (col + 2 * t < p.head_dim)
              *(af_u32*)(dst + col) =
                  has_keys ? pack2(o[a][4 * j + 2 * half] * inverse, o[a][4 * j + 2 * half + 1] * inverse) : 0u;
          }
      }
      if (p.lse != nullptr && t == 0)
        p.lse[(long long)batch * p.lse_batch_stride + (long long)head * p.lse_head_stride +
              (long long)(query.row0 + row) * p.lse_row_stride] =
            sum > 0.f ? (stats_max[half] + log2_approx(sum)) * ln2 : AF_NEG_INF;
    }
    if (staged) {
      // The generic-proxy writes visible to the copy engine, then one thread stores.
      fence_proxy_async_shared();
      named_barrier_sync(kStoreBarrier + consumer, 128);
      if (issuer) {
        const int row0 = m0 + 64 * consumer;
        if (row0 < q_len) {
#pragma unroll
          for (int a = 0; a < kAtoms; ++a)
            tma_store_4d(&o_map, o_rows + a * kBlockM * 128, a * 64, query.row0 + row0, head, varlen_q ? 0 : batch);
        }
        bulk_commit_group();
        if constexpr (kOInQ) {
          // Q's buffer is free for the next tile's Q once the store has read it.
          bulk_wait_group_read<0>();
          mbarrier_arrive(q_empty(0));
        }
      }
    } else if (kOInQ && has_keys) {
      // Stored from registers, but the tile loaded Q: its buffer is released once all the
      // warpgroup's warps are past their last Q K^T.
      named_barrier_sync(kStoreBarrier + consumer, 128);
      if (issuer) mbarrier_arrive(q_empty(0));
    }
  };

  float s[kSRegisters];  // (64 rows, kBlockN keys) scores, then probabilities
  af_u32 pa[kBlockN / 16][4];
  float correction[2];
  int q_uses = 0;  // this CTA's tiles with keys so far (q_buffer, q_parity)
  // Cross-tile form (kCrossTile): a tile's last P V is issued with the next tile's first Q K^T, in
  // that step's turn, and its epilogue runs once that P V is done, after the next tile's first
  // softmax: the tensor cores work through the tile boundary as through any step. pending: a tile
  // whose last P V (pa, V at ring position steps - 1) and epilogue are still to come; prev_*: its
  // place and its rows' softmax state.
  bool pending = false;
  int prev_m0 = 0, prev_head = 0, prev_batch = 0;
  float prev_max[2], prev_sum[2];
  constexpr bool kPingPong = kSchedule == 2;
  constexpr int kLastConsumer = kConsumers - 1;
  // pingpong, cross-tile form: every step of every tile (and the last P V after the last tile) takes a
  // turn; consumer 0 grants itself the first (first_turn), the last consumer gives none after the last.
  bool first_turn = true;
  auto take_turn = [&] {
    if constexpr (kPingPong) {
      if (consumer == 0 && first_turn) named_barrier_arrive(kTurnBarrier, 256);
      first_turn = false;
      named_barrier_sync(kTurnBarrier + consumer, 256);
    }
  };
  auto give_turn = [&](bool last_of_all) {
    if constexpr (kPingPong)
      if (consumer != kLastConsumer || !last_of_all)
        named_barrier_arrive(kTurnBarrier + (consumer + 1) % kConsumers, 256);
  };
  for (int n = 0;; ++n) {
    int tile = tile_first + n * tile_stride;
    if constexpr (kDynamic) {
      mbarrier_wait(tile_full(n), af_u32((n >> 1) & 1));
      tile = tile_slots[n & 1];
      // Each thread's arrival releases its own read of the slot before the producer's next write
      // to it; one lane's arrival after __syncwarp left the other lanes' reads unordered (racecheck
      // reported them, and ptxas dropped the __syncwarp).
      mbarrier_arrive(tile_empty(n));
    }
    if (tile >= tile_count) break;
    const Tile w = tile_at(tile);
    const int n_blocks = w.n_blocks;
    const int n_end = w.n_first + n_blocks;  // one past the tile's last key block
    const int m0 = w.m_block * kBlockM;
    const int k_len = w.k_len;
    if (kCrossTile && n_blocks == 0) {
      // Stores zeros without touching O or the softmax state (a pending tile's).
      const float none[2] = {AF_NEG_INF, AF_NEG_INF}, zero[2] = {0.f, 0.f};
      epilogue(m0, w.head, w.batch, false, none, zero);
      continue;
    }
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = m0 + 64 * consumer + 16 * warp + g + 8 * half;
      key_end[half] = p.window_right >= 0 ? min(k_len, row + (k_len - w.q_len) + p.window_right + 1) : k_len;
    }
    if constexpr (kExtras)
      key_begin =
          p.window_left >= 0 ? m0 + 64 * consumer + 16 * warp + g + (k_len - w.q_len) - p.window_left : kNoLeftEdge;
    // Rows [v_tail, kBlockN) of the first step's V tile are past the keys and not the map's zeros.
    const int v_tail = n_end * kBlockN > k_len && w.k_row0 + k_len < k_extent ? k_len - (n_end - 1) * kBlockN : -1;
    if constexpr (kCrossTile) {
      // A pending tile's softmax state and O stay until its epilogue, after this tile's first softmax.
#pragma unroll
      for (int half = 0; half < 2; ++half) prev_max[half] = row_max[half], prev_sum[half] = row_sum[half];
    } else {
#pragma unroll
      for (int a = 0; a < kAtoms; ++a)
#pragma unroll
        for (int e = 0; e < 32; ++e) o[a][e] = 0.f;
    }
    row_max[0] = row_max[1] = AF_NEG_INF;
    row_sum[0] = row_sum[1] = 0.f;
    if (n_blocks > 0) {
      const int q_buf = q_buffer(q_uses);
      // Broadcast from lane 0, so that ptxas keeps the S wgmmas' descriptors in uniform registers.
      q_desc_tile = kQBuffers == 1 ? q_desc : __shfl_sync(0xffffffffu, q_desc + af_u32(q_buf) * (kQBytes >> 4), 0);
      mbarrier_wait(q_full(q_buf), q_parity(q_uses++));
    }
    if constexpr (kSchedule == 0) {
      // v0: each step waits for its S, runs the softmax, then waits for its P V.
      for (int i = 0; i < n_blocks; ++i) {
        mbarrier_wait(k_full(stage(i)), parity(i));
        issue_s(s, k_tile(i));
        wgmma_wait<0>();
#pragma unroll
        for (int e = 0; e < kSRegisters; ++e) fence_operand(s[e]);
        __syncwarp();
        if (lane == 0) mbarrier_arrive(k_empty(stage(i)));
        release_q(i, n_blocks);
        apply_softcap(s);
        mask(s, n_end - 1 - i);
        if (softmax(s, correction)) rescale_o(correction);
        pack_p(s, pa);
        mbarrier_wait(v_full(stage(i)), parity(i));
        if (i == 0 && v_tail >= 0) clear_v_tail(v_tile(0), v_tail);
        issue_pv(pa, v_tile(i));
        wgmma_wait<0>();
        fence_o();
        __syncwarp();
        if (lane == 0) mbarrier_arrive(v_empty(stage(i)));
      }
    } else if (n_blocks > 0) {
      // overlap: step i issues S of block i and P V of block i - 1 together, waits for S only, runs
      // block i's softmax while P V is in flight, then waits for P V before rescaling O (which P V
      // accumulates) and overwriting the P fragments (which P V reads).
      // pingpong: consumer c issues step i's wgmmas only in its turn, the turns going round the ring
      // 0, 1, .., kConsumers - 1, 0, ..: it waits on its barrier kTurnBarrier + c (its 128 threads and
      // its predecessor's 128 arrivals), issues, then arrives on its successor's barrier. Except in the
      // cross-tile form (take_turn, give_turn), a tile's first step takes no turn; its first turn is
      // granted by consumer 0 itself, in the persistent form by the last consumer once it is past the
      // previous tile (when all the others are past their last turn of it, so no consumer arrives twice
      // on a barrier before its owner waits there); the last consumer gives no turn after its last
      // step, so every phase of every turn barrier completes within the tile (all consumers run the
      // same n_blocks).
      if (!kCrossTile && kPingPong && consumer == (kPersistent ? kLastConsumer : 0) && n_blocks > 1)
        named_barrier_arrive(kTurnBarrier, 256);
      mbarrier_wait(k_full(stage(0)), parity(0));
      if (kCrossTile) take_turn();
      issue_s(s, k_tile(0));
      if constexpr (kCrossTile) {
        // The pending tile's last P V (ring position steps - 1) with this S, else an empty group: S is then
        // always the next to last group (a wait that depends on pending made ptxas serialise the wgmmas).
        if (pending) {
          mbarrier_wait(v_full(stage(-1)), parity(-1));
          issue_pv(pa, v_tile(-1));
        } else {
          wgmma_commit();
        }
        give_turn(false);
        wgmma_wait<1>();
      } else {
        wgmma_wait<0>();
      }
#pragma unroll
      for (int e = 0; e < kSRegisters; ++e) fence_operand(s[e]);
      __syncwarp();
      if (lane == 0) mbarrier_arrive(k_empty(stage(0)));
      release_q(0, n_blocks);
      apply_softcap(s);
      mask(s, n_end - 1);
      softmax(s, correction);  // a fresh reference max: O (zero, or the pending tile's) is not rescaled
      if (kCrossTile) {
        // The pending tile's last P V done (unconditionally: ptxas then sees no wgmma in flight where O is
        // cleared, and does not serialise the wgmmas), then its epilogue.
        wgmma_wait<0>();
        fence_o();
        if (pending) {
          __syncwarp();
          if (lane == 0) mbarrier_arrive(v_empty(stage(-1)));
          epilogue(prev_m0, prev_head, prev_batch, true, prev_max, prev_sum);
        }
#pragma unroll
        for (int a = 0; a < kAtoms; ++a)
#pragma unroll
          for (int e = 0; e < 32; ++e) o[a][e] = 0.f;
      }
      pack_p(s, pa);
      // Before any turn of pingpong's: every consumer passes here for every tile.
      if (v_tail >= 0) {
        mbarrier_wait(v_full(stage(0)), parity(0));
        clear_v_tail(v_tile(0), v_tail);
      }
      for (int i = 1; i < n_blocks; ++i) {
        mbarrier_wait(k_full(stage(i)), parity(i));
        if (kCrossTile)
          take_turn();
        else if (kPingPong)
          named_barrier_sync(kTurnBarrier + consumer, 256);
        if constexpr (kDeferredMax) {
          // P V of block i - 1 first: once S of block i is done so is P V, and softmax_deferred packs P straight
          // into pa. (A second P buffer copied into pa after P V spills nothing either, but its copy defines wgmma
          // inputs inside the pipeline and ptxas serialises every wgmma; P in fp32 beside S spills at d128.)
          mbarrier_wait(v_full(stage(i - 1)), parity(i - 1));
          issue_pv(pa, v_tile(i - 1));
          issue_s(s, k_tile(i));
        } else {
          issue_s(s, k_tile(i));
          mbarrier_wait(v_full(stage(i - 1)), parity(i - 1));
          issue_pv(pa, v_tile(i - 1));
        }
        if (kCrossTile)
          give_turn(false);
        else if (kPingPong && (consumer != kLastConsumer || i + 1 < n_blocks))
          named_barrier_arrive(kTurnBarrier + (consumer + 1) % kConsumers, 256);
        if constexpr (kDeferredMax)
          wgmma_wait<0>();  // P V of block i - 1 and S of block i
        else
          wgmma_wait<1>();  // S of block i
#pragma unroll
        for (int e = 0; e < kSRegisters; ++e) fence_operand(s[e]);
        __syncwarp();
        if (lane == 0) mbarrier_arrive(k_empty(stage(i)));
        release_q(i, n_blocks);
        apply_softcap(s);
        mask(s, n_end - 1 - i);
        if constexpr (kDeferredMax) {
          fence_o();
          if (lane == 0) mbarrier_arrive(v_empty(stage(i - 1)));
          if (softmax_deferred(s, pa, correction)) rescale_o(correction);
        } else {
          const bool rescale = softmax(s, correction);
          wgmma_wait<0>();  // P V of block i - 1
          fence_o();
          __syncwarp();
          if (lane == 0) mbarrier_arrive(v_empty(stage(i - 1)));
          if (rescale) rescale_o(correction);
          pack_p(s, pa);
        }
      }
      if constexpr (!kCrossTile) {
        const int last = n_blocks - 1;
        mbarrier_wait(v_full(stage(last)), parity(last));
        issue_pv(pa, v_tile(last));
        wgmma_wait<0>();
        fence_o();
        __syncwarp();
        if (lane == 0) mbarrier_arrive(v_empty(stage(last)));
      }
    }
    steps += n_blocks;
    if constexpr (kCrossTile) {
      pending = true;
      prev_m0 = m0, prev_head = w.head, prev_batch = w.batch;
    } else {
      epilogue(m0, w.head, w.batch, n_blocks > 0, row_max, row_sum);
    }
  }  // tiles
  if (kCrossTile && pending) {
    // The last tile's last P V and epilogue.
    mbarrier_wait(v_full(stage(-1)), parity(-1));
    take_turn();
    issue_pv(pa, v_tile(-1));
    give_turn(true);
    wgmma_wait<0>();
    fence_o();
    __syncwarp();
    if (lane == 0) mbarrier_arrive(v_empty(stage(-1)));
    epilogue(prev_m0, prev_head, prev_batch, true, row_max, row_sum);
  }
  // Shared memory must outlive the stores that read it (and the kernel their writes).
  if (kTmaStore && (threadIdx.x & 127) == 0) bulk_wait_group<0>();
}
