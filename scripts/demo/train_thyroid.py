"""Train the thyroid demo model (image + clinical fields, one logit) on the synthetic thyroid phantoms.

    python scripts/demo/train_thyroid.py --data-dir data/thyroid --checkpoint data/models/thyroid_phantom.pt

Inputs are built with the server's own code: ``camserve.imaging.decode_image`` / ``preprocess`` for the
images and ``camserve.tabular.TabularSchema.encode`` (DATA/schema.json) for the rows of DATA/clinical.csv,
so what is trained is what is served. Clinical fields are dropped at random during training (whole rows
with ``--tabular-dropout``, single fields with ``--field-dropout``), so the model copes with the missing
values requests carry. Loss: BCE with logits on the ``malignant`` logit; the best epoch on validation is
kept (the loop is ``scripts/training.py``'s, shared with the generic trainer).

Writes the checkpoint (camserve's layout (a) plus ``model_args`` and the ``tabular`` schema, read with
``weights_only=True``) and CKPT.metrics.json: per split, the accuracy with both inputs, with every clinical
field missing and with a blank (mean) image, which shows what each modality adds.
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

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # allow `python scripts/demo/train_thyroid.py` without installing the package
    sys.path.insert(0, str(REPO))

from camserve import cli  # noqa: E402
from camserve.analysis.metrics import confusion_matrix  # noqa: E402
from camserve.archs import get_module  # noqa: E402
from camserve.checkpoint import ModelSpec, load_model_class, save_checkpoint  # noqa: E402
from camserve.clinical_table import ClinicalTable, read_table  # noqa: E402
from camserve.errors import DataError  # noqa: E402
from camserve.folders import sha256_file  # noqa: E402
from camserve.tabular import TabularSchema  # noqa: E402
from scripts.training import (  # noqa: E402
    Clock,
    channel_stats,
    fit,
    load_images,
    metrics_path,
    normalised,
    seed_everything,
)

WARMUP = 0.15  # share of the steps spent warming up (the generic trainer's default is 0.2)
CLASSES = ("benign", "malignant")  # single logit: [negative, positive]
SPLITS = ("train", "val", "test")
MODEL_FILE = Path(__file__).resolve().with_name("thyroid_net.py")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    cli.add_data_dir(p, default=REPO / "data" / "thyroid",
                     help="thyroid_phantoms.py output: train/ val/ test/, clinical.csv, schema.json")
    cli.add(p, "--checkpoint", "--out", type=Path, default=REPO / "data" / "models" / "thyroid_phantom.pt",
            metavar="CKPT", help="checkpoint to write; metrics go to CKPT.metrics.json (default: %(default)s)")
    a("--model-file", type=Path, default=MODEL_FILE, help="file defining the model class (default: %(default)s)")
    a("--epochs", type=cli.positive_int, default=6, help="training epochs (default: %(default)s)")
    a("--input-size", type=cli.input_side, default=96, help="square input side (default: %(default)s)")
    a("--batch-size", type=cli.positive_int, default=16, help="training batch size (default: %(default)s)")
    a("--lr", type=cli.positive_float, default=3e-3, help="peak learning rate (default: %(default)s)")
    a("--weight-decay", type=cli.non_negative_float, default=1e-4, help="AdamW weight decay (default: %(default)s)")
    a("--branch-lr-scale", type=cli.positive_float, default=5.0,
      help="learning-rate multiplier for the clinical branch and the head: with one shared rate the CNN "
           "takes all the signal and the clinical fields are underused (default: %(default)s)")
    a("--hidden", type=cli.positive_int, default=32, help="width of the clinical branch (default: %(default)s)")
    a("--target-layer", default="cnn.layer3",
      help="Grad-CAM layer stored in the checkpoint; layer3 gives a 6x6 map at 96 px (default: %(default)s)")
    a("--tabular-dropout", type=cli.unit_float, default=0.2,
      help="share of training samples seen with every clinical field missing (default: %(default)s)")
    a("--field-dropout", type=cli.unit_float, default=0.1,
      help="share of clinical values additionally dropped, per field (default: %(default)s)")
    a("--hflip", action=argparse.BooleanOptionalAction, default=True, help="random horizontal flips")
    a("--seed", type=cli.non_negative_int, default=0,
      help="seed for weights, order and augmentation (default: %(default)s)")
    a("--threads", type=cli.positive_int, default=2, help="CPU threads for torch (default: %(default)s)")
    return p


@dataclass
class Split:
    """One split: normalised images ``[N, 3, S, S]``, encoded clinical rows ``[N, W]``, labels ``[N]``."""

    x: torch.Tensor
    t: torch.Tensor
    y: torch.Tensor
    paths: list[str]


def load_split(root: Path, split: str, size: int, schema: TabularSchema, clinical: ClinicalTable) -> Split:
    """Decode, resize and encode one split with the serving code (images in [0, 1], normalised later)."""
    items = [(f"{split}/{c}/{p.name}", k) for k, c in enumerate(CLASSES)
             for p in sorted((root / split / c).glob("*.png"))]
    if not items:
        raise DataError(f"{root / split} has no images under {'/ '.join(CLASSES)}/")
    x = load_images([root / rel for rel, _ in items], size, split)
    t = torch.stack([schema.encode(clinical.lookup(rel) or {}) for rel, _ in items])  # no row: all fields missing
    return Split(x, t, torch.tensor([k for _, k in items]), [r for r, _ in items])


def feature_slices(schema: TabularSchema) -> list[slice]:
    """Where each feature's encoding sits in the encoded row."""
    out, start = [], 0
    for f in schema.features:
        out.append(slice(start, start + f.width))
        start += f.width
    return out


