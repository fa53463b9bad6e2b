"""Compiler settings of the C++ extension, shared by setup.py (ahead of time)
and _extension.py (just in time). Imports nothing heavy: setup.py reads it
before the package can be imported."""

import os

CSRC_SOURCES = ("ops.cpp", "cpu/hyperspherical_energy.cpp", "cpu/hyperspherical_energy_kernel.cpp")


def cpu_flags() -> list:
    """Flags of the CPU kernels.

    -march=native by default: the kernels use the vector width of the machine
    that builds them (AVX-512 here); set COMHE_CPU_ARCH (e.g. x86-64-v3) to
    build for other machines. -fno-math-errno lets sqrt vectorize;
    -ffp-contract=fast fuses a*b+c into FMA. No -ffast-math: the kernels rely
    on IEEE inf/NaN and on the order of their sums.
    """
    arch = os.environ.get("COMHE_CPU_ARCH", "native")
    return ["-O3", "-fopenmp", f"-march={arch}", "-fno-math-errno", "-ffp-contract=fast"]
