"""Compiler settings of the C++ extension, shared by setup.py (ahead of time)
and _extension.py (just in time). Imports nothing heavy: setup.py reads it
before the package can be imported."""

import os
from pathlib import Path

# What a backend's sources are, by folder (as pytorch/extension-cpp globs
# them): a new file there is built without editing a list. cpu/ holds the
# ATen glue, cpu/core/ the torch-free kernel (which CMake builds alone, with
# its unit tests in csrc/tests/, not part of the extension).
CPU_SOURCE_GLOBS = ("*.cpp", "cpu/*.cpp", "cpu/core/*.cpp")
CUDA_SOURCE_GLOBS = ("cuda/*.cu",)
# Every file whose change must rebuild the extension (the JIT cache key) and
# that a wheel ships for the just-in-time build.
SOURCE_SUFFIXES = (".h", ".cuh", ".cpp", ".cu")


def sources(csrc: Path, cuda: bool = False) -> list[Path]:
    """The extension's translation units under csrc/, sorted (CUDA ones if cuda)."""
    globs = CPU_SOURCE_GLOBS + (CUDA_SOURCE_GLOBS if cuda else ())
    found = sorted({p for g in globs for p in Path(csrc).glob(g)})
    # the just-in-time build names each object after its file's stem (x.o,
    # x.cuda.o: torch.utils.cpp_extension), so two .cpp files of one stem
    # in different folders would overwrite each other's object
    objects = [p.stem + (".cuda" if p.suffix == ".cu" else "") for p in found]
    clashes = sorted({o for o in objects if objects.count(o) > 1})
    if clashes:
        raise RuntimeError(f"sources under {csrc} share the object names {clashes}: rename one of each")
    return found


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


# The CUDA build (csrc/cuda, a CUDA torch and nvcc only): the GPUs it targets
# unless TORCH_CUDA_ARCH_LIST says otherwise: sm_80 machine code and PTX
# (which newer GPUs compile at load), sm_90a for Hopper (its own machine code;
# "9.0a+PTX" would be PTX that only sm_90 can run). Set because torch's default
# reads the visible GPUs, and a build machine may have none.
CUDA_ARCH_LIST_DEFAULT = "8.0+PTX;9.0a"


def cuda_flags() -> list:
    """nvcc flags of the CUDA kernels. No --use_fast_math: like the CPU build,
    the kernels rely on IEEE inf/NaN, division and their sums' order; the one
    approximate function they use (rsqrt, 2 ulp) is chosen in pair_energy.h."""
    return ["-O3", "-lineinfo"]
