"""pytest setup: import attnforge (installed, or from this checkout's python/ directory), seed the RNG
freshly each run (printed, so a failure can be replayed with ATTNFORGE_TEST_SEED)."""
import os
import random
import sys

import pytest

try:
    import attnforge  # noqa: F401  (installed package)
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))

SEED = int(os.environ.get("ATTNFORGE_TEST_SEED", random.SystemRandom().randrange(2 ** 31)))


def pytest_report_header(config):
    import attnforge

    return "attnforge %s, library %s, seed %d (ATTNFORGE_TEST_SEED)" % (
        attnforge.__version__, attnforge.library_path(), SEED)


@pytest.fixture
def seed(request):
    """A fresh seed per test, derived from the run's seed and the test's name."""
    value = (SEED * 1000003 + sum(map(ord, request.node.nodeid))) % (2 ** 31)
    try:
        import torch

        torch.manual_seed(value)
    except ImportError:
        pass
    return value
