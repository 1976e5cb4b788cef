"""GPU correctness (run on the GPU machine by bench/device/run.sh; skipped without a CUDA GPU).

Shares tests/python's float64 reference and error budget and its seeding (fresh each run, printed;
replay with ATTNFORGE_TEST_SEED).
"""
import importlib.util
import os
import sys

PYTHON_TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python")
sys.path.insert(0, PYTHON_TESTS)  # reference.py

_spec = importlib.util.spec_from_file_location("python_tests_conftest", os.path.join(PYTHON_TESTS, "conftest.py"))
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)
pytest_report_header = _shared.pytest_report_header
seed = _shared.seed
