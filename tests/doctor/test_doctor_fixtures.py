"""The doctor against real binaries built here: for every fixture, the doctor's
verdict AND Python's own import (or the loader, through ctypes) must agree.

Run by ctest (label `doctor`) with AF_CLI_PATH (the attnforge command) and
AF_DOCTOR_FIXTURE_DIR (a scratch directory in the build tree).
"""
import base64
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build_fixtures  # noqa: E402
import shutil  # noqa: E402

CLI = os.environ.get("AF_CLI_PATH", "attnforge")
if not (os.path.exists(CLI) or shutil.which(CLI)):
    pytest.skip("the attnforge command is not built (ctest's doctor_fixtures sets AF_CLI_PATH)",
                allow_module_level=True)
OUT = os.environ.get("AF_DOCTOR_FIXTURE_DIR", os.path.join(os.getcwd(), "doctor_fixtures"))
VENV_PYTHON = build_fixtures.VENV_PYTHON
DEBIAN_PYTHON = "/usr/bin/python3"
HAS_VENV_TORCH = os.path.exists(os.path.join(build_fixtures.VENV_TORCH_LIB, "libc10.so"))
HAS_DEBIAN_TORCH = os.path.exists(build_fixtures.DEBIAN_LIBC10)


@pytest.fixture(scope="session")
def fixtures():
    return build_fixtures.build(OUT).built


