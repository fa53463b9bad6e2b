"""Loading the C++ extension: ahead-of-time build if installed, else a cached JIT build.

``pip install --no-build-isolation .`` with torch present compiles
``comhe_kernels._C`` ahead of time (setup.py). Without it, the first use
compiles the same sources with ninja through ``torch.utils.cpp_extension.load``
into ``$COMHE_KERNELS_CACHE`` (default ``~/.cache/comhe_kernels``), keyed by a
hash of the sources, the flags and the torch version, so later imports only
load the library.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from ._build_flags import CUDA_ARCH_LIST_DEFAULT, SOURCE_SUFFIXES, cpu_flags, cuda_flags, sources

_PKG = Path(__file__).resolve().parent
# csrc/ ships inside the package (installed) or sits beside it (source tree).
CSRC = next((p for p in (_PKG / "csrc", _PKG.parent / "csrc") if (p / "ops.cpp").exists()), _PKG / "csrc")

_error: str | None = None
_loaded = False
_info: dict = {}


def _source_hash(flags: list[str]) -> str:
    h = hashlib.sha256()
    for path in sorted(CSRC.rglob("*")):
        if path.suffix in SOURCE_SUFFIXES and "tests" not in path.relative_to(CSRC).parts:
            h.update(path.relative_to(CSRC).as_posix().encode())
            h.update(path.read_bytes())
    h.update(" ".join(flags).encode())
    h.update(torch.__version__.encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _build_lock(build_dir: Path):
    """One build at a time in build_dir, across processes. An flock, which the
    OS releases when its holder dies: a killed build leaves nothing that makes
    the next one wait. Under it, a `lock` file of torch's (its FileBaton: a
    file that a killed build leaves behind, after which every later build
    waits for it forever) can only be such a leftover, and is removed."""
    with open(build_dir / "build.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"comhe_kernels: waiting for another process building the kernels in {build_dir}", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
        (build_dir / "lock").unlink(missing_ok=True)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _jit_build() -> dict:
    from torch.utils import cpp_extension

    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise RuntimeError(
            f"no C++ compiler ({cxx!r} not on PATH): install one (e.g. `apt install g++`) "
            "or set CXX, or use backend='reference'"
        )
    if not cpp_extension.is_ninja_available():
        raise RuntimeError("ninja is needed to build the kernels on first use: `pip install ninja`")
    flags = cpu_flags()
    # csrc/cuda too where torch is a CUDA build and nvcc exists (minutes: 11 nvcc translation units)
    with_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    cuda = []
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", CUDA_ARCH_LIST_DEFAULT)
        cuda = cuda_flags() + [f"archs={os.environ['TORCH_CUDA_ARCH_LIST']}"]
    key = _source_hash(flags + cuda)
    cache = Path(os.environ.get("COMHE_KERNELS_CACHE", Path.home() / ".cache" / "comhe_kernels"))
    build_dir = cache / f"{key}-torch{torch.__version__.replace('+', '_')}"
    build_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "how": "jit",
        "build_dir": str(build_dir),
        "torch": torch.__version__,
        "compiler": cxx,
        "flags": flags,
        "machine": platform.machine(),
    }
    if with_cuda:
        info.update(cuda=torch.version.cuda, cuda_flags=cuda_flags(), archs=os.environ["TORCH_CUDA_ARCH_LIST"])
    start = time.perf_counter()
    with _build_lock(build_dir):
        cpp_extension.load(
            name=f"comhe_kernels_{key}",
            sources=[str(p) for p in sources(CSRC, cuda=with_cuda)],
            extra_include_paths=[str(CSRC / "include")],
            extra_cflags=flags,
            extra_cuda_cflags=cuda_flags() if with_cuda else None,
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=bool(os.environ.get("COMHE_KERNELS_VERBOSE")),
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


def build_info() -> dict:
    """How the extension was built and loaded (empty before the first use)."""
    load()
    return dict(_info, error=_error) if _error else dict(_info)
