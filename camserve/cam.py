"""The fused pass: one forward serves the prediction and every requested class-activation map.

Parameters are frozen and forward hooks on the target layers start autograd's graph at the first of
them (its output becomes a fresh leaf), so autograd records, and differentiates, only the part of the
network from that layer to the logits: an explained batch costs about one forward, where
``loss.backward()`` through the whole network costs 2-9x (see ``scripts/bench_cam.py``).

Every method of :mod:`camserve.cam_methods` is a formula on the activations and the gradients this one
pass has. Several classes per sample come from the same forward: one ``autograd.grad`` of the head per
target *slot* (the first class of every sample, then the second, ...), keeping the graph between them.
Each sample of a batch gets its own targets: in eval mode samples are independent, so the gradient of
the sum of the per-sample scores is each sample's own gradient.

Single-logit binary heads (``num_outputs == 1``) score the positive class with ``+logit`` and the
negative class with ``-logit``: the map for a negative prediction explains the negative evidence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from camserve.cam_methods import FUSION, METHODS, compute

EPS = 1e-12


@dataclass
class CamBatch:
    """Result of one batch: everything on the CPU, float32.

    Attributes:
        log_probs: ``[B, C]`` log-probabilities over the C class names (a single-logit head gives 2).
        targets: Per sample, the classes explained, in request order (the predicted class where none was
            asked).
        cams: Per sample, a ``[T_i, h, w]`` stack of raw maps (``>= 0``, not normalised), one per target;
            ``None`` for :func:`predict`.
    """

    log_probs: torch.Tensor
    targets: list[list[int]]
    cams: list[torch.Tensor] | None

    @property
    def probs(self) -> torch.Tensor:
        return self.log_probs.exp()


@dataclass
class FusedOutput:
    """Single-map result of :func:`predict_and_explain` (kept until every caller uses :class:`CamBatch`).

    Attributes:
        log_probs: ``[B, C]`` log-probabilities over the C class names.
        targets: The class explained for each sample (the predicted one where none was asked).
        cams: ``[B, h, w]`` raw Grad-CAM maps (ReLU applied, not normalised), or ``None``.
    """

    log_probs: torch.Tensor
    targets: list[int]
    cams: torch.Tensor | None

    @property
    def probs(self) -> torch.Tensor:
        return self.log_probs.exp()


def log_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities over class names: softmax, or a sigmoid for a single-logit head."""
    if logits.shape[1] == 1:
        z = logits[:, 0]
        return torch.stack([F.logsigmoid(-z), F.logsigmoid(z)], dim=1)
    return F.log_softmax(logits, dim=1)


