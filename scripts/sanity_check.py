"""Sanity checks of a model's class-activation maps: do they change when the model does?

    python scripts/sanity_check.py CHECKPOINT --data-dir DIR [--limit 16] [--method M] [--check]
        [--max-spearman 0.5] [--max-ssim 0.5] [--max-stages N] [--output-dir OUT]
        [--url URL --model NAME --token-file key_file.json]
        [--permuted-labels --train-dir DIR [--epochs 10] [--train-limit 300]]

1. Model-parameter randomisation, cascading (Adebayo et al. 2018): the checkpoint's parameters are
   re-drawn stage by stage from the head down and, after each stage, every image's map (the original
   model's predicted class, the model's default method unless ``--method``) is compared with the
   original map: Spearman rank correlation and SSIM per stage, pooled over ``--draws`` independent
   randomisations (``camserve.sanity``).
2. Data randomisation (``--permuted-labels``, optional, slow): a fresh copy of the architecture is
   trained on ``--train-dir`` with the labels permuted, and its maps are compared with the original's.

What runs where: the randomised models exist only here (they cannot be served), so the randomised maps
are always computed locally from CHECKPOINT. With ``--url``/``--model`` the *original* maps are the
served model's (through ``camserve.client``, what users see), after checking that they agree with the
checkpoint's own (else the served model is not this checkpoint, and the script stops).

The JSON report goes to stdout (and ``OUT/sanity_check.json``), a short summary to stderr. With
``--check`` the exit status is 1 if, at any stage, the median Spearman correlation or the median SSIM
is above its threshold (the maps did not change enough); 2 for unusable input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, TypeVar

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow `python scripts/sanity_check.py` without installing the package
    sys.path.insert(0, str(REPO))

from camserve import cam as cam_ops  # noqa: E402
from camserve import cli, folders, sanity  # noqa: E402
from camserve.archs import build_arch  # noqa: E402
from camserve.checkpoint import ModelSpec, load_checkpoint, load_model_class  # noqa: E402
from camserve.client import Client  # noqa: E402
from camserve.errors import DataError  # noqa: E402
from camserve.imaging import decode_image, preprocess  # noqa: E402

log = logging.getLogger("sanity_check")
T = TypeVar("T")
AGREEMENT = 0.95  # served vs checkpoint maps: the median Spearman correlation below which they differ


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="the model's checkpoint (any layout archive.py reads)")
    cli.add_data_dir(p, help="images to explain: an ImageFolder tree or a flat folder")
    cli.add(p, "--output-dir", "--out", type=Path, metavar="DIR", help="also write sanity_check.json here")
    p.add_argument("--limit", type=cli.positive_int, default=16, help="images explained (default: %(default)s)")
    p.add_argument("--method", choices=cam_ops.METHODS, help="CAM method (default: the model's)")
    p.add_argument("--model-file", type=Path, help="custom model class file, as for archive.py (else the checkpoint's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the re-draws and the label permutation")
    p.add_argument("--max-stages", type=cli.positive_int, help="stop the cascade after this many stages")
    p.add_argument("--draws", type=cli.positive_int, default=3,
                   help="independent randomisations pooled per stage (default: %(default)s)")
    p.add_argument("--check", action="store_true", help="exit 1 if the maps do not change enough")
    p.add_argument("--max-spearman", type=cli.float_range(-1.0, 1.0), default=0.5,
                   help="highest median Spearman correlation allowed at any stage (default: %(default)s)")
    p.add_argument("--max-ssim", type=cli.float_range(-1.0, 1.0), default=0.5,
                   help="highest median SSIM allowed at any stage (default: %(default)s)")
    served = p.add_argument_group("served model (original maps through the endpoint)")
    cli.add(served, "--url", "--server-url", metavar="URL", help="TorchServe inference API")
    served.add_argument("--model", help="served model name (required with --url)")
    cli.add(served, "--token-file", "--key-file", type=Path, default=cli.DEFAULT_TOKEN_FILE, metavar="FILE",
            help="TorchServe's key file (default: %(default)s)")
    served.add_argument("--timeout", type=cli.seconds, default=60.0, help="seconds per request (default: %(default)s)")
    data = p.add_argument_group("data randomisation")
    data.add_argument("--permuted-labels", action="store_true", help="also train a copy on permuted labels")
    data.add_argument("--train-dir", type=Path, help="ImageFolder tree (class folders) to train that copy on")
    data.add_argument("--epochs", type=cli.positive_int, default=10, help="its epochs (default: %(default)s)")
    data.add_argument("--train-limit", type=cli.positive_int, default=300, help="its images (default: %(default)s)")
    return p


def pick(items: list[T], limit: int) -> list[T]:
    """``limit`` items spread evenly over a sorted list (every class of a tree gets some)."""
    if len(items) <= limit:
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


def load_images(root: Path, spec: ModelSpec, limit: int) -> tuple[list[str], list[bytes], torch.Tensor]:
    """The chosen files, their bytes and their preprocessed ``[N, 3, S, S]`` batch."""
    if not root.is_dir():
        raise DataError(f"--data-dir {str(root)!r} is not a folder")
    files = pick(folders.walk(root, images_only=True).files, limit)
    if not files:
        raise DataError(f"no images under {str(root)!r}")
    raw = [(root / f).read_bytes() for f in files]
    x = torch.stack([preprocess(decode_image(b), spec.input_size, spec.mean, spec.std) for b in raw])
    return files, raw, x


def tabular_inputs(spec: ModelSpec, n: int) -> tuple[torch.Tensor, ...]:
    """Every clinical field missing, as a request without them (image-only models: none): the test is
    about the image map, and the served comparison sends no clinical field either."""
    schema = spec.schema
    return () if schema is None else (schema.encode({}).expand(n, -1).clone(),)


def served_maps(args: argparse.Namespace, raw: list[bytes], targets: list[list[int]], method: str,
                size: int) -> torch.Tensor:
    """The served model's maps of the same images and classes, scaled to [0, 1] at the input size."""
    client = Client.from_key_file(args.token_file, args.url, timeout=args.timeout)
    maps = []
    for image, classes in zip(raw, targets, strict=True):
        answer = client.explain(args.model, image, target=str(classes[0]), explain=method, images="none")
        if answer.explanation is None:
            raise DataError(f"the served model answered without a map for explain={method}")
        maps.append(cam_ops.upsample(torch.tensor(answer.explanation.cam), size, size))
    return torch.stack(maps)


