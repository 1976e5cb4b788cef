"""`python -m attnforge ...`: `info` adds the Python side (package, interpreter, torch) to the
library's own report; every other command (doctor, bench, warmup, ...) runs the bundled binary."""
import json
import platform
import sys


def _python_side():
    from . import __version__

    info = {"package_version": __version__, "python": platform.python_version(),
            "executable": sys.executable}
    for module in ("torch", "numpy", "transformers"):
        try:
            info[module] = __import__(module).__version__
        except Exception as e:  # an installed but broken module is worth reporting, not fatal
            info[module] = "not importable (%s)" % type(e).__name__
    return info


def _info(argv):
    from . import _native

    python = _python_side()
    try:
        library = {"path": _native.library_path(), "report": _native.runtime_report()}
    except (ImportError, OSError) as e:
        library = {"error": str(e)}
    if "--json" in argv:
        print(json.dumps({"python": python, "library": library}, indent=2))
        return 0 if "error" not in library else 1
    print("attnforge %s (Python package)" % python["package_version"])
    for key in ("python", "executable", "torch", "numpy", "transformers"):
        print("  %-13s %s" % (key, python[key]))
    if "error" in library:
        print("library: %s" % library["error"])
        return 1
    report = library["report"]
    print("library %s: %s" % (report.get("version"), library["path"]))
    print("  build         %s" % report.get("build"))
    for name, backend in sorted(report.get("backends", {}).items()):
        state = "available" if backend.get("available") else "unavailable"
        reason = backend.get("reason") or backend.get("error") or ""
        print("  backend %-5s %s%s" % (name, state, (": " + reason) if reason and state == "unavailable" else ""))
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "info" and not any(a in ("-h", "--help") for a in argv):
        return _info(argv[1:])
    from ._cli import main as run_binary

    return run_binary(argv)


if __name__ == "__main__":
    sys.exit(main())
