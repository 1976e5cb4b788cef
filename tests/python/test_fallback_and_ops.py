"""Fallback chain and reasons, explain(), dropout, gradients, torch custom ops and torch.compile."""
import logging
import os
import subprocess
import sys

import pytest
import torch

import attnforge
from attnforge import AttentionOptions, _dispatch, fallback, ops
from reference import assert_close, sequence_attention
from test_flash_api import batched_reference, cu_seqlens, varlen_reference


@pytest.fixture
def fresh_log(caplog):
    """Each test sees every log-once message again."""
    fallback._logged.clear()
    caplog.set_level(logging.INFO, logger="attnforge")
    return caplog


def attnforge_messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "attnforge"]


def test_explain_names_the_kernel_and_the_run_uses_it(fresh_log, seed):
    q, k, v = torch.randn(2, 9, 4, 32), torch.randn(2, 11, 2, 32), torch.randn(2, 11, 2, 32)
    verdict = attnforge.explain(q, k, v, causal=True)
    assert verdict["path"] == "attnforge-cpu" and verdict["plan"] == "cpu", verdict
    attnforge.flash_attn_func(q, k, v, causal=True)
    assert attnforge_messages(fresh_log) == [], "explain() said attnforge-cpu but the call fell back"


def test_fallback_when_the_kernel_cannot_take_the_call(fresh_log, seed):
    # float64 has no kernel in attnforge: torch runs it, with the library's reason logged once.
    q, k, v = torch.randn(2, 7, 4, 16).double(), torch.randn(2, 9, 2, 16).double(), torch.randn(2, 9, 2, 16).double()
    verdict = attnforge.explain(q, k, v, causal=True)
    assert verdict["path"] in ("sdpa", "eager") and "AF_ERR_DTYPE" in verdict["reason"], verdict
    out, lse, _ = attnforge.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    expected, expected_lse = batched_reference(q, k, v, causal=True)
    assert torch.allclose(out, expected, atol=1e-9) and torch.allclose(lse.double(), expected_lse, atol=1e-5)
    messages = attnforge_messages(fresh_log)
    assert len(messages) == 1 and "AF_ERR_DTYPE" in messages[0] and verdict["path"] in messages[0]
    attnforge.flash_attn_func(q, k, v, causal=True)
    assert len(attnforge_messages(fresh_log)) == 1, "a fallback reason must be logged once, not per call"


def test_explain_reports_invalid_arguments(seed):
    q = torch.randn(1, 4, 6, 32)
    verdict = attnforge.explain(q, torch.randn(1, 4, 4, 32), torch.randn(1, 4, 4, 32))
    assert verdict["path"] == "error" and "AF_ERR_SHAPE" in verdict["reason"]


def test_explain_dropout_goes_to_torch(seed):
    q = torch.randn(1, 4, 2, 32)
    verdict = attnforge.explain(q, q, q, dropout_p=0.1)
    assert verdict["path"] in ("sdpa", "eager") and "dropout" in verdict["reason"]


def test_library_not_loadable_falls_back_with_reason():
    code = (
        "import logging, torch, attnforge\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "q = torch.randn(1, 6, 2, 16)\n"
        "out = attnforge.flash_attn_func(q, q, q, causal=True)\n"
        "ref = torch.softmax((q[0].transpose(0, 1) @ q[0].permute(1, 2, 0)) / 4.0 + "
        "torch.full((6, 6), float('-inf')).triu(1), -1) @ q[0].transpose(0, 1)\n"
        "assert (out[0].transpose(0, 1) - ref).abs().max() < 1e-5\n"
        "print(attnforge.explain(q, q, q)['path'])\n")
    env = dict(os.environ, ATTNFORGE_LIBRARY="/nonexistent/libattnforge.so")
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(attnforge.__file__)),
                                         env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("sdpa", "eager")
    assert "libattnforge is not loadable" in result.stderr and result.stderr.count("not loadable") == 1


FALLBACK_CASES = {
    "softcap_eager": dict(softcap=3.0, causal=True),
    "alibi_window_sdpa": dict(alibi=True, window=(3, 1)),
    "causal_gqa": dict(causal=True),
}


