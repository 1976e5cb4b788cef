#!/usr/bin/env python3
"""Runs FlashAttention-2 v2.8.3's own tests/test_flash_attn.py, unchanged, against attnforge.

    python3 tests/fa2_suite/run.py --draw N --seed S --out DIR [--fa2 PATH] [--budget-s SECONDS]

--fa2 is a FlashAttention checkout (default: .fa2/ at the repository root, ignored by git). Its test
file and the pure-Python helpers the file imports (flash_attn/bert_padding.py, layers/rotary.py,
ops/triton/rotary.py) are copied into DIR/stage/ beside a `flash_attn` shim that re-exports
attnforge (tests/fa2_suite/shim/). pytest collects the file, a uniform draw of N node ids
(random.Random(S), without replacement) runs, and DIR receives:
  collected.txt, drawn.txt  every node id, and the drawn ones
  cases.jsonl               one record per drawn case (outcome, parameters, failure, path attnforge took)
  env.json                  GPU, torch, CUDA, attnforge versions; FlashAttention version and file hash
  pytest.log                pytest's output
  summary.json, summary.md  counts by outcome, kind, test function and path (summary.md is the body of
                            a bench/results page)
--summarize DIR rebuilds the summary from an existing DIR; --collect-only stops after the draw.
Exit status: 0 when every case that ran passed, 1 when some failed, 2 when the harness could not run.
"""
import argparse
import collections
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TEST_FILE = "tests/test_flash_attn.py"
# FlashAttention's pure-Python helpers that its test file imports (references, not code under test).
HELPERS = ["flash_attn/bert_padding.py", "flash_attn/layers/__init__.py", "flash_attn/layers/rotary.py",
           "flash_attn/ops/__init__.py", "flash_attn/ops/triton/__init__.py", "flash_attn/ops/triton/rotary.py"]
EXPECTED_VERSION = "2.8.3"

# Failure kinds of issue 17, first match wins (see classify()).
KINDS = [
    ("oom", "CUDA out of memory"),
    ("environment", "failed before calling attnforge (no GPU, a missing module)"),
    ("kind1-nan", "a NaN where FlashAttention's result is finite"),
    ("kind3-deterministic", "deterministic=True not reproducible"),
    ("kind4-s_dmask", "S_dmask with dropout missing or wrong"),
    ("kind2-alibi", "ALiBi case outside FlashAttention's tolerance"),
    ("kind5-fallback", "a torch fallback ran where FlashAttention runs its kernel, and failed"),
    ("other", "not matched by the rules above"),
]


def fail(message):
    print("run.py: " + message, file=sys.stderr)
    sys.exit(2)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def fa2_version(root):
    text = open(os.path.join(root, "flash_attn", "__init__.py")).read()
    match = re.search(r"__version__\s*=\s*[\"']([^\"']+)", text)
    return match.group(1) if match else "unknown"


def stage(fa2, out, allow_version):
    for relative in [TEST_FILE, "flash_attn/__init__.py"] + HELPERS:
        if not os.path.isfile(os.path.join(fa2, relative)):
            fail("%s has no %s: give a FlashAttention checkout with --fa2 (README.md says how)" % (fa2, relative))
    version = fa2_version(fa2)
    if version != EXPECTED_VERSION and not allow_version:
        fail("%s is FlashAttention %s, not %s (--allow-version runs it anyway)" % (fa2, version, EXPECTED_VERSION))
    directory = os.path.join(out, "stage")
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(os.path.join(HERE, "shim"), directory, ignore=shutil.ignore_patterns("__pycache__"))
    for relative in HELPERS:
        target = os.path.join(directory, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(fa2, relative), target)
    shutil.copyfile(os.path.join(fa2, TEST_FILE), os.path.join(directory, "test_flash_attn.py"))
    shutil.copyfile(os.path.join(HERE, "harness_conftest.py"), os.path.join(directory, "conftest.py"))
    with open(os.path.join(directory, "pytest.ini"), "w") as f:  # no ini file above the stage applies
        f.write("[pytest]\n")
    return directory, {"flash_attn_version": version,
                       "test_file_sha256": sha256(os.path.join(directory, "test_flash_attn.py"))}


def pytest_env(directory, out, installed, budget_s, fake_capability):
    env = dict(os.environ)
    paths = [directory] + ([] if installed else [os.path.join(REPO, "python")])
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["FA2_SUITE_RECORD"] = os.path.join(out, "cases.jsonl")
    env["FA2_SUITE_ENV"] = os.path.join(out, "env.json")
    env["FA2_SUITE_BUDGET_S"] = str(budget_s)
    env.pop("FA2_SUITE_SELECT", None)
    if fake_capability:
        env["FA2_SUITE_FAKE_CAPABILITY"] = fake_capability
    return env


