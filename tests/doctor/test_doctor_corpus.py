"""The doctor on real wheels from PyPI that nobody here built (issue 14).

For every pinned wheel: install it with `pip --no-deps` into a scratch target
(or unpack it by hand when pip refuses its tags), import its top-level packages
in a fresh interpreter of the test venv, and record what really happens. Then
`attnforge doctor wheel` must give the same verdict class, and a broken one must
also be found by `attnforge doctor` scanning that environment. Where the printed
fix can be applied without replacing the venv's torch or compiling, the test
applies it (resolved by pip, installed into a scratch target) and imports again.

Wheels are downloaded once into AF_DOCTOR_WHEEL_CACHE (default
~/.cache/attnforge-tests/wheels) and reused. Run by ctest as `doctor_corpus`.
"""
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile

import pytest

CLI = os.environ.get("AF_CLI_PATH", "attnforge")
if not (os.path.exists(CLI) or shutil.which(CLI)):
    pytest.skip("the attnforge command is not built (ctest's doctor_corpus sets AF_CLI_PATH)", allow_module_level=True)
VENV_PYTHON = os.environ.get("AF_DOCTOR_VENV_PYTHON", sys.executable)
CACHE = os.environ.get("AF_DOCTOR_WHEEL_CACHE", os.path.expanduser("~/.cache/attnforge-tests/wheels"))

MANYLINUX = ["manylinux_2_36_x86_64", "manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64"]


class Wheel:
    def __init__(self, requirement, kind, python="3.11", platforms=MANYLINUX, needs=()):
        self.requirement = requirement  # "name==version"
        self.kind = kind                # what the wheel stands for in the corpus
        self.python = python            # --python-version for pip download
        self.platforms = platforms
        self.needs = needs              # corpus wheels installed beside it (dependencies the venv lacks)

    @property
    def id(self):
        return "%s-py%s%s" % (self.requirement.replace("==", "-"), self.python,
                              "-musl" if "musl" in self.platforms[0] else "")


CORPUS = [
    # Popular pure-Python wheels (issue 14, kind 2: called BROKEN before).
    Wheel("transformers==5.24.0", "pure"),
    Wheel("accelerate==1.2.1", "pure", needs=("psutil==6.1.1",)),
    Wheel("peft==0.14.0", "pure", needs=("accelerate==1.2.1", "psutil==6.1.1")),
    Wheel("einops==0.8.1", "pure"),
    Wheel("tqdm==4.67.1", "pure"),
    Wheel("six==1.17.0", "pure"),
    Wheel("packaging==24.2", "pure"),
    Wheel("filelock==3.16.1", "pure"),
    Wheel("typing_extensions==4.12.2", "pure"),
    Wheel("idna==3.10", "pure"),
    Wheel("click==8.1.8", "pure"),
    Wheel("jinja2==3.1.4", "pure"),
    # Compiled for this Python, no torch.
    Wheel("markupsafe==3.0.2", "cp311"),
    Wheel("pyyaml==6.0.2", "cp311"),
    Wheel("msgpack==1.1.0", "cp311"),
    Wheel("regex==2024.11.6", "cp311"),
    Wheel("charset-normalizer==3.4.0", "cp311 (mypyc)"),
    Wheel("ujson==5.10.0", "cp311"),
    Wheel("numpy==1.26.4", "cp311, large"),
    # Stable ABI (abi3) builds.
    Wheel("psutil==6.1.1", "abi3"),
    Wheel("safetensors==0.5.3", "abi3"),
    Wheel("bcrypt==4.2.1", "abi3"),
    Wheel("tokenizers==0.21.0", "abi3"),
    # Built for an older torch and CUDA 12 (issue 14, kinds 1 and 5).
    Wheel("torchvision==0.16.0", "torch 2.1.0, CUDA 12"),
    Wheel("torchaudio==2.0.2", "torch 2.0.1, old C++ ABI"),
    # Python-tag and libc mismatches: pip refuses them; unpacked by hand they do not import.
    Wheel("torchvision==0.16.0", "cp310 on 3.11, torch 2.1.0", python="3.10"),
    Wheel("markupsafe==3.0.2", "cp312 on 3.11", python="3.12"),
    Wheel("pyyaml==6.0.2", "musl", platforms=["musllinux_1_1_x86_64"]),
    # Per-CUDA alternatives (libbitsandbytes_cuda118 ... _cuda126, _cpu) and a CUDA 12 runtime package.
    Wheel("bitsandbytes==0.50.2", "per-CUDA alternatives"),
    Wheel("nvidia-cuda-runtime-cu12==12.4.127", "CUDA 12 runtime"),
    Wheel("pyyaml==6.0.2", "cp310 on 3.11", python="3.10"),
    # Per-build module variants its own loader picks (MPI.mpich / MPI.openmpi; no MPI here).
    Wheel("mpi4py==4.1.2", "per-MPI module variants"),
    # Undefined aoti_torch_* symbols that libtorch_cpu.so defines (cuda/core/cu1x/_tensor_bridge).
    Wheel("cuda-core==1.2.0", "symbols torch provides"),
]


