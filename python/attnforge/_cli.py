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
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(path, [path] + argv)
