"""Bad input (issue 15): every invalid call raises AttnforgeError naming the argument, whichever path would
run it -- attnforge's kernel (float32) or the torch fallback (float64, which has no kernel) -- for torch
tensors and numpy arrays; flash_attn_with_kvcache writes nothing unless the whole call is valid; inputs no
path should answer (integer, bool, complex, big-endian) are refused; empty and zero-element calls return
at once; NVRTC is never looked for in the working directory; a forked child computes correctly."""
import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import attnforge
from attnforge import _native, fallback
from reference import assert_close
from test_flash_api import batched_reference, cu_seqlens, varlen_reference

PATHS = {"kernel": torch.float32, "fallback": torch.float64}


def _varlen(dtype, lengths=(3, 0, 5), heads=4, kv_heads=2, dim=16):
    total = sum(lengths)
    return dict(q=torch.randn(total, heads, dim, dtype=dtype), k=torch.randn(total, kv_heads, dim, dtype=dtype),
                v=torch.randn(total, kv_heads, dim, dtype=dtype), cu_seqlens_q=cu_seqlens(list(lengths)),
                cu_seqlens_k=cu_seqlens(list(lengths)), max_seqlen_q=max(lengths), max_seqlen_k=max(lengths))


def _padded(dtype, batch=2, sq=5, sk=7, heads=4, kv_heads=2, dim=16):
    return dict(q=torch.randn(batch, sq, heads, dim, dtype=dtype), k=torch.randn(batch, sk, kv_heads, dim, dtype=dtype),
                v=torch.randn(batch, sk, kv_heads, dim, dtype=dtype))


def _paged(dtype, page_size=3, pages=6):
    call = _varlen(dtype, lengths=(4, 5))
    call["k"] = torch.randn(pages, page_size, 2, 16, dtype=dtype)
    call["v"] = torch.randn(pages, page_size, 2, 16, dtype=dtype)
    call["block_table"] = torch.tensor([[0, -1, 1], [2, 3, 4]], dtype=torch.int32)  # sequence 0 uses 2 pages
    call["cu_seqlens_k"] = cu_seqlens([4, 5])
    return call


def _set(call, **changes):
    call.update(changes)
    return call