def canonical(name):
    return re.sub(r"[-_.]+", "_", name).lower()


def cached_wheel(wheel):
    """The wheel file for `wheel`, from the cache or downloaded into it."""
    name, version = wheel.requirement.split("==")
    python_tag = "cp" + wheel.python.replace(".", "")
    abi_ok = ("none", "abi3", python_tag)

    def matches(path):
        parts = os.path.basename(path)[:-4].split("-")
        if canonical(parts[0]) != canonical(name) or parts[1] != version:
            return False
        py, abi, plat = parts[-3:]
        if not any(p.startswith("py") or p == python_tag or (abi == "abi3" and p.startswith("cp3"))
                   for p in py.split(".")):
            return False
        return abi in abi_ok and any(p in wheel.platforms or p == "any" for p in plat.split("."))

    os.makedirs(CACHE, exist_ok=True)
    found = [p for p in glob.glob(os.path.join(CACHE, "*.whl")) if matches(p)]
    if not found:
        command = [VENV_PYTHON, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
                   wheel.python, "-d", CACHE, wheel.requirement]
        for platform in wheel.platforms:
            command += ["--platform", platform]
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
        found = [p for p in glob.glob(os.path.join(CACHE, "*.whl")) if matches(p)]
        if not found:
            pytest.skip("cannot download %s (PyPI unreachable?): %s" % (wheel.requirement,
                                                                        result.stderr.strip()[-300:]))
    return sorted(found)[0]


def top_level_modules(wheel_path):
    """Importable top-level names of a wheel: packages, modules and compiled modules."""
    names = set()
    with zipfile.ZipFile(wheel_path) as z:
        for member in z.namelist():
            first = member.split("/")[0]
            if first.endswith((".dist-info", ".data")) or first == "__pycache__":
                continue
            if "/" in member:
                names.add(first)
            elif member.endswith(".py") or member.endswith(".so"):
                names.add(member.split(".")[0])
    return sorted(n for n in names if n.isidentifier() and n not in ("tests", "test", "benchmarks", "examples"))