def collect(directory, env, out):
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "test_flash_attn.py"]
    result = subprocess.run(command, cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True)
    ids = [line.strip() for line in result.stdout.splitlines() if line.startswith("test_flash_attn.py::")]
    if result.returncode != 0 or not ids:
        with open(os.path.join(out, "collect.log"), "w") as f:
            f.write(result.stdout)
        fail("pytest could not collect %s (exit %d); the end of its output:\n%s" %
             (TEST_FILE, result.returncode, result.stdout[-3000:]))
    return ids


def draw(ids, count, seed):
    """A uniform sample of count ids without replacement, kept in collection order."""
    chosen = set(random.Random(seed).sample(range(len(ids)), min(count, len(ids))))
    return [node for index, node in enumerate(ids) if index in chosen]


def classify(case):
    """Kind of one failed case (KINDS), from its test, parameters, failure text and path."""
    message = case.get("message", "")
    params = case.get("params", {})
    if "OutOfMemoryError" in message or "out of memory" in message:
        return "oom"
    if case.get("path") == "none":
        return "environment"
    if re.search(r"\bnan\b", message, re.IGNORECASE):
        return "kind1-nan"
    if "deterministic" in case.get("test", ""):
        return "kind3-deterministic"
    if (params.get("dropout_p") or 0) > 0 and ("S_dmask" in message or "NoneType" in message or
                                               "convert_flash_attn_S_to_softmax" in message):
        return "kind4-s_dmask"
    if params.get("alibi") is True:
        return "kind2-alibi"
    if case.get("path") == "fallback":
        return "kind5-fallback"
    return "other"


def first_error_line(message):
    for line in message.splitlines():
        if line.startswith("E "):
            return line[1:].strip()[:200]
    return message.strip().splitlines()[-1][:200] if message.strip() else ""


def summarize(out, meta=None):
    with open(os.path.join(out, "cases.jsonl")) as f:
        cases = [json.loads(line) for line in f if line.strip()]
    env = {}
    if os.path.isfile(os.path.join(out, "env.json")):
        with open(os.path.join(out, "env.json")) as f:
            env = json.load(f)
    if meta is None and os.path.isfile(os.path.join(out, "summary.json")):
        with open(os.path.join(out, "summary.json")) as f:
            meta = json.load(f).get("run", {})
    meta = meta or {}
    outcomes = collections.Counter()
    kinds = collections.Counter()
    by_test = collections.defaultdict(collections.Counter)
    by_path = collections.defaultdict(collections.Counter)
    failures = []
    for case in cases:
        outcome = case["outcome"]
        if outcome == "skipped" and "harness budget" in case.get("message", ""):
            outcome = "not run (budget)"
        outcomes[outcome] += 1
        by_test[case["test"]][outcome] += 1
        by_path[case.get("path", "none")][outcome] += 1
        if outcome in ("failed", "error"):
            kind = classify(case)
            kinds[kind] += 1
            failures.append({"nodeid": case["nodeid"], "kind": kind, "path": case.get("path"),
                             "fallback_reasons": case.get("fallback_reasons", {}),
                             "error": first_error_line(case.get("message", ""))})
    summary = {"run": meta, "env": env, "cases": len(cases), "outcomes": dict(outcomes), "kinds": dict(kinds),
               "by_test": {k: dict(v) for k, v in sorted(by_test.items())},
               "by_path": {k: dict(v) for k, v in sorted(by_path.items())}, "failures": failures}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(markdown(summary))
    return summary


