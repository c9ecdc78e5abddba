"""What every camserve trainer shares: images cached with the server's preprocessing, the one-cycle
schedule, the epoch loop that keeps the best validation epoch, and the bookkeeping around it.

Used by the generic trainer (``scripts/train.py``) and the demo's multimodal trainer
(``scripts/demo/train_thyroid.py``); neither carries a copy.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from camserve import imaging
from camserve.imaging import decode_image, preprocess

log = logging.getLogger("train")
IDENTITY = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # mean/std that leave [0, 1] pixels as they are


def load_images(paths: Sequence[Path], size: int, desc: str) -> torch.Tensor:
    """``[N, 3, size, size]`` images in [0, 1], decoded and resized by the server's own code."""
    return torch.stack([preprocess(decode_image(p.read_bytes(), str(p)), size, *IDENTITY)
                        for p in tqdm(paths, desc=f"load {desc}", unit="img", leave=False, disable=None)])


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``[N, 3, S, S]`` images, rounded so the checkpoint reads cleanly."""
    x64 = x.double()
    mean = x64.mean(dim=(0, 2, 3))
    std = x64.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


def normalised(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Cached [0, 1] images normalised exactly as ``preprocess`` does (bit-identical to serving)."""
    return imaging.normalise(x, tuple(mean), tuple(std))


def lr_factor(step: int, total: int, warmup: float = 0.2) -> float:
    """One cycle: linear warm-up from 0.1 to 1 over the first ``warmup`` share of the steps, then cosine to 0.

    Unlike ``OneCycleLR`` it is defined for any number of steps, one included.
    """
    warm = max(1, round(warmup * total))
    if step < warm:
        return 0.1 + 0.9 * step / warm
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def metrics_path(checkpoint: Path) -> Path:
    """Where the metrics of ``checkpoint`` are written: ``CKPT.metrics.json`` beside it."""
    return checkpoint.with_name(checkpoint.name + ".metrics.json")


