"""Package a classifier checkpoint as a TorchServe .mar served by the camserve handler.

    python scripts/archive.py CHECKPOINT --name NAME [--arch A] [--classes a,b,c]
        [--target-layer DOTTED] [--cam-method M] [--input-size N] [--version V] [--model-store DIR]
        [--model-file model.py [--model-args JSON] [--tabular-schema schema.json]]
        [--batch-size 8] [--max-batch-delay 5] [--workers N|auto] [--threads N]
        [--channels-last] [--autocast bf16|fp16] [--render-threads N]

The checkpoint is validated here (weights only, architecture, keys, head size, target layer, one
explained forward), so a bad one fails now with what to do, never at the first request. The .mar holds
the weights with their description, the handler, the modules of ``camserve`` the handler imports (and
nothing else of the repository), and the model-config YAML (batching, workers, camserve's settings;
see ``docs/serving.md``).
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow `python scripts/archive.py` without installing the package
    sys.path.insert(0, str(REPO))

from camserve import cam as cam_ops  # noqa: E402
from camserve.archs import get_module  # noqa: E402
from camserve.checkpoint import ModelSpec, load_checkpoint, save_checkpoint  # noqa: E402
from camserve.cli import class_list, int_range, non_negative_int, positive_int  # noqa: E402
from camserve.errors import CheckpointError  # noqa: E402
from camserve.explainer import AUTOCAST_DTYPES  # noqa: E402

log = logging.getLogger("archive")
HANDLER = REPO / "handlers" / "camserve_handler.py"
CORE = REPO / "camserve"
WEIGHTS_NAME = "weights.pt"
MAX_RESPONSE_BYTES = 16_000_000  # below config.properties' max_response_size (16 MiB)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="checkpoint file (.pt/.pth), read with weights_only=True")
    p.add_argument("--name", required=True, help="model name, as in /predictions/NAME")
    p.add_argument("--arch", help="torchvision architecture (overrides the checkpoint's)")
    p.add_argument("--classes", type=class_list, help="class names, comma-separated, in head order")
    p.add_argument("--target-layer", help="dotted module name for Grad-CAM (default: per-arch map)")
    p.add_argument("--cam-method", choices=cam_ops.METHODS,
                   help="the map a request gets when it names none (default: the checkpoint's, or gradcam)")
    p.add_argument("--fusion-layers", metavar="L1,L2,...",
                   help="comma-separated dotted layers fused by layercam-fusion (default: per-arch map, or "
                        "one layer per map size, the three coarsest)")
    p.add_argument("--input-size", type=positive_int, help="square input side (default: checkpoint's, or 224)")
    p.add_argument("--version", default="1.0", help="model version")
    p.add_argument("--model-store", type=Path, default=REPO / "model_store", help="where NAME.mar is written")
    p.add_argument("--model-file", type=Path,
                   help="custom model: a .py file defining one nn.Module class (replaces --arch)")
    p.add_argument("--model-args", type=json.loads, help="JSON kwargs for the custom class (else checkpoint's)")
    p.add_argument("--tabular-schema", type=Path, help="JSON schema of the tabular features of a multimodal model")
    p.add_argument("--batch-size", type=positive_int, default=8, help="TorchServe dynamic batch size")
    p.add_argument("--max-batch-delay", type=non_negative_int, default=5,
                   help="ms TorchServe waits to fill a batch (a lone client pays it on every request)")
    p.add_argument("--workers", type=workers_arg, default="1",
                   help="workers per model, or 'auto': one per GPU (two when there are 8+ cores per GPU), "
                        "one on a CPU-only machine (resolved on the machine that archives)")
    p.add_argument("--threads", type=positive_int,
                   help="torch threads per CPU worker (default: the cores divided by the workers)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format (faster GPU convs)")
    p.add_argument("--autocast", choices=sorted(AUTOCAST_DTYPES),
                   help="mixed-precision forward on CUDA (maps are still combined in float32)")
    p.add_argument("--render-threads", type=int_range(0, 64), default=0,
                   help="threads that render a batch's images (0: min(4, cores))")
    p.add_argument("--response-timeout", type=positive_int, default=120, help="seconds per batch")
    return p


def workers_arg(text: str) -> str:
    """A worker count, or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    return str(positive_int(text))


def resolve_workers(value: str) -> int:
    """``auto``: one worker per GPU (two with 8+ cores per GPU: decoding is per worker), else one."""
    if value != "auto":
        return int(value)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not gpus:
        return 1  # on a CPU one worker with every core beats several sharing them
    return gpus * (2 if (os.cpu_count() or 1) >= 8 * gpus else 1)


