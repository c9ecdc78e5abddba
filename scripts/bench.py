"""What an explained request costs a client, relative to a prediction-only one, in process.

For each architecture (random init, no downloads) and batch size, the whole ``Explainer.handle`` (decode,
resize, forward, maps, rendering, encoding) is timed on realistic images (``scripts/bench_images.py``)
in interleaved rounds, so machine noise hits every variant alike:

- ``none``: ``explain=none`` (the prediction-only floor);
- ``default``: ``explain=gradcam`` with the default images (palette-PNG heatmap + JPEG overlay);
- ``cam_only``: ``images=none`` (the map alone, for clients that draw it themselves);
- ``png``: both images as PNG (the exact, lossless overlay);
- ``layer``: the default options at an earlier target layer (more of the network is differentiated).

Ratios are to ``none`` of the same round; the table also gives the answer's size. The pass-level costs
(every CAM method vs the forward) are in ``scripts/bench_cam.py``; the served comparison against
TorchServe in ``scripts/bench_served.py``.

Bars: the median ``default`` ratio over the seven architectures <= 1.10 at batch 1 and 8; an explained
answer at 224 px with default options <= 40 KB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from camserve import cli  # noqa: E402
from camserve.archs import DEFAULT_TARGET_LAYERS  # noqa: E402
from camserve.checkpoint import ModelSpec  # noqa: E402
from camserve.explainer import Explainer  # noqa: E402
from camserve.schema import ExplainResponse  # noqa: E402
from scripts.bench_images import realistic_png  # noqa: E402

REQUEST_BAR = 1.10
SIZE_BAR = 40_000
EARLIER_LAYERS = {"resnet18": "layer3", "resnet50": "layer3", "densenet121": "features.denseblock3",
                  "efficientnet_b0": "features.6", "mobilenet_v2": "features.14", "vgg16": "features.22",
                  "alexnet": "features.9"}
VARIANTS: dict[str, dict[str, bytes]] = {
    "none": {"explain": b"none"},
    "default": {},
    "cam_only": {"images": b"none"},
    "png": {"image_format": b"png"},
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default=",".join(DEFAULT_TARGET_LAYERS), help="comma-separated architectures")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default: %(default)s)")
    p.add_argument("--size", type=cli.input_side, default=224, help="input side (default: %(default)s)")
    p.add_argument("--rounds", type=cli.positive_int, default=5, help="interleaved rounds (default: %(default)s)")
    p.add_argument("--threads", type=cli.positive_int, default=2, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def explainer_for(arch: str, layer: str, size: int, device: str) -> Explainer:
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=3)
    return Explainer(model, ModelSpec(arch, ("a", "b", "c"), 3, layer, size), arch, device=device)


def bench_arch(arch: str, batch: int, args: argparse.Namespace) -> dict[str, float | str | int]:
    default = explainer_for(arch, DEFAULT_TARGET_LAYERS[arch], args.size, args.device)
    earlier = explainer_for(arch, EARLIER_LAYERS[arch], args.size, args.device)
    images = [realistic_png(args.size, seed) for seed in range(batch)]

    def call(explainer: Explainer, fields: dict[str, bytes]) -> Callable[[], list]:
        return lambda: explainer.handle([{"data": im, **fields} for im in images])

    runs = {name: call(default, fields) for name, fields in VARIANTS.items()}
    runs["layer"] = call(earlier, {})
    answer = runs["default"]()[0]
    assert isinstance(answer, ExplainResponse), answer
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.rounds):
        order = list(runs)[r % len(runs):] + list(runs)[: r % len(runs)]
        for name in order:
            times[name].append(timed(runs[name], default.device))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    return {"arch": arch, "batch": batch, "none_ms": round(med["none"] * 1e3 / batch, 2),
            **{name: med[name] / med["none"] for name in runs if name != "none"},
            "answer_bytes": len(answer.to_json())}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: list[dict] = []
    cols = [n for n in VARIANTS if n != "none"] + ["layer"]
    print(f"device={args.device} threads={args.threads} size={args.size} rounds={args.rounds}; "
          "ratios to explain=none of the same round")
    print(f"{'arch':16} {'batch':>5} {'none ms/img':>11} " + " ".join(f"{c:>9}" for c in cols) + f" {'answer':>8}")
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        for arch in args.archs.split(","):
            r = bench_arch(arch, batch, args)
            rows.append(r)
            print(f"{arch:16} {batch:5d} {r['none_ms']:11.1f} " + " ".join(f"{r[c]:8.2f}x" for c in cols)
                  + f" {r['answer_bytes'] / 1000:6.1f}KB", flush=True)
    summary = {}
    for batch in sorted({r["batch"] for r in rows}):
        sel = [r for r in rows if r["batch"] == batch]
        summary[batch] = {c: round(statistics.median(r[c] for r in sel), 3) for c in cols}
        summary[batch]["answer_bytes"] = max(r["answer_bytes"] for r in sel)
        print(f"median over {len(sel)} archs, batch {batch}: explained request {summary[batch]['default']:.2f}x "
              f"(bar <= {REQUEST_BAR:.2f}x), images=none {summary[batch]['cam_only']:.2f}x, "
              f"png {summary[batch]['png']:.2f}x, earlier layer {summary[batch]['layer']:.2f}x; "
              f"largest answer {summary[batch]['answer_bytes'] / 1000:.1f} KB (bar <= {SIZE_BAR / 1000:.0f} KB)")
    result = {"device": args.device, "size": args.size, "rows": rows, "median": summary}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
