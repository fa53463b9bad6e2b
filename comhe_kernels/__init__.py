"""comhe-kernels: fused (Compressive) Minimum Hyperspherical Energy for PyTorch."""

from . import projections, reference, thomson
from ._extension import build_info
from ._spec import num_pairs
from .ops.hyperspherical_energy import hyperspherical_energy
from .regularizers import MHE, CoMHE, mhe_loss
from .uniformity import min_pairwise_distance, uniformity_loss

__all__ = [
    "hyperspherical_energy",
    "num_pairs",
    "reference",
    "build_info",
    "CoMHE",
    "MHE",
    "mhe_loss",
    "uniformity_loss",
    "min_pairwise_distance",
    "projections",
    "thomson",
]
__version__ = "0.1.0"
