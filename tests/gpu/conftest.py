"""GPU correctness (run on the GPU machine by bench/device/full_run.sh; skipped without a CUDA GPU).

Shares tests/python's float64 reference and error budget and its seeding (fresh each run, printed;
replay with ATTNFORGE_TEST_SEED).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))

from conftest import SEED, pytest_report_header, seed  # noqa: E402,F401  (tests/python/conftest.py)