def target_scores(logits: torch.Tensor, targets: Sequence[int]) -> torch.Tensor:
    """The score each sample's map explains: its target logit (``±logit`` for single-logit heads)."""
    idx = torch.as_tensor(list(targets), device=logits.device)
    if logits.shape[1] == 1:
        sign = torch.where(idx == 1, 1.0, -1.0).to(logits.dtype)
        return logits[:, 0] * sign
    return logits.gather(1, idx.view(-1, 1))[:, 0]


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` on every parameter, restored on exit (also on error)."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


@contextmanager
def graph_from(layers: Sequence[nn.Module]) -> Iterator[list[torch.Tensor | None]]:
    """Start autograd's graph at the first of ``layers`` to run; yields their captured outputs, in order.

    A layer whose output is not yet part of a graph (the first one, with frozen parameters) hands the
    rest of the network a fresh leaf; a later layer's output is kept as it is. Either way the model
    gets a clone, so an in-place op downstream (DenseNet's ``relu(inplace=True)``) cannot alter the
    captured activation. Each layer must run exactly once per forward.
    """
    if len({id(m) for m in layers}) != len(layers):
        raise ValueError("the same layer is named twice")
    captured: list[torch.Tensor | None] = [None] * len(layers)

    def make_hook(slot: int) -> Callable[[nn.Module, tuple[object, ...], torch.Tensor], torch.Tensor]:
        def hook(_m: nn.Module, _i: tuple[object, ...], out: torch.Tensor) -> torch.Tensor:
            if not isinstance(out, torch.Tensor) or out.dim() != 4:
                raise TypeError(f"a CAM layer must output a [B, C, H, W] tensor, got {type(out).__name__}")
            if captured[slot] is not None:
                raise RuntimeError("a CAM layer ran twice in one forward: choose a layer used once")
            kept = out if out.requires_grad else out.detach().requires_grad_(True)
            captured[slot] = kept
            return kept.clone()
        return hook

    handles = [layer.register_forward_hook(make_hook(i)) for i, layer in enumerate(layers)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def predict(model: nn.Module, x: torch.Tensor, extra: Sequence[torch.Tensor] = ()) -> CamBatch:
    """Prediction only, under ``inference_mode``; each sample's target is its predicted class."""
    with frozen(model), torch.inference_mode():
        log_probs = log_probabilities(model(x, *extra)).float().cpu()
    return CamBatch(log_probs=log_probs, targets=[[p] for p in log_probs.argmax(1).tolist()], cams=None)


def explain_batch(model: nn.Module, layers: Sequence[nn.Module], x: torch.Tensor,
                  targets: Sequence[Sequence[int]], extra: Sequence[torch.Tensor] = (),
                  method: str = "gradcam") -> CamBatch:
    """Predict a batch and compute each sample's maps, for each of its targets, in one forward.

    Args:
        model: The classifier; its forward takes ``(x, *extra)``.
        layers: The target layer (one, for the single-layer methods), or the layers to fuse for
            ``layercam-fusion`` (any order: they are fused at the finest one's resolution).
        x: ``[B, 3, S, S]`` preprocessed images on the model's device.
        targets: Per sample, the class indices to explain, in order; ``[]`` explains the predicted class.
        extra: Further forward inputs (e.g. tabular features), batched like ``x``.
        method: One of :data:`camserve.cam_methods.METHODS`.

    Raises:
        ValueError: Unknown method, wrong number of layers or targets, or a class index out of range.
        TypeError, RuntimeError: A layer that does not output one ``[B, C, H, W]`` map per forward.
    """
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; use one of {', '.join(METHODS)}")
    if not layers or (method != FUSION and len(layers) != 1):
        raise ValueError(f"{method} takes {'one or more layers' if method == FUSION else 'one layer'}, "
                         f"got {len(layers)}")
    if len(targets) != x.shape[0]:
        raise ValueError(f"{len(targets)} target lists for a batch of {x.shape[0]}")
    with frozen(model), graph_from(layers) as captured, torch.enable_grad():
        logits = model(x, *extra)
        acts = [c for c in captured if c is not None]
        if len(acts) != len(layers):
            raise RuntimeError("a CAM layer did not run in the forward")
        log_probs = log_probabilities(logits.detach())
        chosen = resolve_targets(targets, log_probs)
        per_sample: list[list[torch.Tensor]] = [[] for _ in chosen]
        slots = max((len(t) for t in chosen), default=0)
        for slot in range(slots):
            rows = [i for i, t in enumerate(chosen) if len(t) > slot]
            everyone = len(rows) == len(chosen)
            scores = target_scores(logits if everyone else logits[rows], [chosen[i][slot] for i in rows])
            grads = torch.autograd.grad(scores.sum(), acts, retain_graph=slot < slots - 1)
            maps = compute(method, [a.detach() if everyone else a.detach()[rows] for a in acts],
                           [g if everyone else g[rows] for g in grads]).float().cpu()
            for j, i in enumerate(rows):
                per_sample[i].append(maps[j])
    return CamBatch(log_probs=log_probs.float().cpu(), targets=chosen,
                    cams=[torch.stack(m) for m in per_sample])


def resolve_targets(targets: Sequence[Sequence[int]], log_probs: torch.Tensor) -> list[list[int]]:
    """Each sample's classes, the predicted one where none was asked; raises ``ValueError`` if out of range."""
    classes = log_probs.shape[1]
    predicted = log_probs.argmax(1).tolist()
    chosen = [[int(c) for c in t] if len(t) else [p] for t, p in zip(targets, predicted, strict=True)]
    bad = [c for t in chosen for c in t if not 0 <= c < classes]
    if bad:
        raise ValueError(f"class index {bad[0]} out of range for {classes} classes")
    return chosen


def predict_and_explain(model: nn.Module, layer: nn.Module, x: torch.Tensor,
                        targets: Sequence[int | None],
                        extra: Sequence[torch.Tensor] = ()) -> FusedOutput:
    """One Grad-CAM per sample (``None``: the predicted class); :func:`explain_batch` does the work."""
    out = explain_batch(model, [layer], x, [[] if t is None else [t] for t in targets], extra)
    return FusedOutput(log_probs=out.log_probs, targets=[t[0] for t in out.targets],
                       cams=torch.stack([c[0] for c in out.cams or []]))


def normalise(cam: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Scale a raw map to [0, 1]; an all-zero map (no positive evidence) stays zero with max 0."""
    top = float(cam.max()) if cam.numel() else 0.0
    if top <= EPS:
        return torch.zeros_like(cam), 0.0
    return cam / top, top


def upsample(cam: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear upsampling of an ``[h, w]`` map to ``[height, width]``, clamped to [0, 1].

    PIL's float resize (pixel centres aligned, like ``align_corners=False``) rather than
    ``F.interpolate``: on a busy 2-core machine torch's thread pool made this 7x7 -> 224x224 resize
    cost 16 ms instead of 0.2 ms, as much as a small model's forward.
    """
    small = Image.fromarray(cam.detach().cpu().numpy().astype(np.float32), "F")
    up = np.asarray(small.resize((width, height), Image.Resampling.BILINEAR))
    return torch.from_numpy(np.clip(up, 0.0, 1.0))


def input_maps(cams: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """Every raw map of a batch (``[T_i, h, w]`` per sample), each scaled to [0, 1] and upsampled to
    ``size x size``, stacked sample-major into ``[N, size, size]`` (the rows faithfulness scores)."""
    return torch.stack([upsample(normalise(m)[0], size, size) for stack in cams for m in stack])


def focus_score(cam_up: torch.Tensor, mask: torch.Tensor) -> float | None:
    """Share of the map's energy inside a boolean mask of the same size; ``None`` for an empty map."""
    total = float(cam_up.sum())
    if total <= EPS:
        return None
    return float(cam_up[mask].sum()) / total
