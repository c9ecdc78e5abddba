"""Build the demo models that ``make demo`` serves, every step cached and deterministic (``make model``).

    python scripts/demo/build.py                 # both: chest_phantom, then thyroid_phantom
    python scripts/demo/build.py chest [--epochs 1 --n-per-class 6 ...]
    python scripts/demo/build.py thyroid [--force ...]

Each model is three steps: SYNTHETIC data (a generator of this folder), a checkpoint (a trainer) and a
TorchServe archive (``scripts/archive.py``). A step is skipped when its output is there, unchanged, and
was made from the same inputs: its cache key is the SHA-256 of the step's arguments and of every file
it reads or runs -- the generator for the data; the data's manifest, the trainer, the model file and the
camserve modules that build and preprocess the model for the checkpoint; the checkpoint, the archive
script, the handler and the camserve modules the archive packs for the archive. The key
and the output's own digest are kept in ``OUTPUT.build.json`` beside each output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # allow `python scripts/demo/build.py` without installing the package
    sys.path.insert(0, str(REPO))

from camserve import cli  # noqa: E402
from camserve.archs import SUPPORTED_ARCHS  # noqa: E402
from camserve.cam_methods import METHODS  # noqa: E402
from camserve.folders import sha256_file, sha256_text  # noqa: E402
from scripts import archive, train, training  # noqa: E402
from scripts.demo import chest_phantoms, thyroid_phantoms, train_thyroid  # noqa: E402
from scripts.training import Clock, metrics_path  # noqa: E402

CORE = REPO / "camserve"
# What the trainers read from camserve besides the scripts themselves: model building, preprocessing,
# the checkpoint format, the tabular encoding, the CSV reader and the metrics.
# The chest model's recipe (the measurements behind it are in the README's "The default models").
CHEST = {"n_per_class": 400, "size": 128, "epochs": 8, "input_size": 128, "target_layer": "layer2", "lr": 1e-3,
         "batch_size": 32, "max_shift": 8, "hide": 0.0, "roi_weight": 0.0, "cam_method": "gradcam"}
TRAINING_CORE = [CORE / f for f in ("archs.py", "imaging.py", "checkpoint.py", "tabular.py", "folders.py",
                                    "clinical_table.py", "analysis/metrics.py")]


@dataclass
class Step:
    """One cached step: ``run(argv)`` writes ``output`` (a folder with a manifest.json, or a file)."""

    kind: str
    output: Path
    argv: list[str]
    inputs: list[Path]
    run: Callable[[list[str]], int]

    @property
    def stamp(self) -> Path:
        return self.output.with_name(self.output.name + ".build.json")

    def fingerprint(self) -> str | None:
        """The digest of what the step wrote (a folder's manifest stands for the folder)."""
        target = self.output / "manifest.json" if self.kind == "data" else self.output
        return sha256_file(target) if target.is_file() else None

    def key(self) -> str:
        files = {str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p): sha256_file(p)
                 for p in sorted(set(self.inputs))}
        return sha256_text(json.dumps({"argv": self.argv, "files": files}, sort_keys=True))

    def current(self) -> bool:
        try:
            stamp = json.loads(self.stamp.read_text())
        except (OSError, ValueError):
            return False
        made = self.fingerprint()
        return made is not None and stamp.get("output") == made and stamp.get("key") == self.key()

    def make(self, force: bool) -> str:
        """Run the step unless it is current; returns what happened, for people."""
        if not force and self.current():
            return f"{self.kind}: {self.output} is up to date, kept"
        clock = Clock()
        if self.kind == "data" and self.output.exists():
            if any(self.output.iterdir()) and not (self.output / "manifest.json").is_file():
                raise SystemExit(f"{self.output} exists and was not written by a demo generator: move it away")
            shutil.rmtree(self.output)  # files of other arguments must not mix in
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the build's own summary only
            code = self.run(self.argv)
        if code != 0:
            raise SystemExit(f"the {self.kind} step for {self.output} failed")
        self.stamp.write_text(json.dumps({"key": self.key(), "output": self.fingerprint(), "argv": self.argv},
                                         indent=1) + "\n")
        return f"{self.kind}: made {self.output} in {clock.seconds():.1f} s ({clock.cpu_seconds():.1f} s CPU)"


def module_file(module: Any) -> Path:
    return Path(module.__file__).resolve()


