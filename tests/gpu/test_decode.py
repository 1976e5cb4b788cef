"""The decode family (GQA-packed split-KV, paged K/V) against the float64 reference, on the GPU.

Every call goes straight to the C ABI with backend="cuda" (no fallback can hide a kernel fault):
random decode shapes (Sq 1-16, odd cache lengths, GQA ratios 1-8), shuffled pages of sizes 1 to
2048 (every path of the paged loader) with garbage block-table entries past the used pages, pools
past 2^32 bytes and page strides past 32 bits (both sides of the loader's 32-bit guard), empty
sequences, left padding, kv_batch_idx, softcap and ALiBi, with key splits off, forced and planned.
Outputs and LSE are poisoned with NaN first, so unwritten rows fail.
"""
import math

import pytest
import torch

import attnforge
from attnforge import _native
from reference import assert_close, assert_lse_close, sequence_attention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _cache_rows(k_cache, b, rows, block_table, kv_batch_idx):
    """Key rows `rows` of sequence b from a padded or paged cache (float64 on the CPU)."""
    if block_table is not None:
        page_size = k_cache.shape[1]
        pages = block_table[b, rows // page_size].long()
        return k_cache[pages, rows % page_size].double().cpu()
    kb = int(kv_batch_idx[b]) if kv_batch_idx is not None else b
    return k_cache[kb, rows].double().cpu()


def run_decode(dtype, batch, seqlen_q, heads, heads_kv, head_dim, cache_len, page_size=None, causal=True,
               window=(-1, -1), softcap=0.0, alibi=False, empty=False, leftpad=False, kv_batch=False, num_splits=0,
               garbage_table=False, make_pool=None):
    """garbage_table: block-table entries past each sequence's used pages hold -1, num_pages or
    2^31 - 1 (tables padded by serving engines), which the kernel must never follow.
    make_pool(pages, page_size, heads_kv, head_dim, dtype) -> (k_cache, v_cache, page_ids): a paged
    pool of any layout and the ids (at least `pages`) the block table takes its pages from."""
    device = "cuda"
    used = torch.randint(1, cache_len + 1, (batch,), dtype=torch.int32)
    if empty:
        used[0] = 0
    pad = (torch.rand(batch) * used.float()).floor().to(torch.int32) if leftpad else None
    width = (head_dim + 7) // 8 * 8  # the cuda backend takes strides that are multiples of 8 elements
    q = torch.randn(batch, seqlen_q, heads, width, dtype=dtype, device=device)[..., :head_dim]
    block_table = kv_batch_idx = None
    if page_size is not None:
        max_blocks = (cache_len + page_size - 1) // page_size
        if make_pool is None:
            num_pages = batch * max_blocks + 3
            k_cache = torch.randn(num_pages, page_size, heads_kv, head_dim, dtype=dtype, device=device)
            v_cache = torch.randn(num_pages, page_size, heads_kv, head_dim, dtype=dtype, device=device)
            page_ids = torch.arange(num_pages, dtype=torch.int32)
        else:
            k_cache, v_cache, page_ids = make_pool(batch * max_blocks, page_size, heads_kv, head_dim, dtype)
            num_pages = k_cache.shape[0]
        block_table = page_ids[torch.randperm(len(page_ids))[: batch * max_blocks]].view(batch, max_blocks)
        if garbage_table:
            junk = torch.tensor([-1, num_pages, 2**31 - 1], dtype=torch.int32)
            for b in range(batch):
                unused = block_table[b, (int(used[b]) + page_size - 1) // page_size:]
                unused.copy_(junk[torch.randint(0, 3, unused.shape)])
    else:
        cache_batches = batch + 2 if kv_batch else batch
        k_cache = torch.randn(cache_batches, cache_len, heads_kv, head_dim, dtype=dtype, device=device)
        v_cache = torch.randn(cache_batches, cache_len, heads_kv, head_dim, dtype=dtype, device=device)
        if kv_batch:
            kv_batch_idx = torch.randperm(cache_batches, dtype=torch.int32)[:batch]
    slopes = torch.rand(heads, dtype=torch.float32) * 0.3 if alibi else None
    out = torch.full((batch, seqlen_q, heads, width), float("nan"), dtype=dtype, device=device)[..., :head_dim]
    lse = torch.full((batch, heads, seqlen_q), float("nan"), dtype=torch.float32, device=device)
    _native.attention_forward(
        q, k_cache, v_cache, out, softmax_lse=lse, seqused_k=used.to(device),
        leftpad_k=pad.to(device) if pad is not None else None,
        block_table=block_table.to(device) if block_table is not None else None,
        kv_batch_idx=kv_batch_idx.to(device) if kv_batch_idx is not None else None,
        alibi_slopes=slopes.to(device) if slopes is not None else None, softcap=softcap, causal=causal,
        window_size=window, backend="cuda", num_splits=num_splits)
    torch.cuda.synchronize()
    scale = 1.0 / math.sqrt(head_dim)
    for b in range(batch):
        begin = int(pad[b]) if pad is not None else 0
        rows = torch.arange(begin, int(used[b]))
        kb = _cache_rows(k_cache, b, rows, block_table, kv_batch_idx)
        vb = _cache_rows(v_cache, b, rows, block_table, kv_batch_idx)
        qb = q[b].cpu()
        expected, expected_lse = sequence_attention(qb.double(), kb, vb, scale, causal, window, softcap, slopes)
        naive, _ = sequence_attention(qb, kb.to(dtype), vb.to(dtype), scale, causal, window, softcap, slopes,
                                      precision=dtype)
        assert_close(out[b].cpu(), expected, naive, dtype, what="out[%d]" % b)
        assert_lse_close(lse[b].cpu(), expected_lse)


GQA = [(8, 1), (32, 8), (6, 3), (4, 4), (64, 8)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("heads", GQA, ids=["gqa%dx%d" % h for h in GQA])
@pytest.mark.parametrize("seqlen_q", [1, 3, 16])
@pytest.mark.parametrize("head_dim", [64, 128, 256, 80])
def test_decode_contiguous(dtype, heads, seqlen_q, head_dim, seed):
    run_decode(dtype, 3, seqlen_q, heads[0], heads[1], head_dim, cache_len=1037)


@pytest.mark.parametrize("num_splits", [1, 7, 0])
@pytest.mark.parametrize("cache_len", [1, 63, 4097])
def test_decode_splits(num_splits, cache_len, seed):
    run_decode(torch.bfloat16, 2, 1, 32, 8, 128, cache_len, num_splits=num_splits)


@pytest.mark.parametrize("page_size", [1, 3, 16, 256])
@pytest.mark.parametrize("num_splits", [1, 5])
def test_decode_paged(page_size, num_splits, seed):
    run_decode(torch.bfloat16, 3, 2, 16, 4, 128, cache_len=700, page_size=page_size, num_splits=num_splits)


def _wide_grid_batch(heads_kv, per_sm=1):
    """Sequences for a decode grid of more CTAs than the default tile runs in one wave (per_sm of them per
    SM: 1 at d128, 2 at d64 on the 227 KB class) at one query row (16 packed rows per CTA)."""
    return per_sm * torch.cuda.get_device_properties(0).multi_processor_count // heads_kv + 1


def _two_waves_batch(heads_kv):
    """Sequences for a d128 decode grid of exactly two waves of the 3-block wide-grid tile (two CTAs per SM), which
    the 2-block one (three per SM) fills worse: the plan keeps the 3-block one (plan.cpp decode_grid_tile)."""
    return 4 * torch.cuda.get_device_properties(0).multi_processor_count // heads_kv


# Grids of more CTAs than the default tile runs in one wave take a wide-grid tile at d128 (a 3-block ring two per
# SM or a 2-block ring three per SM), and at d64 (without extras) up to 2k keys (four per SM), where the GPU has
# them (the 227 KB class: H100/H200); the same float64 checks hold for each, split or not, paged or not.
@pytest.mark.parametrize("page_size", [None, 16])
@pytest.mark.parametrize("num_splits", [0, 3])
@pytest.mark.parametrize("heads,heads_kv,head_dim,batch,cache_len", [
    (32, 8, 128, "wide", 333), (32, 8, 128, "two_waves", 333), (16, 16, 64, "wide", 333), (16, 16, 64, "wide", 2100)])
def test_decode_wide_grid(page_size, num_splits, heads, heads_kv, head_dim, batch, cache_len, seed):
    batch = _two_waves_batch(heads_kv) if batch == "two_waves" else _wide_grid_batch(heads_kv, 128 // head_dim)
    run_decode(torch.bfloat16, batch, 1, heads, heads_kv, head_dim, cache_len=cache_len,
               page_size=page_size, num_splits=num_splits, leftpad=page_size is None)


@pytest.mark.parametrize("heads,heads_kv,head_dim,per_sm", [(32, 8, 128, 1), (16, 16, 64, 2)])
def test_decode_wide_grid_tile_only_for_wide_grids(heads, heads_kv, head_dim, per_sm):
    props = torch.cuda.get_device_properties(0)
    if getattr(props, "shared_memory_per_block_optin", 0) < 227 * 1024:
        pytest.skip("the wide-grid tile is the 227 KB class's (H100/H200)")
    k = torch.randn(_wide_grid_batch(heads_kv, per_sm), 512, heads_kv, head_dim, dtype=torch.bfloat16, device="cuda")
    q = torch.randn(k.shape[0], 1, heads, head_dim, dtype=k.dtype, device="cuda")
    wide = attnforge.explain(q, k, k)["plan"]
    few = k.shape[0] - 1  # one wave of the default tile at most
    narrow = attnforge.explain(q[:few], k[:few], k[:few])["plan"]
    assert "decode" in wide and "wide-grid" in wide and "16x64" in wide, wide
    assert "decode" in narrow and "wide-grid" not in narrow and "16x128" in narrow, narrow
    if head_dim == 128:  # one wave of the 2-block ring; two of the 3-block one are filled better by it
        assert "wide-grid 2-stage" in wide, wide
        k2 = torch.empty(_two_waves_batch(heads_kv), 512, heads_kv, head_dim, dtype=k.dtype, device="cuda")
        q2 = torch.empty(k2.shape[0], 1, heads, head_dim, dtype=k.dtype, device="cuda")
        two_waves = attnforge.explain(q2, k2, k2)["plan"]
        assert "wide-grid" in two_waves and "2-stage" not in two_waves, two_waves
    if head_dim == 64:  # from 4k keys d64 keeps the default tile; and softcap (extras) has no d64 wide-grid form
        k4k = torch.empty(k.shape[0], 4096, heads_kv, head_dim, dtype=k.dtype, device="cuda")
        long_plan = attnforge.explain(q, k4k, k4k)["plan"]
        assert "decode" in long_plan and "wide-grid" not in long_plan, long_plan
        softcapped = attnforge.explain(q, k, k, softcap=30.0)["plan"]
        assert "decode" in softcapped and "wide-grid" not in softcapped, softcapped


def _several_waves_batch(heads_kv, m_tiles=1):
    """Sequences for a decode grid of more than two waves of any decode tile (at most four CTAs per SM)."""
    return 8 * torch.cuda.get_device_properties(0).multi_processor_count // (heads_kv * m_tiles) + 1


# Grids of more than one wave on caches whose keys start at row 0: each CTA prefetches the query rows and first key
# blocks of the CTA one wave after it into L2 (plan "prefetch"). Caches shorter than the rows it prefetches, several
# packed tiles per KV head, SDPA's (B, Hk, S, D) cache through a transposed view and a head dim off the 8 grid, with
# cache_seqlens (run_decode) and without: the float64 checks hold, and the output is bit-identical with the prefetch
# off ($ATTNFORGE_DECODE_PREFETCH=0). A prefetch changes no value, so these check that the plan takes it where it
# should and that the kernel with it still computes every row; its addresses lie inside q, k and v by construction
# (decode_fwd.cuh prefetch_successor), which compute-sanitizer's memcheck may not check for prefetches.
@pytest.mark.parametrize("heads,heads_kv,head_dim,seqlen_q,cache_len,layout", [
    (32, 8, 128, 1, 333, "bshd"), (32, 8, 128, 1, 1037, "bhsd"), (32, 8, 128, 5, 70, "bshd"),
    (16, 16, 64, 1, 5, "bshd"), (8, 1, 256, 2, 300, "bshd"), (32, 8, 80, 1, 200, "bhsd")])
def test_decode_successor_prefetch(heads, heads_kv, head_dim, seqlen_q, cache_len, layout, seed, monkeypatch):
    m_tiles = -(-seqlen_q * heads // heads_kv // 16)
    batch = _several_waves_batch(heads_kv, m_tiles)
    run_decode(torch.bfloat16, batch, seqlen_q, heads, heads_kv, head_dim, cache_len=cache_len)
    q = torch.randn(batch, seqlen_q, heads, head_dim, dtype=torch.bfloat16, device="cuda")
    shape = (batch, heads_kv, cache_len, head_dim) if layout == "bhsd" else (batch, cache_len, heads_kv, head_dim)
    k, v = (torch.randn(shape, dtype=q.dtype, device="cuda") for _ in range(2))
    if layout == "bhsd":
        k, v = k.transpose(1, 2), v.transpose(1, 2)
    outs = []
    for prefetch in ("1", "0"):
        monkeypatch.setenv("ATTNFORGE_DECODE_PREFETCH", prefetch)
        out = torch.full_like(q, float("nan"))
        plan = _native.Plan(q, k, v, out, causal=True, backend="cuda").describe()
        assert "cuda decode" in plan and ("prefetch" in plan) == (prefetch == "1"), plan
        _native.attention_forward(q, k, v, out, causal=True, backend="cuda")
        outs.append(out)
    torch.cuda.synchronize()
    assert torch.equal(outs[0], outs[1])
    scale = 1.0 / math.sqrt(head_dim)
    for b in range(batch):
        qb, kb, vb = q[b].cpu(), k[b].cpu(), v[b].cpu()
        expected, _ = sequence_attention(qb.double(), kb.double(), vb.double(), scale, True, (-1, -1), 0.0, None)
        naive, _ = sequence_attention(qb, kb, vb, scale, True, (-1, -1), 0.0, None, precision=q.dtype)
        assert_close(outs[0][b].cpu(), expected, naive, q.dtype, what="out[%d]" % b)


# Every path of the paged loader: pages too small for one block-table entry per lane of a key block
# (1-4 rows at 128-key blocks, 1-2 at 64), the smallest shared ones (5, 3), powers of two and not,
# pages longer than a key block; head dims 64/128/256 have 128/128/64-key blocks on the H100/H200.
# Forced splits start CTAs mid-sequence, so the table is read ahead from a block other than 0.
@pytest.mark.parametrize("page_size", [1, 2, 3, 4, 5, 16, 64, 100, 256, 2048])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_paged_loader(page_size, head_dim, num_splits, seed):
    run_decode(torch.bfloat16, 5, 1, 32, 8, head_dim, cache_len=2100, page_size=page_size, num_splits=num_splits,
               garbage_table=True)


def _pool_past_4gib(pages, page_size, heads_kv, head_dim, dtype):
    """K and V pools of more than 2^32 bytes each, the block table's pages all at their top end
    (byte offsets past 2^32): the shared-page loader's 32-bit factors with a 64-bit result."""
    page_elements = page_size * heads_kv * head_dim
    num_pages = (2**32 // 2 + page_elements - 1) // page_elements + pages + 1
    k_cache = torch.empty(num_pages, page_size, heads_kv, head_dim, dtype=dtype, device="cuda")
    v_cache = torch.empty_like(k_cache)
    page_ids = torch.arange(num_pages - pages - 1, num_pages, dtype=torch.int32)
    assert int(page_ids[0]) * page_elements * 2 >= 2**32
    k_cache[page_ids.long()] = torch.randn(len(page_ids), page_size, heads_kv, head_dim, dtype=dtype, device="cuda")
    v_cache[page_ids.long()] = torch.randn(len(page_ids), page_size, heads_kv, head_dim, dtype=dtype, device="cuda")
    return k_cache, v_cache, page_ids


def _pool_page_stride_2g(pages, page_size, heads_kv, head_dim, dtype):
    """Pages 2^31 elements apart (2 x page stride needs 33 bits): the loader's 64-bit path. K and
    V are views of one allocation; only the rows of the pages are filled."""
    stride = 2**31
    num_pages = pages + 1
    page_elements = page_size * heads_kv * head_dim
    flat = torch.empty((num_pages - 1) * stride + 2 * page_elements, dtype=dtype, device="cuda")
    for page in range(num_pages):
        flat[page * stride:page * stride + 2 * page_elements].normal_()
    shape = (num_pages, page_size, heads_kv, head_dim)
    strides = (stride, heads_kv * head_dim, head_dim, 1)
    k_cache = flat.as_strided(shape, strides)
    v_cache = flat.as_strided(shape, strides, page_elements)
    return k_cache, v_cache, torch.arange(num_pages, dtype=torch.int32)


def _pool_head_dim_100(pages, page_size, heads_kv, head_dim, dtype):
    """head_dim 100 in rows of 104 (strides multiples of 8, a 16-byte chunk cut by head_dim): the
    loader's per-row path, which copies partial chunks."""
    assert head_dim == 100
    num_pages = pages + 2
    k_cache = torch.randn(num_pages, page_size, heads_kv, 104, dtype=dtype, device="cuda")[..., :100]
    v_cache = torch.randn(num_pages, page_size, heads_kv, 104, dtype=dtype, device="cuda")[..., :100]
    return k_cache, v_cache, torch.arange(num_pages, dtype=torch.int32)


# Both sides of each condition of the shared-page loader (shared_pages in decode_fwd.cuh): pools
# past 2^32 bytes through its 32-bit factors, and a page stride too wide for them and a head dim off
# the 8 grid through the per-row path, at page sizes 16 and 256 (in its range at every tile), with
# garbage table entries past the used pages.
@pytest.mark.parametrize("page_size", [16, 256])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_paged_pool_past_4gib(page_size, num_splits, seed):
    run_decode(torch.bfloat16, 3, 1, 32, 8, 128, cache_len=1000, page_size=page_size, num_splits=num_splits,
               garbage_table=True, make_pool=_pool_past_4gib)
    torch.cuda.empty_cache()


@pytest.mark.parametrize("page_size", [16, 256])
def test_decode_paged_page_stride_past_32_bits(page_size, seed):
    # 2 sequences of 2 pages: 5 pages of 4 GiB each in one allocation (17 GiB).
    run_decode(torch.bfloat16, 2, 1, 16, 4, 128, cache_len=2 * page_size, page_size=page_size, num_splits=1,
               garbage_table=True, make_pool=_pool_page_stride_2g)
    torch.cuda.empty_cache()


@pytest.mark.parametrize("page_size", [16, 256])
def test_decode_paged_head_dim_off_the_8_grid(page_size, seed):
    run_decode(torch.float16, 3, 2, 16, 4, 100, cache_len=700, page_size=page_size, num_splits=3,
               garbage_table=True, make_pool=_pool_head_dim_100)


@pytest.mark.parametrize("page_size", [3, 5, 16, 100])
def test_decode_paged_leftpad_window(page_size, seed):
    """Left padding and a sliding window move the first key block (and its first page) off row 0."""
    run_decode(torch.float16, 4, 2, 16, 4, 128, cache_len=1500, page_size=page_size, leftpad=True, window=(300, 0),
               num_splits=4, garbage_table=True)
    run_decode(torch.float16, 4, 2, 16, 4, 128, cache_len=1500, page_size=page_size, leftpad=True, empty=True,
               num_splits=1, garbage_table=True)


@pytest.mark.parametrize("case", ["empty", "leftpad", "kv_batch_idx", "window", "softcap", "alibi", "noncausal",
                                  "paged_leftpad"])
def test_decode_features(case, seed):
    kwargs = dict(empty=case == "empty", leftpad=case in ("leftpad", "paged_leftpad"), kv_batch=case == "kv_batch_idx",
                  window=(100, 0) if case == "window" else (-1, -1), softcap=30.0 if case == "softcap" else 0.0,
                  alibi=case == "alibi", causal=case != "noncausal",
                  page_size=16 if case == "paged_leftpad" else None)
    run_decode(torch.float16, 4, 5, 32, 8, 128, cache_len=900, num_splits=3, **kwargs)
    run_decode(torch.float16, 4, 5, 32, 8, 128, cache_len=900, num_splits=1, **kwargs)


def test_decode_plan_run_matches_forward(seed):
    """A plan made once runs later calls of its shape, and refuses another shape with the field named."""
    q = torch.randn(2, 1, 32, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(2, 3000, 8, 128, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    out_forward, out_run = torch.empty_like(q), torch.empty_like(q)
    _native.attention_forward(q, k, v, out_forward, causal=True, backend="cuda")
    plan = _native.Plan(q, k, v, out_run, causal=True, backend="cuda")
    assert plan.describe().startswith("cuda decode bf16 d128")
    plan.run(q, k, v, out_run, causal=True, backend="cuda")
    torch.cuda.synchronize()
    assert torch.equal(out_forward, out_run)
    with pytest.raises(_native.AttnforgeError, match="seqlen_k"):
        plan.run(q, k[:, :2999], v[:, :2999], out_run, causal=True, backend="cuda")


@pytest.mark.parametrize("head_dim", [59, 111])
@pytest.mark.parametrize("page_size", [16, 256])
def test_paged_head_dims_off_the_8_grid_run_on_the_kernel_padded(head_dim, page_size, seed):
    """flash_attn_with_kvcache on a paged pool whose head dim is not a multiple of 8 (FlashAttention-2's
    tests use 59 and 111): the new rows are appended to the caller's pool, then the kernel runs on
    zero-padded copies (FlashAttention-2 pads its caches the same way), never on torch."""

    batch, heads, heads_kv, cache_len = 3, 8, 2, 300
    max_blocks = (cache_len + page_size - 1) // page_size
    num_pages = batch * max_blocks + 2
    dtype = torch.float16
    k_pool = torch.randn(num_pages, page_size, heads_kv, head_dim, dtype=dtype, device="cuda")
    v_pool = torch.randn_like(k_pool)
    block_table = torch.randperm(num_pages, dtype=torch.int32, device="cuda")[: batch * max_blocks]
    block_table = block_table.view(batch, max_blocks)
    seqlens = torch.randint(0, cache_len - 1, (batch,), dtype=torch.int32, device="cuda")
    q = torch.randn(batch, 1, heads, head_dim, dtype=dtype, device="cuda")
    k_new = torch.randn(batch, 1, heads_kv, head_dim, dtype=dtype, device="cuda")
    v_new = torch.randn_like(k_new)
    assert attnforge.explain(q, k_pool, v_pool, causal=True, block_table=block_table,
                             seqused_k=seqlens + 1)["path"] == "attnforge-cuda-padded"
    out = attnforge.flash_attn_with_kvcache(q, k_pool, v_pool, k_new, v_new, cache_seqlens=seqlens,
                                            block_table=block_table, causal=True)
    torch.cuda.synchronize()
    scale = 1.0 / math.sqrt(head_dim)
    for b in range(batch):
        rows = torch.arange(int(seqlens[b]) + 1)
        kb = _cache_rows(k_pool.cpu(), b, rows, block_table.cpu(), None)
        vb = _cache_rows(v_pool.cpu(), b, rows, block_table.cpu(), None)
        assert torch.equal(kb[-1].to(dtype), k_new[b, 0].cpu()), "the new key row was not appended"
        qb = q[b].cpu()
        expected, _ = sequence_attention(qb.double(), kb, vb, scale, True)
        naive, _ = sequence_attention(qb, kb.to(dtype), vb.to(dtype), scale, True, precision=dtype)
        assert_close(out[b].cpu(), expected, naive, dtype, what="out[%d]" % b)


def _split_decode_call(seqlen_k=3001):
    q = torch.randn(2, 1, 32, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(2, seqlen_k, 8, 128, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    expected = torch.empty_like(q)
    _native.attention_forward(q, k, v, expected, causal=True, backend="cuda", num_splits=1)
    return q, k, v, expected


def _assert_split_matches(out, expected):
    # The split merge reorders fp32 sums: equal to the unsplit kernel within bf16 rounding.
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out.float(), expected.float(), atol=2e-2, rtol=2e-2)


def test_decode_split_merge_with_a_garbage_caller_workspace(seed, monkeypatch):
    """The last CTA of each query tile merges the shares, counted in the workspace: a caller-owned
    workspace full of garbage is made ready by the run itself, and every run leaves it ready."""
    monkeypatch.setenv("ATTNFORGE_DECODE_CLUSTER", "0")  # the global merge (sm_90+ would merge in a cluster)
    q, k, v, expected = _split_decode_call()
    plan = _native.Plan(q, k, v, torch.empty_like(q), causal=True, backend="cuda", num_splits=7)
    assert plan.describe().endswith("splits=7")
    workspace = torch.full((plan.workspace_size(),), 0xFF, dtype=torch.uint8, device="cuda")
    for _ in range(3):
        out = torch.full_like(q, float("nan"))
        plan.run(q, k, v, out, causal=True, backend="cuda", num_splits=7, workspace=workspace)
        torch.cuda.synchronize()
        _assert_split_matches(out, expected)


@pytest.mark.parametrize("merge", ["global", "cluster"])
def test_decode_split_merge_under_cuda_graph_replay_and_other_streams(merge, seed, monkeypatch):
    """attnforge's own workspace (one per stream, zeroed once) stays consistent across eager runs,
    CUDA-graph replays and a second stream, because each run returns its counters to zero; the
    cluster merge (no workspace) gives the same result under replay and on another stream."""
    _use_merge(merge, monkeypatch)
    q, k, v, expected = _split_decode_call()
    out = torch.full_like(q, float("nan"))
    _native.attention_forward(q, k, v, out, causal=True, backend="cuda", num_splits=5)
    torch.cuda.synchronize()
    _assert_split_matches(out, expected)
    side = torch.cuda.Stream()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        _native.attention_forward(q, k, v, out, causal=True, backend="cuda", num_splits=5,
                                  stream=side.cuda_stream)
    for _ in range(4):
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        _assert_split_matches(out, expected)
    with torch.cuda.stream(side):
        out.fill_(float("nan"))
        _native.attention_forward(q, k, v, out, causal=True, backend="cuda", num_splits=5, stream=side.cuda_stream)
    torch.cuda.synchronize()
    _assert_split_matches(out, expected)


# The cluster merge (sm_90+): the key splits of a query tile are the CTAs of one thread-block cluster
# and merge through distributed shared memory; ATTNFORGE_DECODE_CLUSTER=0 takes the global merge.

def _cluster_capable():
    return torch.cuda.get_device_capability() >= (9, 0)


def _use_merge(merge, monkeypatch):
    """Selects the merge for the calls that follow (read at each plan); skips the cluster merge
    where the GPU has no clusters."""
    if merge == "cluster" and not _cluster_capable():
        pytest.skip("thread-block clusters need sm_90+")
    monkeypatch.setenv("ATTNFORGE_DECODE_CLUSTER", "1" if merge == "cluster" else "0")


def _decode_plan(batch, seqlen_q, heads, heads_kv, head_dim, cache_len, num_splits, dtype=torch.bfloat16):
    q = torch.empty(batch, seqlen_q, heads, head_dim, dtype=dtype, device="cuda")
    k = torch.empty(batch, cache_len, heads_kv, head_dim, dtype=dtype, device="cuda")
    return _native.Plan(q, k, k, torch.empty_like(q), causal=True, backend="cuda", num_splits=num_splits)


# (dtype, batch, seqlen_q, heads, heads_kv, head_dim, cache_len, page_size, empty): GQA 4/8/2/1, Sq
# 1-4 (32 packed rows at GQA 8 x Sq 4: two query tiles), odd cache lengths, head dim 80 (compiled
# as 128), paged pools, a sequence with no keys; 333 keys in 16 splits leave most shares empty.
CLUSTER_SHAPES = [
    (torch.bfloat16, 1, 1, 32, 8, 128, 1037, None, False),
    (torch.bfloat16, 2, 4, 8, 1, 64, 777, None, True),
    (torch.float16, 3, 2, 6, 3, 256, 1501, 16, False),
    (torch.float16, 3, 3, 4, 4, 80, 333, 256, True),
]


@pytest.mark.parametrize("shape", CLUSTER_SHAPES, ids=["b1-gqa4", "b2-gqa8-sq4-empty", "b3-gqa2-d256-paged16",
                                                       "b3-mha-d80-paged256-empty"])
@pytest.mark.parametrize("num_splits", [2, 3, 4, 5, 6, 7, 8, 16])
def test_decode_cluster_merge(shape, num_splits, seed, monkeypatch):
    """Forced split counts merged in a cluster, against float64; counts up to the portable 8 must
    take the cluster merge on sm_90+ (the plan string says so), 16 takes it where the driver's
    occupancy query places 16-CTA clusters and the global merge elsewhere."""
    _use_merge("cluster", monkeypatch)
    dtype, batch, seqlen_q, heads, heads_kv, head_dim, cache_len, page_size, empty = shape
    described = _decode_plan(batch, seqlen_q, heads, heads_kv, head_dim, cache_len, num_splits, dtype).describe()
    assert " splits=%d" % num_splits in described, described
    if num_splits <= 8:
        assert described.endswith(" cluster"), described
    print(described)
    run_decode(dtype, batch, seqlen_q, heads, heads_kv, head_dim, cache_len, page_size=page_size, empty=empty,
               num_splits=num_splits)


def _one_ulp(x, dtype):
    """The spacing of dtype's values at |x| (one rounding step), at least 1e-6: near 0 the outputs'
    fp32 error (sums of O(1) terms that cancel, ~1e-7) exceeds the spacing of tiny values."""
    mantissa = 7 if dtype == torch.bfloat16 else 10
    return torch.exp2(torch.floor(torch.log2(x.abs().clamp_min(1e-30))) - mantissa).clamp_min(1e-6)


@pytest.mark.parametrize("shape", CLUSTER_SHAPES[:3], ids=["b1-gqa4", "b2-gqa8-sq4-empty", "b3-gqa2-d256"])
@pytest.mark.parametrize("num_splits", [2, 5, 8, 16])
def test_decode_cluster_and_global_merges_agree(shape, num_splits, seed, monkeypatch):
    """The same call through both merges: the shares are the same fp32 numbers and only the merge's
    order of fp32 operations differs, so LSE agrees to fp32 rounding and out to one rounding step
    of its dtype (a value near a rounding boundary may round either way)."""
    if not _cluster_capable():
        pytest.skip("thread-block clusters need sm_90+")
    dtype, batch, seqlen_q, heads, heads_kv, head_dim, cache_len, _, empty = shape
    q = torch.randn(batch, seqlen_q, heads, head_dim, dtype=dtype, device="cuda")
    k = torch.randn(batch, cache_len, heads_kv, head_dim, dtype=dtype, device="cuda")
    v = torch.randn_like(k)
    used = torch.randint(1, cache_len + 1, (batch,), dtype=torch.int32)
    if empty:
        used[0] = 0
    results = {}
    for merge in ("global", "cluster"):
        monkeypatch.setenv("ATTNFORGE_DECODE_CLUSTER", "1" if merge == "cluster" else "0")
        described = _decode_plan(batch, seqlen_q, heads, heads_kv, head_dim, cache_len, num_splits, dtype).describe()
        if merge == "global" or num_splits <= 8:
            assert described.endswith(" cluster") == (merge == "cluster"), described
        out = torch.full_like(q, float("nan"))
        lse = torch.full((batch, heads, seqlen_q), float("nan"), dtype=torch.float32, device="cuda")
        _native.attention_forward(q, k, v, out, softmax_lse=lse, seqused_k=used.cuda(), causal=True, backend="cuda",
                                  num_splits=num_splits)
        torch.cuda.synchronize()
        results[merge] = (out.float().cpu(), lse.cpu())
    (out_g, lse_g), (out_c, lse_c) = results["global"], results["cluster"]
    for tensor in (out_g, lse_g, out_c, lse_c):
        assert not torch.isnan(tensor).any(), "a row was not written"
    assert torch.equal(torch.isinf(lse_g), torch.isinf(lse_c)), "empty rows differ"
    finite = torch.isfinite(lse_g)
    torch.testing.assert_close(lse_c[finite], lse_g[finite], rtol=2e-6, atol=2e-6)
    difference = (out_c - out_g).abs()
    bound = _one_ulp(torch.maximum(out_c.abs(), out_g.abs()), dtype)
    assert (difference <= bound).all(), "out differs by %g (more than one rounding step)" % difference.max()


def test_decode_cluster_merge_needs_no_workspace(seed, monkeypatch):
    """A cluster plan reports no workspace and ignores a caller's (here one full of garbage bytes)."""
    _use_merge("cluster", monkeypatch)
    q, k, v, expected = _split_decode_call()
    plan = _native.Plan(q, k, v, torch.empty_like(q), causal=True, backend="cuda", num_splits=7)
    assert plan.describe().endswith("splits=7 cluster"), plan.describe()
    assert plan.workspace_size() == 0
    workspace = torch.full((4096,), 0xFF, dtype=torch.uint8, device="cuda")
    for _ in range(3):
        out = torch.full_like(q, float("nan"))
        plan.run(q, k, v, out, causal=True, backend="cuda", num_splits=7, workspace=workspace)
        torch.cuda.synchronize()
        _assert_split_matches(out, expected)
    assert (workspace == 0xFF).all(), "the cluster merge wrote to the workspace"


@pytest.mark.parametrize("merge", ["global", "cluster"])
def test_decode_split_heuristic_per_merge(merge, seed, monkeypatch):
    """The planned counts of src/cuda/plan.cpp at bf16 32/8 heads d128: batch 1 x 1k keys splits 4
    ways with the global merge and 8 ways (one 128-key block each) with the cluster merge, batch 8 x
    1k keys 2 ways with either; the device must hold all 8-CTA and 2-CTA clusters at once (an H100
    or H200 does: one CTA per SM, 132 SMs)."""
    _use_merge(merge, monkeypatch)
    suffix = " cluster" if merge == "cluster" else ""
    assert _decode_plan(1, 1, 32, 8, 128, 1024, 0).describe().endswith("splits=%d%s" % (
        8 if merge == "cluster" else 4, suffix))
    if torch.cuda.get_device_properties(0).multi_processor_count > 128:
        assert _decode_plan(8, 1, 32, 8, 128, 1024, 0).describe().endswith("splits=2" + suffix)
