"""attnforge's flash_attn API against the float64 reference: padded, varlen (empty sequences, paged KV),
packed variants, kvcache (append, rotary, batch index, left padding, paged with odd page sizes),
non-contiguous inputs, softmax_lse, numpy arrays, and argument errors."""
import math

import pytest
import torch

import attnforge
from reference import assert_close, assert_lse_close, sequence_attention

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def batched_reference(q, k, v, scale=None, precision=None, alibi=None, **kw):
    """q (B, Sq, H, D), k/v (B, Sk, Hk, D) -> out (B, Sq, H, D), lse (B, H, Sq), float64."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    outs, lses = [], []
    for b in range(q.shape[0]):
        slopes = None if alibi is None else (alibi[b] if alibi.dim() == 2 else alibi)
        o, lse = sequence_attention(q[b], k[b], v[b], scale, alibi=slopes, precision=precision, **kw)
        outs.append(o)
        lses.append(lse)
    return torch.stack(outs), torch.stack(lses)


def check(out, lse, q, k, v, dtype, **kw):
    expected, expected_lse = batched_reference(q, k, v, **kw)
    naive, _ = batched_reference(q, k, v, precision=dtype, **kw)
    assert out.dtype == dtype and out.shape == q.shape
    assert_close(out, expected, naive, dtype)
    if lse is not None:
        assert lse.dtype == torch.float32
        assert_lse_close(lse, expected_lse)


# name: (B, Sq, Sk, H, Hk, D, options)
PADDED_CASES = {
    "plain": (2, 17, 17, 4, 4, 64, {}),
    "causal_sq_lt_sk_gqa2": (3, 13, 29, 8, 4, 64, {"causal": True}),
    "causal_sq_gt_sk_fully_masked_rows_gqa4": (2, 29, 13, 8, 2, 32, {"causal": True}),
    "decode_mqa8": (3, 1, 37, 8, 1, 128, {"causal": True}),
    "window_5_3": (2, 23, 31, 4, 2, 40, {"window_size": (5, 3)}),
    "window_left_only_causal": (2, 19, 19, 2, 1, 64, {"causal": True, "window_size": (4, -1)}),
    "softcap": (2, 15, 21, 4, 4, 64, {"softcap": 5.0, "input_scale": 4.0}),
    "alibi_h": (2, 11, 20, 4, 2, 48, {"alibi": "h", "causal": True}),
    "alibi_bh": (2, 11, 11, 4, 4, 16, {"alibi": "bh"}),
    "head_dim_36_scale": (2, 9, 14, 3, 3, 36, {"softmax_scale": 0.3}),
    "head_dim_256": (1, 7, 9, 2, 1, 256, {"causal": True}),
    "head_dim_1": (2, 5, 6, 2, 2, 1, {}),
}


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("case", list(PADDED_CASES))
def test_flash_attn_func(case, dtype_name, seed):
    batch, sq, sk, heads, kv_heads, dim, options = PADDED_CASES[case]
    options = dict(options)
    dtype = DTYPES[dtype_name]
    input_scale = options.pop("input_scale", 1.0)
    q = (torch.randn(batch, sq, heads, dim) * input_scale).to(dtype)
    k = (torch.randn(batch, sk, kv_heads, dim) * input_scale).to(dtype)
    v = torch.randn(batch, sk, kv_heads, dim).to(dtype)
    alibi = options.pop("alibi", None)
    if alibi == "h":
        alibi = torch.rand(heads) * 0.5
    elif alibi == "bh":
        alibi = torch.rand(batch, heads) * 0.5
    out, lse, probs = attnforge.flash_attn_func(q, k, v, alibi_slopes=alibi, return_attn_probs=True, **options)
    assert probs is None
    ref_options = {"causal": options.get("causal", False), "window": options.get("window_size", (-1, -1)),
                   "softcap": options.get("softcap", 0.0), "scale": options.get("softmax_scale")}
    check(out, lse, q, k, v, dtype, alibi=alibi, **ref_options)


def varlen_split(x, cu):
    return [x[int(cu[i]):int(cu[i + 1])] for i in range(len(cu) - 1)]


def varlen_reference(q, k, v, cu_q, cu_k, dtype, **kw):
    """Per-sequence reference -> (out (total_q, H, D), lse (H, total_q), naive out)."""
    outs, lses, naives = [], [], []
    scale = q.shape[-1] ** -0.5
    for qs, ks, vs in zip(varlen_split(q, cu_q), varlen_split(k, cu_k), varlen_split(v, cu_k)):
        o, lse = sequence_attention(qs, ks, vs, scale, **kw)
        n, _ = sequence_attention(qs, ks, vs, scale, precision=dtype, **kw)
        outs.append(o)
        lses.append(lse)
        naives.append(n)
    return torch.cat(outs), torch.cat(lses, dim=1), torch.cat(naives)


def cu_seqlens(lengths):
    return torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)


VARLEN_CASES = {
    "empty_sequences_causal": ([5, 0, 17, 1, 0], [9, 3, 0, 20, 0], {"causal": True}),
    "plain": ([7, 12, 3], [7, 12, 3], {}),
    "window": ([16, 9], [20, 4], {"window": (3, 2)}),
    "causal_longer_q": ([11, 6], [4, 6], {"causal": True}),
}


@pytest.mark.parametrize("dtype_name", ["fp32", "bf16"])
@pytest.mark.parametrize("case", list(VARLEN_CASES))
def test_flash_attn_varlen_func(case, dtype_name, seed):
    lengths_q, lengths_k, options = VARLEN_CASES[case]
    dtype = DTYPES[dtype_name]
    heads, kv_heads, dim = 6, 2, 64
    cu_q, cu_k = cu_seqlens(lengths_q), cu_seqlens(lengths_k)
    q = torch.randn(sum(lengths_q), heads, dim).to(dtype)
    k = torch.randn(sum(lengths_k), kv_heads, dim).to(dtype)
    v = torch.randn(sum(lengths_k), kv_heads, dim).to(dtype)
    out, lse, _ = attnforge.flash_attn_varlen_func(
        q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), causal=options.get("causal", False),
        window_size=options.get("window", (-1, -1)), return_attn_probs=True)
    expected, expected_lse, naive = varlen_reference(q, k, v, cu_q, cu_k, dtype, **options)
    assert out.shape == q.shape and lse.shape == (heads, q.shape[0])
    assert_close(out, expected, naive, dtype)
    assert_lse_close(lse, expected_lse)


@pytest.mark.parametrize("page_size", [1, 3, 16])
def test_varlen_paged_kv_any_page_size(page_size, seed):
    lengths_q, lengths_k = [3, 1, 0, 5], [10, 1, 4, 23]
    heads, kv_heads, dim = 4, 2, 32
    max_blocks = max(math.ceil(n / page_size) for n in lengths_k) + 1
    num_pages = len(lengths_k) * max_blocks + 2
    k_pages = torch.randn(num_pages, page_size, kv_heads, dim)
    v_pages = torch.randn(num_pages, page_size, kv_heads, dim)
    block_table = torch.randperm(num_pages)[:len(lengths_k) * max_blocks].reshape(len(lengths_k), max_blocks)
    block_table = block_table.to(torch.int32)
    cu_q, cu_k = cu_seqlens(lengths_q), cu_seqlens(lengths_k)
    q = torch.randn(sum(lengths_q), heads, dim)
    out = attnforge.flash_attn_varlen_func(q, k_pages, v_pages, cu_q, cu_k, max(lengths_q), max(lengths_k),
                                           causal=True, block_table=block_table)
    # The same keys laid out contiguously.
    rows = [torch.arange(n) for n in lengths_k]
    k = torch.cat([k_pages[block_table[b, r // page_size].long(), r % page_size] for b, r in enumerate(rows)])
    v = torch.cat([v_pages[block_table[b, r // page_size].long(), r % page_size] for b, r in enumerate(rows)])
    expected, _, naive = varlen_reference(q, k, v, cu_q, cu_k, torch.float32, causal=True)
    assert_close(out, expected, naive, torch.float32)


def test_packed_variants_equal_unpacked(seed):
    qkv = torch.randn(2, 11, 3, 4, 32)
    kv = torch.randn(2, 13, 2, 2, 32)
    q = torch.randn(2, 11, 4, 32)
    packed = attnforge.flash_attn_qkvpacked_func(qkv, causal=True)
    check(packed, None, qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], torch.float32, causal=True)
    packed = attnforge.flash_attn_kvpacked_func(q, kv, causal=True)
    check(packed, None, q, kv[:, :, 0], kv[:, :, 1], torch.float32, causal=True)

    lengths = [4, 0, 9]
    cu = cu_seqlens(lengths)
    qkv_var = torch.randn(sum(lengths), 3, 4, 32)
    out = attnforge.flash_attn_varlen_qkvpacked_func(qkv_var, cu, max(lengths), causal=True)
    expected, _, naive = varlen_reference(qkv_var[:, 0], qkv_var[:, 1], qkv_var[:, 2], cu, cu, torch.float32,
                                          causal=True)
    assert_close(out, expected, naive, torch.float32)
    lengths_k = [6, 2, 9]
    cu_k = cu_seqlens(lengths_k)
    kv_var = torch.randn(sum(lengths_k), 2, 2, 32)
    q_var = torch.randn(sum(lengths), 4, 32)
    out = attnforge.flash_attn_varlen_kvpacked_func(q_var, kv_var, cu, cu_k, max(lengths), max(lengths_k))
    expected, _, naive = varlen_reference(q_var, kv_var[:, 0], kv_var[:, 1], cu, cu_k, torch.float32)
    assert_close(out, expected, naive, torch.float32)


def test_non_contiguous_views(seed):
    big_q = torch.randn(3, 2 * 12, 8, 64)
    q = big_q[:, ::2, 1:7]                          # strided rows, head subset
    kv = torch.randn(3, 4, 15, 64).transpose(1, 2)  # (B, Sk, Hk, D) view of (B, Hk, Sk, D)
    v = torch.randn(3, 15, 3, 64)[:, :, ::1][..., :64]
    k = kv[:, :, :3]
    assert not q.is_contiguous() and not k.is_contiguous()
    out = attnforge.flash_attn_func(q, k, v, causal=True)
    check(out, None, q, k, v, torch.float32, causal=True)
    # A last dimension with stride != 1 is made contiguous, as flash_attn does.
    q_t = torch.randn(3, 12, 64, 6).transpose(2, 3)
    out = attnforge.flash_attn_func(q_t, k, v)
    check(out, None, q_t, k, v, torch.float32)


def rotary_reference(x, cos, sin, positions, interleaved):
    """x (B, S, H, D) float64 rotated at positions (B, S) on its first 2 * cos.shape[1] dims."""
    x = x.double().clone()
    half = cos.shape[1]
    for b in range(x.shape[0]):
        for s in range(x.shape[1]):
            c, si = cos[positions[b][s]].double(), sin[positions[b][s]].double()
            for p in range(half):
                i0, i1 = (2 * p, 2 * p + 1) if interleaved else (p, p + half)
                a, bb = x[b, s, :, i0].clone(), x[b, s, :, i1].clone()
                x[b, s, :, i0] = a * c[p] - bb * si[p]
                x[b, s, :, i1] = a * si[p] + bb * c[p]
    return x


KVCACHE_CASES = {
    "decode_append": dict(sq=1, snew=1, causal=True),
    "prefill_append_causal": dict(sq=5, snew=5, causal=True),
    "no_append": dict(sq=3, snew=0, causal=True),
    "rotary_interleaved": dict(sq=4, snew=4, causal=True, rotary=True, interleaved=True),
    "rotary_neox_noncausal": dict(sq=3, snew=3, causal=False, rotary=True, interleaved=False),
    "cache_batch_idx": dict(sq=2, snew=2, causal=True, batch_idx=True),
    "cache_leftpad": dict(sq=2, snew=2, causal=True, leftpad=True),
    "paged_page3_rotary": dict(sq=3, snew=3, causal=True, page_size=3, rotary=True, interleaved=False),
    "paged_page5_window": dict(sq=2, snew=2, causal=True, page_size=5, window=(4, 0)),
}


@pytest.mark.parametrize("case", list(KVCACHE_CASES))
def test_flash_attn_with_kvcache(case, seed):
    o = KVCACHE_CASES[case]
    batch, heads, kv_heads, dim, cache_len = 3, 4, 2, 32, 24
    sq, snew = o["sq"], o["snew"]
    seqlens = torch.randint(0, cache_len - snew - 1, (batch,), dtype=torch.int32)
    leftpad = torch.minimum(torch.randint(0, 4, (batch,), dtype=torch.int32), seqlens) if o.get("leftpad") else None
    page_size = o.get("page_size")
    batch_cache = batch + 2 if o.get("batch_idx") else batch
    batch_idx = torch.randperm(batch_cache)[:batch].to(torch.int32) if o.get("batch_idx") else None
    if page_size:
        max_blocks = math.ceil(cache_len / page_size)
        num_pages = batch * max_blocks + 1
        k_cache = torch.randn(num_pages, page_size, kv_heads, dim)
        v_cache = torch.randn(num_pages, page_size, kv_heads, dim)
        block_table = torch.randperm(num_pages)[:batch * max_blocks].reshape(batch, max_blocks).to(torch.int32)
    else:
        k_cache = torch.randn(batch_cache, cache_len, kv_heads, dim)
        v_cache = torch.randn(batch_cache, cache_len, kv_heads, dim)
        block_table = None
    q = torch.randn(batch, sq, heads, dim)
    k_new = torch.randn(batch, snew, kv_heads, dim) if snew else None
    v_new = torch.randn(batch, snew, kv_heads, dim) if snew else None
    cos = sin = None
    if o.get("rotary"):
        angles = torch.rand(cache_len + 4, dim // 4) * 6.0  # rotary_dim = dim / 2
        cos, sin = torch.cos(angles), torch.sin(angles)

    def logical(cache):  # (B, cache_len, Hk, D) view of each sequence's cache rows
        if page_size:
            r = torch.arange(cache_len)
            return torch.stack([cache[block_table[b, r // page_size].long(), r % page_size] for b in range(batch)])
        return cache[batch_idx.long()] if batch_idx is not None else cache
    k_before, v_before = logical(k_cache).clone(), logical(v_cache).clone()

    window = o.get("window", (-1, -1))
    out, lse = attnforge.flash_attn_with_kvcache(
        q, k_cache, v_cache, k=k_new, v=v_new, rotary_cos=cos, rotary_sin=sin, cache_seqlens=seqlens,
        cache_batch_idx=batch_idx, cache_leftpad=leftpad, block_table=block_table, causal=o["causal"],
        window_size=window, rotary_interleaved=o.get("interleaved", True), return_softmax_lse=True)

    # Expected cache: new rows (rotated when rotary is on) at seqlens[b] + t; nothing else changes.
    k_expected, v_expected = k_before.double(), v_before.double()
    q_expected = q.double()
    if snew:
        positions = [[int(seqlens[b]) + t for t in range(snew)] for b in range(batch)]
        k_rot = rotary_reference(k_new, cos, sin, positions, o["interleaved"]) if cos is not None else k_new.double()
        for b in range(batch):
            k_expected[b, positions[b]] = k_rot[b].to(torch.float32).double()
            v_expected[b, positions[b]] = v_new[b].double()
        if cos is not None:
            per_row = o["causal"] or window != (-1, -1)
            q_positions = [[int(seqlens[b]) + (t if per_row else 0) for t in range(sq)] for b in range(batch)]
            q_expected = rotary_reference(q, cos, sin, q_positions, o["interleaved"]).to(torch.float32).double()
    torch.testing.assert_close(logical(k_cache).double(), k_expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(logical(v_cache).double(), v_expected, rtol=0, atol=0)

    for b in range(batch):
        start = int(leftpad[b]) if leftpad is not None else 0
        end = int(seqlens[b]) + snew
        ks, vs = k_expected[b, start:end], v_expected[b, start:end]
        expected, expected_lse = sequence_attention(q_expected[b], ks, vs, dim ** -0.5, causal=o["causal"],
                                                    window=window)
        naive, _ = sequence_attention(q_expected[b].float(), ks.float(), vs.float(), dim ** -0.5,
                                      causal=o["causal"], window=window, precision=torch.float32)
        assert_close(out[b], expected, naive, torch.float32, what="out[%d]" % b)
        assert_lse_close(lse[b], expected_lse)


def test_kvcache_int_seqlens_and_errors(seed):
    q = torch.randn(2, 1, 4, 16)
    k_cache, v_cache = torch.randn(2, 10, 2, 16), torch.randn(2, 10, 2, 16)
    out = attnforge.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=7)
    check(out, None, q, k_cache[:, :7], v_cache[:, :7], torch.float32)
    with pytest.raises(attnforge.AttnforgeError, match="cache_batch_idx"):
        attnforge.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=7,
                                          cache_batch_idx=torch.zeros(2, dtype=torch.int32),
                                          block_table=torch.zeros(2, 1, dtype=torch.int32))


def test_invalid_arguments_raise_specific_errors(seed):
    q = torch.randn(1, 4, 6, 32)
    with pytest.raises(attnforge.AttnforgeError, match="AF_ERR_SHAPE"):
        attnforge.flash_attn_func(q, torch.randn(1, 4, 4, 32), torch.randn(1, 4, 4, 32))  # 6 % 4 != 0
    with pytest.raises(attnforge.AttnforgeError):
        attnforge.flash_attn_func(torch.randn(1, 4, 2, 300), torch.randn(1, 4, 2, 300), torch.randn(1, 4, 2, 300))
    lengths = torch.tensor([0, 5, 3], dtype=torch.int32)  # not non-decreasing
    with pytest.raises(attnforge.AttnforgeError, match="AF_ERR_SEQLENS"):
        attnforge.flash_attn_varlen_func(torch.randn(5, 2, 16), torch.randn(5, 2, 16), torch.randn(5, 2, 16),
                                         lengths, lengths, 5, 5)


def test_numpy_arrays_in_numpy_out(seed):
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, 9, 4, 32)).astype(np.float32)
    k = rng.standard_normal((2, 13, 2, 32)).astype(np.float32)
    v = rng.standard_normal((2, 13, 2, 32)).astype(np.float32)
    out, lse, _ = attnforge.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    assert isinstance(out, np.ndarray) and isinstance(lse, np.ndarray) and out.dtype == np.float32
    check(torch.from_numpy(out), torch.from_numpy(lse), torch.from_numpy(q), torch.from_numpy(k),
          torch.from_numpy(v), torch.float32, causal=True)
    lengths = [3, 0, 6]
    cu = np.array([0, 3, 3, 9], dtype=np.int32)
    qv = rng.standard_normal((9, 4, 32)).astype(np.float16)
    kv = rng.standard_normal((9, 4, 32)).astype(np.float16)
    out = attnforge.flash_attn_varlen_func(qv, kv, kv, cu, cu, max(lengths), max(lengths), causal=True)
    assert isinstance(out, np.ndarray) and out.dtype == np.float16
    expected, _, naive = varlen_reference(torch.from_numpy(qv), torch.from_numpy(kv), torch.from_numpy(kv),
                                          torch.from_numpy(cu), torch.from_numpy(cu), torch.float16, causal=True)
    assert_close(torch.from_numpy(out), expected, naive, torch.float16)
    # kvcache on numpy: the append happens in the caller's array.
    k_cache = np.zeros((2, 8, 2, 32), dtype=np.float32)
    v_cache = np.zeros((2, 8, 2, 32), dtype=np.float32)
    k_new = rng.standard_normal((2, 1, 2, 32)).astype(np.float32)
    out = attnforge.flash_attn_with_kvcache(q[:, :1], k_cache, v_cache, k=k_new, v=k_new,
                                            cache_seqlens=np.array([0, 3], dtype=np.int32))
    assert isinstance(out, np.ndarray)
    assert np.array_equal(k_cache[0, 0], k_new[0, 0]) and np.array_equal(k_cache[1, 3], k_new[1, 0])


def test_numpy_without_torch():
    """The package imports and computes with numpy alone (torch made unimportable in a child process)."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np, attnforge\n"
        "q = np.random.default_rng(0).standard_normal((1, 5, 2, 16)).astype(np.float32)\n"
        "out = attnforge.flash_attn_func(q, q, q)\n"
        "s = np.einsum('qhd,khd->hqk', q[0], q[0]) / 4.0\n"
        "p = np.exp(s - s.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)\n"
        "expected = np.einsum('hqk,khd->qhd', p, q[0])\n"
        "assert isinstance(out, np.ndarray) and np.abs(out[0] - expected).max() < 1e-5, np.abs(out[0]-expected).max()\n"
        "print('ok', attnforge.__version__)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_child_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


def _child_env():
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(attnforge.__file__)),
                                         env.get("PYTHONPATH", "")])
    return env