def chest_data_step(output: Path, n_per_class: int, seed: int, size: int, fractions: str) -> Step:
    argv = ["--output-dir", str(output), "--n-per-class", str(n_per_class), "--seed", str(seed),
            "--size", str(size), "--split-fractions", fractions]
    return Step("data", output, argv, [module_file(chest_phantoms)], chest_phantoms.main)


def chest_steps(args: argparse.Namespace) -> list[Step]:
    fit = ["--data-dir", str(args.data_dir), "--arch", args.arch, "--checkpoint", str(args.checkpoint),
           "--epochs", str(args.epochs), "--input-size", str(args.input_size), "--seed", str(args.seed),
           "--target-layer", args.target_layer, "--threads", str(args.threads), "--lr", str(args.lr),
           "--batch-size", str(args.batch_size),
           "--max-shift", str(args.max_shift), "--hide", str(args.hide), "--cam-method", args.cam_method,
           # the lung masks guide the maps with a weight above 0, and measure them either way
           "--roi-masks", str(args.data_dir / "masks" / "lungs"), "--roi-weight", str(args.roi_weight)]
    trainer = [module_file(train), module_file(training), *TRAINING_CORE]
    return [chest_data_step(args.data_dir, args.n_per_class, args.data_seed, args.size, "0.7,0.15,0.15"),
            Step("model", args.checkpoint, fit, [args.data_dir / "manifest.json", *trainer], train.main),
            archive_step(args, [])]


def eval_steps(args: argparse.Namespace) -> list[Step]:
    return [chest_data_step(args.data_dir, args.n_per_class, args.data_seed, args.size, "0,0,1")]


def thyroid_steps(args: argparse.Namespace) -> list[Step]:
    data = ["--output-dir", str(args.data_dir), "--n-train", str(args.n_train), "--n-val", str(args.n_val),
            "--n-test", str(args.n_test), "--seed", str(args.data_seed), "--size", str(args.size)]
    fit = ["--data-dir", str(args.data_dir), "--checkpoint", str(args.checkpoint),
           "--model-file", str(args.model_file), "--epochs", str(args.epochs), "--input-size", str(args.input_size),
           "--seed", str(args.seed), "--threads", str(args.threads)]
    trainer = [module_file(train_thyroid), module_file(training), args.model_file, *TRAINING_CORE]
    return [Step("data", args.data_dir, data, [module_file(thyroid_phantoms)], thyroid_phantoms.main),
            Step("model", args.checkpoint, fit, [args.data_dir / "manifest.json", *trainer], train_thyroid.main),
            archive_step(args, ["--model-file", str(args.model_file)])]


def archive_step(args: argparse.Namespace, extra: list[str]) -> Step:
    argv = [str(args.checkpoint), "--name", args.name, "--model-store", str(args.model_store), *extra]
    packed = [*archive.serving_modules(), archive.HANDLER, module_file(archive)]
    model_file = [Path(extra[1])] if extra else []
    return Step("archive", args.model_store / f"{args.name}.mar", argv, [args.checkpoint, *packed, *model_file],
                archive.main)


