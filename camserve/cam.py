"""The fused prediction + Grad-CAM pass.

One forward serves both the prediction and the map. Parameters are frozen and the forward hook on the
target layer hands the rest of the network a fresh leaf, so autograd records (and differentiates) only
the part of the graph from the target layer to the logits: an explained batch costs about one forward,
where ``loss.backward()`` through the whole network costs 2-9x (REFERENCE.md).

Each sample of a batch gets its own target: in eval mode samples are independent, so the gradient of
the sum of the per-sample target scores is each sample's own gradient.

Single-logit binary heads (``num_outputs == 1``) score the positive class with ``+logit`` and the
negative class with ``-logit``: the map for a negative prediction explains the negative evidence.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

EPS = 1e-12


@dataclass
class FusedOutput:
    """Result of one batch: everything on the CPU.

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
def graph_from(layer: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Start autograd's graph at ``layer``'s output; yields the list the activation is appended to.

    The hook turns the layer's output into a leaf that requires grad, and returns a clone so that any
    in-place op downstream (DenseNet's ``relu(inplace=True)``) cannot alter the captured activation.
    """
    captured: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> torch.Tensor:
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            raise TypeError(f"the target layer must output a [B, C, H, W] tensor, got {type(out).__name__}")
        if captured:
            raise RuntimeError("the target layer ran twice in one forward: choose a layer used once")
        leaf = out.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf.clone()

    handle = layer.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def predict(model: nn.Module, x: torch.Tensor, extra: Sequence[torch.Tensor] = ()) -> FusedOutput:
    """Prediction only, under ``inference_mode``; targets are the predicted classes."""
    with frozen(model), torch.inference_mode():
        log_probs = log_probabilities(model(x, *extra)).float().cpu()
    return FusedOutput(log_probs=log_probs, targets=log_probs.argmax(1).tolist(), cams=None)


def predict_and_explain(model: nn.Module, layer: nn.Module, x: torch.Tensor,
                        targets: Sequence[int | None],
                        extra: Sequence[torch.Tensor] = ()) -> FusedOutput:
    """Predict a batch and compute each sample's Grad-CAM in the same forward.

    Args:
        model: The classifier; its forward takes ``(x, *extra)``.
        layer: The target layer (a submodule of ``model``).
        x: ``[B, 3, S, S]`` preprocessed images on the model's device.
        targets: Per-sample class to explain; ``None`` explains the predicted class.
        extra: Further forward inputs (e.g. tabular features), batched like ``x``.
    """
    if len(targets) != x.shape[0]:
        raise ValueError(f"{len(targets)} targets for a batch of {x.shape[0]}")
    with frozen(model), graph_from(layer) as captured, torch.enable_grad():
        logits = model(x, *extra)
        if not captured:
            raise RuntimeError("the target layer did not run in the forward")
        log_probs = log_probabilities(logits.detach())
        predicted = log_probs.argmax(1).tolist()
        chosen = [p if t is None else int(t) for t, p in zip(targets, predicted, strict=True)]
        (grads,) = torch.autograd.grad(target_scores(logits, chosen).sum(), captured[0])
        acts = captured[0].detach()
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cams = torch.relu((weights * acts).sum(dim=1))
    return FusedOutput(log_probs=log_probs.float().cpu(), targets=chosen, cams=cams.float().cpu())


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
    up = np.asarray(small.resize((width, height), Image.BILINEAR))
    return torch.from_numpy(np.clip(up, 0.0, 1.0))


def focus_score(cam_up: torch.Tensor, mask: torch.Tensor) -> float | None:
    """Share of the map's energy inside a boolean mask of the same size; ``None`` for an empty map."""
    total = float(cam_up.sum())
    if total <= EPS:
        return None
    return float(cam_up[mask].sum()) / total
