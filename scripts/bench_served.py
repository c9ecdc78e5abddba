"""Served throughput: camserve's explained and prediction-only requests against a minimal handler.

One TorchServe (the shipped config: token auth on, loopback, one worker per model, dynamic batching)
serves, for each benchmarked model, camserve's .mar and a minimal prediction-only handler's .mar
(``scripts/bench_assets/minimal_handler.py``) over the same weights. The same realistic images
(``scripts/bench_images.py``) are sent through HTTP in interleaved rounds at each concurrency:

- ``none``: camserve, ``explain=none``;
- ``gradcam``: camserve with the default options (map + palette-PNG heatmap + JPEG overlay);
- ``cam_only``: camserve, ``images=none`` (what the Gradio app and the analysis script ask for);
- ``minimal``: the minimal handler (the floor).

Prints img/s, p50/p95 latency and bytes per answer (medians over rounds), and the ratios the bars are
about: gradcam / none (>= 0.90 at concurrency 16) and none / minimal (>= 0.97). On a machine with a GPU,
TorchServe puts the workers on it; ``--models resnet50 --concurrency 64`` is the GPU comparison.

    python scripts/bench_served.py [--models chest_phantom,resnet50] [--concurrency 1,16] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
import torch
import torchvision

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from camserve import cli  # noqa: E402
from scripts import archive  # noqa: E402
from scripts.bench_images import realistic_png  # noqa: E402
from scripts.torchserve_local import Server, running  # noqa: E402

MINIMAL_HANDLER = REPO / "scripts" / "bench_assets" / "minimal_handler.py"
DEMO_CHECKPOINT = REPO / "data" / "models" / "chest_phantom.pt"
VARIANTS: dict[str, dict[str, str]] = {"none": {"explain": "none"}, "gradcam": {}, "cam_only": {"images": "none"},
                                       "minimal": {}}
BARS = {"gradcam/none": 0.90, "none/minimal": 0.97}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="chest_phantom,resnet50",
                   help="chest_phantom (the demo checkpoint if built, else a resnet18 at 128 px) and/or "
                        "resnet50 (random init, 224 px) (default: %(default)s)")
    p.add_argument("--concurrency", default="1,16", help="comma-separated client concurrencies (default: %(default)s)")
    p.add_argument("--rounds", type=cli.positive_int, default=4, help="interleaved rounds (default: %(default)s)")
    p.add_argument("--requests", type=cli.positive_int, default=48,
                   help="requests per cell at concurrency >= 8 (a quarter of it below) (default: %(default)s)")
    p.add_argument("--batch-size", type=cli.positive_int, default=8,
                   help="TorchServe batch size (default: %(default)s)")
    p.add_argument("--max-batch-delay", type=cli.positive_int, default=5,
                   help="ms TorchServe waits to fill a batch (default: %(default)s)")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p


def checkpoint(name: str, tmp: Path) -> Path:
    """The weights both handlers serve."""
    if name == "chest_phantom" and DEMO_CHECKPOINT.is_file():
        return DEMO_CHECKPOINT
    arch, size = {"chest_phantom": ("resnet18", 128), "resnet50": ("resnet50", 224)}[name]
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=3)
    path = tmp / f"{name}.pt"
    torch.save({"state_dict": model.state_dict(), "arch": arch, "class_names": ["a", "b", "c"],
                "input_size": size}, path)
    return path


def minimal_archive(ckpt: Path, name: str, store: Path, args: argparse.Namespace) -> None:
    config = store.parent / f"{name}.yaml"
    config.write_text(f"minWorkers: 1\nmaxWorkers: 1\nbatchSize: {args.batch_size}\n"
                      f"maxBatchDelay: {args.max_batch_delay}\nresponseTimeout: 120\n")
    subprocess.run([sys.executable, "-m", "model_archiver.model_packaging", "--model-name", name, "--version", "1.0",
                    "--serialized-file", str(ckpt), "--handler", str(MINIMAL_HANDLER), "--config-file", str(config),
                    "--export-path", str(store), "--force"], check=True, capture_output=True)


def input_size(ckpt: Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True).get("input_size") or 224)


def burst(server: Server, model: str, fields: dict[str, str], images: list[bytes], n: int,
          concurrency: int) -> dict[str, float]:
    """``n`` requests at ``concurrency``; img/s, p50/p95 ms, bytes per answer."""
    local = threading.local()
    headers = {"Authorization": f"Bearer {server.token()}"}

    def one(i: int) -> tuple[float, int]:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        start = time.perf_counter()
        resp = session.post(f"{server.url}/predictions/{model}", headers=headers, data=fields,
                            files={"data": ("image.png", images[i % len(images)], "image/png")}, timeout=300)
        if resp.status_code != 200:
            raise RuntimeError(f"{model}: HTTP {resp.status_code}: {resp.text[:200]}")
        return time.perf_counter() - start, len(resp.content)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - start
    lat = sorted(r[0] for r in results)
    return {"img_s": n / wall, "p50_ms": lat[len(lat) // 2] * 1e3, "p95_ms": lat[int(len(lat) * 0.95) - 1] * 1e3,
            "bytes": statistics.median(r[1] for r in results)}


def measure(server: Server, name: str, images: list[bytes], args: argparse.Namespace) -> list[dict[str, Any]]:
    targets: dict[str, Callable[[int, int], dict[str, float]]] = {
        variant: (lambda n, c, v=variant: burst(server, f"{name}_minimal" if v == "minimal" else name,
                                                VARIANTS[v], images, n, c))
        for variant in VARIANTS}
    rows = []
    for c in [int(x) for x in args.concurrency.split(",")]:
        n = args.requests if c >= 8 else max(8, args.requests // 4)
        for fn in targets.values():  # warm-up at this concurrency
            fn(max(c, 8), c)
        cells: dict[str, list[dict[str, float]]] = {v: [] for v in targets}
        for r in range(args.rounds):
            order = list(targets)[r % len(targets):] + list(targets)[: r % len(targets)]
            for variant in order:
                cells[variant].append(targets[variant](n, c))
        for variant, runs in cells.items():
            rows.append({"model": name, "concurrency": c, "variant": variant,
                         **{k: statistics.median(run[k] for run in runs) for k in runs[0]}})
    return rows


def report(rows: list[dict[str, Any]]) -> dict[str, float]:
    print(f"{'model':14} {'conc':>4} {'variant':9} {'img/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'KB/answer':>9}")
    for r in rows:
        print(f"{r['model']:14} {r['concurrency']:4d} {r['variant']:9} {r['img_s']:8.1f} {r['p50_ms']:8.1f} "
              f"{r['p95_ms']:8.1f} {r['bytes'] / 1000:9.1f}")
    ratios = {}
    for model in sorted({r["model"] for r in rows}):
        for c in sorted({r["concurrency"] for r in rows}):
            cell = {r["variant"]: r["img_s"] for r in rows if r["model"] == model and r["concurrency"] == c}
            for key, (num, den) in {"gradcam/none": ("gradcam", "none"), "cam_only/none": ("cam_only", "none"),
                                    "none/minimal": ("none", "minimal")}.items():
                ratios[f"{model} c={c} {key}"] = round(cell[num] / cell[den], 3)
    for key, value in ratios.items():
        bar = next((f" (bar >= {b:.2f})" for k, b in BARS.items() if key.endswith(k) and " c=1 " not in key), "")
        print(f"{key}: {value:.2f}x{bar}")
    return ratios


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    with tempfile.TemporaryDirectory(prefix="camserve-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        store = tmp / "store"
        sizes = {}
        for name in names:
            ckpt = checkpoint(name, tmp)
            sizes[name] = input_size(ckpt)
            assert archive.main([str(ckpt), "--name", name, "--model-store", str(store), "--batch-size",
                                 str(args.batch_size), "--max-batch-delay", str(args.max_batch_delay)]) == 0
            minimal_archive(ckpt, f"{name}_minimal", store, args)
        with running(store, tmp / "ts", timeout=600) as server:
            device = "cuda" if torch.cuda.is_available() else "cpu"
            print(f"TorchServe with {', '.join(names)} (+ minimal handlers), one worker each on {device}, "
                  f"batch {args.batch_size}, delay {args.max_batch_delay} ms, {args.rounds} interleaved rounds")
            rows = [row for name in names
                    for row in measure(server, name, [realistic_png(sizes[name], s) for s in range(8)], args)]
    ratios = report(rows)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
