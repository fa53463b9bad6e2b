"""Build: the C++ extension ahead of time when torch is importable
(`pip install --no-build-isolation .`), else a pure-Python install that
compiles the same sources on first use (comhe_kernels/_extension.py)."""

import json
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "comhe_kernels"))
from _build_flags import CSRC_SOURCES, cpu_flags  # noqa: E402

sys.path.pop(0)

ext_modules, cmdclass, options = [], {}, {}
try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError:
    print("comhe-kernels: torch is not importable at build time; the kernels will be built on first use")
else:

    class BuildWithInfo(BuildExtension):
        """Records what was built next to the extension, shown when loading fails."""

        def run(self):
            super().run()
            info = {"how": "aot", "torch": torch.__version__, "flags": cpu_flags()}
            out = Path(self.build_lib) / "comhe_kernels" / "_build_info.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(info, indent=1))

    ext_modules = [
        CppExtension(
            "comhe_kernels._C",
            sources=[f"csrc/{s}" for s in CSRC_SOURCES],
            include_dirs=[str(ROOT / "csrc" / "include")],
            extra_compile_args=cpu_flags(),
            extra_link_args=["-fopenmp"],
            define_macros=[("Py_LIMITED_API", "0x03090000")],
            py_limited_api=True,
        )
    ]
    cmdclass = {"build_ext": BuildWithInfo}
    options = {"bdist_wheel": {"py_limited_api": "cp39"}}

setup(
    packages=["comhe_kernels", "comhe_kernels.ops", "comhe_kernels.bench", "comhe_kernels.csrc"],
    package_dir={"comhe_kernels.csrc": "csrc"},
    package_data={"comhe_kernels": ["data/*.tsv"], "comhe_kernels.csrc": ["*.cpp", "include/comhe/*.h", "cpu/*.cpp"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options=options,
)