def install(wheel_path, target):
    """pip install --no-deps --target; when pip refuses the wheel, unpack it by hand. Returns pip's verdict."""
    result = subprocess.run([VENV_PYTHON, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", target,
                             wheel_path],
                            capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        with zipfile.ZipFile(wheel_path) as z:
            z.extractall(target)
    return result.returncode == 0, result.stderr


def requires_torch(wheel_path):
    with zipfile.ZipFile(wheel_path) as z:
        metadata = next((n for n in z.namelist() if n.endswith(".dist-info/METADATA")), None)
        text = z.read(metadata).decode("utf-8", "replace") if metadata else ""
    return bool(re.search(r"^Requires-Dist: torch\b", text, re.M))


def real_import(target, modules, torch_first):
    """Imports `modules` in a fresh interpreter (after torch for packages that need it, as their users do)."""
    code = "import importlib\n" + ("import torch\n" if torch_first else "")
    code += "".join("importlib.import_module(%r)\n" % m for m in modules)
    env = dict(os.environ, PYTHONPATH=target)
    result = subprocess.run([VENV_PYTHON, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    lines = (result.stderr or "").strip().splitlines()
    return result.returncode == 0, lines[-1] if lines else "signal %d" % -result.returncode


def doctor(*args, env=None):
    result = subprocess.run([CLI, "doctor", *args, "--json"], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode in (0, 1), "doctor failed (%d): %s" % (result.returncode, result.stderr)
    return result.returncode, json.loads(result.stdout)


def errors_of(report):
    """(where, check, summary, fix) of every error in a wheel report."""
    out = [("wheel", f["check"], f["summary"], f["fix"]) for f in report["findings"] if f["severity"] == "error"]
    for b in report["binaries"]:
        out += [(b["name"], f["check"], f["summary"], f["fix"]) for f in b["findings"] if f["severity"] == "error"]
    return out


def fix_commands(fix):
    """The commands quoted in a fix (`...`) that run this venv's pip."""
    return [c for c in re.findall(r"`([^`]+)`", fix) if " -m pip install " in c]


@pytest.fixture(scope="module")
def torch_version():
    result = subprocess.run([VENV_PYTHON, "-c", "import torch; print(torch.__version__)"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip("the test venv has no importable torch")
    return result.stdout.strip().split("+")[0]


@pytest.fixture(scope="module")
def wheel_reports():
    """`doctor wheel` on the whole corpus in one run (one interpreter probe): path -> wheel report."""
    paths = sorted({cached_wheel(w) for w in CORPUS})
    rc, report = doctor("wheel", *paths, "--python", VENV_PYTHON)
    reports = {w["path"]: w for w in report["wheels"]}
    assert rc == (0 if all(w["healthy"] for w in reports.values()) else 1)
    return reports


@pytest.mark.parametrize("wheel", CORPUS, ids=[w.id for w in CORPUS])
def test_corpus_wheel(wheel, tmp_path, torch_version, wheel_reports):
    path = cached_wheel(wheel)
    torch_first = requires_torch(path)
    target = str(tmp_path / "site-packages")
    pip_ok, pip_error = install(path, target)
    for need in wheel.needs:
        install(cached_wheel(Wheel(need, "dependency")), target)
    modules = top_level_modules(path)
    assert modules, path
    imported, import_error = (real_import(target, modules, torch_first) if pip_ok
                              else (False, "pip refuses: " + pip_error.strip()[-200:]))

    w = wheel_reports[path]
    errors = errors_of(w)
    assert w["healthy"] == imported, "doctor wheel says %s, the real import %s (%s); doctor errors: %s" % (
        "healthy" if w["healthy"] else "broken", "works" if imported else "fails", import_error, errors[:4])
    for where, check, summary, fix in errors:
        assert "<package>" not in fix and "<version>" not in fix, (where, fix)

    if imported:
        return
    # Broken: the environment scan finds it too.
    env = dict(os.environ, PYTHONPATH=target)
    rc_env, env_report = doctor("--python", VENV_PYTHON, env=env)
    ours = [b for b in env_report["binaries"] if b["path"].startswith(target)]
    assert rc_env == 1 and any(not b["healthy"] for b in ours), [(b["path"], b["healthy"]) for b in ours]
    # Every printed fix that can be applied here makes the import work.
    for where, check, summary, fix in errors:
        for command in fix_commands(fix):
            fixed = str(tmp_path / ("fixed-%d" % abs(hash(command))) / "site-packages")
            applied = resolve_and_install(command, fixed, torch_version)
            if applied is None:
                continue
            ok, error = real_import(fixed, modules, torch_first)
            assert ok, "fix `%s` (installed %s) did not make the import work: %s" % (command, applied, error)


def resolve_and_install(command, target, torch_version):
    """Applies `python -m pip install REQS...` without touching the venv: pip resolves REQS against the venv
    (--dry-run --report), and everything it would install goes into `target` (--no-deps). None when the fix
    would replace the venv's torch or builds from source (not applied here)."""
    words = shlex.split(command)
    if words[:4] != [VENV_PYTHON, "-m", "pip", "install"] or "--no-binary" in words:
        return None
    requirements = [w for w in words[4:] if not w.startswith("-")]
    for r in requirements:
        if canonical(re.split(r"[<>=!~ ]", r)[0]) == "torch" and r.split("==")[-1] != torch_version:
            return None
    report_path = target + ".report.json"
    os.makedirs(os.path.dirname(report_path), exist_ok=True)
    result = subprocess.run([VENV_PYTHON, "-m", "pip", "install", "--dry-run", "-q", "--report", report_path,
                             "--only-binary=:all:", *requirements], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, "pip cannot resolve the fix `%s`: %s" % (command, result.stderr[-500:])
    with open(report_path) as f:
        to_install = ["%s==%s" % (i["metadata"]["name"], i["metadata"]["version"]) for i in json.load(f)["install"]]
    to_install = [r for r in to_install if canonical(r.split("==")[0]) != "torch"]
    if to_install:
        result = subprocess.run([VENV_PYTHON, "-m", "pip", "install", "-q", "--no-deps", "--only-binary=:all:",
                                 "--target", target, *to_install], capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-500:]
    return to_install
