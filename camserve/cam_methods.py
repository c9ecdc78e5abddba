"""Class-activation-map formulas: one layer's activations and gradients in, one map per row out.

Notation, for one row (one sample explained for one class): ``A`` is the ``[K, h, w]`` activation of the
target layer, ``S`` the explained score (the class logit; ``+logit`` / ``-logit`` for the positive /
negative class of a single-logit head), ``g = dS/dA`` its gradient, ``Z = h * w``, ``s_k = sum_ij A^k_ij``.
Every map is ``>= 0`` and unnormalised; each function takes ``acts`` and ``grads`` of shape
``[n, K, h, w]`` and returns ``[n, h, w]``.

Where methods coincide: at a layer followed only by global average pooling and a linear head (the
default layer of resnet, efficientnet, mobilenet), ``g^k_ij = W_ck / Z`` is constant over ``ij``, so
Grad-CAM, HiResCAM and XGrad-CAM give *the same map, same scale* there; they differ at earlier layers
(and at layers followed by a ReLU or a max-pool before the pooling: densenet121's ``features``, vgg16,
alexnet). LayerCAM differs even there: it drops the negative weights.

The formulas run in float64: XGrad-CAM and Grad-CAM++ divide by activation sums, which cancel at
layers whose activations can be negative.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

FUSION_GAMMA = 2.0
Formula = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def gradcam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., ICCV 2017): ``ReLU(sum_k w_k A^k)``, ``w_k = (1/Z) sum_ij g^k_ij``."""
    weights = grads.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * acts).sum(dim=1))


def hirescam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """HiResCAM (Draelos & Carin, 2020): ``ReLU(sum_k g^k ⊙ A^k)``, the gradient kept per position.

    Equals Grad-CAM wherever the gradient is constant over positions (a GAP + linear head).
    """
    return torch.relu((grads * acts).sum(dim=1))


def xgradcam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM (Fu et al., BMVC 2020): ``ReLU(sum_k w_k A^k)``, ``w_k = sum_ij (A^k_ij / s_k) g^k_ij``.

    A channel whose activations sum to exactly 0 gets ``w_k = 0`` (with ReLU activations that channel
    is all zero and contributes nothing anyway). The paper assumes non-negative activations; at a layer
    whose activations can be negative (densenet121's pre-ReLU ``features``) a sum near 0 makes the
    weight large: the formula, not this code, is unstable there.
    """
    sums = acts.sum(dim=(2, 3), keepdim=True)
    weighted = (grads * acts).sum(dim=(2, 3), keepdim=True)
    weights = torch.where(sums != 0, weighted / torch.where(sums != 0, sums, 1.0), 0.0)
    return torch.relu((weights * acts).sum(dim=1))


def gradcam_pp(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al., WACV 2018), the paper's closed form (its eq. 19).

    ``ReLU(sum_k w_k A^k)``, ``w_k = sum_ij alpha^k_ij ReLU(g^k_ij)``,
    ``alpha^k_ij = g^2 / (2 g^2 + s_k g^3) = 1 / (2 + s_k g^k_ij)``.

    The closed form assumes the explained output is ``Y = exp(S)`` with ``S`` piecewise linear in ``A``
    (so ``d^2Y/dA^2 = Y g^2`` and ``d^3Y/dA^3 = Y g^3``). We apply it to the score ``S`` itself, for
    every head: what is explained is then ``exp(S)``, i.e. the softmax *numerator* of the class (its
    probability before normalisation over classes) for a softmax head, and the *odds* ``p / (1 - p)``
    of the explained class for a single-logit head (``S = ±logit``). The common factor ``exp(S)`` of
    ``dY/dA = exp(S) g`` is dropped: it scales the map only. Between the layer and the logits the
    model must be piecewise linear (ReLU) for the assumption to hold; after SiLU/sigmoid blocks
    (efficientnet at an earlier layer) the second-order terms are neglected.

    ``alpha = 0`` where ``g = 0`` or where ``2 + s_k g <= 0``; the latter needs a negative activation
    sum (a pre-activation layer such as densenet121's ``features``), where the closed form has no
    meaning.
    """
    sums = acts.sum(dim=(2, 3), keepdim=True)
    denominator = 2.0 + sums * grads
    valid = (grads != 0) & (denominator > 0)
    alpha = torch.where(valid, 1.0 / torch.where(valid, denominator, 1.0), 0.0)
    weights = (alpha * torch.relu(grads)).sum(dim=(2, 3), keepdim=True)
    return torch.relu((weights * acts).sum(dim=1))


def layercam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """LayerCAM (Jiang et al., IEEE TIP 2021): ``ReLU(sum_k ReLU(g^k) ⊙ A^k)``, made for finer layers."""
    return torch.relu((torch.relu(grads) * acts).sum(dim=1))


SINGLE_LAYER: dict[str, Formula] = {
    "gradcam": gradcam,
    "gradcam++": gradcam_pp,
    "xgradcam": xgradcam,
    "hirescam": hirescam,
    "layercam": layercam,
}
FUSION = "layercam-fusion"
METHODS = (*SINGLE_LAYER, FUSION)


def fuse(maps: Sequence[torch.Tensor], gamma: float = FUSION_GAMMA) -> torch.Tensor:
    """LayerCAM's multi-layer fusion (Jiang et al. 2021, eq. 9 and section 3.3).

    Each layer's ``[n, h_l, w_l]`` LayerCAM map is scaled to ``tanh(gamma * M / max(M))`` per row (an
    all-zero map stays zero), upsampled bilinearly (``align_corners=False``) to the finest layer's
    resolution (the largest ``h_l * w_l``), and the layers are fused by the element-wise maximum. The
    result lies in ``[0, tanh(gamma)]``.
    """
    size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
    scaled = []
    for m in maps:
        top = m.amax(dim=(1, 2), keepdim=True)
        m = torch.tanh(gamma * m / torch.where(top > 0, top, 1.0))
        if tuple(m.shape[-2:]) != tuple(size):
            m = F.interpolate(m[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
        scaled.append(m)
    return torch.stack(scaled).amax(dim=0)


def compute(method: str, acts: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """The ``[n, h, w]`` maps of ``method`` from each layer's ``[n, K, h, w]`` activations and gradients.

    Single-layer methods take exactly one layer; ``layercam-fusion`` takes one or more.
    """
    if method == FUSION:
        return fuse([layercam(a.double(), g.double()) for a, g in zip(acts, grads, strict=True)])
    if method not in SINGLE_LAYER:
        raise ValueError(f"unknown CAM method {method!r}; use one of {', '.join(METHODS)}")
    if len(acts) != 1:
        raise ValueError(f"{method} takes one layer, got {len(acts)}")
    return SINGLE_LAYER[method](acts[0].double(), grads[0].double())