def add_common(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--checkpoint", type=Path, default=REPO / "data" / "models" / f"{name}.pt",
                   help="trained checkpoint (default: %(default)s)")
    p.add_argument("--model-store", type=Path, default=REPO / "model_store",
                   help="where NAME.mar goes (default: %(default)s)")
    p.add_argument("--name", default=name, help="served model name (default: %(default)s)")
    p.add_argument("--data-seed", type=cli.non_negative_int, default=0, help="generator seed (default: %(default)s)")
    p.add_argument("--seed", type=cli.non_negative_int, default=0, help="training seed (default: %(default)s)")
    p.add_argument("--threads", type=cli.positive_int, default=2,
                   help="CPU threads for training (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="redo every step")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="model", metavar="{chest,thyroid,eval}",
                           help="build one model (default: both, with their defaults)")
    chest = sub.add_parser("chest", help="chest_phantom: chest-radiograph phantoms, a torchvision CNN",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    cli.add_data_dir(chest, default=REPO / "data" / "phantoms", help="phantom folder")
    chest.add_argument("--n-per-class", type=cli.positive_int, default=CHEST["n_per_class"],
                       help="phantoms per class, all splits")
    chest.add_argument("--size", type=cli.input_side, default=CHEST["size"], help="phantom side in pixels")
    chest.add_argument("--arch", choices=SUPPORTED_ARCHS, default="resnet18", help="architecture")
    chest.add_argument("--epochs", type=cli.positive_int, default=CHEST["epochs"], help="training epochs")
    chest.add_argument("--input-size", type=cli.input_side, default=CHEST["input_size"], help="model input side")
    chest.add_argument("--target-layer", default=CHEST["target_layer"], help="Grad-CAM layer stored in the checkpoint")
    chest.add_argument("--cam-method", choices=METHODS, default=CHEST["cam_method"], help="the served map")
    chest.add_argument("--lr", type=cli.positive_float, default=CHEST["lr"], help="peak learning rate")
    chest.add_argument("--batch-size", type=cli.positive_int, default=CHEST["batch_size"], help="training batch size")
    chest.add_argument("--max-shift", type=cli.non_negative_int, default=CHEST["max_shift"],
                       help="random shift augmentation, pixels")
    chest.add_argument("--hide", type=cli.unit_float, default=CHEST["hide"], help="Hide-and-Seek probability")
    chest.add_argument("--roi-weight", type=cli.non_negative_float, default=CHEST["roi_weight"],
                       help="lung-mask guidance of the maps (0: none; the model then learns from labels alone)")
    add_common(chest, "chest_phantom")
    held_out = sub.add_parser("eval", help="fresh chest phantoms for make evaluate-cam: another seed, test split only",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    cli.add_data_dir(held_out, default=REPO / "data" / "phantoms_eval", help="phantom folder")
    held_out.add_argument("--n-per-class", type=cli.positive_int, default=100, help="phantoms per class")
    held_out.add_argument("--size", type=cli.input_side, default=CHEST["size"], help="phantom side in pixels")
    held_out.add_argument("--data-seed", type=cli.non_negative_int, default=1,
                          help="generator seed; the training set uses 0")
    held_out.add_argument("--force", action="store_true", help="redo the step")
    thyroid = sub.add_parser("thyroid", help="thyroid_phantom: ultrasound-like phantoms + clinical table",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    cli.add_data_dir(thyroid, default=REPO / "data" / "thyroid", help="data folder")
    thyroid.add_argument("--n-train", type=cli.positive_int, default=1200, help="training cases")
    thyroid.add_argument("--n-val", type=cli.positive_int, default=200, help="validation cases")
    thyroid.add_argument("--n-test", type=cli.positive_int, default=400, help="test cases")
    thyroid.add_argument("--size", type=cli.input_side, default=96, help="image side in pixels")
    thyroid.add_argument("--epochs", type=cli.positive_int, default=6, help="training epochs")
    thyroid.add_argument("--input-size", type=cli.input_side, default=96, help="model input side")
    thyroid.add_argument("--model-file", type=Path, default=train_thyroid.MODEL_FILE, help="model class file")
    add_common(thyroid, "thyroid_phantom")
    return p


RECIPES = {"chest": (chest_steps, train.summary), "thyroid": (thyroid_steps, train_thyroid.summary)}


def build(args: argparse.Namespace) -> dict[str, Any]:
    """Run one model's steps (or the held-out data's); returns its summary (printed as one JSON line)."""
    if args.model == "eval":
        step = eval_steps(args)[0]
        done = step.make(args.force)
        print(done, file=sys.stderr)
        return {"name": "eval", "steps": [done], "data": str(args.data_dir), "manifest_sha256": step.fingerprint()}
    steps_for, summary = RECIPES[args.model]
    done = [step.make(args.force) for step in steps_for(args)]
    metrics = json.loads(metrics_path(args.checkpoint).read_text())
    for line in done:
        print(line, file=sys.stderr)
    print(summary(metrics), file=sys.stderr)
    test = metrics.get("test", {})
    return {"name": args.name, "steps": done, "checkpoint": str(args.checkpoint),
            "checkpoint_sha256": sha256_file(args.checkpoint), "mar": str(args.model_store / f"{args.name}.mar"),
            "train_seconds": metrics.get("seconds"), "train_cpu_seconds": metrics.get("cpu_seconds"),
            "best_epoch": metrics.get("best_epoch"), "val_accuracy": metrics.get("val", {}).get("accuracy"),
            "test_accuracy": test.get("accuracy"),
            **{k: test[k] for k in ("accuracy_tabular_missing", "accuracy_image_blank") if k in test}}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    clock = Clock()
    runs = [args] if args.model else [parser.parse_args([m]) for m in RECIPES]
    for run in runs:
        print(json.dumps(build(run)), flush=True)
    print(f"build: {len(runs)} model(s) in {clock.seconds():.1f} s ({clock.cpu_seconds():.1f} s CPU in this "
          "process)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