# name: (builder of the call's arguments from the q/k/v dtype, text the error must contain)
BAD_CALLS = {
    "cu_seqlens_q_nonzero_start": (lambda d: _set(_varlen(d), cu_seqlens_q=torch.tensor([1, 3, 3, 8],
                                                                                       dtype=torch.int32)),
                                   "cu_seqlens_q[0] must be 0"),
    "cu_seqlens_k_decreasing": (lambda d: _set(_varlen(d), cu_seqlens_k=torch.tensor([0, 5, 3, 8], dtype=torch.int32)),
                                "cu_seqlens_k must be non-decreasing"),
    "cu_seqlens_q_past_rows": (lambda d: _set(_varlen(d), cu_seqlens_q=torch.tensor([0, 3, 3, 9], dtype=torch.int32)),
                               "cu_seqlens_q[3] = 9 is past the 8 rows"),
    "cu_seqlens_k_int64_cumsum_past_rows": (
        lambda d: _set(_varlen(d), cu_seqlens_k=torch.cat([torch.zeros(1, dtype=torch.int64),
                                                           torch.cumsum(torch.tensor([3, 0, 6]), 0)])),
        "cu_seqlens_k[3] = 9 is past the 8 rows"),
    "cu_seqlens_q_int64_decreasing": (lambda d: _set(_varlen(d), cu_seqlens_q=torch.tensor([0, 5, 3, 8])),
                                      "cu_seqlens_q must be non-decreasing"),
    "cu_seqlens_q_int64_beyond_int32": (lambda d: _set(_varlen(d), cu_seqlens_q=torch.tensor([0, 3, 3, 2 ** 33])),
                                        "cu_seqlens_q holds values outside int32"),
    "cu_seqlens_q_float": (lambda d: _set(_varlen(d), cu_seqlens_q=torch.tensor([0.0, 3.0, 3.0, 8.0])),
                           "cu_seqlens_q must be int32"),
    "max_seqlen_q_too_small": (lambda d: _set(_varlen(d), max_seqlen_q=4), "max_seqlen_q = 4 is smaller"),
    "block_table_negative_entry": (lambda d: _paged(d), "block_table[0][1] = -1"),
    "block_table_past_pages": (lambda d: _set(_paged(d), block_table=torch.tensor([[0, 6, -1], [2, 3, 4]],
                                                                                   dtype=torch.int32)),
                               "block_table[0][1] = 6"),
    "heads_not_multiple": (lambda d: _set(_padded(d), k=torch.randn(2, 7, 3, 16, dtype=d),
                                          v=torch.randn(2, 7, 3, 16, dtype=d)), "not a multiple of the 3 key/value"),
    "head_dim_300": (lambda d: _padded(d, dim=300), "head_dim"),
    "v_shape": (lambda d: _set(_padded(d), v=torch.randn(2, 6, 2, 16, dtype=d)), "v must have the shape of k"),
    "k_batch": (lambda d: _set(_padded(d), k=torch.randn(3, 7, 2, 16, dtype=d), v=torch.randn(3, 7, 2, 16, dtype=d)),
                "k has batch 3"),
    "k_dtype_differs": (lambda d: _set(_padded(d), k=torch.randn(2, 7, 2, 16, dtype=torch.float16)), "k is"),
    "alibi_shape": (lambda d: _set(_padded(d), alibi_slopes=torch.rand(3)), "alibi_slopes must have shape"),
    "alibi_dtype": (lambda d: _set(_padded(d), alibi_slopes=torch.rand(4, dtype=torch.float64)),
                    "alibi_slopes must be float32"),
    "window_below_minus_one": (lambda d: _set(_padded(d), window_size=(-2, 0)), "window sizes"),
    "softcap_negative": (lambda d: _set(_padded(d), softcap=-1.0), "softcap"),
    "softmax_scale_nan": (lambda d: _set(_padded(d), softmax_scale=float("nan")), "softmax_scale"),
    "q_rank": (lambda d: _set(_padded(d), q=torch.randn(2, 5, 4, dtype=d)), "q must have rank 4"),
}


def _call(arguments, kind):
    arguments = dict(arguments)
    if kind == "numpy":
        arguments = {name: (value.numpy() if isinstance(value, torch.Tensor) else value)
                     for name, value in arguments.items()}
    q, k, v = arguments.pop("q"), arguments.pop("k"), arguments.pop("v")
    if "cu_seqlens_q" in arguments:
        return attnforge.flash_attn_varlen_func(q, k, v, arguments.pop("cu_seqlens_q"), arguments.pop("cu_seqlens_k"),
                                                arguments.pop("max_seqlen_q"), arguments.pop("max_seqlen_k"),
                                                **arguments)
    return attnforge.flash_attn_func(q, k, v, **arguments)


