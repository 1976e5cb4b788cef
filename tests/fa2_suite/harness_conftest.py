"""pytest plugin staged as conftest.py next to FlashAttention-2's unchanged test file by run.py.

It keeps only the drawn cases, stops starting cases once the time budget is spent (they are
reported as skipped "harness budget"), and writes one JSON line per case: outcome, parameters,
the failure text, and which path attnforge took (its kernel, a torch fallback and why, torch
dropout, torch backward recompute), counted by wrapping attnforge's dispatch functions. A call the
kernel declines that then runs on the kernel through zero-padded copies (head dims off the 8-element
grid, as FlashAttention-2 pads them) is "kernel-padded", not a fallback.

Settings come from the environment (run.py sets them):
  FA2_SUITE_SELECT   file of node ids to run, one per line (absent: run what pytest collected)
  FA2_SUITE_RECORD   JSON-lines file to append case records to
  FA2_SUITE_ENV      JSON file to write the run's environment to (GPU, versions)
  FA2_SUITE_BUDGET_S seconds after which no further case starts
  FA2_SUITE_FAKE_CAPABILITY  "major.minor": answer torch.cuda.get_device_capability with it, so the
                     test module (which asks at import) can be collected on a machine without CUDA
"""
import json
import os
import sys
import time

import pytest
import torch

_START = time.monotonic()
_BUDGET = float(os.environ.get("FA2_SUITE_BUDGET_S", "0") or 0)
BUDGET_REASON = "harness budget spent"

if os.environ.get("FA2_SUITE_FAKE_CAPABILITY") and not torch.cuda.is_available():
    _capability = tuple(int(x) for x in os.environ["FA2_SUITE_FAKE_CAPABILITY"].split("."))
    torch.cuda.get_device_capability = lambda device=None: _capability


class _Paths:
    """Counts, for the running case, which path attnforge's calls took."""

    def __init__(self):
        self.reset()
        self.instrumented = []

    def reset(self):
        self.kernel = 0
        self.declined = {}
        self.fallback = {}
        self.dropout = 0
        self.backward = 0

    def label(self):
        if not self.instrumented or self.instrumented[0].startswith("not instrumented"):
            return "unknown"
        if self.fallback:
            return "fallback"
        if self.dropout:
            return "torch-dropout"
        if self.kernel:
            return "kernel-padded" if self.declined else "kernel"
        return "none"

    def as_dict(self):
        return {"path": self.label(), "kernel_forwards": self.kernel, "fallback_reasons": self.fallback,
                "declined_reasons": self.declined,
                "dropout_forwards": self.dropout, "backward_recomputes": self.backward}


PATHS = _Paths()


def _replace_everywhere(original, wrapper):
    """Rebinds every attnforge module attribute that is `original` (modules import it by name)."""
    names = []
    for module_name, module in list(sys.modules.items()):
        if module is None or not module_name.startswith("attnforge"):
            continue
        for attr, value in list(vars(module).items()):
            if value is original:
                setattr(module, attr, wrapper)
                names.append("%s.%s" % (module_name, attr))
    return names


def _instrument():
    import attnforge  # noqa: F401  (loads the modules whose attributes are rebound)
    from attnforge import _dispatch, ops

    native_forward = _dispatch.native_forward

    def counted_native_forward(*args, **kwargs):
        reason = native_forward(*args, **kwargs)
        if reason is None:
            PATHS.kernel += 1
        else:
            PATHS.declined[reason] = PATHS.declined.get(reason, 0) + 1
        return reason

    planned_forward = _dispatch.planned_forward

    def counted_planned_forward(*args, **kwargs):
        # flash_attn_func's shortcut for a signature that already ran on the kernel: None sends it down the full path.
        out = planned_forward(*args, **kwargs)
        if out is not None:
            PATHS.kernel += 1
        return out

    forward_fallback = _dispatch._fallback

    def counted_fallback(q, k, v, out, options, need_lse, reason, return_s_dmask):
        # The forward's torch path: dropout (no kernel has an RNG) or a call the kernel declined.
        if options.dropout_p > 0:
            PATHS.dropout += 1
        else:
            PATHS.fallback[reason] = PATHS.fallback.get(reason, 0) + 1
        return forward_fallback(q, k, v, out, options, need_lse, reason, return_s_dmask)

    backward_impl = ops.backward_impl

    def counted_backward(*args, **kwargs):
        PATHS.backward += 1
        return backward_impl(*args, **kwargs)

    PATHS.instrumented = (_replace_everywhere(native_forward, counted_native_forward) +
                          _replace_everywhere(planned_forward, counted_planned_forward) +
                          _replace_everywhere(forward_fallback, counted_fallback) +
                          _replace_everywhere(backward_impl, counted_backward))


def _environment():
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability="%d.%d" % (props.major, props.minor),
                    gpu_memory_gib=round(props.total_memory / 2 ** 30, 1))
    try:
        import attnforge

        info.update(attnforge=attnforge.__version__, library=attnforge.library_path())
    except Exception as e:  # the record says what is missing; the cases then fail at import
        info["attnforge_error"] = repr(e)
    info["instrumented"] = PATHS.instrumented
    return info


def pytest_configure(config):
    try:
        _instrument()
    except (ImportError, AttributeError) as e:
        PATHS.instrumented = ["not instrumented: %r" % (e,)]
    if os.environ.get("FA2_SUITE_ENV"):
        with open(os.environ["FA2_SUITE_ENV"], "w") as f:
            json.dump(_environment(), f, indent=1)


def pytest_collection_modifyitems(config, items):
    path = os.environ.get("FA2_SUITE_SELECT")
    if not path:
        return
    with open(path) as f:
        wanted = set(line.strip() for line in f if line.strip())
    keep = [item for item in items if item.nodeid in wanted]
    config.hook.pytest_deselected(items=[item for item in items if item.nodeid not in wanted])
    items[:] = keep


def pytest_runtest_setup(item):
    PATHS.reset()
    if _BUDGET and time.monotonic() - _START > _BUDGET:
        pytest.skip(BUDGET_REASON)


_reports = {}


def _params(item):
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return {}
    return {name: (value if isinstance(value, (bool, int, float, str, type(None))) else repr(value))
            for name, value in callspec.params.items()}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    entry = _reports.setdefault(item.nodeid, {"nodeid": item.nodeid, "test": item.originalname or item.name,
                                              "params": _params(item), "outcome": "passed", "duration_s": 0.0,
                                              "message": ""})
    entry["duration_s"] += report.duration
    if report.failed:
        entry["outcome"] = "failed" if report.when == "call" else "error"
        entry["message"] = str(report.longrepr)[-4000:]
    elif report.skipped and entry["outcome"] == "passed":
        entry["outcome"] = "skipped"
        longrepr = report.longrepr
        entry["message"] = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    if report.when == "teardown":
        entry.update(PATHS.as_dict())
        record = os.environ.get("FA2_SUITE_RECORD")
        if record:
            with open(record, "a") as f:
                f.write(json.dumps(_reports.pop(item.nodeid)) + "\n")
