"""attnforge.distributed: ring (zigzag) context-parallel attention on 2 and 4 gloo processes against the
float64 reference of the whole sequence, and the LSE merge on its own."""
import math
import os
import socket
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import attnforge  # noqa: E402
from attnforge import distributed as cp  # noqa: E402

_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_worker.py")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world", [2, 4])
def test_ring_attention_matches_reference(world, seed):
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(attnforge.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in [env.get("PYTHONPATH")] if p])
    env["OMP_NUM_THREADS"] = "1"
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, _WORKER, str(rank), str(world), str(port), str(seed)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
             for rank in range(world)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=180)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    report = "\n".join("--- rank %d (exit %s)\n%s" % (r, p.returncode, o)
                       for r, (p, o) in enumerate(zip(procs, outputs)))
    assert all(p.returncode == 0 for p in procs), report
    for output in outputs:
        assert output.count("PASS ") == 12 and "FAIL" not in output, report


def test_merge_attention_is_exact_and_keeps_empty_rows_zero(seed):
    # Two halves of the keys merged through their LSE equal attention over all keys; rows that see no
    # key in either half stay 0 with lse -inf (never NaN), and a half that sees nothing changes nothing.
    q, k, v = torch.randn(1, 5, 2, 8), torch.randn(1, 12, 2, 8), torch.randn(1, 12, 2, 8)
    whole, whole_lse, _ = attnforge.flash_attn_func(q, k, v, return_attn_probs=True)
    out = torch.zeros(1, 5, 2, 8)
    lse = torch.full((1, 2, 5), -math.inf)
    for part in (slice(0, 7), slice(7, 12)):
        o, lse_p, _ = attnforge.flash_attn_func(q, k[:, part], v[:, part], return_attn_probs=True)
        cp.merge_attention(out, lse, o, lse_p)
    assert (out - whole).abs().max().item() < 1e-5
    assert (lse - whole_lse).abs().max().item() < 1e-5
    before = out.clone()
    cp.merge_attention(out, lse, torch.full_like(out, 7.0), torch.full_like(lse, -math.inf))
    assert torch.equal(out, before)
    empty_out, empty_lse = torch.zeros(2, 3, 4), torch.full((3, 2), -math.inf)
    cp.merge_attention(empty_out, empty_lse, torch.zeros(2, 3, 4), torch.full((3, 2), -math.inf))
    assert not torch.isnan(empty_out).any() and torch.equal(empty_out, torch.zeros(2, 3, 4))
    assert torch.isinf(empty_lse).all()


def test_zigzag_shard_rejects_bad_arguments():
    x = torch.arange(12).view(1, 12)
    assert cp.zigzag_shard(x, 2, 1).tolist() == [[3, 4, 5, 6, 7, 8]]
    with pytest.raises(ValueError, match="not divisible by 2 \\* world_size = 8"):
        cp.zigzag_shard(x, 4, 0)
    with pytest.raises(ValueError, match="rank 2 is not in"):
        cp.zigzag_shard(x, 2, 2)
    with pytest.raises(ValueError, match="int32"):
        cp.zigzag_varlen_shard(x.view(12, 1), torch.tensor([0, 12]), 2, 0)
    with pytest.raises(ValueError, match="has 11 rows"):
        cp.zigzag_varlen_shard(x.view(12, 1)[:11], torch.tensor([0, 12], dtype=torch.int32), 2, 0)