@pytest.mark.parametrize("kind", ["torch", "numpy"])
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input_raises_naming_the_argument(case, path, kind, seed):
    build, expected = BAD_CALLS[case]
    arguments = build(PATHS[path])
    with pytest.raises(attnforge.AttnforgeError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        _call(arguments, kind)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("builder", [_padded, _varlen, _paged], ids=["padded", "varlen", "paged"])
def test_the_table_s_valid_calls_run_on_the_path_named(builder, path, seed):
    """The table's calls differ from valid ones only where named: the valid ones run on the path the table
    says (so the bad ones exercised it) and give FlashAttention's answer."""
    arguments = builder(PATHS[path])
    if builder is _paged:
        arguments["block_table"] = torch.tensor([[0, 1, -1], [2, 3, 4]], dtype=torch.int32)  # -1: unused padding
    explained = attnforge.explain(**arguments)
    assert explained["path"] == ("attnforge-cpu" if path == "kernel" else "sdpa" if fallback.HAS_SDPA else "eager"), \
        explained
    out = _call(arguments, "torch")
    if builder is _padded:
        expected, _ = batched_reference(arguments["q"], arguments["k"], arguments["v"])
        naive, _ = batched_reference(arguments["q"], arguments["k"], arguments["v"], precision=torch.float32)
        assert_close(out, expected, naive, PATHS[path] if path == "kernel" else torch.float32)
    elif builder is _varlen:
        expected, _, naive = varlen_reference(arguments["q"], arguments["k"], arguments["v"], arguments["cu_seqlens_q"],
                                              arguments["cu_seqlens_k"], torch.float32)
        assert_close(out, expected, naive, torch.float32)
    else:
        assert torch.isfinite(out).all()


# ---- flash_attn_with_kvcache: nothing is written unless the whole call is valid (kind 5) ----

def _kvcache_call(dtype, paged=False):
    batch, heads, kv_heads, dim = 2, 4, 2, 16
    call = dict(q=torch.randn(batch, 1, heads, dim, dtype=dtype), k=torch.randn(batch, 1, kv_heads, dim, dtype=dtype),
                v=torch.randn(batch, 1, kv_heads, dim, dtype=dtype),
                cache_seqlens=torch.tensor([2, 5], dtype=torch.int32), causal=True)
    if paged:
        call["k_cache"] = torch.randn(5, 3, kv_heads, dim, dtype=dtype)
        call["v_cache"] = torch.randn(5, 3, kv_heads, dim, dtype=dtype)
        call["block_table"] = torch.tensor([[0, 1, 2], [3, 4, 0]], dtype=torch.int32)
    else:
        call["k_cache"] = torch.randn(batch, 8, kv_heads, dim, dtype=dtype)
        call["v_cache"] = torch.randn(batch, 8, kv_heads, dim, dtype=dtype)
    return call


BAD_KVCACHE = {
    "negative_cache_seqlens": (lambda d: _set(_kvcache_call(d), cache_seqlens=torch.tensor([-1, 2], dtype=torch.int32)),
                               "cache_seqlens[0] = -1 is negative"),
    "int64_negative_cache_seqlens": (lambda d: _set(_kvcache_call(d), cache_seqlens=torch.tensor([3, -2])),
                                     "cache_seqlens[1] = -2 is negative"),
    "append_past_the_cache": (lambda d: _set(_kvcache_call(d), cache_seqlens=torch.tensor([2, 8], dtype=torch.int32)),
                              "cache_seqlens (+ the new keys)[1] = 9"),
    "paged_append_into_page_minus_one": (
        lambda d: _set(_kvcache_call(d, paged=True), block_table=torch.tensor([[0, 1, 2], [3, -1, 0]],
                                                                              dtype=torch.int32)),
        "block_table[1][1] = -1"),
    "cache_batch_idx_out_of_range": (lambda d: _set(_kvcache_call(d), cache_batch_idx=torch.tensor([0, 3],
                                                                                                   dtype=torch.int32)),
                                     "cache_batch_idx[1] = 3 is outside [0, 2)"),
    "cache_leftpad_past_used": (lambda d: _set(_kvcache_call(d), cache_leftpad=torch.tensor([4, 0], dtype=torch.int32)),
                                "cache_leftpad[0] = 4"),
    "k_shape": (lambda d: _set(_kvcache_call(d), k=torch.randn(2, 1, 3, 16, dtype=d),
                               v=torch.randn(2, 1, 3, 16, dtype=d)), "k must have shape (B, Snew, Hk, D)"),
    "k_dtype": (lambda d: _set(_kvcache_call(d), k=torch.randn(2, 1, 2, 16, dtype=torch.float16)), "k is"),
    "v_without_k": (lambda d: _set(_kvcache_call(d), k=None), "k and v must be given together"),
    "rotary_cos_too_short": (lambda d: _set(_kvcache_call(d), rotary_cos=torch.ones(6, 4),
                                            rotary_sin=torch.zeros(6, 4)), "rotary_cos has 6 rows"),
    "k_cache_strided_head_dim": (lambda d: _set(_kvcache_call(d), k_cache=torch.randn(2, 8, 2, 32, dtype=d)[..., ::2]),
                                 "k_cache must have stride 1 in its last dimension"),
    "cache_seqlens_shape": (lambda d: _set(_kvcache_call(d), cache_seqlens=torch.tensor([1, 2, 3], dtype=torch.int32)),
                            "cache_seqlens must have B = 2 entries"),
}


@pytest.mark.parametrize("kind", ["torch", "numpy"])
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("case", list(BAD_KVCACHE))
def test_kvcache_bad_input_writes_nothing(case, path, kind, seed):
    build, expected = BAD_KVCACHE[case]
    arguments = build(PATHS[path])
    if kind == "numpy":
        arguments = {name: (value.numpy() if isinstance(value, torch.Tensor) else value)
                     for name, value in arguments.items()}
    k_before, v_before = arguments["k_cache"].copy() if kind == "numpy" else arguments["k_cache"].clone(), \
        arguments["v_cache"].copy() if kind == "numpy" else arguments["v_cache"].clone()
    q, k_cache, v_cache = arguments.pop("q"), arguments.pop("k_cache"), arguments.pop("v_cache")
    with pytest.raises(attnforge.AttnforgeError, match=expected.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        attnforge.flash_attn_with_kvcache(q, k_cache, v_cache, **arguments)
    assert (k_cache == k_before).all() and (v_cache == v_before).all(), "the cache was written before the error"


# ---- inputs that no path should answer, and empty ones (kind 6) ----

@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.int8, torch.bool, torch.complex64],
                         ids=["int32", "int64", "int8", "bool", "complex64"])