@pytest.mark.parametrize("case", list(FALLBACK_CASES))
def test_torch_fallback_matches_reference(case, seed):
    """The fallback is what runs on GPUs the kernel does not serve: it must be exact too."""
    o = FALLBACK_CASES[case]
    q, k, v = torch.randn(2, 13, 4, 32) * 2, torch.randn(2, 19, 2, 32) * 2, torch.randn(2, 19, 2, 32)
    alibi = torch.rand(4) if o.get("alibi") else None
    out, lse, path = fallback.attention(q, k, v, causal=o.get("causal", False), window_size=o.get("window", (-1, -1)),
                                        softcap=o.get("softcap", 0.0), alibi_slopes=alibi)
    if fallback.HAS_SDPA:
        assert path == ("eager" if o.get("softcap") else "sdpa")
    kw = dict(causal=o.get("causal", False), window=o.get("window", (-1, -1)), softcap=o.get("softcap", 0.0),
              alibi=alibi)
    expected, expected_lse = batched_reference(q, k, v, **kw)
    naive, _ = batched_reference(q, k, v, precision=torch.float32, **kw)
    assert_close(out, expected, naive, torch.float32)
    assert torch.allclose(lse.double(), expected_lse, atol=1e-4)

    lengths = [5, 0, 8]
    cu = cu_seqlens(lengths)
    qv, kv = torch.randn(13, 4, 32), torch.randn(13, 2, 32)
    out, lse, _ = fallback.attention(qv, kv, kv, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=8, max_seqlen_k=8,
                                     causal=True, softcap=o.get("softcap", 0.0))
    expected, expected_lse, naive = varlen_reference(qv, kv, kv, cu, cu, torch.float32, causal=True,
                                                     softcap=o.get("softcap", 0.0))
    assert_close(out, expected, naive, torch.float32)
    assert torch.allclose(lse.double(), expected_lse, atol=1e-4)


def test_dropout_runs_through_torch_and_is_logged(fresh_log, seed):
    q = torch.randn(2, 16, 4, 32, requires_grad=True)
    k, v = torch.randn(2, 16, 4, 32), torch.randn(2, 16, 4, 32)
    out = attnforge.flash_attn_func(q, k, v, dropout_p=0.5, causal=True)
    exact = attnforge.flash_attn_func(q, k, v, causal=True)
    assert not torch.allclose(out, exact), "dropout had no effect"
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    assert any("dropout" in m for m in attnforge_messages(fresh_log))


def _grads(fn, *inputs):
    inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*inputs)
    out.backward(torch.ones_like(out) * 0.1 + out.detach() * 0.0 + _upstream(out))
    return [x.grad for x in inputs]


_UPSTREAM = {}


def _upstream(out):
    key = tuple(out.shape)
    if key not in _UPSTREAM:
        _UPSTREAM[key] = torch.randn(out.shape, dtype=torch.float64)
    return _UPSTREAM[key].to(out.dtype)


@pytest.mark.parametrize("options", [dict(causal=True), dict(window_size=(3, 2), softcap=4.0)],
                         ids=["causal", "window_softcap"])
def test_gradients_match_float64_autograd(options, fresh_log, seed):
    q, k, v = torch.randn(2, 9, 4, 16), torch.randn(2, 12, 2, 16), torch.randn(2, 12, 2, 16)
    ours = _grads(lambda a, b, c: attnforge.flash_attn_func(a, b, c, **options), q, k, v)

    def eager64(a, b, c):
        scale = a.shape[-1] ** -0.5
        out, _, _ = fallback.attention(a, b, c, softmax_scale=scale, need_lse=False, **options)
        return out
    expected = _grads(eager64, q.double(), k.double(), v.double())
    for name, mine, ref in zip("qkv", ours, expected):
        assert mine is not None and mine.shape == ref.shape
        err = (mine.double() - ref).abs().max().item()
        assert err < 1e-4 * max(1.0, ref.abs().max().item()), "d%s error %.3g" % (name, err)
    assert any("backward" in m for m in attnforge_messages(fresh_log)), "the recomputed backward must be logged"


