"""Train a torchvision classifier from scratch on an ImageFolder tree; write a self-describing checkpoint.

    python scripts/train.py --data-dir DIR --arch ARCH --checkpoint CKPT [--epochs E] [--input-size N]
        [--seed S] [--batch-size B] [--lr LR] [--target-layer L] [--threads T] [--roi-masks MASKS]

``DIR`` holds ``train/``, ``val/`` and (optionally) ``test/``, each with one folder per class; class names
are the sorted folder names of ``train/``. Weights start random (``weights=None``: nothing is downloaded).

Images are decoded and resized with ``camserve.imaging`` (the server's own code), once, and cached in
memory. Augmentation: a random shift of up to ``--max-shift`` pixels, a horizontal flip, and
Hide-and-Seek (``--hide``: each cell of a 4x4 grid blanked with that probability; Singh & Lee, 2017).
The flip suits tasks where left and right carry no label information; use ``--no-hflip`` wherever they
do. The shift and the hiding serve the explanations more than the accuracy: a model that cannot rely on
one spot of the image spreads its evidence over every finding.
Region-of-interest guidance (``--roi-masks``): given a mask per image (say, the lung fields; a folder
that mirrors ``DIR``), the loss adds ``--roi-weight`` times the share of the target layer's Grad-CAM
energy, for the true class, that falls outside the mask. The model then learns to keep its evidence
where the masks say it belongs; images without a mask add no penalty. It costs one extra backward pass
from the logits to the target layer per step.

AdamW with a one-cycle schedule (warm-up, cosine decay); the epoch with the best validation accuracy
(ties: lower validation loss) is kept. Writes ``CKPT`` (arch, class names, input size, mean/std and
target layer travel with the weights) and ``CKPT.metrics.json`` (validation and test metrics, timings,
arguments).

Deterministic: the same arguments, thread count and device give the same weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow `python scripts/train.py` without installing the package
    sys.path.insert(0, str(REPO))

from camserve import cli  # noqa: E402
from camserve.analysis.metrics import confusion_matrix  # noqa: E402
from camserve.archs import DEFAULT_TARGET_LAYERS, SUPPORTED_ARCHS, build_arch, get_module  # noqa: E402
from camserve.cam_methods import METHODS  # noqa: E402
from camserve.checkpoint import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, save_checkpoint  # noqa: E402
from camserve.errors import DataError  # noqa: E402
from camserve.folders import sha256_file, walk  # noqa: E402
from scripts.training import (  # noqa: E402
    Clock,
    capture,
    channel_stats,
    fit,
    load_images,
    load_masks,
    metrics_path,
    normalised,
    outside_share,
    pick_device,
    seed_everything,
)

log = logging.getLogger("train")
SPLITS = ("train", "val", "test")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_data_dir(p, help="folder with train/, val/ and optionally test/, each an ImageFolder tree")
    cli.add(p, "--checkpoint", "--out", type=Path, required=True, metavar="CKPT",
            help="checkpoint to write (.pt); metrics go to CKPT.metrics.json")
    p.add_argument("--arch", required=True, choices=SUPPORTED_ARCHS, help="torchvision architecture")
    p.add_argument("--epochs", type=cli.positive_int, default=10, help="training epochs (default: %(default)s)")
    p.add_argument("--input-size", type=cli.input_side, default=128,
                   help="square input side in pixels (default: %(default)s)")
    p.add_argument("--seed", type=cli.non_negative_int, default=0,
                   help="seed for weights, data order and augmentation (default: %(default)s)")
    p.add_argument("--batch-size", type=cli.positive_int, default=16, help="training batch size (default: %(default)s)")
    p.add_argument("--lr", type=cli.positive_float, default=3e-3,
                   help="peak learning rate: warm-up, then cosine decay (default: %(default)s)")
    p.add_argument("--weight-decay", type=cli.non_negative_float, default=0.05,
                   help="AdamW weight decay (default: %(default)s)")
    p.add_argument("--target-layer", help="CAM layer stored in the checkpoint (default: the arch's own)")
    p.add_argument("--cam-method", choices=METHODS, default="gradcam",
                   help="the map the served model gives when a request names none (default: %(default)s)")
    p.add_argument("--threads", type=cli.positive_int, default=2, help="CPU threads for torch (default: %(default)s)")
    p.add_argument("--max-shift", type=cli.non_negative_int, default=16,
                   help="random shift augmentation, pixels (default: %(default)s)")
    p.add_argument("--hide", type=cli.unit_float, default=0.15,
                   help="Hide-and-Seek: probability of blanking each cell of a 4x4 grid (default: %(default)s)")
    p.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=True,
                   help="random horizontal flips (only where left/right carry no label information)")
    p.add_argument("--norm", choices=("dataset", "imagenet"), default="dataset",
                   help="mean/std from the training images, or ImageNet's (default: %(default)s)")
    p.add_argument("--roi-masks", type=Path, metavar="MASKS",
                   help="region-of-interest masks mirroring --data-dir (MASKS/train/CLASS/NAME.png, white = "
                        "inside): penalise the map's energy outside them")
    p.add_argument("--roi-weight", type=cli.non_negative_float, default=1.0,
                   help="weight of the region-of-interest penalty (default: %(default)s)")
    p.add_argument("--device", default="auto", help="'auto' (CUDA if available), 'cpu' or 'cuda[:N]'")
    return p


@dataclass
class Split:
    """One split, preprocessed: ``x`` is ``[N, 3, S, S]`` (normalised once loaded), ``y`` the class indices;
    with ``--roi-masks``, ``masks`` ``[N, 1, S, S]`` and ``has_mask`` ``[N]``."""

    x: torch.Tensor
    y: torch.Tensor
    paths: list[Path]
    masks: torch.Tensor | None = None
    has_mask: torch.Tensor | None = None


def find_classes(root: Path) -> list[str]:
    """Sorted class folder names of ``root/train``."""
    train = root / "train"
    if not train.is_dir():
        raise DataError(f"{train} does not exist: --data-dir must hold train/, val/ (and test/) folders")
    classes = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"{train} must have at least two class folders, found {classes}")
    return classes


def list_images(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """``(path, class index)`` of every image under ``split_dir/CLASS/``, in class order, then by path."""
    extra = sorted(p.name for p in split_dir.iterdir()
                   if p.is_dir() and not p.name.startswith(".") and p.name not in classes)
    if extra:
        raise DataError(f"{split_dir} has class folders not in train/: {', '.join(extra)}")
    found = walk(split_dir, images_only=True)
    for skipped in found.skipped:
        log.warning("%s/%s left out: %s", split_dir, skipped.rel, skipped.reason)
    items = sorted((classes.index(rel.split("/")[0]), rel) for rel in found.files if "/" in rel)
    if not items:
        raise DataError(f"{split_dir} has no images in class folders")
    return [(split_dir / rel, c) for c, rel in items]


def load_split(items: list[tuple[Path, int]], size: int, desc: str) -> Split:
    """Decode and resize with the server's code; values in [0, 1] until normalised."""
    return Split(load_images([p for p, _ in items], size, desc), torch.tensor([c for _, c in items]),
                 [p for p, _ in items])


