"""MHE and CoMHE regularizers that drop into any PyTorch training loop.

    reg = comhe_kernels.regularizers.CoMHE(model, variant="rp")   # defaults of rmlin/CoMHE
    loss = criterion(model(x), y) + reg()

Every pairwise sum goes through ``comhe_kernels.hyperspherical_energy`` (the
fused op); the projections of RP-CoMHE and the groups of G-CoMHE reach it as
ONE batched (B, N, k) call per layer.

    layers.py   which layers, and what each gets (``plan_layers`` -> ``LayerPlan``)
    terms.py    what a layer's energy is taken of, one class per mode (``TERMS``)
    energy.py   the energy itself (``PairEnergy``, ``mhe_loss``, ``default_weights``)
    comhe.py    the module that puts them together (``CoMHE``, ``MHE``)

Sources of the defaults (see ../shared/ANCHORS.md and docs/regularizers.md):
  * MHE (Liu et al., NeurIPS 2018; wy1iu/MHE code/architecture.py): every conv
    and FC layer gets the hidden term, the classifier the output term; energy =
    mean over pairs of f(normalized neurons); power 0 is -log(d^2); weights
    hidden/output 1/10 (powers 0, 1, 2, a0) and 0.1/1 (a1, a2).
  * CoMHE (Lin et al., CVPR 2020; rmlin/CoMHE): first layer half-space power 2
    without projection, other hidden layers projected half-space power 2
    weight 1, classifier full-space power 2 weight 10, no projection. RP: pd 40,
    pn 20, fresh N(0, 1) projections every step. AP: pd 30, learned P, one SGD
    step per iteration on ||cos(PW) - cos(W)||_F + L2, lookahead
    P' = P - lr grad. Adv: pd 30, 10 ascent steps on the full-space energy of
    PW, lookahead P' = P + lr grad.
  * G-CoMHE: described in the paper, absent from the code; defined here (see
    ``CoMHE``) as the energies of contiguous input-channel groups.
"""

from .comhe import MHE, VARIANTS, CoMHE
from .energy import PairEnergy, default_weights, mhe_loss
from .layers import SUPPORTED_LAYERS, LayerPlan, plan_layers

__all__ = [
    "CoMHE", "MHE", "mhe_loss", "default_weights", "PairEnergy", "plan_layers", "LayerPlan",
    "VARIANTS", "SUPPORTED_LAYERS",
]