def test_varlen_gradients(seed):
    lengths = [4, 0, 7]
    cu = cu_seqlens(lengths)
    q, k, v = torch.randn(11, 4, 16), torch.randn(11, 2, 16), torch.randn(11, 2, 16)
    ours = _grads(lambda a, b, c: attnforge.flash_attn_varlen_func(a, b, c, cu, cu, 7, 7, causal=True), q, k, v)
    expected = _grads(lambda a, b, c: fallback.attention(a, b, c, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=7,
                                                         max_seqlen_k=7, causal=True, need_lse=False)[0],
                      q.double(), k.double(), v.double())
    for mine, ref in zip(ours, expected):
        assert torch.allclose(mine.double(), ref, atol=1e-5)


needs_custom_op = pytest.mark.skipif(not ops.HAS_CUSTOM_OP,
                                     reason="torch %s < 2.4: no torch.library.custom_op; attnforge uses "
                                            "autograd.Function there and torch.compile support is off "
                                            "(as in flash_attn)" % torch.__version__)


@needs_custom_op
def test_custom_ops_pass_opcheck(seed):
    q, k, v = torch.randn(2, 7, 4, 16), torch.randn(2, 9, 2, 16), torch.randn(2, 9, 2, 16)
    torch.library.opcheck(torch.ops.attnforge.flash_attn_forward.default, (q, k, v, None, None, 0.0, True, -1, -1))
    cu = cu_seqlens([3, 4])
    torch.library.opcheck(torch.ops.attnforge.flash_attn_varlen_forward.default,
                          (q[0], k[0, :7], v[0, :7], cu, cu, 4, 4, None, None, None, 0.5, 0.0, True, -1, -1),
                          test_utils=("test_schema", "test_faketensor"))


@needs_custom_op
def test_torch_compile_fullgraph_traces_attention(seed):
    """No graph break at attention: fullgraph=True fails on any break; outputs and grads match eager."""
    import torch._dynamo

    torch._dynamo.reset()
    proj = torch.nn.Linear(32, 32)

    def block(x, cu):
        qkv = proj(x).reshape(x.shape[0], x.shape[1], 1, 2, 16).expand(-1, -1, 3, -1, -1)
        out = attnforge.flash_attn_func(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], causal=True)
        flat = qkv.reshape(-1, 3, 2, 16)
        var = attnforge.flash_attn_varlen_func(flat[:, 0], flat[:, 1], flat[:, 2], cu, cu, 10, 10, causal=True)
        return out.sum() + var.sum()

    x = torch.randn(2, 10, 32)
    cu = cu_seqlens([10, 10])
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    eager_value = block(x, cu)
    compiled_value = compiled(x, cu)
    assert torch.allclose(eager_value, compiled_value, atol=1e-5)
    compiled_value.backward()
    assert proj.weight.grad is not None and torch.isfinite(proj.weight.grad).all()