def drop_fields(t: torch.Tensor, missing: torch.Tensor, slices: list[slice], gen: torch.Generator,
                row_p: float, field_p: float) -> torch.Tensor:
    """Replace whole rows (``row_p``) and single fields (``field_p``) by their missing-value encoding."""
    n = len(t)
    rows = torch.rand(n, generator=gen) < row_p
    fields = torch.rand(n, len(slices), generator=gen) < field_p
    t = t.clone()
    for j, s in enumerate(slices):
        gone = rows | fields[:, j]
        t[gone, s] = missing[s]
    return t


def augment(x: torch.Tensor, gen: torch.Generator, hflip: bool) -> torch.Tensor:
    """A random horizontal flip per image (the nodule's side carries no label information)."""
    if not hflip:
        return x
    flip = torch.rand(len(x), generator=gen) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, missing: torch.Tensor, ablations: bool = True,
             batch_size: int = 128) -> dict[str, Any]:
    """Accuracy and loss with both inputs; with ``ablations``, also the accuracy with every clinical field
    missing and with a blank image (all zeros after normalisation: the training images' mean)."""
    model.eval()

    def logits(image_blank: bool, tab_missing: bool) -> torch.Tensor:
        out = []
        for i in range(0, len(split.y), batch_size):
            x, t = split.x[i:i + batch_size], split.t[i:i + batch_size]
            out.append(model(torch.zeros_like(x) if image_blank else x,
                             missing.expand_as(t) if tab_missing else t)[:, 0])
        return torch.cat(out)

    y = split.y.float()
    both = logits(False, False)
    pred = (both > 0).long()
    out = {"n": len(y), "accuracy": float((pred == split.y).float().mean()),
           "loss": float(F.binary_cross_entropy_with_logits(both, y)),
           "confusion_matrix": confusion_matrix(split.y.numpy(), pred.numpy(), 2).tolist()}
    if ablations:
        out["accuracy_tabular_missing"] = float(((logits(False, True) > 0).long() == split.y).float().mean())
        out["accuracy_image_blank"] = float(((logits(True, False) > 0).long() == split.y).float().mean())
    return out