def serving_modules(handler: Path = HANDLER, package: Path = CORE) -> list[Path]:
    """The files of ``camserve`` the handler imports, directly or through each other (and ``__init__``)."""
    found: set[Path] = {package / "__init__.py"}
    todo = [handler]
    while todo:
        tree = ast.parse(todo.pop().read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "camserve":
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.split(".")[0] == "camserve"]
            for name in names:
                path = package.parent / (name.replace(".", "/") + ".py")
                if path.is_file() and path not in found:
                    found.add(path)
                    todo.append(path)
    return sorted(found)


def validate(path: Path, args: argparse.Namespace) -> tuple[torch.nn.Module, ModelSpec]:
    """Load, check and explain one dummy input; raise ``CheckpointError`` on any mismatch."""
    tabular = None
    if args.tabular_schema:
        try:
            tabular = json.loads(args.tabular_schema.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read the tabular schema {args.tabular_schema}: {exc}") from exc
    model, spec = load_checkpoint(path, arch=args.arch, class_names=args.classes,
                                  target_layer=args.target_layer, input_size=args.input_size,
                                  cam_method=args.cam_method, fusion_layers=args.fusion_layers,
                                  model_file=args.model_file, model_args=args.model_args, tabular=tabular)
    if spec.tabular and not spec.model_file:
        raise CheckpointError("a tabular schema needs a custom model whose forward takes (image, tabular): "
                              "pass --model-file")
    x, *extra = spec.dummy_inputs()
    single = "gradcam" if spec.cam_method == cam_ops.FUSION else spec.cam_method
    for method, names, flag in [(single, [spec.target_layer], "--target-layer"),
                                (cam_ops.FUSION, list(spec.fusion_layers), "--fusion-layers")]:
        try:
            out = cam_ops.explain_batch(model, [get_module(model, n) for n in names], x, [[]], extra, method)
        except (TypeError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{method} at layer {', '.join(map(repr, names))} fails: {exc}; "
                                  f"choose another {flag}") from exc
        if out.cams is None or out.cams[0].dim() != 3:
            raise CheckpointError(f"layer {', '.join(map(repr, names))} gives no spatial map")
    return model, spec


def model_config(args: argparse.Namespace) -> str:
    """TorchServe's per-model YAML (batching, workers, timeouts) plus camserve's own keys."""
    workers = resolve_workers(args.workers)
    settings = {"max_response_bytes": MAX_RESPONSE_BYTES, "threads": args.threads,
                "channels_last": args.channels_last or None, "autocast": args.autocast,
                "render_threads": args.render_threads or None}
    return "\n".join([
        f"minWorkers: {workers}", f"maxWorkers: {workers}",
        f"batchSize: {args.batch_size}", f"maxBatchDelay: {args.max_batch_delay}",
        f"responseTimeout: {args.response_timeout}",
        "camserve:", *[f"  {k}: {json.dumps(v)}" for k, v in settings.items() if v is not None], ""])


def archive(args: argparse.Namespace) -> Path:
    """Validate the checkpoint and write ``MODEL_STORE/NAME.mar``; returns its path."""
    model, spec = validate(args.checkpoint, args)
    args.model_store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp)
        packed = replace(spec, model_file=Path(spec.model_file).name) if spec.model_file else spec
        save_checkpoint(stage / WEIGHTS_NAME, model, packed)
        (stage / "model-config.yaml").write_text(model_config(args))
        for module in serving_modules():
            target = stage / "pkg" / module.relative_to(CORE.parent)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(module, target)
        cmd = [sys.executable, "-m", "model_archiver.model_packaging", "--model-name", args.name,
               "--version", args.version, "--serialized-file", str(stage / WEIGHTS_NAME),
               "--handler", str(HANDLER), "--extra-files", str(stage / "pkg"),
               "--config-file", str(stage / "model-config.yaml"),
               "--export-path", str(args.model_store), "--force"]
        if spec.model_file:
            cmd += ["--model-file", spec.model_file]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    out = args.model_store / f"{args.name}.mar"
    print(json.dumps({"mar": str(out), "name": args.name, "version": args.version, **spec.to_dict()}))
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        archive(args)
    except CheckpointError as exc:
        print(f"archive: {args.checkpoint}: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"archive: torch-model-archiver failed:\n{exc.stderr}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
