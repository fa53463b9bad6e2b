"""Compiler settings of the C++ extension and the build of the CPU kernel's ISA
levels, shared by setup.py (ahead of time) and _extension.py (just in time).
Imports nothing heavy: setup.py reads it before the package can be imported."""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# What a backend's sources are, by folder (as pytorch/extension-cpp globs
# them): a new file there is built without editing a list. cpu/ holds the
# ATen glue and the ISA dispatcher, compiled once for any CPU of the
# architecture; cpu/core/ the torch-free kernel, compiled once per ISA level
# (build_levels; CMake builds it alone, with its unit tests in csrc/tests/).
CPU_SOURCE_GLOBS = ("*.cpp", "cpu/*.cpp")
CORE_SOURCE_GLOB = "cpu/core/*.cpp"
CUDA_SOURCE_GLOBS = ("cuda/*.cu",)
# Every file whose change must rebuild the extension (the JIT cache key) and
# that a wheel ships for the just-in-time build.
SOURCE_SUFFIXES = (".h", ".cuh", ".cpp", ".cu")


def sources(csrc: Path, cuda: bool = False) -> list[Path]:
    """The extension's own translation units under csrc/ (the core's are
    build_levels'), sorted (CUDA ones if cuda)."""
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


@dataclass(frozen=True)
class Level:
    """One ISA level of the CPU kernel: its name (COMHE_CPU_ISA's value, and the
    C++ namespace of its copy of the core) and its -march (None: the compiler's
    default)."""

    name: str
    march: str | None


# The portable build: every level the architecture has, lowest first, as
# csrc/cpu/dispatch.cpp (COMHE_CPU_LEVELS) expects them. x86-64: the psABI's
# microarchitecture levels (GCC >= 11, Clang >= 12); x86-64-v4 (AVX-512 F,
# BW, CD, DQ, VL) is the AVX-512 that Intel since Skylake-SP and AMD since
# Zen 4 share. aarch64: NEON is part of armv8-a.
PORTABLE_LEVELS = {
    "x86_64": (Level("sse42", "x86-64-v2"), Level("avx2", "x86-64-v3"), Level("avx512", "x86-64-v4")),
    "aarch64": (Level("neon", "armv8-a"),),
}


def cpu_arch() -> str | None:
    """COMHE_CPU_ARCH: one build for one -march (e.g. native) instead of the levels."""
    return os.environ.get("COMHE_CPU_ARCH") or None


def cpu_levels() -> tuple:
    """The levels this build compiles: the architecture's (PORTABLE_LEVELS; other
    architectures: one level, "generic", at the compiler's default), or with
    COMHE_CPU_ARCH one level named after it."""
    arch = cpu_arch()
    if arch:
        return (Level(re.sub(r"\W", "_", arch), arch),)
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    return PORTABLE_LEVELS.get(machine, (Level("generic", None),))


def cpu_flags() -> list:
    """Flags of every CPU translation unit: the glue, the dispatcher and each
    level's core (which adds level_flags).

    No -march here: the glue and the dispatcher run on any CPU of the
    architecture. -O3, not -O2: the core at -O2 built in 35% less time but ran
    2-3x slower (AVX2 level, Zen 3, N = 16384, k = 3 and 32: 60 -> 145 ms,
    285 -> 766 ms). -fno-math-errno lets sqrt vectorize; -ffp-contract=fast
    fuses a*b+c into FMA. No -ffast-math: the kernels rely on IEEE inf/NaN and
    on the order of their sums. -g0: the ahead-of-time build's compiler
    command carries Python's CFLAGS, -g among them, and the debug info of the
    core's templates made the extension 82 MB and its build ~40% slower
    (Zen 3, one level's instantiate_chordal.cpp: 132 s against 92 s).
    """
    flags = ["-O3", "-g0", "-fopenmp", "-fno-math-errno", "-ffp-contract=fast"]
    if cpu_arch():
        flags.append(f"-DCOMHE_CPU_SINGLE_LEVEL={cpu_levels()[0].name}")
    return flags


def level_flags(level: Level) -> list:
    """What one level's copy of the core adds to cpu_flags()."""
    return ([f"-march={level.march}"] if level.march else []) + [f"-DCOMHE_CPU_ISA={level.name}"]


def native_cpu(cxx: str) -> str:
    """What the compiler makes of -march=native here (its expanded flags), for
    the cache key of a COMHE_CPU_ARCH=native build: that build is this CPU's.
    "" where the compiler does not say."""
    try:
        run = subprocess.run([*shlex.split(cxx), "-march=native", "-###", "-E", "-x", "c++", os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    return " ".join(line for line in run.stderr.splitlines() if "march" in line or "target-cpu" in line)


def _ninja_path(p: Path) -> str:
    return re.sub(r"([$ :])", r"$\1", str(p))


def build_levels(out: Path, csrc: Path, cxx: str, verbose: bool = False) -> list:
    """Compile the core (CORE_SOURCE_GLOB) once per level of cpu_levels() into
    out/<level>/ and return the objects in link order: lowest level first.

    The order matters. Each level's own code lives in its own namespace, but
    the standard library's inline functions and templates that a level does
    not inline are emitted by every level that uses them under one name, and
    the linker keeps the first copy it meets: with the lowest level first,
    that is a copy every later level can run (the glue and the dispatcher,
    compiled without -march, go before all of them).

    ninja: parallel (MAX_JOBS, as torch's builds), incremental, and an object
    whose compile was killed is rebuilt (its command is missing from the log).
    """
    ninja = shutil.which("ninja")
    if ninja is None:
        raise RuntimeError("ninja is needed to build the kernels: `pip install ninja`")
    out.mkdir(parents=True, exist_ok=True)
    common = cpu_flags() + ["-std=c++17", "-fPIC", f"-I{csrc / 'include'}"]
    lines = [
        f"cxx = {cxx}",
        "rule cxx",
        "  command = $cxx -MMD -MF $out.d $flags -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = core $out",
    ]
    objects = []
    for level in cpu_levels():
        flags = " ".join(shlex.quote(f) for f in common + level_flags(level))
        for src in sorted(Path(csrc).glob(CORE_SOURCE_GLOB)):
            obj = out / level.name / f"{src.stem}.o"
            lines += [f"build {_ninja_path(obj)}: cxx {_ninja_path(src)}", f"  flags = {flags}"]
            objects.append(str(obj))
    (out / "build.ninja").write_text("\n".join(lines) + "\n")
    cmd = [ninja, "-C", str(out)] + (["-j", os.environ["MAX_JOBS"]] if os.environ.get("MAX_JOBS") else [])
    run = subprocess.run(cmd + (["-v"] if verbose else []), capture_output=not verbose, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"building the CPU kernel's ISA levels failed ({' '.join(cmd)}):\n"
                           + ((run.stdout or "") + (run.stderr or ""))[-8000:])
    return objects


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
