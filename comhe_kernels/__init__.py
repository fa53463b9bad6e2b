"""comhe-kernels: fused (Compressive) Minimum Hyperspherical Energy for PyTorch."""

from . import reference
from ._extension import build_info
from ._spec import num_pairs
from .ops.hyperspherical_energy import hyperspherical_energy

__all__ = ["hyperspherical_energy", "num_pairs", "reference", "build_info"]
__version__ = "0.1.0"
