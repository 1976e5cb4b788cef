"""bench/e2e/run_models.py --tiny end to end on small shapes (the CPU here, whatever device there is): one
padded-batch row group (eager, sdpa, attnforge, dynamic cache) and the InternVL-shaped model under static cache +
torch.compile, in a child process (the script installs a SIGALRM handler and resets torch.compile's state)."""
import json
import math
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers", reason="transformers is not installed for this interpreter (Debian's python3 "
                                           "has none); the benchmark needs it")
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench", "e2e", "run_models.py")


def test_run_models_tiny(tmp_path):
    out = tmp_path / "e2e.md"
    proc = subprocess.run([sys.executable, SCRIPT, str(out), "--tiny", "--only",
                           "qwen3-padded-dynamic,internvl-static"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads((tmp_path / "e2e.json").read_text())
    rows = results["rows"]
    assert [(r["mode"], r["impl"]) for r in rows] == [("dynamic", "eager"), ("dynamic", "sdpa"),
                                                      ("dynamic", "attnforge"), ("static", "sdpa"),
                                                      ("static", "attnforge")]
    for row in rows:
        assert "error" not in row, row
        assert row["prefill_ms"] > 0 and math.isfinite(row["decode_tok_s"]) and row["decode_tok_s"] > 0, row
        if row["mode"] == "dynamic":  # also timed on a shorter prompt: key counts new to the process
            assert math.isfinite(row["decode_tok_s_new_lengths"]) and row["decode_tok_s_new_lengths"] > 0, row
    padded, compiled = rows[2], rows[4]
    assert padded["ref_impl"] == "eager" and compiled["ref_impl"] == "sdpa"
    for row in (padded, compiled):
        assert row["tokens_total"] == row["batch"] * row["new_tokens"]
        assert row["tokens_equal"] == row["tokens_total"], row
        assert 0 <= row["first_step_max_logit_diff"] < 0.1 * row["first_step_logit_scale"], row
    assert compiled["unique_graphs"] >= 1 and compiled["graph_breaks"] == 0, compiled
    assert len(results["checks"]) == 2 and all(line.startswith("ok") for line in results["checks"])
    text = out.read_text()
    assert "| model | cache | impl |" in text and "## Checks" in text


def test_checks_fail_on_wrong_logits_and_fallbacks():
    """The verdicts of run_models.checks on rows shaped like a CUDA run's: within the sdpa-vs-eager noise, a
    near-tie divergence, logits beyond the budget (what an off-by-one causal diagonal gives), a fallback."""
    sys.path.insert(0, os.path.dirname(SCRIPT))
    import run_models

    def row(impl, diff=0.0, equal=8, **extra):
        fields = dict(model="m", model_key="qwen3", mode="dynamic", impl=impl, prefill_ms=1.0, ref_impl="eager",
                      first_step_max_logit_diff=diff, first_step_logit_scale=4.0, tokens_equal=equal, tokens_total=8,
                      kernels=["q[8, 1, 64, 128] k[8, 4224, 8, 128]: cuda decode"], attnforge_log=[])
        return dict(fields, **extra)

    diverged = {"step": 3, "batch_row": 0, "rows_diverged": 1}
    rows = [row("sdpa", 0.2, decode_tok_s=100.0),
            row("attnforge", 0.3, decode_tok_s=120.0),
            row("attnforge", 0.3, 5, decode_tok_s=120.0, first_divergence=dict(diverged, ref_margin_there=0.5)),
            row("attnforge", 1.4, 5, decode_tok_s=120.0, first_divergence=dict(diverged, ref_margin_there=0.9)),
            row("attnforge", 0.3, decode_tok_s=90.0, attnforge_log=["attnforge kernel not used (x); ran torch sdpa"])]
    lines = run_models.checks({"environment": {"device": "NVIDIA H200"}, "rows": rows})
    assert [line[:4] for line in lines] == ["ok  ", "ok  ", "FAIL", "FAIL"], lines
    assert "meets" in lines[0] and "near-tie" in lines[1]
    assert "LOGITS BEYOND" in lines[2] and "MISMATCH" in lines[2]
    assert "FALLBACK" in lines[3] and "BELOW" in lines[3]
