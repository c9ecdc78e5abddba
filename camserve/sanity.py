"""Sanity checks for saliency maps (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

A map that explains the *model* must change when the model does. Two tests:

- **model-parameter randomisation, cascading**: the parameters are re-drawn stage by stage from the head
  down (the classifier first, then the last stage, ...), keeping the earlier re-draws, and after each
  stage every image's map is compared with the original model's map for the same class;
- **data randomisation**: a copy of the architecture trained on permuted labels (it can only memorise)
  is compared with the model trained on the true labels.

Similarity is measured on maps scaled to [0, 1] and upsampled to the input size: the Spearman rank
correlation (ties get their average rank) and SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5,
K1 = 0.01, K2 = 0.03, data range 1, averaged over the windows that fit). A map that becomes all zero
(no positive evidence left) has no ranks: it counts as correlation 0 (it no longer shares anything with
the original); images whose *original* map is all zero are left out.

A *stage* groups the parameterised modules by the first two components of their dotted name
(``layer4.1``, ``features.28``, ``classifier``), ordered by when they first run in a forward. Each
parameter tensor is re-drawn from a normal distribution with its own mean and standard deviation (so
activations keep their scale and the network stays numerically usable; a constant tensor, such as an
untrained BatchNorm's ones, stays as it is); buffers such as BatchNorm's running statistics are kept.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from camserve import cam as cam_ops

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def _average_ranks(v: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(v, stable=True)
    ranks = torch.empty_like(v, dtype=torch.float64)
    ranks[order] = torch.arange(v.numel(), dtype=torch.float64)
    _, inverse, counts = torch.unique(v, return_inverse=True, return_counts=True)
    sums = torch.zeros(counts.numel(), dtype=torch.float64).index_add_(0, inverse, ranks)
    averaged: torch.Tensor = (sums / counts)[inverse]
    return averaged


def spearman(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Spearman's rank correlation of two maps (ties: average ranks); ``None`` if either is constant."""
    ra, rb = _average_ranks(a.reshape(-1).double()), _average_ranks(b.reshape(-1).double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = float(ra.norm() * rb.norm())
    return None if norm == 0 else float((ra * rb).sum()) / norm


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean structural similarity of two ``[H, W]`` maps (Gaussian window, 'valid' positions only)."""
    side = min(SSIM_WINDOW, a.shape[-1], a.shape[-2])
    side -= 1 - side % 2  # odd
    axis = torch.arange(side, dtype=torch.float64) - (side - 1) / 2
    g = torch.exp(-axis ** 2 / (2 * SSIM_SIGMA ** 2))
    g /= g.sum()
    window = (g[:, None] * g[None, :])[None, None]

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t[None, None], window)[0, 0]

    x, y = a.double(), b.double()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s.mean())


def stages(model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[str]:
    """The model's parameterised stages in forward order (see the module docstring)."""
    first_run: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        stage = ".".join(name.split(".")[:2]) or "(root)"

        def record(_m: nn.Module, _i: tuple[object, ...], _o: object, stage: str = stage) -> None:
            first_run.setdefault(stage, len(first_run))

        hooks.append(module.register_forward_hook(record))
    try:
        with cam_ops.frozen(model), torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return sorted(first_run, key=first_run.__getitem__)


def stage_parameters(model: nn.Module, stage: str) -> list[nn.Parameter]:
    """The parameters of one stage (for ``(root)``: those the root module holds itself)."""
    if stage == "(root)":
        return list(model.parameters(recurse=False))
    return list(model.get_submodule(stage).parameters())


@torch.no_grad()
def randomise_(params: Sequence[nn.Parameter], generator: torch.Generator) -> None:
    """Re-draw each tensor in place from a normal with its own mean and standard deviation."""
    for p in params:
        std = float(p.std()) if p.numel() > 1 else 0.0
        noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
        p.copy_((noise * std + float(p.mean())).to(p))


@dataclass
class Comparison:
    """How much the maps of a changed model resemble the original's, per image and as medians."""

    label: str
    spearman: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    flat: int = 0  # maps that became all zero (counted as correlation 0)

    @property
    def median_spearman(self) -> float:
        return statistics.median(self.spearman) if self.spearman else math.nan

    @property
    def median_ssim(self) -> float:
        return statistics.median(self.ssim) if self.ssim else math.nan

    def to_dict(self) -> dict[str, object]:
        return {"randomised": self.label, "median_spearman": round(self.median_spearman, 4),
                "median_ssim": round(self.median_ssim, 4), "flat_maps": self.flat,
                "spearman": [round(v, 4) for v in self.spearman], "ssim": [round(v, 4) for v in self.ssim]}


def compare(label: str, original: torch.Tensor, changed: torch.Tensor) -> Comparison:
    """Compare ``[N, S, S]`` maps in [0, 1] row by row."""
    out = Comparison(label)
    for a, b in zip(original, changed, strict=True):
        rho = spearman(a, b)
        out.flat += rho is None
        out.spearman.append(0.0 if rho is None else rho)
        out.ssim.append(ssim(a, b))
    return out


@dataclass
class Explained:
    """What the maps are computed from: the images, extra inputs, classes, method and layer names."""

    x: torch.Tensor
    extra: tuple[torch.Tensor, ...]
    targets: list[list[int]]
    method: str
    layers: tuple[str, ...]

    def maps(self, model: nn.Module) -> torch.Tensor:
        """``[N, S, S]`` maps of ``model`` scaled to [0, 1] at the input size."""
        modules = [model.get_submodule(n) for n in self.layers]
        out = cam_ops.explain_batch(model, modules, self.x, self.targets, self.extra, self.method)
        return cam_ops.input_maps(out.cams or [], self.x.shape[-1])


def cascade(model: nn.Module, explained: Explained, original: torch.Tensor, seed: int = 0,
            max_stages: int | None = None, draws: int = 1) -> list[Comparison]:
    """Cascading model-parameter randomisation, from the head down, on copies of ``model``.

    The re-draw is random, and a single one can flip the sign of the head's weights for a class and so
    turn a map into its complement or leave it alone by luck: with ``draws > 1`` the cascade runs that
    many times (seeds ``seed``, ``seed + 1``...) and each stage pools every image of every draw.

    Args:
        model: The trained model (left untouched).
        explained: Images, classes, method and layers.
        original: The original model's maps of ``explained`` (``[N, S, S]``, in [0, 1]).
        seed: Seed of the first draw.
        max_stages: Stop after this many stages (``None``: down to the first layer).
        draws: Independent cascades pooled per stage.
    """
    pooled: list[Comparison] = []
    for draw in range(draws):
        copy_ = copy.deepcopy(model)
        generator = torch.Generator().manual_seed(seed + draw)
        order = stages(copy_, (explained.x[:1], *[e[:1] for e in explained.extra]))[::-1]
        for step, stage in enumerate(order[:max_stages]):
            randomise_(stage_parameters(copy_, stage), generator)
            result = compare(stage, original, explained.maps(copy_))
            if draw == 0:
                pooled.append(result)
            else:
                pooled[step].spearman += result.spearman
                pooled[step].ssim += result.ssim
                pooled[step].flat += result.flat
    return pooled


def train_on_permuted_labels(model: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                             extra: Sequence[torch.Tensor] = (), epochs: int = 10, seed: int = 0,
                             batch_size: int = 32, lr: float = 1e-3) -> tuple[nn.Module, float]:
    """Train ``model`` (a fresh copy of the architecture) on randomly permuted labels.

    Returns:
        The model in eval mode, and its accuracy on the permuted labels it was trained on (how much it
        memorised).
    """
    generator = torch.Generator().manual_seed(seed)
    permuted = labels[torch.randperm(labels.numel(), generator=generator)]
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        model.train()
        for idx in torch.split(torch.randperm(labels.numel(), generator=generator), batch_size):
            if idx.numel() < 2:
                continue  # BatchNorm needs two samples
            logits = model(x[idx], *[e[idx] for e in extra])
            if logits.shape[1] == 1:
                loss = F.binary_cross_entropy_with_logits(logits[:, 0], permuted[idx].double().to(logits))
            else:
                loss = F.cross_entropy(logits, permuted[idx])
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
    model.eval()
    with torch.no_grad():
        log_probs = cam_ops.log_probabilities(model(x, *extra))
    accuracy = float((log_probs.argmax(1) == permuted).double().mean())
    return model, accuracy
