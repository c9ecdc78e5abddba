"""Train a torchvision classifier from scratch on an image-folder data set; write a camserve checkpoint.

    python scripts/train.py --data DIR --arch ARCH --out CKPT [--epochs E] [--input-size N] [--seed S]
        [--batch-size B] [--lr LR] [--target-layer L] [--threads T]

``DIR`` holds ``train/``, ``val/`` and (optionally) ``test/``, each with one folder per class; class names
are the sorted folder names of ``train/``. Weights start random (``weights=None``: nothing is downloaded).

Images are decoded and resized with ``camserve.imaging`` (the server's own code), once, and cached in
memory. Augmentation: a random shift of up to ``--max-shift`` pixels, a horizontal flip, and
Hide-and-Seek (``--hide``: each cell of a 4x4 grid blanked with that probability; Singh & Lee, 2017).
The flip is label-preserving for the phantoms (lesions fall in either lung and the heart's side carries
no class evidence) but wrong for any task where left and right mean something: use ``--no-hflip``
there. The large shift and the hiding are there for the explanations, not the accuracy: on the phantoms
they moved the Grad-CAM peak onto the lesions far more often (see ``scripts/build_default_model.py``).
AdamW with a one-cycle schedule (warm-up, cosine decay); the epoch with the best validation accuracy
(ties: lower validation loss) is kept. Writes ``CKPT`` (arch, class names, input size, mean/std and
target layer travel with the weights) and ``CKPT.metrics.json`` (validation and test metrics, timings,
arguments).

Deterministic: the same arguments, thread count and device give the same weights.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow `python scripts/train.py` without installing the package
    sys.path.insert(0, str(REPO))

from camserve import imaging  # noqa: E402
from camserve.archs import DEFAULT_TARGET_LAYERS, SUPPORTED_ARCHS, build_arch, get_module  # noqa: E402
from camserve.checkpoint import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, save_checkpoint  # noqa: E402
from camserve.errors import CamserveError  # noqa: E402
from camserve.imaging import decode_image, preprocess  # noqa: E402
from scripts.cli import input_side, non_negative_int, positive_float, positive_int, unit_float  # noqa: E402

log = logging.getLogger("train")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
SPLITS = ("train", "val", "test")
IDENTITY = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


class DataError(Exception):
    """The data directory does not have the expected layout."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder with train/, val/ and optionally test/")
    p.add_argument("--arch", required=True, choices=SUPPORTED_ARCHS, help="torchvision architecture")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write (.pt); metrics go to OUT.metrics.json")
    p.add_argument("--epochs", type=positive_int, default=10, help="training epochs")
    p.add_argument("--input-size", type=input_side, default=128, help="square input side in pixels")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, data order and augmentation")
    p.add_argument("--batch-size", type=positive_int, default=16, help="training batch size")
    p.add_argument("--lr", type=positive_float, default=3e-3, help="peak learning rate (warm-up, then cosine decay)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    p.add_argument("--target-layer", help="Grad-CAM layer stored in the checkpoint (default: the arch's own)")
    p.add_argument("--threads", type=positive_int, default=2, help="CPU threads for torch")
    p.add_argument("--max-shift", type=non_negative_int, default=16, help="random shift augmentation, pixels")
    p.add_argument("--hide", type=unit_float, default=0.15,
                   help="Hide-and-Seek: probability of blanking each cell of a 4x4 grid")
    p.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=True,
                   help="random horizontal flips (only where left/right carry no label information)")
    p.add_argument("--norm", choices=("dataset", "imagenet"), default="dataset",
                   help="mean/std from the training images, or ImageNet's")
    p.add_argument("--device", default="auto", help="'auto' (CUDA if available), 'cpu' or 'cuda[:N]'")
    return p


@dataclass
class Split:
    """One split, preprocessed: ``x`` is ``[N, 3, S, S]`` normalised, ``y`` the class indices."""

    x: torch.Tensor
    y: torch.Tensor
    paths: list[str]


def find_classes(root: Path) -> list[str]:
    """Sorted class folder names of ``root/train``."""
    train = root / "train"
    if not train.is_dir():
        raise DataError(f"{train} does not exist: --data must hold train/, val/ (and test/) folders")
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DataError(f"{train} must have at least two class folders, found {classes}")
    return classes


def list_images(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """``(path, class index)`` of every image under ``split_dir/CLASS/``, in a fixed (sorted) order."""
    extra = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and p.name not in classes)
    if extra:
        raise DataError(f"{split_dir} has class folders not in train/: {', '.join(extra)}")
    items = [(p, i) for i, c in enumerate(classes) if (split_dir / c).is_dir()
             for p in sorted((split_dir / c).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise DataError(f"{split_dir} has no images")
    return items


def load_split(items: list[tuple[Path, int]], size: int, desc: str) -> Split:
    """Decode and resize with the server's code; values in [0, 1] (normalised later by :func:`normalise`)."""
    tensors = [preprocess(decode_image(path.read_bytes(), str(path)), size, *IDENTITY)
               for path, _ in tqdm(items, desc=f"load {desc}", unit="img", leave=False, disable=None)]
    return Split(torch.stack(tensors), torch.tensor([c for _, c in items]), [str(p) for p, _ in items])


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``[N, 3, S, S]`` images, rounded so the checkpoint reads cleanly."""
    x64 = x.double()
    mean = x64.mean(dim=(0, 2, 3))
    std = x64.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


def normalise(split: Split, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """Apply ``preprocess``'s normalisation to a cached split, in place (bit-identical to serving)."""
    split.x = imaging.normalise(split.x, mean, std)


def load_data(root: Path, classes: list[str], size: int, norm: str
              ) -> tuple[dict[str, Split], tuple[float, ...], tuple[float, ...]]:
    """Every split, preprocessed and normalised, and the mean/std used."""
    if not (root / "val").is_dir():
        raise DataError(f"{root / 'val'} does not exist: the best epoch is chosen on it")
    splits = {s: load_split(list_images(root / s, classes), size, s) for s in SPLITS if (root / s).is_dir()}
    mean, std = channel_stats(splits["train"].x) if norm == "dataset" else (IMAGENET_MEAN, IMAGENET_STD)
    for split in splits.values():
        normalise(split, mean, std)
    return splits, mean, std


def augment(x: torch.Tensor, gen: torch.Generator, max_shift: int, hflip: bool,
            hide: float = 0.0, grid: int = 4) -> torch.Tensor:
    """Random shift (edge pixels replicated) of up to ``max_shift`` px per axis, a random flip, and
    Hide-and-Seek: each cell of a ``grid`` x ``grid`` partition is set to 0 (the data mean) with
    probability ``hide``."""
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
        x = x * F.interpolate(keep, size=(h, w), mode="nearest")
    return x


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
    n_classes = len(classes)
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)
    confusion.index_put_((split.y, pred), torch.ones_like(pred), accumulate=True)
    support = confusion.sum(1)
    return {"n": len(split.y), "accuracy": float((pred == split.y).float().mean()),
            "loss": loss / len(split.y),
            "per_class_accuracy": {name: float(confusion[c, c] / max(int(support[c]), 1))
                                   for c, name in enumerate(classes)},
            "confusion_matrix": confusion.tolist()}


def lr_factor(step: int, total: int, warmup: float = 0.2) -> float:
    """One cycle: linear warm-up from 0.1 to 1 over the first ``warmup`` share of the steps, then cosine to 0.

    Unlike ``OneCycleLR`` it is defined for any number of steps, one included.
    """
    warm = max(1, round(warmup * total))
    if step < warm:
        return 0.1 + 0.9 * step / warm
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def fit(model: nn.Module, splits: dict[str, Split], classes: list[str], args: argparse.Namespace,
        device: torch.device) -> tuple[dict[str, torch.Tensor], int, list[dict[str, float]]]:
    """The training loop; returns the best epoch's weights (on validation), its number and the history."""
    train_set = splits["train"]
    steps = math.ceil(len(train_set.y) / args.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, args.epochs * steps))
    gen = torch.Generator().manual_seed(args.seed)  # data order and augmentation
    best, best_state, best_epoch, history = None, {}, 0, []
    bar = tqdm(total=args.epochs * steps, desc=f"train {args.arch}", unit="batch", disable=None)
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(train_set.y), generator=gen)
        total = 0.0
        for i in range(steps):
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            x = augment(train_set.x[idx], gen, args.max_shift, args.hflip, args.hide).to(device)
            loss = F.cross_entropy(model(x), train_set.y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
        val = evaluate(model, splits["val"], classes, device)
        history.append({"epoch": epoch, "train_loss": total / len(train_set.y), "val_accuracy": val["accuracy"],
                        "val_loss": val["loss"]})
        log.info("epoch %d: train loss %.4f, val accuracy %.4f, val loss %.4f",
                 epoch, history[-1]["train_loss"], val["accuracy"], val["loss"])
        if best is None or (val["accuracy"], -val["loss"]) > best:
            best, best_epoch = (val["accuracy"], -val["loss"]), epoch
            best_state = copy.deepcopy(model.state_dict())
    bar.close()
    return best_state, best_epoch, history


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train, select the best epoch on validation, write the checkpoint and metrics; returns the metrics."""
    start, start_cpu = time.perf_counter(), time.process_time()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = pick_device(args.device)
    classes = find_classes(args.data)
    layer = args.target_layer or DEFAULT_TARGET_LAYERS[args.arch]
    torch.manual_seed(args.seed)
    model = build_arch(args.arch, len(classes))
    get_module(model, layer)  # a wrong layer fails now, not after training
    splits, mean, std = load_data(args.data, classes, args.input_size, args.norm)
    spec = ModelSpec(arch=args.arch, class_names=tuple(classes), num_outputs=len(classes), target_layer=layer,
                     input_size=args.input_size, mean=mean, std=std)
    load_seconds = time.perf_counter() - start

    best_state, best_epoch, history = fit(model.to(device), splits, classes, args, device)
    model.load_state_dict(best_state)
    model.to("cpu").eval()
    train_seconds = time.perf_counter() - start - load_seconds
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.out, model, spec, trained_by="scripts/train.py", best_epoch=best_epoch)
    metrics = {
        **spec.to_dict(), "best_epoch": best_epoch, "epochs": args.epochs,
        **{s: evaluate(model, splits[s], classes, torch.device("cpu")) for s in ("val", "test") if s in splits},
        "counts": {s: len(v.y) for s, v in splits.items()}, "history": history,
        "data_manifest_sha256": manifest_digest(args.data),
        "seconds": round(time.perf_counter() - start, 2),
        "cpu_seconds": round(time.process_time() - start_cpu, 2),  # all threads; shows contention
        "load_seconds": round(load_seconds, 2), "train_seconds": round(train_seconds, 2),
        "device": str(device), "threads": args.threads, "torch": torch.__version__,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    metrics_path(args.out).write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def manifest_digest(root: Path) -> str | None:
    """SHA-256 of the data set's ``manifest.json`` (as make_phantoms writes), so caches can tell data apart."""
    path = root / "manifest.json"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def metrics_path(checkpoint: Path) -> Path:
    """Where the metrics of ``checkpoint`` are written: ``CKPT.metrics.json`` beside it."""
    return checkpoint.with_name(checkpoint.name + ".metrics.json")


def summary(metrics: dict[str, Any]) -> str:
    """A few human-readable lines."""
    lines = [f"{metrics['arch']} @ {metrics['input_size']} px, layer {metrics['target_layer']}: "
             f"best epoch {metrics['best_epoch']}/{metrics['epochs']}, {metrics['seconds']:.1f} s wall "
             f"({metrics['train_seconds']:.1f} s training; {metrics['cpu_seconds']:.1f} s CPU over "
             f"{metrics['threads']} threads) on {metrics['device']}"]
    for split in ("val", "test"):
        if split in metrics:
            per_class = ", ".join(f"{c} {a:.3f}" for c, a in metrics[split]["per_class_accuracy"].items())
            lines.append(f"{split}: accuracy {metrics[split]['accuracy']:.4f} (n={metrics[split]['n']}; {per_class})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.target_layer is not None and not args.target_layer.strip():
        parser.error("--target-layer must not be empty")
    try:
        metrics = train(args)
    except (DataError, CamserveError) as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: metrics[k] for k in ("arch", "input_size", "target_layer", "best_epoch", "seconds")}
                     | {s: metrics[s]["accuracy"] for s in ("val", "test") if s in metrics}
                     | {"checkpoint": str(args.out), "metrics": str(metrics_path(args.out))}))
    print(summary(metrics), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
