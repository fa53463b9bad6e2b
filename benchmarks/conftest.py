"""pytest-benchmark suite of comhe-kernels: ``pytest benchmarks --benchmark-only``.

The suite's files are named after the op (bench_<op>.py, like tests/test_<op>.py),
which pytest does not collect by default: the hook below does.
"""

import os

# Before torch (and with it GNU OpenMP) is imported by the benchmark modules:
# spin-waiting threads made small calls 10-15x slower on a shared machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
