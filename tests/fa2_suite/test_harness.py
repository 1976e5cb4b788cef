"""CPU checks of the harness (run.py, harness_conftest.py, the shim) on a fake FlashAttention tree whose
test file is ours: staging, collection, the draw, per-case records with the path attnforge took, the
time budget and the summary by kind. FlashAttention's real file needs CUDA to import."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

FAKE_TESTS = '''
import math

import pytest
import torch
from flash_attn import flash_attn_func, flash_attn_varlen_func
from flash_attn.flash_attn_interface import _get_block_size_n


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [32, 64])
def test_flash_attn_output(causal, d):
    torch.random.manual_seed(0)
    q, k, v = (torch.randn(2, 33, 3, d) for _ in range(3))
    out = flash_attn_func(q, k, v, causal=causal)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    if causal:
        scores = scores.masked_fill(torch.ones(33, 33, dtype=torch.bool).triu(1), -math.inf)
    ref = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)
    assert (out - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("dropout_p", [0.17])
def test_flash_attn_qkvpacked(dropout_p):
    q, k, v = (torch.randn(1, 40, 2, 16) for _ in range(3))
    out, lse, s_dmask = flash_attn_func(q, k, v, dropout_p, return_attn_probs=True)
    assert s_dmask.shape == (1, 2, 128, 128) and _get_block_size_n(q.device, 16, True, False) > 0


@pytest.mark.parametrize("alibi", [True])
def test_flash_attn_splitkv(alibi):
    assert float("nan") <= 1.0


def test_flash_attn_deterministic():
    assert torch.equal(torch.zeros(2), torch.ones(2))


@pytest.mark.parametrize("alibi", [True])
def test_flash_attn_causal(alibi):
    q = torch.randn(1, 8, 2, 16)
    flash_attn_func(q, q, q, alibi_slopes=torch.ones(2))
    assert 0.5 <= 0.1


def test_flash_attn_bwd_overflow():
    pytest.skip("the test's own skip")


def test_flash_attn_race_condition():
    raise RuntimeError("no GPU here")
'''


@pytest.fixture
def fake_fa2(tmp_path):
    root = tmp_path / "fa2"
    for relative in run.HELPERS:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text("")
    (root / "flash_attn" / "__init__.py").write_text('__version__ = "2.8.3"\n')
    (root / "tests").mkdir()
    (root / run.TEST_FILE).write_text(FAKE_TESTS)
    return root


def _cases(out):
    with open(os.path.join(out, "cases.jsonl")) as f:
        return {json.loads(line)["nodeid"].split("::")[1]: json.loads(line) for line in f}


def test_run_records_every_case_with_its_path_and_kind(fake_fa2, tmp_path):
    out = str(tmp_path / "out")
    status = run.main(["--fa2", str(fake_fa2), "--draw", "100", "--seed", "3", "--out", out])
    assert status == 1  # some cases fail on purpose
    staged = os.path.join(out, "stage")
    with open(os.path.join(staged, "test_flash_attn.py")) as f:
        assert f.read() == FAKE_TESTS  # copied unchanged
    cases = _cases(out)
    assert len(cases) == 10
    for name in ("test_flash_attn_output[32-False]", "test_flash_attn_output[64-True]"):
        assert cases[name]["outcome"] == "passed"
        assert cases[name]["path"] in ("kernel", "kernel-padded", "fallback")
        assert cases[name]["kernel_forwards"] + sum(cases[name]["fallback_reasons"].values()) == 1
    assert cases["test_flash_attn_qkvpacked[0.17]"]["path"] == "torch-dropout"
    assert cases["test_flash_attn_qkvpacked[0.17]"]["outcome"] == "passed"
    assert cases["test_flash_attn_bwd_overflow"]["outcome"] == "skipped"
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["outcomes"] == {"passed": 5, "failed": 4, "skipped": 1}
    kinds = {f["nodeid"].split("::")[1]: f["kind"] for f in summary["failures"]}
    assert kinds == {"test_flash_attn_splitkv[True]": "environment",
                     "test_flash_attn_deterministic": "environment",
                     "test_flash_attn_causal[True]": "kind2-alibi",
                     "test_flash_attn_race_condition": "environment"}
    assert summary["run"]["collected"] == 10 and summary["run"]["seed"] == 3
    assert "attnforge._dispatch.native_forward" in summary["env"]["instrumented"]
    assert "attnforge._dispatch.planned_forward" in summary["env"]["instrumented"]
    text = open(os.path.join(out, "summary.md")).read()
    assert "| kind2-alibi |" in text and "2.8.3" in text


def test_classify_rules():
    nan = {"test": "test_flash_attn_splitkv", "path": "kernel", "params": {"alibi": True},
           "message": "E   assert nan <= 0.0125"}
    assert run.classify(nan) == "kind1-nan"
    assert run.classify(dict(nan, message="E  assert False\nE   +  where False = equal(a, b)",
                             test="test_flash_attn_varlen_deterministic")) == "kind3-deterministic"
    dmask = {"test": "test_flash_attn_output", "path": "torch-dropout", "params": {"dropout_p": 0.17, "alibi": True},
             "message": "AttributeError: 'NoneType' object has no attribute 'shape'"}
    assert run.classify(dmask) == "kind4-s_dmask"
    assert run.classify(dict(dmask, params={"dropout_p": 0.0, "alibi": True})) == "kind2-alibi"
    assert run.classify(dict(dmask, params={"dropout_p": 0.0, "alibi": False}, path="fallback")) == "kind5-fallback"
    assert run.classify(dict(dmask, message="torch.OutOfMemoryError: CUDA out of memory")) == "oom"
    assert run.classify(dict(dmask, path="none")) == "environment"


def test_draw_is_uniform_seeded_and_in_collection_order():
    ids = ["case%05d" % i for i in range(10000)]
    first = run.draw(ids, 500, 7)
    assert first == run.draw(ids, 500, 7) and first != run.draw(ids, 500, 8)
    assert len(set(first)) == 500 and first == sorted(first)
    assert run.draw(ids[:10], 50, 7) == ids[:10]
    # Uniform: each tenth of the file gets its share (500 / 10 = 50; binomial sd ~6.7).
    tenths = [sum(1 for node in first if int(node[4:]) // 1000 == t) for t in range(10)]
    assert all(20 <= n <= 80 for n in tenths), tenths


def test_budget_stops_starting_cases(fake_fa2, tmp_path):
    out = str(tmp_path / "out")
    run.main(["--fa2", str(fake_fa2), "--draw", "3", "--seed", "1", "--out", out, "--budget-s", "1e-9"])
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["outcomes"] == {"not run (budget)": 3}


def test_wrong_version_is_refused(fake_fa2, tmp_path):
    (fake_fa2 / "flash_attn" / "__init__.py").write_text('__version__ = "2.7.0"\n')
    with pytest.raises(SystemExit) as raised:
        run.main(["--fa2", str(fake_fa2), "--out", str(tmp_path / "out")])
    assert raised.value.code == 2