@needs_custom_op
def test_torch_compile_kvcache_mutation(seed):
    import torch._dynamo

    torch._dynamo.reset()
    k_cache, v_cache = torch.zeros(2, 8, 2, 16), torch.zeros(2, 8, 2, 16)
    q, k_new = torch.randn(2, 1, 4, 16), torch.randn(2, 1, 2, 16)
    seqlens = torch.tensor([0, 3], dtype=torch.int32)

    def step(q, k_new, k_cache, v_cache):
        return attnforge.flash_attn_with_kvcache(q, k_cache, v_cache, k=k_new, v=k_new, cache_seqlens=seqlens,
                                                 causal=True)

    out = torch.compile(step, fullgraph=True, backend="aot_eager")(q, k_new, k_cache, v_cache)
    assert torch.equal(k_cache[1, 3], k_new[1, 0]) and torch.equal(v_cache[0, 0], k_new[0, 0])
    expected, _ = sequence_attention(q[1], k_cache[1, :4], v_cache[1, :4], 0.25, causal=True)
    assert torch.allclose(out[1].double(), expected, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-graph capture needs a CUDA GPU")
@pytest.mark.parametrize("q_shape,kv_shape", [((2, 64, 8, 64), (2, 64, 2, 64)),
                                              ((2, 1, 16, 128), (2, 3000, 4, 128))],  # decode: split keys
                         ids=["prefill", "decode-split-keys"])
def test_cuda_graph_capture_and_replay(q_shape, kv_shape, seed):
    q = torch.randn(*q_shape, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(*kv_shape, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(*kv_shape, device="cuda", dtype=torch.bfloat16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        attnforge.flash_attn_func(q, k, v, causal=True)  # warm-up: compiles/loads the kernel outside capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = attnforge.flash_attn_func(q, k, v, causal=True)
    for _ in range(2):
        q.copy_(torch.randn_like(q))
        graph.replay()
        torch.cuda.synchronize()
        expected = attnforge.flash_attn_func(q, k, v, causal=True)
        assert torch.equal(out, expected)


@needs_custom_op
def test_inference_calls_skip_the_custom_op_and_autograd_calls_use_it(seed, monkeypatch):
    """The dispatcher costs ~25 us per call: inference runs the implementation directly; a call that
    autograd must record (or torch.compile traces) still goes through the op."""
    q, k, v = torch.randn(1, 5, 2, 16), torch.randn(1, 6, 2, 16), torch.randn(1, 6, 2, 16)
    expected = attnforge.flash_attn_func(q, k, v, causal=True)

    def op_called(*args):
        raise AssertionError("custom op called")

    monkeypatch.setattr(ops, "_forward_op", op_called)
    with torch.no_grad():
        assert torch.equal(attnforge.flash_attn_func(q, k, v, causal=True), expected)
    assert torch.equal(attnforge.flash_attn_func(q, k, v, causal=True), expected)  # no input needs grad
    with pytest.raises(AssertionError, match="custom op called"):
        attnforge.flash_attn_func(q.requires_grad_(True), k, v, causal=True)


def test_plan_cache_is_least_recently_used_first_out():
    cache = _dispatch.PlanCache(capacity=3)
    for key in "abc":
        cache.put(key, key.upper())
    assert cache.get("a") == "A"  # a is now the most recent: b goes first
    cache.put("d", "D")
    assert [cache.get(key) for key in "abcd"] == ["A", None, "C", "D"] and len(cache) == 3


def test_plan_key_tells_apart_what_a_plan_depends_on(seed):
    """Calls that af_attention_run would refuse under one plan, or whose prepared arguments differ (scalars,
    an index tensor's strides), never share a key; same-shaped calls do."""
    def key(q, k, options, lse=True):
        return _dispatch.plan_key(q, k, k, lse, options)

    q, k = torch.randn(9, 4, 16), torch.randn(9, 2, 16)
    two = AttentionOptions(cu_seqlens_q=cu_seqlens([4, 5]), cu_seqlens_k=cu_seqlens([4, 5]), max_seqlen_q=5,
                           max_seqlen_k=5)
    three = two._replace(cu_seqlens_q=cu_seqlens([4, 0, 5]), cu_seqlens_k=cu_seqlens([4, 0, 5]))
    assert key(q, k, two) == key(torch.randn(9, 4, 16), torch.randn(9, 2, 16), two)
    variants = [three, two._replace(causal=True), two._replace(window_size=(3, -1)), two._replace(softcap=2.0),
                two._replace(softmax_scale=0.3), two._replace(seqused_k=torch.ones(4, dtype=torch.int32)[::2]),
                two._replace(num_splits=2), two._replace(max_seqlen_k=6), two._replace(seqused_k=torch.ones(2))]
    keys = {key(q, k, two), key(q, k, two, lse=False), key(q[:, :, :8], k[:, :, :8], two),
            key(q.to(torch.float16), k.to(torch.float16), two),
            _dispatch.plan_key(q, k, k.to(torch.float16), True, two)} | {key(q, k, o) for o in variants}
    assert len(keys) == 5 + len(variants)