def load_data(args: argparse.Namespace) -> tuple[TabularSchema, dict[str, Split], tuple, tuple]:
    """The schema and every split, normalised with the training images' mean/std."""
    try:
        schema = TabularSchema.from_dict(json.loads((args.data_dir / "schema.json").read_text()))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {args.data_dir / 'schema.json'}: {exc}") from exc
    clinical = read_table(args.data_dir / "clinical.csv", schema.names)
    splits = {s: load_split(args.data_dir, s, args.input_size, schema, clinical) for s in SPLITS}
    mean, std = channel_stats(splits["train"].x)
    for split in splits.values():
        split.x = normalised(split.x, mean, std)
    return schema, splits, mean, std


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train, keep the best validation epoch, write checkpoint and metrics; returns the metrics."""
    clock = Clock()
    seed_everything(args.seed, args.threads)
    schema, splits, mean, std = load_data(args)
    model_args = {"tabular_width": schema.width, "hidden": args.hidden}
    model = load_model_class(args.model_file)(**model_args)
    get_module(model, args.target_layer)  # a wrong layer fails now, not after training
    load_seconds = clock.seconds()

    missing, slices = schema.encode({}), feature_slices(schema)
    data = splits["train"]
    cnn = [p for n, p in model.named_parameters() if n.startswith("cnn.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("cnn.")]
    opt = torch.optim.AdamW([{"params": cnn, "lr": args.lr},
                             {"params": rest, "lr": args.lr * args.branch_lr_scale}], weight_decay=args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        x = augment(data.x[idx], gen, args.hflip)
        t = drop_fields(data.t[idx], missing, slices, gen, args.tabular_dropout, args.field_dropout)
        return F.binary_cross_entropy_with_logits(model(x, t)[:, 0], data.y[idx].float())

    result = fit(model, opt, n_train=len(data.y), batch_size=args.batch_size, epochs=args.epochs, gen=gen,
                 loss_fn=loss_fn, validate=lambda: evaluate(model, splits["val"], missing, ablations=False),
                 desc="train thyroid_net", warmup=WARMUP, drop_last=True)  # BatchNorm needs > 1 sample
    model.load_state_dict(result.state)
    model.eval()
    results = {s: evaluate(model, splits[s], missing) for s in ("val", "test")}
    spec = ModelSpec(arch=f"custom:{args.model_file.stem}", class_names=CLASSES, num_outputs=1,
                     target_layer=args.target_layer, input_size=args.input_size, mean=mean, std=std,
                     model_args=model_args, tabular=schema.to_dict())
    args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.checkpoint, model, spec, trained_by="scripts/demo/train_thyroid.py", best_epoch=result.epoch)
    metrics = {
        **spec.to_dict(), "best_epoch": result.epoch, "epochs": args.epochs, **results,
        "counts": {s: len(v.y) for s, v in splits.items()}, "history": result.history,
        "data_manifest_sha256": sha256_file(args.data_dir / "manifest.json"),
        "model_file_sha256": sha256_file(args.model_file),
        "seconds": clock.seconds(), "cpu_seconds": clock.cpu_seconds(), "load_seconds": load_seconds,
        "threads": args.threads, "torch": torch.__version__,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    metrics_path(args.checkpoint).write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def summary(metrics: dict[str, Any]) -> str:
    """A few human-readable lines."""
    lines = [f"thyroid_net @ {metrics['input_size']} px, layer {metrics['target_layer']}: best epoch "
             f"{metrics['best_epoch']}/{metrics['epochs']}, {metrics['seconds']:.1f} s wall "
             f"({metrics['cpu_seconds']:.1f} s CPU over {metrics['threads']} threads)"]
    for split in ("val", "test"):
        m = metrics[split]
        lines.append(f"{split} (n={m['n']}): accuracy {m['accuracy']:.4f} with image + clinical fields; "
                     f"{m['accuracy_tabular_missing']:.4f} with every clinical field missing; "
                     f"{m['accuracy_image_blank']:.4f} with a blank image")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    metrics = cli.attempt("train_thyroid", lambda: train(args))
    if metrics is None:
        return 2
    keys = ("accuracy", "accuracy_tabular_missing", "accuracy_image_blank")
    print(json.dumps({"checkpoint": str(args.checkpoint), "metrics": str(metrics_path(args.checkpoint)),
                      "best_epoch": metrics["best_epoch"], "seconds": metrics["seconds"],
                      "test": {k: metrics["test"][k] for k in keys}}))
    print(summary(metrics), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