def load_data(root: Path, classes: list[str], size: int, norm: str, masks: Path | None = None
              ) -> tuple[dict[str, Split], tuple[float, ...], tuple[float, ...]]:
    """Every split, preprocessed and normalised (with its masks when given), and the mean/std used."""
    if not (root / "val").is_dir():
        raise DataError(f"{root / 'val'} does not exist: the best epoch is chosen on it")
    splits = {s: load_split(list_images(root / s, classes), size, s) for s in SPLITS if (root / s).is_dir()}
    if masks is not None:
        for split in splits.values():
            split.masks, split.has_mask = load_masks(split.paths, root, masks, size)
        if not splits["train"].has_mask.any():
            raise DataError(f"--roi-masks {masks} has no mask for any training image (expected "
                            f"{masks / splits['train'].paths[0].relative_to(root)})")
    mean, std = channel_stats(splits["train"].x) if norm == "dataset" else (IMAGENET_MEAN, IMAGENET_STD)
    for split in splits.values():
        split.x = normalised(split.x, mean, std)
    return splits, mean, std


def augment(x: torch.Tensor, gen: torch.Generator, max_shift: int, hflip: bool,
            hide: float = 0.0, grid: int = 4, masks: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random shift (edge pixels replicated) of up to ``max_shift`` px per axis, a random flip, and
    Hide-and-Seek: each cell of a ``grid`` x ``grid`` partition is set to 0 (the data mean) with
    probability ``hide``. ``masks`` (``[N, 1, H, W]``) are shifted and flipped with their images."""
    channels = x.shape[1]
    if masks is not None:
        x = torch.cat([x, masks], dim=1)
    n, _, h, w = x.shape
    if max_shift:
        padded = F.pad(x, (max_shift,) * 4, mode="replicate")
        offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen).tolist()
        x = torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])
    if hflip:
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    if hide > 0:
        keep = (torch.rand(n, 1, grid, grid, generator=gen) >= hide).float()
        x = torch.cat([x[:, :channels] * F.interpolate(keep, size=(h, w), mode="nearest"), x[:, channels:]], 1)
    return x[:, :channels], (x[:, channels:] if masks is not None else None)


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, classes: list[str], device: torch.device,
             batch_size: int = 128) -> dict[str, Any]:
    """Accuracy, per-class accuracy, confusion matrix (rows: true, columns: predicted) and mean loss."""
    model.eval()
    preds, loss = [], 0.0
    for i in range(0, len(split.y), batch_size):
        logits = model(split.x[i:i + batch_size].to(device)).float().cpu()
        loss += float(F.cross_entropy(logits, split.y[i:i + batch_size], reduction="sum"))
        preds.append(logits.argmax(1))
    pred = torch.cat(preds)
    cm = confusion_matrix(split.y.numpy(), pred.numpy(), len(classes))
    support = cm.sum(1)
    return {"n": len(split.y), "accuracy": float((pred == split.y).float().mean()),
            "loss": loss / len(split.y),
            "per_class_accuracy": {name: float(cm[c, c] / max(int(support[c]), 1)) for c, name in enumerate(classes)},
            "confusion_matrix": cm.tolist()}


def roi_focus(model: nn.Module, layer: str, split: Split, classes: list[str], batch_size: int = 64
              ) -> dict[str, Any]:
    """With masks: the median share of each true-class map's energy inside its mask (cells pooled),
    overall and per class."""
    if split.masks is None or not split.has_mask.any():
        return {}
    model.eval()
    acts, hook = capture(get_module(model, layer))
    shares = []
    try:
        with torch.enable_grad():
            for i in range(0, len(split.y), batch_size):
                sl = slice(i, i + batch_size)
                logits = model(split.x[sl])
                shares.append(outside_share(acts.output, logits, split.y[sl], split.masks[sl]).detach())
    finally:
        hook.remove()
    inside = 1.0 - torch.cat(shares)

    def median(keep: torch.Tensor) -> float | None:
        return round(float(inside[keep].median()), 4) if keep.any() else None

    return {"roi_focus_median": median(split.has_mask), "roi_images": int(split.has_mask.sum()),
            "roi_focus_median_per_class": {c: median(split.has_mask & (split.y == k)) for k, c in enumerate(classes)}}


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train, select the best epoch on validation, write the checkpoint and metrics; returns the metrics."""
    clock = Clock()
    seed_everything(args.seed, args.threads)
    device = pick_device(args.device)
    classes = find_classes(args.data_dir)
    layer = args.target_layer or DEFAULT_TARGET_LAYERS[args.arch]
    model = build_arch(args.arch, len(classes))
    get_module(model, layer)  # a wrong layer fails now, not after training
    splits, mean, std = load_data(args.data_dir, classes, args.input_size, args.norm, args.roi_masks)
    spec = ModelSpec(arch=args.arch, class_names=tuple(classes), num_outputs=len(classes), target_layer=layer,
                     input_size=args.input_size, mean=mean, std=std, cam_method=args.cam_method)
    load_seconds = clock.seconds()

    model.to(device)
    data = splits["train"]
    gen = torch.Generator().manual_seed(args.seed)  # data order and augmentation

    acts, hook = capture(get_module(model, layer))
    guided = data.masks is not None and args.roi_weight > 0

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        x, masks = augment(data.x[idx], gen, args.max_shift, args.hflip, args.hide,
                           masks=data.masks[idx] if guided else None)
        y = data.y[idx].to(device)
        logits = model(x.to(device))
        loss = F.cross_entropy(logits, y)
        if guided:
            outside = outside_share(acts.output, logits, y, masks.to(device))
            flags = data.has_mask[idx].to(device).float()
            loss = loss + args.roi_weight * (outside * flags).sum() / flags.sum().clamp_min(1.0)
        return loss

    result = fit(model, torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay),
                 n_train=len(data.y), batch_size=args.batch_size, epochs=args.epochs, gen=gen, loss_fn=loss_fn,
                 validate=lambda: evaluate(model, splits["val"], classes, device), desc=f"train {args.arch}")
    hook.remove()
    model.load_state_dict(result.state)
    model.to("cpu").eval()
    train_seconds = round(clock.seconds() - load_seconds, 2)
    args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.checkpoint, model, spec, trained_by="scripts/train.py", best_epoch=result.epoch)
    metrics = {
        **spec.to_dict(), "best_epoch": result.epoch, "epochs": args.epochs,
        **{s: evaluate(model, splits[s], classes, torch.device("cpu")) | roi_focus(model, layer, splits[s], classes)
           for s in ("val", "test") if s in splits},
        "roi": None if args.roi_masks is None else {"masks": str(args.roi_masks), "weight": args.roi_weight,
                                                    "train_images_with_mask": int(data.has_mask.sum())},
        "counts": {s: len(v.y) for s, v in splits.items()}, "history": result.history,
        "data_manifest_sha256": manifest_digest(args.data_dir),
        "seconds": clock.seconds(), "cpu_seconds": clock.cpu_seconds(),
        "load_seconds": load_seconds, "train_seconds": train_seconds,
        "device": str(device), "threads": args.threads, "torch": torch.__version__,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    metrics_path(args.checkpoint).write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def manifest_digest(root: Path) -> str | None:
    """SHA-256 of the data set's ``manifest.json``, where it has one (the demo generators write it)."""
    path = root / "manifest.json"
    return sha256_file(path) if path.is_file() else None


def summary(metrics: dict[str, Any]) -> str:
    """A few human-readable lines."""
    guided = metrics.get("roi")
    lines = [f"{metrics['arch']} @ {metrics['input_size']} px, {metrics.get('cam_method', 'gradcam')} at "
             f"{metrics['target_layer']}"
             + (f", guided by {guided['masks']} (weight {guided['weight']:g})" if guided and guided["weight"] else "")
             + f": best epoch {metrics['best_epoch']}/{metrics['epochs']}, {metrics['seconds']:.1f} s wall "
             f"({metrics['train_seconds']:.1f} s training; {metrics['cpu_seconds']:.1f} s CPU over "
             f"{metrics['threads']} threads) on {metrics['device']}"]
    for split in ("val", "test"):
        if split in metrics:
            m = metrics[split]
            per_class = ", ".join(f"{c} {a:.3f}" for c, a in m["per_class_accuracy"].items())
            roi = f"; median share of the map inside the masks {m['roi_focus_median']:.3f}" if "roi_focus_median" in m \
                else ""
            lines.append(f"{split}: accuracy {m['accuracy']:.4f} (n={m['n']}; {per_class}){roi}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.target_layer is not None and not args.target_layer.strip():
        parser.error("--target-layer must not be empty")
    metrics = cli.attempt("train", lambda: train(args))
    if metrics is None:
        return 2
    print(json.dumps({k: metrics[k] for k in ("arch", "input_size", "target_layer", "best_epoch", "seconds")}
                     | {s: metrics[s]["accuracy"] for s in ("val", "test") if s in metrics}
                     | {"checkpoint": str(args.checkpoint), "metrics": str(metrics_path(args.checkpoint))}))
    print(summary(metrics), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
