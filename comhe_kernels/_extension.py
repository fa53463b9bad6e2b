"""Loading the C++ extension: ahead-of-time build if installed, else a cached JIT build.

``pip install --no-build-isolation .`` with torch present compiles
``comhe_kernels._C`` ahead of time (setup.py). Without it, the first use
compiles the same sources with ninja (the CPU kernel's core once per ISA
level, _build_flags.build_levels, then the rest through
``torch.utils.cpp_extension.load``) into ``$COMHE_KERNELS_CACHE`` (default
``~/.cache/comhe_kernels``), in a folder named by a hash of the sources, the
flags, the compiler and the torch version, so later imports only load the
library. The build compiles a copy of the sources kept in that folder:
source trees with the same sources share one build (torch keys its builds by
the source paths too), and an edit during a build cannot reach its objects.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

from ._build_flags import (
    CUDA_ARCH_LIST_DEFAULT,
    SOURCE_SUFFIXES,
    build_levels,
    cpu_arch,
    cpu_flags,
    cpu_levels,
    cuda_flags,
    level_flags,
    native_cpu,
    sources,
)

_PKG = Path(__file__).resolve().parent
# csrc/ ships inside the package (installed) or sits beside it (source tree).
CSRC = next((p for p in (_PKG / "csrc", _PKG.parent / "csrc") if (p / "ops.cpp").exists()), _PKG / "csrc")

_error: str | None = None
_loaded = False
_info: dict = {}


def _source_files(csrc: Path) -> dict:
    """The sources the extension is built from, {path relative to csrc: bytes}."""
    return {
        p.relative_to(csrc).as_posix(): p.read_bytes()
        for p in sorted(csrc.rglob("*"))
        if p.suffix in SOURCE_SUFFIXES and "tests" not in p.relative_to(csrc).parts
    }


def _cache_key(files: dict, flags: list, cxx: str) -> str:
    """The build's name: its sources, flags, compiler and torch. The CPU it is
    built on enters only where the build is that CPU's (COMHE_CPU_ARCH=native):
    the portable build's levels are the same on every machine."""
    h = hashlib.sha256()
    for rel, data in files.items():
        h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    h.update("\0".join(flags + [cxx, torch.__version__]).encode())
    if cpu_arch() == "native":
        h.update(native_cpu(cxx).encode())
    return h.hexdigest()[:16]


# How long a build waits for another process's build of the same folder
# before it gives up with an error naming that process (a full build of the
# three ISA levels takes ~3 minutes on a busy 2-core machine).
BUILD_WAIT_SECONDS = float(os.environ.get("COMHE_KERNELS_BUILD_WAIT", 1200))


@contextlib.contextmanager
def _build_lock(build_dir: Path):
    """One build at a time in build_dir, across processes. An flock, which the
    OS releases when its holder dies: a killed build leaves nothing that makes
    the next one wait. Under it, a `lock` file of torch's (its FileBaton: a
    file that a killed build leaves behind, after which every later build
    waits for it forever) can only be such a leftover, and is removed. A live
    holder is waited for BUILD_WAIT_SECONDS at most."""
    with open(build_dir / "build.lock", "a+") as f:
        deadline = time.monotonic() + BUILD_WAIT_SECONDS
        waiting = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "?"
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"waited {BUILD_WAIT_SECONDS:.0f} s for process {holder} building the kernels in "
                        f"{build_dir}: stop it, or set COMHE_KERNELS_BUILD_WAIT (seconds) to wait longer"
                    ) from None
                if not waiting:
                    print(f"comhe_kernels: waiting for process {holder} building the kernels in {build_dir}",
                          file=sys.stderr)
                    waiting = True
                time.sleep(0.5)
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        (build_dir / "lock").unlink(missing_ok=True)
        try:
            yield
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)