def doctor(*args, env=None):
    """Runs `attnforge doctor ... --json`; returns (exit code, parsed JSON)."""
    result = subprocess.run([CLI, "doctor", *args, "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode in (0, 1), "doctor failed (%d): %s" % (result.returncode, result.stderr)
    return result.returncode, json.loads(result.stdout)


def checks(binary, severity="error"):
    return {f["check"] for f in binary["findings"] if f["severity"] == severity}


def finding(binary, check):
    return next(f for f in binary["findings"] if f["check"] == check)


def python_import(python, path, torch_first):
    """Imports the module at `path` in a fresh interpreter: (succeeded, last line of stderr)."""
    module = os.path.basename(path).split(".")[0]
    code = ("import torch; " if torch_first else "") + "import " + module
    env = dict(os.environ, PYTHONPATH=os.path.dirname(path))
    result = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    lines = result.stderr.strip().splitlines()
    return result.returncode == 0, lines[-1] if lines else ""


def loader_opens(python, path, torch_first):
    """dlopen through ctypes (for non-module libraries): (succeeded, error)."""
    code = ("import torch; " if torch_first else "") + "import ctypes; ctypes.CDLL(%r)" % path
    result = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    return result.returncode == 0, lines[-1] if lines else ""


# --- B: flash-attn's exact undefined symbol, both directions ---------------------

FLASH_NEW = "_ZN3c105ErrorC2ENS_14SourceLocationENSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE"
FLASH_OLD = "_ZN3c105ErrorC2ENS_14SourceLocationESs"


@pytest.mark.parametrize("name, missing, needed_abi", [
    ("fa_cxx11_ext_vs_abi0_c10", FLASH_NEW, 0),
    ("fa_abi0_ext_vs_cxx11_c10", FLASH_OLD, 1),
])
def test_flash_attn_dual_abi_both_directions(fixtures, name, missing, needed_abi):
    path = fixtures[name]
    rc, report = doctor("so", path, "--no-python")
    binary = report["binaries"][0]
    assert rc == 1 and "dual_abi" in checks(binary)
    f = finding(binary, "dual_abi")
    assert any(missing in e for e in f["evidence"])
    assert "-D_GLIBCXX_USE_CXX11_ABI=%d" % needed_abi in f["fix"]
    assert "FLASH_ATTENTION_FORCE_BUILD=TRUE" in f["fix"] and "--no-build-isolation" in f["fix"]
    assert binary["cxx11_abi"] == 1 - needed_abi
    ok, error = python_import(sys.executable, path, torch_first=False)
    assert not ok and error.endswith("undefined symbol: " + missing)


def test_flash_attn_matching_abi_is_healthy(fixtures):
    path = fixtures["fa_matching_abi"]
    rc, report = doctor("so", path, "--no-python")
    assert rc == 0 and report["healthy"]
    assert python_import(sys.executable, path, torch_first=False)[0]


# --- C: version drift ------------------------------------------------------------------

def test_version_drift(fixtures):
    path = fixtures["drift"]
    rc, report = doctor("so", path, "--no-python")
    binary = report["binaries"][0]
    assert rc == 1 and checks(binary) == {"torch_version_drift"}
    f = finding(binary, "torch_version_drift")
    assert "another signature" in f["summary"]
    assert any("c10::cuda::SetDevice(signed char, bool)" in e for e in f["evidence"])
    ok, error = python_import(sys.executable, path, torch_first=False)
    assert not ok and error.endswith("undefined symbol: _ZN3c104cuda9SetDeviceEi")


# --- D: GLIBC / GLIBCXX too new ---------------------------------------------------------------

@pytest.mark.parametrize("name, version", [("glibcxx_too_new", "GLIBCXX_3.4.32"), ("glibc_too_new", "GLIBC_2.38")])
def test_symbol_version_too_new(fixtures, name, version):
    path = fixtures[name]
    rc, report = doctor("so", path, "--python", sys.executable)
    binary = report["binaries"][0]
    assert rc == 1 and checks(binary) == {"symbol_version"}
    assert version in finding(binary, "symbol_version")["summary"]
    ok, error = python_import(sys.executable, path, torch_first=False)
    assert not ok and "version `%s' not found" % version in error


# --- E: CUDA runtime major --------------------------------------------------------------------

@pytest.mark.skipif(not HAS_VENV_TORCH, reason="needs pip torch (CUDA 13) in the test venv")
def test_cuda_runtime_of_another_major(fixtures):
    path = fixtures["cudart12"]
    rc, report = doctor("so", path, "--python", VENV_PYTHON)
    binary = report["binaries"][0]
    assert rc == 1 and {"cuda_runtime", "missing_library"} <= checks(binary)
    assert "CUDA 12" in finding(binary, "cuda_runtime")["summary"]
    ok, error = python_import(VENV_PYTHON, path, torch_first=True)
    assert not ok and "libcudart.so.12: cannot open shared object file" in error


@pytest.mark.skipif(not HAS_VENV_TORCH, reason="needs pip torch (CUDA 13) in the test venv")
def test_cuda_runtime_found_through_ld_library_path(fixtures):
    # With a CUDA 12 runtime on LD_LIBRARY_PATH the module loads beside torch's CUDA 13
    # (each library binds its own runtime): a warning, not an error.
    path = fixtures["cudart12"]
    stub_dir = os.path.join(os.path.dirname(path), "link_only")
    env = dict(os.environ, LD_LIBRARY_PATH=stub_dir)
    rc, report = doctor("so", path, "--python", VENV_PYTHON, env=env)
    binary = report["binaries"][0]
    assert rc == 0 and checks(binary) == set() and "cuda_runtime" in checks(binary, "warning")
    assert binary["needed"][0]["found_by"] == "LD_LIBRARY_PATH"
    code = "import torch; import cuda12_ext"
    result = subprocess.run([VENV_PYTHON, "-c", code], capture_output=True, text=True,
                            env=dict(env, PYTHONPATH=os.path.dirname(path)), timeout=300)
    assert result.returncode == 0, result.stderr


# --- F: GPU architecture -----------------------------------------------------------------------

@pytest.mark.parametrize("name, gpu, verdict", [
    ("fatbin_sm80", "8.6", None),            # same major, higher minor: the sm_80 cubin runs
    ("fatbin_sm80", "9.0", "error"),         # no sm_9x cubin and no PTX: no kernel image
    ("fatbin_sm80_sm90_ptx", "9.0", None),
    ("fatbin_sm80_sm90_ptx", "10.0", "warning"),  # runs through the compute_90 PTX (JIT)
])
def test_gpu_architecture(fixtures, name, gpu, verdict):
    if name not in fixtures:
        pytest.skip("nvcc not available")
    path = fixtures[name]
    rc, report = doctor("so", path, "--no-python", "--gpu", gpu)
    binary = report["binaries"][0]
    expected_cubins = ["sm_80"] if name == "fatbin_sm80" else ["sm_80", "sm_90"]
    assert binary["fatbin"]["cubins"] == expected_cubins
    assert binary["fatbin"]["ptx"] == ([] if name == "fatbin_sm80" else ["compute_90"])
    gpu_findings = [f for f in binary["findings"] if f["check"] == "gpu_arch"]
    if verdict is None:
        assert gpu_findings == [] and rc == 0
    else:
        assert [f["severity"] for f in gpu_findings] == [verdict]
        assert "TORCH_CUDA_ARCH_LIST" in gpu_findings[0]["fix"]
        assert rc == (1 if verdict == "error" else 0)
    # No GPU here: the loader part of the prediction (it loads) is what can be confirmed.
    if HAS_VENV_TORCH:
        assert loader_opens(VENV_PYTHON, path, torch_first=True)[0]


@pytest.mark.parametrize("name, gpu, ok", [
    ("fatbin_sm90a", "9.0", True),
    ("fatbin_sm90a", "9.2", False),     # an 'a' cubin runs on exactly its compute capability
    ("fatbin_sm100a", "10.0", True),
    ("fatbin_sm100a", "10.3", False),
])
def test_arch_specific_cubins(fixtures, name, gpu, ok):
    if name not in fixtures:
        pytest.skip("nvcc not available")
    rc, report = doctor("so", fixtures[name], "--no-python", "--gpu", gpu)
    binary = report["binaries"][0]
    assert binary["fatbin"]["cubins"] == ["sm_" + name[len("fatbin_sm"):]] and binary["fatbin"]["ptx"] == []
    errors = [f for f in binary["findings"] if f["check"] == "gpu_arch" and f["severity"] == "error"]
    assert (rc == 0 and not errors) if ok else (rc == 1 and len(errors) == 1), binary["findings"]


# --- G: Python ABI ----------------------------------------------------------------------------------

def test_wrong_cpython_suffix(fixtures):
    path = fixtures["cp312_suffix"]
    rc, report = doctor("so", path, "--python", sys.executable)
    binary = report["binaries"][0]
    assert rc == 1 and checks(binary) == {"python_abi"}
    assert "CPython 3.12" in finding(binary, "python_abi")["summary"]
    ok, error = python_import(sys.executable, path, torch_first=False)
    assert not ok and "No module named 'mod'" in error


def test_missing_module_init(fixtures):
    path = fixtures["wrong_init"]
    rc, report = doctor("so", path, "--python", sys.executable)
    assert rc == 1 and "PyInit_other" in finding(report["binaries"][0], "python_abi")["summary"]
    ok, error = python_import(sys.executable, path, torch_first=False)
    assert not ok and "dynamic module does not define module export function (PyInit_other)" in error


@pytest.mark.parametrize("name", ["abi3_ok", "plain_ok"])
def test_healthy_python_modules(fixtures, name):
    path = fixtures[name]
    rc, report = doctor("so", path, "--python", sys.executable)
    assert rc == 0 and report["healthy"], report
    assert python_import(sys.executable, path, torch_first=False)[0]


@pytest.mark.parametrize("keep", ["4k", "half"])
def test_truncated_extension(fixtures, tmp_path, keep):
    # Issue 14, kind 3: a cut copy of a real extension is an error, and the import agrees.
    with open(fixtures["plain_ok"], "rb") as f:
        data = f.read()
    path = tmp_path / os.path.basename(fixtures["plain_ok"])
    path.write_bytes(data[:4096] if keep == "4k" else data[:len(data) // 2])
    rc, report = doctor("so", str(path), "--python", sys.executable)
    binary = report["binaries"][0]
    assert rc == 1 and "truncated" in checks(binary), binary["findings"]
    ok, error = python_import(sys.executable, str(path), torch_first=False)
    assert not ok, error


# --- A: real Debian libtorch -------------------------------------------------------------------------

@pytest.mark.skipif(not HAS_DEBIAN_TORCH, reason="needs Debian's python3-torch / libtorch-dev")
@pytest.mark.parametrize("abi", [0, 1])
def test_debian_libtorch_extension(fixtures, abi):
    path = fixtures["debian_torch_abi%d" % abi]
    rc, report = doctor("so", path, "--python", DEBIAN_PYTHON)
    binary = report["binaries"][0]
    ok, error = python_import(DEBIAN_PYTHON, path, torch_first=True)
    if abi == 0:
        assert rc == 1 and checks(binary) == {"dual_abi"}
        f = finding(binary, "dual_abi")
        assert "-D_GLIBCXX_USE_CXX11_ABI=1" in f["fix"] and "torch 1.13" in f["summary"]
        assert not ok and "undefined symbol: _ZN3c106detail14torchCheckFail" in error
    else:
        assert rc == 0 and binary["healthy"] and binary["cxx11_abi"] == 1
        assert ok, error


# --- I: load order ---------------------------------------------------------------------------------------

@pytest.mark.skipif(not (HAS_VENV_TORCH and HAS_DEBIAN_TORCH), reason="needs pip torch and Debian's libc10")
def test_stray_libc10_resolves_first_without_torch(fixtures):
    path = fixtures["load_order"]
    rc, report = doctor("so", path, "--python", VENV_PYTHON)
    binary = report["binaries"][0]
    assert rc == 0 and checks(binary, "warning") == {"load_order"}
    assert "stray libc10.so" in finding(binary, "load_order")["summary"]
    assert python_import(VENV_PYTHON, path, torch_first=True)[0]
    ok, error = python_import(VENV_PYTHON, path, torch_first=False)
    assert not ok and "undefined symbol: _ZN3c1012WarningUtils14set_warnAlwaysEb" in error
    # Against Debian's torch 1.13 the same module cannot load at all: the function does not exist there.
    rc, report = doctor("so", path, "--python", DEBIAN_PYTHON)
    assert rc == 1 and "torch_version_drift" in checks(report["binaries"][0])
    assert not python_import(DEBIAN_PYTHON, path, torch_first=True)[0]


@pytest.mark.skipif(not HAS_VENV_TORCH, reason="needs pip torch with libc10_cuda.so")
def test_library_found_only_after_import_torch(fixtures):
    if "needs_torch_first" not in fixtures:
        pytest.skip("this torch has no libc10_cuda.so")
    path = fixtures["needs_torch_first"]
    rc, report = doctor("so", path, "--python", VENV_PYTHON)
    binary = report["binaries"][0]
    assert rc == 0 and checks(binary, "warning") == {"load_order"}
    f = finding(binary, "load_order")
    assert "libc10_cuda.so is found only after `import torch`" in f["summary"]
    assert python_import(VENV_PYTHON, path, torch_first=True)[0]
    ok, error = python_import(VENV_PYTHON, path, torch_first=False)
    assert not ok and "libc10_cuda.so: cannot open shared object file" in error


@pytest.mark.skipif(not HAS_VENV_TORCH, reason="needs pip torch")
def test_symbols_torch_defines_are_a_load_order_warning(fixtures):
    # cuda-core 1.2.0's _tensor_bridge: undefined aoti_torch_* symbols, defined by libtorch_cpu.so.
    path = fixtures["torch_symbols"]
    rc, report = doctor("so", path, "--python", VENV_PYTHON)
    binary = report["binaries"][0]
    assert rc == 0 and checks(binary, "warning") == {"load_order"} and not checks(binary)
    f = finding(binary, "load_order")
    assert "aoti_torch_dtype_float32 (defined by libtorch_cpu.so)" in f["summary"]
    if HAS_DEBIAN_TORCH:
        # Debian's torch 1.13 has no aoti_torch_* shim: there the symbol stays an error.
        rc, report = doctor("so", path, "--python", DEBIAN_PYTHON)
        assert rc == 1 and "aoti_torch_dtype_float32" in finding(report["binaries"][0], "unresolved_symbol")["summary"]
    # The real loader agrees: the module loads once libtorch_cpu.so's symbols are global, not before.
    global_torch = ("import ctypes, os, torch; ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), 'lib', "
                    "'libtorch_cpu.so'), mode=ctypes.RTLD_GLOBAL); import tensor_bridge")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(path))
    loaded = subprocess.run([VENV_PYTHON, "-c", global_torch], capture_output=True, text=True, env=env, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    ok, error = python_import(VENV_PYTHON, path, torch_first=False)
    assert not ok and "undefined symbol: aoti_torch_dtype_float32" in error


@pytest.mark.skipif(not (HAS_VENV_TORCH and HAS_DEBIAN_TORCH), reason="needs pip torch and Debian's CPU-only torch")
def test_cuda_build_beside_a_cpu_only_torch(fixtures):
    # A module linking libc10_cuda.so under a torch that has none: `import torch` first cannot help.
    if "needs_torch_first" not in fixtures:
        pytest.skip("this torch has no libc10_cuda.so")
    cuda = subprocess.run([DEBIAN_PYTHON, "-c", "import torch; print(torch.version.cuda)"],
                          capture_output=True, text=True)
    if cuda.stdout.strip() != "None":
        pytest.skip("Debian's torch here is a CUDA build")
    path = fixtures["needs_torch_first"]
    rc, report = doctor("so", path, "--python", DEBIAN_PYTHON)
    f = next(f for f in report["binaries"][0]["findings"]
             if f["check"] == "missing_library" and "libc10_cuda" in f["summary"])
    assert rc == 1 and f["severity"] == "error" and "CPU-only" in f["summary"], f
    assert "import torch" not in f["fix"] and "CUDA build of torch" in f["fix"], f
    ok, error = python_import(DEBIAN_PYTHON, path, torch_first=True)
    assert not ok and "libc10_cuda.so" in error


# --- Portability policy (issue 6: used on attnforge's own binaries by ctest) ------------------------

@pytest.mark.parametrize("name, expected", [
    ("glibc_too_new", "needs GLIBC_2.38"),              # glibc above 2.28
    ("fa_matching_abi", "DT_NEEDED libc10.so"),         # a library outside the allow-list
    ("debian_torch_abi1", "needs GLIBCXX_"),            # any libstdc++ version need
])
def test_portability_policy_rejects(fixtures, name, expected):
    rc, report = doctor("so", fixtures[name], "--portability", "manylinux_2_28")
    binary = report["binaries"][0]
    assert rc == 1 and any(expected in f["summary"] for f in binary["findings"] if f["severity"] == "error"), binary


def test_portability_policy_accepts_a_plain_c_module(fixtures):
    rc, report = doctor("so", fixtures["plain_ok"], "--portability", "manylinux_2_28")
    assert rc == 0 and report["binaries"][0]["findings"][0]["summary"] == "portable to manylinux_2_28"


# --- Environment ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("python", [VENV_PYTHON, DEBIAN_PYTHON])
def test_environment_healthy_without_false_alarms(python):
    if not os.path.exists(python):
        pytest.skip(python + " not installed")
    rc, report = doctor("--python", python)
    assert rc == 0 and report["healthy"], [b for b in report["binaries"] if not b["healthy"]]
    assert report["python"]["torch"]["imported"]
    assert report["torch_proven_cxx11_abi"] == report["python"]["torch"]["reported_cxx11_abi"]
    # torch's own extension modules are among those judged, and all are fine.
    assert any("/torch/_C." in b["path"] for b in report["binaries"])


@pytest.mark.parametrize("python, lib_dir", [
    (VENV_PYTHON, build_fixtures.VENV_TORCH_LIB),
    (DEBIAN_PYTHON, "/usr/lib/python3/dist-packages/torch/lib"),
])
def test_no_false_alarms_on_torch_libraries(python, lib_dir):
    if not os.path.isdir(lib_dir):
        pytest.skip(lib_dir + " not installed")
    # Debian's torch/lib holds dangling links to optional packages: judge real files only.
    libraries = sorted(os.path.join(lib_dir, f) for f in os.listdir(lib_dir)
                       if ".so" in f and os.path.isfile(os.path.join(lib_dir, f)))
    rc, report = doctor("so", *libraries, "--python", python)
    broken = {b["path"]: [f["summary"] for f in b["findings"] if f["severity"] == "error"]
              for b in report["binaries"] if not b["healthy"]}
    assert rc == 0 and not broken, broken


def test_environment_survives_a_crashing_torch(tmp_path):
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("import os\nos.abort()\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    rc, report = doctor("--python", sys.executable, env=env)
    assert rc == 1
    f = next(f for f in report["findings"] if f["check"] == "torch_import")
    assert "signal 6" in f["summary"]


def test_usage_errors_exit_2():
    assert subprocess.run([CLI, "doctor", "so"], capture_output=True).returncode == 2
    assert subprocess.run([CLI, "doctor", "--bogus"], capture_output=True).returncode == 2
    assert subprocess.run([CLI, "doctor", "so", "/nonexistent.so"], capture_output=True).returncode == 2
    assert subprocess.run([CLI, "doctor", "so", CLI, "--gpu", "x"], capture_output=True).returncode == 2
    assert subprocess.run([CLI, "doctor", "wheel", CLI], capture_output=True).returncode == 1  # not a wheel: a problem
    for sub in ([], ["so"], ["wheel"], ["tags"]):
        result = subprocess.run([CLI, "doctor", *sub, "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "usage: attnforge doctor" in result.stdout


# --- H: wheels ---------------------------------------------------------------------------------------------

def record_hash(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(directory, file_name, files, tamper=None):
    """A wheel with WHEEL (tags from the file name) and a correct RECORD, unless tamper names a member."""
    dist, version = file_name.split("-")[:2]
    py, abi, plat = file_name[:-4].split("-")[-3:]
    info = "%s-%s.dist-info" % (dist, version)
    tags = ["%s-%s-%s" % (a, b, c) for a in py.split(".") for b in abi.split(".") for c in plat.split(".")]
    files = dict(files)
    files[info + "/WHEEL"] = ("Wheel-Version: 1.0\nGenerator: attnforge-tests\nRoot-Is-Purelib: %s\n" %
                              ("true" if plat == "any" else "false") + "".join("Tag: %s\n" % t for t in tags)).encode()
    files[info + "/METADATA"] = ("Metadata-Version: 2.1\nName: %s\nVersion: %s\n" % (dist, version)).encode()
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    for name, data in files.items():
        writer.writerow([name, record_hash(data + (b"x" if name == tamper else b"")), len(data)])
    writer.writerow([info + "/RECORD", "", ""])
    files[info + "/RECORD"] = rows.getvalue().encode()
    path = os.path.join(directory, file_name)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def pip_accepts(wheel, target):
    result = subprocess.run([VENV_PYTHON, "-m", "pip", "install", "--no-index", "--no-deps", "--target", target, wheel],
                            capture_output=True, text=True, timeout=300)
    return result.returncode == 0, result.stderr


@pytest.fixture(scope="session")
def demo_module(fixtures):
    with open(fixtures["plain_ok"], "rb") as f:
        f.read()
    # The module is imported as demo._C: rebuild the plain module under that name.
    path = os.path.join(OUT, "wheel_src", "_C" + build_fixtures.EXT_SUFFIX)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        build_fixtures.run(["gcc", "-shared", "-fPIC", "-DMODULE_NAME=_C", "-I" + build_fixtures.PY_INCLUDE,
                            build_fixtures.src("plain_module.c"), "-o", path])
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.skipif(not os.path.exists(VENV_PYTHON), reason="needs the test venv (AF_DOCTOR_VENV_PYTHON)")
@pytest.mark.parametrize("file_name, with_so, check, pip_ok", [
    ("demo-1.0-cp312-cp312-manylinux_2_28_x86_64.whl", True, "wheel_tag", False),
    ("demo-1.0-cp311-cp311-manylinux_2_99_x86_64.whl", True, "wheel_tag", False),
    ("demo-1.0-py3-none-any.whl", False, "missing_extension", True),
    ("demo-1.0-cp311-cp311-linux_x86_64.whl", True, None, True),
    ("demo-1.0-cp39-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", True, None, True),
])
def test_wheel_tags_and_contents(tmp_path, demo_module, file_name, with_so, check, pip_ok):
    files = {"demo/__init__.py": b"from . import _C\n"}
    if with_so:
        files["demo/_C" + build_fixtures.EXT_SUFFIX] = demo_module
    wheel = make_wheel(str(tmp_path), file_name, files)
    rc, report = doctor("wheel", wheel, "--python", VENV_PYTHON)
    w = report["wheels"][0]
    errors = {f["check"] for f in w["findings"] if f["severity"] == "error"}
    accepted, pip_error = pip_accepts(wheel, str(tmp_path / "target"))
    assert accepted == pip_ok, pip_error
    if check is None:
        assert rc == 0 and w["healthy"] and w["best_tag"] is not None
        assert all(b["healthy"] for b in w["binaries"])
        ok, error = python_import(VENV_PYTHON, str(tmp_path / "target" / "demo"), torch_first=False)
        assert ok, error
    else:
        assert rc == 1 and check in errors
    if check == "wheel_tag":
        assert "not a supported wheel on this platform" in pip_error
    if check == "missing_extension":
        ok, error = python_import(VENV_PYTHON, str(tmp_path / "target" / "demo"), torch_first=False)
        assert not ok and "cannot import name '_C'" in error


@pytest.mark.skipif(not os.path.exists(VENV_PYTHON), reason="needs the test venv (AF_DOCTOR_VENV_PYTHON)")
def test_pure_wheel_without_its_top_level_extension(tmp_path):
    # flash-attn's failure mode: a py3-none-any wheel whose package imports the
    # compiled top-level module flash_attn_2_cuda, which the wheel lacks.
    files = {"flash_attn/__init__.py": b"import flash_attn_2_cuda as flash_attn_cuda\n"}
    wheel = make_wheel(str(tmp_path), "flash_attn-2.8.3-py3-none-any.whl", files)
    rc, report = doctor("wheel", wheel, "--python", VENV_PYTHON)
    f = next(f for f in report["wheels"][0]["findings"] if f["check"] == "missing_extension")
    assert rc == 1 and f["severity"] == "error" and "flash_attn_2_cuda" in f["summary"]
    assert ("FLASH_ATTENTION_FORCE_BUILD=TRUE" in f["fix"] and "--no-cache-dir" in f["fix"]
            and "--force-reinstall" in f["fix"])
    assert "flash_attn==2.8.3" in f["fix"] and "<" not in f["fix"]
    target = tmp_path / "target" / "site-packages"
    accepted, pip_error = pip_accepts(wheel, str(target))
    assert accepted, pip_error
    ok, error = python_import(VENV_PYTHON, str(target / "flash_attn"), torch_first=False)
    assert not ok and "No module named 'flash_attn_2_cuda'" in error
    # Installed, the environment scan finds it as well.
    rc, report = doctor("--python", VENV_PYTHON, env=dict(os.environ, PYTHONPATH=str(target)))
    f = next(f for f in report["findings"] if f["check"] == "missing_extension")
    assert rc == 1 and f["severity"] == "error" and "flash_attn_2_cuda" in f["summary"], f


@pytest.mark.skipif(not os.path.exists(VENV_PYTHON), reason="needs the test venv (AF_DOCTOR_VENV_PYTHON)")
def test_pure_wheel_names_are_not_missing_modules(tmp_path):
    # Issue 14, kind 2: `from . import` of a function, a class or __version__, imports in
    # docstrings and comments, and function-level imports are not missing compiled modules.
    files = {
        "tidy/__init__.py": b'"""Example:\n\n    from tidy import _C\n    import tidy._ext\n"""\n'
                            b"from ._version import __version__\nfrom .core import run, Config\n"
                            b"# from . import _missing\n",
        "tidy/_version.py": b"__version__ = '1.0'\n",
        "tidy/core.py": b"from . import __version__\n\nclass Config:\n    pass\n\ndef run():\n"
                        b"    from . import _accelerated\n    return _accelerated\n",
    }
    wheel = make_wheel(str(tmp_path), "tidy-1.0-py3-none-any.whl", files)
    rc, report = doctor("wheel", wheel, "--python", VENV_PYTHON)
    assert rc == 0 and report["wheels"][0]["healthy"], report["wheels"][0]["findings"]
    target = tmp_path / "target"
    assert pip_accepts(wheel, str(target))[0]
    ok, error = python_import(VENV_PYTHON, str(target / "tidy"), torch_first=False)
    assert ok, error


@pytest.mark.skipif(not os.path.exists(VENV_PYTHON), reason="needs the test venv (AF_DOCTOR_VENV_PYTHON)")
def test_wheel_record_hashes(tmp_path, demo_module):
    files = {"demo/__init__.py": b"from . import _C\n", "demo/_C" + build_fixtures.EXT_SUFFIX: demo_module}
    good = make_wheel(str(tmp_path), "demo-1.0-cp311-cp311-manylinux_2_17_x86_64.whl", files)
    rc, report = doctor("wheel", good, "--python", VENV_PYTHON)
    assert rc == 0 and not [f for f in report["wheels"][0]["findings"] if f["check"] == "record_hash"]
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad = make_wheel(str(bad_dir), "demo-1.0-cp311-cp311-manylinux_2_17_x86_64.whl", files,
                     tamper="demo/_C" + build_fixtures.EXT_SUFFIX)
    rc, report = doctor("wheel", bad, "--python", VENV_PYTHON)
    f = next(f for f in report["wheels"][0]["findings"] if f["check"] == "record_hash")
    assert rc == 1 and f["severity"] == "error" and "_C" in f["evidence"][0]


@pytest.mark.skipif(not os.path.exists(VENV_PYTHON), reason="needs the test venv (AF_DOCTOR_VENV_PYTHON)")
def test_supported_tags_match_packaging():
    ours = subprocess.run([CLI, "doctor", "tags", "--python", VENV_PYTHON], capture_output=True, text=True, check=True)
    theirs = subprocess.run([VENV_PYTHON, "-c", "import packaging, packaging.tags as t; print(packaging.__version__); "
                             "print('\\n'.join(str(x) for x in t.sys_tags()))"],
                            capture_output=True, text=True, check=True)
    version, *tags = theirs.stdout.split()
    ours = ours.stdout.split()
    if tuple(int(p) for p in version.split(".")[:2]) >= (26, 3):
        # packaging >= 26.3 puts linux_<arch> first, as the doctor does: the whole ordered list must agree.
        assert ours == tags
    else:
        # Older packaging puts linux_<arch> last in each block: same set, same order otherwise.
        assert sorted(ours) == sorted(tags)
        assert [t for t in ours if "-linux_" not in t] == [t for t in tags if "-linux_" not in t]


# --- A real third-party wheel built for another torch --------------------------------------------------------

PYPI_WHEEL = "torchaudio==2.0.2"  # built for torch 2.0 with _GLIBCXX_USE_CXX11_ABI=0 (pip wheels <= 2.5)


@pytest.mark.skipif(not HAS_VENV_TORCH, reason="needs pip torch in the test venv")
def test_pypi_wheel_built_for_another_torch(tmp_path):
    cache = os.path.join(OUT, "pypi")
    os.makedirs(cache, exist_ok=True)
    wheels = [f for f in os.listdir(cache) if f.endswith(".whl")]
    if not wheels:
        result = subprocess.run([VENV_PYTHON, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                                 "--python-version", "3.11", "--platform", "manylinux1_x86_64",
                                 "-d", cache, PYPI_WHEEL],
                                capture_output=True, text=True, timeout=600)
        wheels = [f for f in os.listdir(cache) if f.endswith(".whl")]
        if result.returncode != 0 or not wheels:
            pytest.skip("PyPI not reachable (pip download %s failed): %s" % (PYPI_WHEEL, result.stderr.strip()[-300:]))
    wheel = os.path.join(cache, wheels[0])
    rc, report = doctor("wheel", wheel, "--python", VENV_PYTHON)
    w = report["wheels"][0]
    broken = [b for b in w["binaries"] if not b["healthy"]]
    assert rc == 1 and broken
    library = next(b for b in broken if b["name"].endswith("libtorchaudio.so"))
    assert "dual_abi" in checks(library)
    assert "-D_GLIBCXX_USE_CXX11_ABI=1" in finding(library, "dual_abi")["fix"]
    # The loader agrees: after `import torch`, the library cannot be opened.
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp_path)
    ok, error = loader_opens(VENV_PYTHON, str(tmp_path / library["name"]), torch_first=True)
    assert not ok
    # The loader stops at the first problem; it must be one the doctor reported.
    missing = [f["summary"].split(":")[0] for f in library["findings"] if f["check"] == "missing_library"]
    if "undefined symbol" in error:
        symbol = error.split("undefined symbol: ")[1].strip()
        assert any(symbol in e for f in library["findings"] for e in f["evidence"])
    else:
        assert any(name + ": cannot open shared object file" in error for name in missing), (error, missing)


def test_optional_plugin_missing_its_product_is_a_warning(tmp_path):
    # cupy's cutensor module without libcutensor.so.2, numba's tbbpool without libtbb.so.12:
    # the package imports without them. The same module imported by __init__ stays an error.
    stub_c = tmp_path / "stub.c"
    stub_c.write_text("int product_version(void) { return 2; }\n")
    stub_dir = tmp_path / "product"
    stub_dir.mkdir()
    subprocess.run(["gcc", "-shared", "-fPIC", str(stub_c), "-Wl,-soname,libproduct.so.2", "-o",
                    str(stub_dir / "libproduct.so.2")], check=True)
    site = tmp_path / "site-packages"
    for package, init in (("optpkg", "from . import core\n"), ("reqpkg", "from . import plugin\n")):
        (site / package).mkdir(parents=True)
        (site / package / "__init__.py").write_text(init)
        (site / package / "core.py").write_text("def run():\n    from . import plugin\n    return plugin\n")
        so = "%s/plugin%s" % (package, build_fixtures.EXT_SUFFIX)
        subprocess.run(["gcc", "-shared", "-fPIC", "-DMODULE_NAME=plugin", "-I" + build_fixtures.PY_INCLUDE,
                        build_fixtures.src("plain_module.c"), "-Wl,--no-as-needed", "-L" + str(stub_dir),
                        "-l:libproduct.so.2", "-o", str(site / so)], check=True)
        info = site / ("%s-1.0.dist-info" % package)
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n" % package)
        (info / "RECORD").write_text("\n".join("%s,," % p for p in (
            package + "/__init__.py", package + "/core.py", so, info.name + "/METADATA", info.name + "/RECORD")))
    env = dict(os.environ, PYTHONPATH=str(site))
    rc, report = doctor("--python", VENV_PYTHON, env=env)
    by_package = {b["path"].split("/")[-2]: b for b in report["binaries"] if b["path"].startswith(str(site))}
    optional, required = by_package["optpkg"], by_package["reqpkg"]
    assert optional["healthy"] and checks(optional, "warning") == {"missing_library"}
    assert "optional plugin" in finding(optional, "missing_library")["summary"]
    assert not required["healthy"] and "missing_library" in checks(required)
    # The interpreter agrees.
    imports = {code: subprocess.run([VENV_PYTHON, "-c", code], env=env, capture_output=True).returncode == 0
               for code in ("import optpkg", "import optpkg.plugin", "import reqpkg")}
    assert imports == {"import optpkg": True, "import optpkg.plugin": False, "import reqpkg": False}
