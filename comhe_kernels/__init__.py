"""comhe-kernels: fused (Compressive) Minimum Hyperspherical Energy for PyTorch."""

from . import distributed, projections, reference, thomson
from ._extension import build_info
from ._spec import num_cross_pairs, num_pairs
from .ops._registry import available as available_backends, discover
from .ops.cross_energy import cross_energy, cross_energy_and_grad
from .ops.hyperspherical_energy import hyperspherical_energy, hyperspherical_energy_and_grad
from .regularizers import MHE, CoMHE, mhe_loss
from .uniformity import min_pairwise_distance, uniformity_loss

__all__ = [
    "hyperspherical_energy",
    "hyperspherical_energy_and_grad",
    "cross_energy",
    "cross_energy_and_grad",
    "available_backends",
    "num_pairs",
    "num_cross_pairs",
    "reference",
    "build_info",
    "CoMHE",
    "MHE",
    "mhe_loss",
    "uniformity_loss",
    "min_pairwise_distance",
    "projections",
    "distributed",
    "thomson",
]
__version__ = "0.1.0"

discover()  # the backends register themselves (ops/backends/), before any call can be compiled