def fresh_copy(spec: ModelSpec) -> torch.nn.Module:
    """An untrained model of the checkpoint's architecture (the architecture's own initialisation)."""
    if spec.model_file:
        return load_model_class(spec.model_file)(**spec.model_args)
    return build_arch(spec.arch, spec.num_outputs)


def permuted_label_run(args: argparse.Namespace, spec: ModelSpec, explained: sanity.Explained,
                       original: torch.Tensor) -> dict[str, Any]:
    """Train a fresh copy on permuted labels and compare its maps with the original's."""
    items = []
    for rel in folders.walk(args.train_dir, images_only=True).files:
        name = folders.match_class(rel.split("/")[0] if "/" in rel else None, spec.class_names)
        if name is not None:
            items.append((rel, spec.class_names.index(name)))
    items = pick(items, args.train_limit)
    if len({label for _, label in items}) < 2:
        raise DataError(f"--train-dir {str(args.train_dir)!r} needs class folders named like the model's classes "
                        f"({', '.join(spec.class_names)})")
    x = torch.stack([preprocess(decode_image((args.train_dir / rel).read_bytes()), spec.input_size, spec.mean,
                                spec.std) for rel, _ in items])
    labels = torch.tensor([label for _, label in items])
    torch.manual_seed(args.seed)
    model, accuracy = sanity.train_on_permuted_labels(fresh_copy(spec), x, labels, tabular_inputs(spec, len(x)),
                                                      epochs=args.epochs, seed=args.seed)
    result = sanity.compare("permuted labels", original, explained.maps(model)).to_dict()
    return {**result, "train_images": len(items), "epochs": args.epochs, "permuted_label_accuracy": round(accuracy, 4)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.url and not args.model:
        raise DataError("--url needs --model, the served model's name")
    if args.permuted_labels and (args.train_dir is None or not args.train_dir.is_dir()):
        raise DataError("--permuted-labels needs --train-dir, an ImageFolder tree with one folder per class")
    model, spec = load_checkpoint(args.checkpoint, model_file=args.model_file)
    method = args.method or spec.cam_method
    layers = spec.fusion_layers if method == cam_ops.FUSION else (spec.target_layer,)
    files, raw, x = load_images(args.data_dir, spec, args.limit)
    extra = tabular_inputs(spec, len(x))
    targets = [[p] for p in cam_ops.predict(model, x, extra).log_probs.argmax(1).tolist()]
    explained = sanity.Explained(x, extra, targets, method, tuple(layers))
    local = explained.maps(model)
    report: dict[str, Any] = {"checkpoint": str(args.checkpoint), "method": method, "layers": list(layers),
                              "images": files, "targets": [t[0] for t in targets], "draws": args.draws}
    original = local
    if args.url:
        original = served_maps(args, raw, targets, method, spec.input_size)
        agreement = sanity.compare("served vs checkpoint", local, original)
        report["served_vs_checkpoint"] = agreement.to_dict()
        if agreement.median_spearman < AGREEMENT:
            raise DataError(f"the served model {args.model!r} does not give the checkpoint's maps (median "
                            f"Spearman {agreement.median_spearman:.3f}): is it this checkpoint, with this method?")
    keep = [i for i in range(len(files)) if float(original[i].max()) > 0]
    report["left_out_all_zero"] = [files[i] for i in range(len(files)) if i not in keep]
    if not keep:
        raise DataError("every original map is all zero: nothing to compare")
    explained = sanity.Explained(x[keep], tuple(e[keep] for e in extra), [targets[i] for i in keep], method,
                                 tuple(layers))
    steps = sanity.cascade(model, explained, original[keep], seed=args.seed, max_stages=args.max_stages,
                           draws=args.draws)
    report["cascade"] = [s.to_dict() for s in steps]
    if args.permuted_labels:
        report["permuted_labels"] = permuted_label_run(args, spec, explained, original[keep])
    report["thresholds"] = {"max_spearman": args.max_spearman, "max_ssim": args.max_ssim}
    failing = [r["randomised"] for r in [*report["cascade"], report.get("permuted_labels")]
               if r and (r["median_spearman"] > args.max_spearman or r["median_ssim"] > args.max_ssim)]
    report["passed"] = not failing
    report["failing"] = failing
    return report


def summary(report: dict[str, Any]) -> str:
    lines = [f"{report['method']} at {', '.join(report['layers'])}, {len(report['targets'])} images "
             f"({len(report['left_out_all_zero'])} left out: all-zero map), {report['draws']} draws pooled"]
    if "served_vs_checkpoint" in report:
        lines.append(f"served maps vs checkpoint maps: median Spearman "
                     f"{report['served_vs_checkpoint']['median_spearman']:.3f}")
    lines.append(f"{'randomised (cumulative, head first)':40} {'Spearman':>9} {'SSIM':>7} {'flat':>5}")
    rows = [*report["cascade"], *([report["permuted_labels"]] if "permuted_labels" in report else [])]
    for r in rows:
        lines.append(f"{r['randomised']:40} {r['median_spearman']:9.3f} {r['median_ssim']:7.3f} {r['flat_maps']:5d}")
    if "permuted_labels" in report:
        lines.append(f"(the permuted-label copy reached {report['permuted_labels']['permuted_label_accuracy']:.2f} "
                     "accuracy on the labels it memorised)")
    t = report["thresholds"]
    verdict = "PASS" if report["passed"] else f"FAIL at {', '.join(report['failing'])}"
    lines.append(f"{verdict}: every median must be <= {t['max_spearman']} (Spearman) and <= {t['max_ssim']} (SSIM)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    report = cli.attempt("sanity_check", lambda: run(args))
    if report is None:
        return 2
    text = json.dumps(report, indent=1)
    if args.output_dir:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / "sanity_check.json").write_text(text)
    print(text)
    print(summary(report), file=sys.stderr)
    return 1 if args.check and not report["passed"] else 0


if __name__ == "__main__":
    sys.exit(main())