def test_non_float_tensors_are_refused(dtype):
    q = torch.ones(1, 3, 2, 8, dtype=dtype)
    with pytest.raises(attnforge.AttnforgeError, match="q must be float16, bfloat16, float32 or float64"):
        attnforge.flash_attn_func(q, q, q)
    with pytest.raises(attnforge.AttnforgeError, match="q must be float16"):
        attnforge.flash_attn_func(q.numpy(), q.numpy(), q.numpy())
    x = torch.ones(1, 3, 2, 8)
    with pytest.raises(attnforge.AttnforgeError, match="k must be float16"):
        attnforge.flash_attn_func(x, x.to(dtype), x)
    assert attnforge.explain(q, q, q)["path"] == "error"


@pytest.mark.parametrize("which", ["q", "k"])
def test_big_endian_arrays_are_refused(which, seed):
    arrays = {name: np.random.default_rng(seed).standard_normal((1, 4, 2, 8)).astype(np.float32) for name in "qkv"}
    arrays[which] = arrays[which].astype(">f4")
    with pytest.raises(attnforge.AttnforgeError, match="%s is a float32 array in non-native byte order" % which):
        attnforge.flash_attn_func(arrays["q"], arrays["k"], arrays["v"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["kernel", "fallback"])
def test_empty_numpy_arrays(dtype):
    """numpy reports zero strides for empty arrays: they must be taken, and answered as FlashAttention does."""
    q = np.empty((2, 0, 4, 16), dtype=dtype)
    k = np.empty((2, 5, 2, 16), dtype=dtype)
    out, lse, _ = attnforge.flash_attn_func(q, k, k, return_attn_probs=True)
    assert out.shape == q.shape and out.dtype == dtype and lse.shape == (2, 4, 0)
    q = np.ones((2, 3, 4, 16), dtype=dtype)
    k = np.empty((2, 0, 2, 16), dtype=dtype)
    out, lse, _ = attnforge.flash_attn_func(q, k, k, return_attn_probs=True)
    assert (out == 0).all() and np.isneginf(lse).all()
    out = attnforge.flash_attn_varlen_func(np.empty((0, 4, 16), dtype=dtype), np.empty((0, 2, 16), dtype=dtype),
                                           np.empty((0, 2, 16), dtype=dtype), np.zeros(3, dtype=np.int32),
                                           np.zeros(3, dtype=np.int32), 0, 0)
    assert out.shape == (0, 4, 16)


def test_fallback_with_no_elements_allocates_nothing_per_sequence():
    """fallback.attention on q with no elements and a 2^40 batch: nothing linear in the batch (an index
    tensor per sequence would need 8 TiB)."""
    q = torch.empty(2 ** 40, 0, 2, 16, dtype=torch.float64)
    out, lse, _ = fallback.attention(q, q, q)
    assert out.shape == q.shape and lse.shape == (2 ** 40, 2, 0)


@pytest.mark.parametrize("dtype", ["float32", "float64"], ids=["kernel", "fallback"])
def test_huge_batch_with_no_elements_returns_at_once(dtype):
    """A 2^40 batch without elements returns without work per sequence: 2^40 steps of anything would take
    hours. The limit covers the child's interpreter and torch import too (4-7 s under CI's ASan preload on
    an idle 2-core machine, past 10 s under load), so it is a hang guard, not a timing."""
    code = ("import torch, attnforge\n"
            "q = torch.empty(2 ** 40, 0, 2, 16, dtype=torch.%s)\n"
            "print(tuple(attnforge.flash_attn_func(q, q, q).shape))\n" % dtype)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_child_env(),
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str((2 ** 40, 0, 2, 16))


# ---- NVRTC search directories (kind 8, Python part) ----

def test_nvrtc_is_not_searched_in_the_working_directory(tmp_path, monkeypatch):
    """sys.path's empty entry (python -c, interactive) is the working directory: a libnvrtc there must not
    become the NVRTC attnforge loads; an absolute site directory still counts."""
    for root in ("cwd", "site"):
        lib = tmp_path / root / "nvidia" / "cu12" / "lib"
        lib.mkdir(parents=True)
        (lib / "libnvrtc.so.12").write_bytes(b"")
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setattr(sys, "path", ["", ".", str(tmp_path / "site")])
    assert _native._nvrtc_dirs() == [str(tmp_path / "site" / "nvidia" / "cu12" / "lib")]


# ---- fork ----

def _inputs(seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 9, 4, 16, generator=generator) for _ in range(3)]


def _child_attention(seed):
    """attnforge alone in the child: torch's own CPU kernels hang after fork once the parent has used its
    OpenMP pool (libgomp is not fork-safe), which is torch's limitation, not attnforge's."""
    return attnforge.flash_attn_func(*_inputs(seed), causal=True).numpy()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_computes_after_a_parent_call(seed):
    """A multiprocessing 'fork' pool after a first CPU call in the parent (the CPU backend's thread pool
    exists by then): children compute correctly and do not hang."""
    parent = torch.from_numpy(_child_attention(seed))
    pool = multiprocessing.get_context("fork").Pool(2)
    try:
        outs = pool.map_async(_child_attention, [seed, seed + 1]).get(timeout=30)
    finally:
        pool.terminate()
    for child_seed, out in zip([seed, seed + 1], outs):
        expected, _ = batched_reference(*_inputs(child_seed), causal=True)
        assert float((torch.from_numpy(out).double() - expected).abs().max()) < 1e-5
    assert torch.equal(parent, torch.from_numpy(outs[0]))


def _child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(attnforge.__file__)),
                                         os.path.dirname(os.path.abspath(__file__)), env.get("PYTHONPATH", "")])
    return env


