"""Build: the C++ extension ahead of time when torch is importable
(`pip install --no-build-isolation .`), else a pure-Python install that
compiles the same sources on first use (comhe_kernels/_extension.py)."""

import json
import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "comhe_kernels"))
from _build_flags import CUDA_ARCH_LIST_DEFAULT, SOURCE_SUFFIXES, cpu_flags, cuda_flags, sources  # noqa: E402

sys.path.pop(0)

ext_modules, cmdclass = [], {}
try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:
    print("comhe-kernels: torch is not importable at build time; the kernels will be built on first use")
else:
    # The CUDA kernels (csrc/cuda) need a CUDA build of torch and nvcc; else the CPU extension alone.
    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", CUDA_ARCH_LIST_DEFAULT)
        print(f"comhe-kernels: building the CUDA kernels for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
    elif torch.version.cuda is None:
        print(f"comhe-kernels: torch {torch.__version__} is a CPU build; building the CPU kernels only")
    else:
        print("comhe-kernels: nvcc not found (set CUDA_HOME); building the CPU kernels only")

    class BuildWithInfo(BuildExtension):
        """Records what was built next to the extension, shown when loading fails."""

        def run(self):
            super().run()
            info = {"how": "aot", "torch": torch.__version__, "flags": cpu_flags()}
            if with_cuda:
                info.update(cuda=torch.version.cuda, cuda_flags=cuda_flags(), archs=os.environ["TORCH_CUDA_ARCH_LIST"])
            out = Path(self.build_lib) / "comhe_kernels" / "_build_info.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(info, indent=1))

    ext_modules = [
        (CUDAExtension if with_cuda else CppExtension)(
            "comhe_kernels._C",
            sources=[p.relative_to(ROOT).as_posix() for p in sources(ROOT / "csrc", cuda=with_cuda)],
            include_dirs=[str(ROOT / "csrc" / "include")],
            extra_compile_args={"cxx": cpu_flags(), "nvcc": cuda_flags()} if with_cuda else cpu_flags(),
            # Not the limited API (abi3): the CPU glue asks Python for Ctrl-C
            # during a call and re-raises its exception through pybind11
            # (csrc/cpu/python_interrupt.h), which needs the full API; a wheel
            # is tied to one torch build, and so to its Python, anyway.
            extra_link_args=["-fopenmp"],
        )
    ]
    cmdclass = {"build_ext": BuildWithInfo}

# csrc/ ships inside the package for the just-in-time build: every source
# file below it but the C++ unit tests.
csrc_files = sorted(
    p.relative_to(ROOT / "csrc").as_posix()
    for p in (ROOT / "csrc").rglob("*")
    if p.suffix in SOURCE_SUFFIXES and p.relative_to(ROOT / "csrc").parts[0] != "tests"
)

setup(
    packages=find_packages(include=["comhe_kernels", "comhe_kernels.*"]) + ["comhe_kernels.csrc"],
    package_dir={"comhe_kernels.csrc": "csrc"},
    package_data={"comhe_kernels": ["data/*.tsv"], "comhe_kernels.csrc": csrc_files},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
