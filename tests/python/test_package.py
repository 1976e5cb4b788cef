"""The package: version agreement with the loaded library, `python -m attnforge info`, the console script,
and, for an installed wheel, the bundled library and command."""
import json
import os
import subprocess
import sys

import attnforge
from attnforge import _cli, _native


def child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(attnforge.__file__)),
                                         env.get("PYTHONPATH", "")])
    return env


def test_version_matches_library():
    assert attnforge.__version__ == _native.version() == attnforge.runtime_report()["version"]


def test_python_m_attnforge_info_json():
    result = subprocess.run([sys.executable, "-m", "attnforge", "info", "--json"], capture_output=True, text=True,
                            env=child_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["python"]["package_version"] == attnforge.__version__
    assert info["library"]["report"]["backends"]["cpu"]["available"] is True
    assert os.path.samefile(info["library"]["path"], attnforge.library_path())


def test_python_m_attnforge_info_text():
    result = subprocess.run([sys.executable, "-m", "attnforge", "info"], capture_output=True, text=True,
                            env=child_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "attnforge %s" % attnforge.__version__ in result.stdout and "backend cpu" in result.stdout


def test_other_commands_forward_to_the_binary():
    binary = _cli.binary_path()
    result = subprocess.run([sys.executable, "-m", "attnforge", "--help"], capture_output=True, text=True,
                            env=child_env(), timeout=120)
    direct = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == direct.returncode and result.stdout == direct.stdout


def test_console_script_hands_the_binary_the_nvrtc_of_pip_wheels(tmp_path):
    # A site-packages entry with an nvidia wheel's layout; the file is not a library, so the
    # binary records it as tried (with why it failed) and goes on searching.
    lib = tmp_path / "nvidia" / "cu13" / "lib"
    lib.mkdir(parents=True)
    (lib / "libnvrtc.so.13").write_bytes(b"not an ELF file")
    env = child_env()
    env.pop("ATTNFORGE_NVRTC", None)
    code = ("import sys; sys.path.insert(0, %r); from attnforge import _cli; "
            "_cli.main(['info', '--json'])" % str(tmp_path))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    tried = json.loads(result.stdout)["backends"]["cuda"]["nvrtc"]["tried"]
    assert any(entry.startswith(str(lib / "libnvrtc.so.13") + ":") for entry in tried), tried


def test_installed_wheel_bundles_library_and_command():
    package_dir = os.path.dirname(os.path.abspath(attnforge.__file__))
    bundled = os.path.join(package_dir, "_lib", "libattnforge.so")
    if not os.path.exists(bundled):
        import pytest

        pytest.skip("attnforge is imported from the source tree (not an installed wheel)")
    assert os.access(os.path.join(package_dir, "_bin", "attnforge"), os.X_OK)
    if "ATTNFORGE_LIBRARY" not in os.environ:
        assert os.path.samefile(attnforge.library_path(), bundled)
    # The wheel it came from says it holds compiled code for this platform, for any Python 3.
    import importlib.metadata
    import platform

    wheel = importlib.metadata.distribution("attnforge").read_text("WHEEL") or ""
    assert "Root-Is-Purelib: false" in wheel
    assert "Tag: py3-none-manylinux_2_28_%s" % platform.machine() in wheel, wheel


def test_status_enum_matches_the_library():
    """attnforge.Status is the header's af_status: every name and value as af_status_string gives them; a
    value a newer library appends is kept rather than refused."""
    lib = _native.library()
    for status in attnforge.Status:
        assert lib.af_status_string(int(status)).decode() == status.name
    assert lib.af_status_string(len(attnforge.Status)).decode() == "AF_ERR_UNKNOWN_STATUS"
    assert int(attnforge.Status(99)) == 99 and "99" in str(attnforge.AttnforgeError(99, "later status"))