def seed_everything(seed: int, threads: int) -> None:
    """Fixed thread count and seed, deterministic kernels: the same run gives the same weights."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)


@dataclass
class Clock:
    """Wall and CPU time since creation (CPU time over all threads: it shows contention)."""

    wall: float = field(default_factory=time.perf_counter)
    cpu: float = field(default_factory=time.process_time)

    def seconds(self) -> float:
        return round(time.perf_counter() - self.wall, 2)

    def cpu_seconds(self) -> float:
        return round(time.process_time() - self.cpu, 2)


@dataclass
class Fit:
    """The outcome of :func:`fit`: the best epoch's weights (on validation), its number and the history."""

    state: dict[str, torch.Tensor]
    epoch: int
    history: list[dict[str, float]]


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, *, n_train: int, batch_size: int, epochs: int,
        gen: torch.Generator, loss_fn: Callable[[torch.Tensor], torch.Tensor],
        validate: Callable[[], dict[str, Any]], desc: str, warmup: float = 0.2,
        drop_last: bool = False) -> Fit:
    """The epoch loop: shuffled mini-batches, one-cycle schedule, the best validation epoch kept.

    Args:
        model: Put in train mode for every epoch (``validate`` may switch it to eval).
        optimizer: Its learning rates are the peaks of the one-cycle schedule.
        n_train: Training samples; each epoch visits them in an order drawn from ``gen``.
        batch_size: Samples per step.
        epochs: Passes over the training set.
        gen: The run's generator: data order here, augmentation in ``loss_fn``, in a fixed sequence.
        loss_fn: The training loss of the samples at the given indices.
        validate: ``{"accuracy", "loss", ...}`` on the validation split; the best epoch is the one with
            the highest accuracy, ties broken by the lower loss.
        desc: Progress-bar label.
        warmup: Share of the steps spent warming up.
        drop_last: Skip the last partial batch (a BatchNorm model can fail on a batch of one).
    """
    batch = min(batch_size, n_train)
    steps = max(1, n_train // batch) if drop_last else math.ceil(n_train / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, epochs * steps, warmup))
    best: tuple[float, float] | None = None
    result = Fit({}, 0, [])
    bar = tqdm(total=epochs * steps, desc=desc, unit="batch", disable=None)
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(n_train, generator=gen)
        total, seen = 0.0, 0
        for i in range(steps):
            idx = order[i * batch:(i + 1) * batch]
            loss = loss_fn(idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sched.step()
            total, seen = total + loss.item() * len(idx), seen + len(idx)
            bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
        val = validate()
        result.history.append({"epoch": epoch, "train_loss": round(total / seen, 5),
                               "val_accuracy": val["accuracy"], "val_loss": round(val["loss"], 5)})
        log.info("epoch %d: train loss %.4f, val accuracy %.4f, val loss %.4f",
                 epoch, total / seen, val["accuracy"], val["loss"])
        if best is None or (val["accuracy"], -val["loss"]) > best:
            best, result.epoch = (val["accuracy"], -val["loss"]), epoch
            result.state = copy.deepcopy(model.state_dict())
    bar.close()
    return result


# ---- region-of-interest guidance -------------------------------------------------------------------------

def load_masks(images: Sequence[Path], data_dir: Path, masks_dir: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The region-of-interest mask of each image, from a folder that mirrors the data folder.

    The mask of ``DATA/split/CLASS/name.ext`` is ``MASKS/split/CLASS/name.ext`` or, failing that,
    ``MASKS/split/CLASS/name.png``; white (above half range) is inside. Masks are resized to the input
    side like the images.

    Returns:
        ``[N, 1, size, size]`` masks in {0, 1} (all ones where an image has none) and ``[N]`` flags of
        which images have one.
    """
    masks, found = [], []
    for path in images:
        rel = path.relative_to(data_dir)
        candidates = [masks_dir / rel, (masks_dir / rel).with_suffix(".png")]
        mask = next((c for c in candidates if c.is_file()), None)
        found.append(mask is not None)
        if mask is None:
            masks.append(torch.ones(1, size, size))
            continue
        resized = preprocess(decode_image(mask.read_bytes(), str(mask)), size, *IDENTITY)[:1]
        masks.append((resized > 0.5).float())
    return torch.stack(masks), torch.tensor(found)


@dataclass
class Captured:
    """The output of one layer in the last forward (a forward hook keeps it, graph and all)."""

    output: torch.Tensor | None = None


def capture(layer: nn.Module) -> tuple[Captured, torch.utils.hooks.RemovableHandle]:
    """Keep ``layer``'s output of every forward in the returned holder; remove the handle when done."""
    holder = Captured()

    def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
        holder.output = out

    return holder, layer.register_forward_hook(hook)


def outside_share(acts: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor,
                  eps: float = 1e-6) -> torch.Tensor:
    """Per sample, one minus the share of the target class's Grad-CAM energy that lies inside its mask.

    A map without positive evidence scores 1, like a map entirely outside: a penalty on this share can
    only be lowered by putting evidence inside the mask, never by removing it everywhere.

    The map is Grad-CAM's ``relu(sum_k w_k A_k)`` at the layer whose output is ``acts``, with the channel
    weights ``w_k`` (spatial means of the gradient) held fixed: the share is differentiable through the
    activations, so a penalty on it teaches the layers up to there where to put their evidence, at the
    cost of one extra backward pass from the logits to that layer. ``masks`` (``[B, 1, H, W]`` in {0, 1})
    are pooled to the map's cells, so a cell half inside counts half.
    """
    score = logits.gather(1, targets.view(-1, 1)).sum()
    (grads,) = torch.autograd.grad(score, acts, retain_graph=True)
    cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * acts).sum(dim=1))
    inside = torch.nn.functional.adaptive_avg_pool2d(masks, cam.shape[-2:])[:, 0]
    return 1.0 - (cam * inside).sum(dim=(1, 2)) / (cam.sum(dim=(1, 2)) + eps)
