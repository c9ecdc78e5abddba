"""Build the default model that ``make demo`` serves, each step cached and deterministic (``make model``).

    python scripts/build_default_model.py [--force]

1. Phantoms: ``scripts/make_phantoms.py`` into ``data/phantoms``, skipped when its ``manifest.json``
   records the same arguments and generator version. SYNTHETIC data, not medical data.
2. Model: ``scripts/train.py`` into ``data/models/chest_phantom.pt``, skipped when the checkpoint exists
   and its metrics file records the same training arguments and the same data manifest.
3. Archive: ``scripts/archive.py`` into ``model_store/chest_phantom.mar``, skipped when the .mar is newer
   than the checkpoint and than every file of ``camserve/`` and ``handlers/`` it packs.

A step's output is also redone when the script that makes it (generator, trainer) is newer than it.

The defaults are the configuration that meets issue 3's bars (see ``model_store/README.md`` for the
measured figures): resnet18 from scratch at 128 px with Grad-CAM on ``layer3`` (an 8x8 map; ``layer4``
would give 4x4).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow `python scripts/build_default_model.py` without installing the package
    sys.path.insert(0, str(REPO))

from camserve.archs import SUPPORTED_ARCHS  # noqa: E402
from scripts import archive, make_phantoms, train  # noqa: E402
from scripts.cli import positive_int  # noqa: E402

NAME = "chest_phantom"
# The training arguments compared against a cached model's metrics (everything that changes the weights);
# those not passed here are train.py's defaults, so changing a default there retrains.
TRAIN_KEYS = ("arch", "epochs", "input_size", "seed", "batch_size", "lr", "weight_decay", "target_layer",
              "threads", "max_shift", "hide", "hflip", "norm")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO / "data" / "phantoms", help="phantom folder")
    p.add_argument("--n-per-class", type=positive_int, default=400, help="phantoms per class, all splits")
    p.add_argument("--data-seed", type=int, default=0, help="phantom generator seed")
    p.add_argument("--size", type=positive_int, default=128, help="phantom side in pixels")
    p.add_argument("--checkpoint", type=Path, default=REPO / "data" / "models" / f"{NAME}.pt",
                   help="trained checkpoint")
    p.add_argument("--arch", choices=SUPPORTED_ARCHS, default="resnet18", help="architecture")
    p.add_argument("--epochs", type=positive_int, default=10, help="training epochs")
    p.add_argument("--input-size", type=positive_int, default=128, help="model input side")
    p.add_argument("--target-layer", default="layer3", help="Grad-CAM layer stored in the checkpoint")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--threads", type=positive_int, default=2, help="CPU threads for training")
    p.add_argument("--model-store", type=Path, default=REPO / "model_store", help="where NAME.mar goes")
    p.add_argument("--name", default=NAME, help="served model name")
    p.add_argument("--force", action="store_true", help="redo every step")
    return p


def phantom_argv(args: argparse.Namespace) -> list[str]:
    return ["--out", str(args.data), "--n-per-class", str(args.n_per_class), "--seed", str(args.data_seed),
            "--size", str(args.size)]


def train_argv(args: argparse.Namespace) -> list[str]:
    return ["--data", str(args.data), "--arch", args.arch, "--out", str(args.checkpoint),
            "--epochs", str(args.epochs), "--input-size", str(args.input_size), "--seed", str(args.seed),
            "--target-layer", args.target_layer, "--threads", str(args.threads)]


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def phantoms_current(args: argparse.Namespace) -> bool:
    """The folder's manifest records exactly the arguments (defaults included) this run would use."""
    manifest = read_json(args.data / "manifest.json")
    wanted = {k: v for k, v in vars(make_phantoms.build_parser().parse_args(phantom_argv(args))).items()
              if k != "out"}
    return (manifest is not None and manifest.get("version") == make_phantoms.GENERATOR_VERSION
            and json.loads(json.dumps(manifest.get("args"))) == json.loads(json.dumps(wanted))
            and newer_than(args.data / "manifest.json", [Path(make_phantoms.__file__)]))


def model_current(args: argparse.Namespace) -> bool:
    """The checkpoint exists and was trained with these arguments on this exact data manifest."""
    metrics = read_json(train.metrics_path(args.checkpoint))
    if not args.checkpoint.is_file() or metrics is None:
        return False
    wanted = vars(train.build_parser().parse_args(train_argv(args)))
    have = metrics.get("args", {})
    return (all(have.get(k) == wanted[k] for k in TRAIN_KEYS)
            and metrics.get("data_manifest_sha256") == train.manifest_digest(args.data)
            and newer_than(args.checkpoint, [Path(train.__file__)]))


def archive_current(args: argparse.Namespace, mar: Path) -> bool:
    """The .mar is newer than the checkpoint and every source file it packs."""
    return newer_than(mar, [args.checkpoint, *archive.CORE.rglob("*.py"), archive.HANDLER])


def newer_than(target: Path, sources: list[Path]) -> bool:
    """Make's rule: ``target`` exists and is at least as new as every source (a changed generator,
    trainer or handler invalidates what it produced, even when the arguments are the same)."""
    return target.is_file() and target.stat().st_mtime >= max(p.stat().st_mtime for p in sources)


def make_data(args: argparse.Namespace) -> str:
    if not args.force and phantoms_current(args):
        return f"phantoms: {args.data} is up to date (manifest matches), kept"
    if args.data.exists():
        if any(args.data.iterdir()) and not (args.data / "manifest.json").is_file():
            raise SystemExit(f"{args.data} exists and was not written by make_phantoms.py: move it away")
        shutil.rmtree(args.data)  # stale files of other arguments must not mix in
    if make_phantoms.main(phantom_argv(args)) != 0:
        raise SystemExit("make_phantoms.py failed")
    return f"phantoms: generated {args.data}"


def make_model(args: argparse.Namespace) -> str:
    if not args.force and model_current(args):
        return f"model: {args.checkpoint} is up to date (metrics match the arguments and data), kept"
    start = time.perf_counter()
    if train.main(train_argv(args)) != 0:
        raise SystemExit("train.py failed")
    return f"model: trained {args.checkpoint} in {time.perf_counter() - start:.1f} s"


def make_archive(args: argparse.Namespace) -> str:
    mar = args.model_store / f"{args.name}.mar"
    if not args.force and archive_current(args, mar):
        return f"archive: {mar} is up to date, kept"
    if archive.main([str(args.checkpoint), "--name", args.name, "--model-store", str(args.model_store)]) != 0:
        raise SystemExit("archive.py failed")
    return f"archive: wrote {mar}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    done = [make_data(args), make_model(args), make_archive(args)]
    metrics = read_json(train.metrics_path(args.checkpoint)) or {}
    print(json.dumps({
        "steps": done, "checkpoint": str(args.checkpoint), "checkpoint_sha256": sha256(args.checkpoint),
        "mar": str(args.model_store / f"{args.name}.mar"),
        "train_seconds": metrics.get("seconds"), "best_epoch": metrics.get("best_epoch"),
        "val_accuracy": metrics.get("val", {}).get("accuracy"),
        "test_accuracy": metrics.get("test", {}).get("accuracy"),
    }))
    for line in done:
        print(line, file=sys.stderr)
    print(train.summary(metrics), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
