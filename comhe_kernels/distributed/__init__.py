"""The energy over several processes with torch.distributed (docs/distributed.md).

- :func:`hyperspherical_energy` / :func:`hyperspherical_energy_and_grad`:
  rows sharded over the ranks (a classifier split over GPUs, Thomson at
  large N); every rank gets the exact energy of the union and the gradient
  of its own rows. Row blocks travel around a ring of point-to-point
  messages; the energy is one all-reduce.
- :func:`replicated_energy`: weights every rank holds (DDP); each rank
  computes its share of the pairs, scaled so that DDP's gradient average is
  the full gradient, with no communication of its own.

gloo (CPU tensors) is tested with 2 and 3 processes; NCCL (CUDA tensors) is
written the same way (its transfers run on NCCL's own streams, overlapping
the energy kernels on the current one) but no GPU has run it yet.
"""

from .replicated import ReplicatedPairEnergy, replicated_energy
from .sharded import hyperspherical_energy, hyperspherical_energy_and_grad

__all__ = ["hyperspherical_energy", "hyperspherical_energy_and_grad", "replicated_energy", "ReplicatedPairEnergy"]