def markdown(summary):
    run, env = summary["run"], summary["env"]
    lines = ["# FlashAttention-2 v%s's own tests against attnforge" % run.get("flash_attn_version", "?"), "",
             "| | |", "|---|---|",
             "| date (UTC) | %s |" % run.get("date", "?"),
             "| GPU | %s (sm %s, %s GiB) |" % (env.get("gpu", "none"), env.get("capability", "-"),
                                               env.get("gpu_memory_gib", "-")),
             "| torch / CUDA | %s / %s |" % (env.get("torch", "?"), env.get("torch_cuda", "?")),
             "| attnforge | %s, commit %s, %s |" % (env.get("attnforge", "?"), run.get("commit", "?"),
                                                    env.get("library", "?")),
             "| test file | tests/test_flash_attn.py sha256 %s |" % run.get("test_file_sha256", "?"),
             "| draw | %s of %s cases, seed %s, budget %s s |" % (run.get("drawn", "?"), run.get("collected", "?"),
                                                               run.get("seed", "?"), run.get("budget_s", "?")),
             "", "## Outcomes", "", "| outcome | cases |", "|---|---|"]
    lines += ["| %s | %d |" % item for item in sorted(summary["outcomes"].items())]
    lines += ["", "## Failures by kind", "", "| kind | meaning | cases |", "|---|---|---|"]
    lines += ["| %s | %s | %d |" % (kind, meaning, summary["kinds"][kind]) for kind, meaning in KINDS
              if kind in summary["kinds"]]
    columns = sorted({o for counts in summary["by_test"].values() for o in counts})
    lines += ["", "## By test function", "", "| test | " + " | ".join(columns) + " |",
              "|---|" + "---|" * len(columns)]
    lines += ["| %s | %s |" % (test, " | ".join(str(counts.get(c, 0)) for c in columns))
              for test, counts in summary["by_test"].items()]
    lines += ["", "## By path attnforge took (forward)", "", "| path | " + " | ".join(columns) + " |",
              "|---|" + "---|" * len(columns)]
    lines += ["| %s | %s |" % (path, " | ".join(str(counts.get(c, 0)) for c in columns))
              for path, counts in summary["by_path"].items()]
    if summary["failures"]:
        lines += ["", "## Failed cases", "", "| case | kind | path | error |", "|---|---|---|---|"]
        lines += ["| `%s` | %s | %s | %s |" % (f["nodeid"].split("::", 1)[-1], f["kind"], f["path"],
                                               f["error"].replace("|", "\\|")) for f in summary["failures"]]
    return "\n".join(lines) + "\n"


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, universal_newlines=True).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--fa2", default=os.path.join(REPO, ".fa2"), help="FlashAttention checkout (default .fa2/)")
    parser.add_argument("--draw", type=int, default=0, help="number of cases to draw (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="output directory")
    parser.add_argument("--budget-s", type=float, default=540.0,
                        help="no case starts after this many seconds of the pytest run (0: no limit)")
    parser.add_argument("--installed-attnforge", action="store_true",
                        help="test the installed attnforge instead of this checkout's python/")
    parser.add_argument("--allow-version", action="store_true", help="run a FlashAttention other than 2.8.3")
    parser.add_argument("--collect-only", action="store_true", help="stage, collect and draw; run nothing")
    parser.add_argument("--fake-capability", metavar="MAJOR.MINOR",
                        help="without CUDA, let the test module import (for --collect-only on a CPU machine)")
    parser.add_argument("--summarize", metavar="DIR", help="rebuild DIR's summary from its cases.jsonl")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    if args.summarize:
        summary = summarize(args.summarize)
        print(json.dumps({"outcomes": summary["outcomes"], "kinds": summary["kinds"]}))
        return 0
    if not args.out:
        parser.error("--out is required")
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    for name in ("cases.jsonl", "summary.json", "summary.md", "env.json"):
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    directory, meta = stage(os.path.abspath(args.fa2), out, args.allow_version)
    env = pytest_env(directory, out, args.installed_attnforge, args.budget_s, args.fake_capability)
    ids = collect(directory, env, out)
    drawn = draw(ids, args.draw or len(ids), args.seed)
    for name, items in (("collected.txt", ids), ("drawn.txt", drawn)):
        with open(os.path.join(out, name), "w") as f:
            f.write("\n".join(items) + "\n")
    meta.update(date=time.strftime("%Y-%m-%d %H:%M", time.gmtime()), commit=git_commit(), seed=args.seed,
                collected=len(ids), drawn=len(drawn), budget_s=args.budget_s)
    print("run.py: %d cases collected, %d drawn (seed %d)" % (len(ids), len(drawn), args.seed))
    if args.collect_only:
        return 0
    env["FA2_SUITE_SELECT"] = os.path.join(out, "drawn.txt")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=short", "-rN",
               "test_flash_attn.py"] + args.pytest_args
    with open(os.path.join(out, "pytest.log"), "w") as log:
        result = subprocess.run(command, cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT)
    if not os.path.isfile(os.path.join(out, "cases.jsonl")):
        fail("pytest (exit %d) recorded no case; see %s" % (result.returncode, os.path.join(out, "pytest.log")))
    summary = summarize(out, meta)
    print("run.py: %s; failures by kind %s; %s" % (summary["outcomes"], summary["kinds"],
                                                   os.path.join(out, "summary.md")))
    return 1 if summary["outcomes"].get("failed") or summary["outcomes"].get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
