"""Build the multimodal demo model ``thyroid_phantom`` (image + clinical fields), each step cached.

    python scripts/build_thyroid_model.py [--force]

1. Data: ``scripts/make_thyroid_phantoms.py`` into ``data/thyroid`` (images, clinical.csv, schema.json),
   skipped when its ``manifest.json`` records the same arguments and generator version. SYNTHETIC data,
   not medical data.
2. Model: ``scripts/train_thyroid.py`` into ``data/models/thyroid_phantom.pt``, skipped when the
   checkpoint exists and its metrics record the same training arguments, data manifest and model file.
3. Archive: ``scripts/archive.py --model-file scripts/demo_models/thyroid_net.py`` into
   ``model_store/thyroid_phantom.mar`` (the tabular schema travels in the checkpoint), skipped when the
   .mar is newer than the checkpoint, the model file and every file of ``camserve/`` and ``handlers/``.

Deterministic: same arguments, same data, same weights (CPU, fixed seeds).
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
if str(REPO) not in sys.path:  # allow `python scripts/build_thyroid_model.py` without installing the package
    sys.path.insert(0, str(REPO))

from scripts import archive, make_thyroid_phantoms, train_thyroid  # noqa: E402
from scripts.cli import positive_int  # noqa: E402

NAME = "thyroid_phantom"
# The training arguments compared against a cached model's metrics (everything that changes the weights).
TRAIN_KEYS = ("epochs", "input_size", "batch_size", "lr", "weight_decay", "branch_lr_scale", "hidden",
              "target_layer", "tabular_dropout", "field_dropout", "hflip", "seed", "threads")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--data", type=Path, default=REPO / "data" / "thyroid", help="data folder (default: %(default)s)")
    a("--n-train", type=positive_int, default=1200, help="training cases (default: %(default)s)")
    a("--n-val", type=positive_int, default=200, help="validation cases (default: %(default)s)")
    a("--n-test", type=positive_int, default=400, help="test cases (default: %(default)s)")
    a("--data-seed", type=int, default=0, help="generator seed (default: %(default)s)")
    a("--size", type=positive_int, default=96, help="image side in pixels (default: %(default)s)")
    a("--checkpoint", type=Path, default=REPO / "data" / "models" / f"{NAME}.pt",
      help="trained checkpoint (default: %(default)s)")
    a("--epochs", type=positive_int, default=6, help="training epochs (default: %(default)s)")
    a("--input-size", type=positive_int, default=96, help="model input side (default: %(default)s)")
    a("--seed", type=int, default=0, help="training seed (default: %(default)s)")
    a("--threads", type=positive_int, default=2, help="CPU threads for training (default: %(default)s)")
    a("--model-file", type=Path, default=train_thyroid.MODEL_FILE, help="model class file (default: %(default)s)")
    a("--model-store", type=Path, default=REPO / "model_store", help="where NAME.mar goes (default: %(default)s)")
    a("--name", default=NAME, help="served model name (default: %(default)s)")
    a("--force", action="store_true", help="redo every step")
    return p


def data_argv(args: argparse.Namespace) -> list[str]:
    return ["--out", str(args.data), "--n-train", str(args.n_train), "--n-val", str(args.n_val),
            "--n-test", str(args.n_test), "--seed", str(args.data_seed), "--size", str(args.size)]


def train_argv(args: argparse.Namespace) -> list[str]:
    return ["--data", str(args.data), "--out", str(args.checkpoint), "--model-file", str(args.model_file),
            "--epochs", str(args.epochs), "--input-size", str(args.input_size), "--seed", str(args.seed),
            "--threads", str(args.threads)]


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def data_current(args: argparse.Namespace) -> bool:
    """The folder's manifest records exactly the arguments (defaults included) this run would use."""
    manifest = read_json(args.data / "manifest.json")
    parsed = vars(make_thyroid_phantoms.build_parser().parse_args(data_argv(args)))
    wanted = {k: v for k, v in parsed.items() if k != "out"}
    return (manifest is not None and manifest.get("version") == make_thyroid_phantoms.GENERATOR_VERSION
            and manifest.get("args") == json.loads(json.dumps(wanted)))


def model_current(args: argparse.Namespace) -> bool:
    """The checkpoint exists and was trained with these arguments, on this data, from this model file."""
    metrics = read_json(train_thyroid.metrics_path(args.checkpoint))
    if not args.checkpoint.is_file() or metrics is None:
        return False
    wanted = vars(train_thyroid.build_parser().parse_args(train_argv(args)))
    have = metrics.get("args", {})
    return (all(have.get(k) == wanted[k] for k in TRAIN_KEYS)
            and metrics.get("data_manifest_sha256") == train_thyroid.sha256(args.data / "manifest.json")
            and metrics.get("model_file_sha256") == train_thyroid.sha256(args.model_file))


def archive_current(args: argparse.Namespace, mar: Path) -> bool:
    """The .mar is newer than the checkpoint, the model file and every source file it packs."""
    if not mar.is_file():
        return False
    sources = [args.checkpoint, args.model_file, *archive.CORE.rglob("*.py"), archive.HANDLER]
    return mar.stat().st_mtime >= max(p.stat().st_mtime for p in sources)


def make_data(args: argparse.Namespace) -> str:
    if not args.force and data_current(args):
        return f"data: {args.data} is up to date (manifest matches), kept"
    if args.data.exists():
        if any(args.data.iterdir()) and not (args.data / "manifest.json").is_file():
            raise SystemExit(f"{args.data} exists and was not written by make_thyroid_phantoms.py: move it away")
        shutil.rmtree(args.data)  # stale files of other arguments must not mix in
    if make_thyroid_phantoms.main(data_argv(args)) != 0:
        raise SystemExit("make_thyroid_phantoms.py failed")
    return f"data: generated {args.data}"


def make_model(args: argparse.Namespace) -> str:
    if not args.force and model_current(args):
        return f"model: {args.checkpoint} is up to date (metrics match the arguments, data and model file), kept"
    start = time.perf_counter()
    if train_thyroid.main(train_argv(args)) != 0:
        raise SystemExit("train_thyroid.py failed")
    return f"model: trained {args.checkpoint} in {time.perf_counter() - start:.1f} s"


def make_archive(args: argparse.Namespace) -> str:
    mar = args.model_store / f"{args.name}.mar"
    if not args.force and archive_current(args, mar):
        return f"archive: {mar} is up to date, kept"
    if archive.main([str(args.checkpoint), "--name", args.name, "--model-store", str(args.model_store),
                     "--model-file", str(args.model_file)]) != 0:
        raise SystemExit("archive.py failed")
    return f"archive: wrote {mar}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    done = [make_data(args), make_model(args), make_archive(args)]
    metrics = read_json(train_thyroid.metrics_path(args.checkpoint)) or {}
    test = metrics.get("test", {})
    print(json.dumps({
        "steps": done, "checkpoint": str(args.checkpoint), "checkpoint_sha256": sha256(args.checkpoint),
        "mar": str(args.model_store / f"{args.name}.mar"), "train_seconds": metrics.get("seconds"),
        "best_epoch": metrics.get("best_epoch"), "test_accuracy": test.get("accuracy"),
        "test_accuracy_tabular_missing": test.get("accuracy_tabular_missing"),
        "test_accuracy_image_blank": test.get("accuracy_image_blank"),
    }))
    for line in done:
        print(line, file=sys.stderr)
    if metrics:
        print(train_thyroid.summary(metrics), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