def _snapshot(files: dict, src: Path) -> None:
    """The sources under src/, written once per build folder (its name is their hash)."""
    if (src / "ops.cpp").exists():
        return
    tmp = src.with_name(src.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, data in files.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(data)
    tmp.rename(src)


def _jit_build() -> dict:
    from torch.utils import cpp_extension

    cxx = os.environ.get("CXX", "c++")
    if shutil.which(shlex.split(cxx)[0]) is None:
        raise RuntimeError(
            f"no C++ compiler ({cxx!r} not on PATH): install one (e.g. `apt install g++`) "
            "or set CXX, or use backend='reference'"
        )
    if not cpp_extension.is_ninja_available():
        raise RuntimeError("ninja is needed to build the kernels on first use: `pip install ninja`")
    flags = cpu_flags()
    levels = cpu_levels()
    # csrc/cuda too where torch is a CUDA build and nvcc exists (minutes: 11 nvcc translation units)
    with_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    cuda = []
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", CUDA_ARCH_LIST_DEFAULT)
        cuda = cuda_flags() + [f"archs={os.environ['TORCH_CUDA_ARCH_LIST']}"]
    files = _source_files(CSRC)
    key = _cache_key(files, flags + [f for lv in levels for f in level_flags(lv)] + cuda, cxx)
    cache = Path(os.environ.get("COMHE_KERNELS_CACHE", Path.home() / ".cache" / "comhe_kernels"))
    build_dir = cache / f"{key}-torch{torch.__version__.replace('+', '_')}"
    build_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "how": "jit",
        "build_dir": str(build_dir),
        "torch": torch.__version__,
        "compiler": cxx,
        "flags": flags,
        "levels": {lv.name: level_flags(lv) for lv in levels},
        "machine": platform.machine(),
    }
    if with_cuda:
        info.update(cuda=torch.version.cuda, cuda_flags=cuda_flags(), archs=os.environ["TORCH_CUDA_ARCH_LIST"])
    verbose = bool(os.environ.get("COMHE_KERNELS_VERBOSE"))
    start = time.perf_counter()
    with _build_lock(build_dir):
        src = build_dir / "src"
        _snapshot(files, src)
        objects = build_levels(build_dir / "levels", src, cxx, verbose=verbose)
        cpp_extension.load(
            name=f"comhe_kernels_{key}",
            sources=[str(p) for p in sources(src, cuda=with_cuda)],
            extra_include_paths=[str(src / "include")],
            extra_cflags=flags,
            extra_cuda_cflags=cuda_flags() if with_cuda else None,
            extra_ldflags=["-fopenmp", *objects],
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=verbose,
        )
    info["load_seconds"] = round(time.perf_counter() - start, 2)
    (build_dir / "build_info.json").write_text(json.dumps(info, indent=1))
    return info


def load() -> str | None:
    """Load the extension once; returns None on success, else why it failed."""
    global _error, _loaded, _info
    if _loaded or _error is not None:
        return _error
    attempts = []
    try:
        importlib.import_module("comhe_kernels._C")
        info_file = _PKG / "_build_info.json"
        _info = json.loads(info_file.read_text()) if info_file.exists() else {"how": "aot"}
    except ImportError as e:
        attempts.append(f"ahead-of-time module: {e}")
        try:
            _info = _jit_build()
        except Exception as e:  # a failed build must not break `import comhe_kernels`
            attempts.append(f"just-in-time build: {type(e).__name__}: {e}")
            _error = "; ".join(attempts) + f" (torch {torch.__version__}, sources in {CSRC})"
            return _error
    from .ops._autograd import register_python_side

    register_python_side("comhe::hyperspherical_energy", "comhe::cross_energy")
    _loaded = True
    return None


def cpu_isa() -> dict:
    """The CPU kernel's ISA level: the one it runs now ("level"), this build's
    ("levels", lowest first), those this CPU can run ("runnable"), the CPU's
    features of those the levels need ("cpu"), COMHE_CPU_ISA as read at the
    first call ("requested") and why no level runs, if none does ("error")."""
    error = load()
    if error is not None:
        raise RuntimeError(f"the C++ extension did not load: {error}")
    return json.loads(torch.ops.comhe._cpu_isa())


def set_cpu_isa(level: str) -> str:
    """Run the CPU kernel at ``level`` from the next call on ("": the highest
    this CPU runs); returns the previous level. ValueError if this build has
    no such level or this CPU cannot run it."""
    error = load()
    if error is not None:
        raise RuntimeError(f"the C++ extension did not load: {error}")
    return torch.ops.comhe._set_cpu_isa(level)


def build_info() -> dict:
    """How the extension was built and loaded (empty before the first use), and
    the CPU kernel's ISA level ("cpu_isa", as cpu_isa())."""
    load()
    if _error:
        return dict(_info, error=_error)
    return dict(_info, cpu_isa=cpu_isa())
