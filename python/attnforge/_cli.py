"""The `attnforge` console script: runs the command-line tool bundled with the package."""
import os
import sys


def binary_path():
    """Path of the `attnforge` command: bundled, $ATTNFORGE_CLI, or next to the loaded library (build tree)."""
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.path.join(here, "_bin", "attnforge")]
    if os.environ.get("ATTNFORGE_CLI"):
        candidates.insert(0, os.environ["ATTNFORGE_CLI"])
    try:
        from . import _native

        candidates.append(os.path.join(os.path.dirname(_native.library_path()), "attnforge"))
    except ImportError:
        pass
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError("attnforge: the command-line tool was not found; tried " + ", ".join(candidates))


def main(argv=None):
    """Replaces this process with the bundled binary, passing the arguments through."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        path = binary_path()
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 127
    if not os.environ.get("ATTNFORGE_NVRTC"):
        # The binary cannot see this Python's site-packages: name the NVRTC of torch's pip
        # wheels that the package itself would load (e.g. for `attnforge warmup` in an image).
        try:
            from . import _native

            for directory in _native._nvrtc_dirs():
                names = ("libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so")
                found = [os.path.join(directory, n) for n in names if os.path.isfile(os.path.join(directory, n))]
                if found:
                    os.environ["ATTNFORGE_NVRTC"] = found[0]
                    break
        except ImportError:
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(path, [path] + argv)
