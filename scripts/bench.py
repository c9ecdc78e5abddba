"""Cost of an explained request relative to a prediction-only one, measured side by side.

For each architecture (random init, no downloads) and batch size, three ways of answering are timed in
interleaved rounds (so machine noise hits all alike) and reported as a ratio to the prediction-only
forward of the same round:

- ``fused``: camserve's pass (``cam.predict_and_explain``): graph from the target layer, params frozen;
- ``anchor``: the anchors' way (seed 000, pytorch-grad-cam): forward with hooks, ``score.backward()``
  through the whole network with parameter gradients;
- ``request``: the whole ``Explainer.handle`` for explain=gradcam over explain=none (decode, preprocess,
  forward, PNG rendering of heatmap and overlay), i.e. what a client of the endpoint pays.

Prints a table and JSON; the bar is a median ``request`` ratio <= 1.10 over the seven architectures.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from camserve import cam as cam_ops  # noqa: E402
from camserve.archs import DEFAULT_TARGET_LAYERS, get_module  # noqa: E402
from camserve.checkpoint import ModelSpec  # noqa: E402
from camserve.explainer import Explainer  # noqa: E402
from scripts.cli import positive_int  # noqa: E402

BAR = 1.10


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--archs", default=",".join(DEFAULT_TARGET_LAYERS), help="comma-separated architectures")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--size", type=positive_int, default=224, help="input side")
    p.add_argument("--rounds", type=positive_int, default=7, help="interleaved timing rounds (median kept)")
    p.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p


def anchor_style(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Seed 000's GradCAM: hooks, full backward with parameter gradients."""
    acts, grads = [], []

    def keep(_m: torch.nn.Module, _i: tuple, out: torch.Tensor) -> None:
        acts.append(out)
        out.register_hook(grads.append)

    h1 = layer.register_forward_hook(keep)
    try:
        for p in model.parameters():
            p.requires_grad_(True)
        model.zero_grad(set_to_none=True)
        out = model(x)
        out.gather(1, out.argmax(1, keepdim=True)).sum().backward()
        weights = grads[0].mean((2, 3), keepdim=True)
        return torch.relu((weights * acts[0]).sum(1)).detach()
    finally:
        h1.remove()


def timed(fn: Callable[[], object], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def png(size: int, seed: int) -> bytes:
    gen = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size, size, 3, generator=gen) * 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def bench_arch(arch: str, batch: int, args: argparse.Namespace) -> dict[str, float]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=3).eval().to(args.device)
    layer = get_module(model, DEFAULT_TARGET_LAYERS[arch])
    spec = ModelSpec(arch, ("a", "b", "c"), 3, DEFAULT_TARGET_LAYERS[arch], args.size)
    explainer = Explainer(model, spec, arch, device=args.device)
    x = torch.randn(batch, 3, args.size, args.size, device=args.device)
    images = [png(args.size, i) for i in range(batch)]
    methods = {
        "predict": lambda: cam_ops.predict(model, x),
        "fused": lambda: cam_ops.predict_and_explain(model, layer, x, [None] * batch),
        "anchor": lambda: anchor_style(model, layer, x),
        "request_none": lambda: explainer.handle([{"data": im, "explain": b"none"} for im in images]),
        "request_cam": lambda: explainer.handle([{"data": im} for im in images]),
    }
    for fn in methods.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, fn in methods.items():
            times[name].append(timed(fn, args.device))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    return {"arch": arch, "batch": batch, "predict_ms": round(med["predict"] * 1e3, 2),
            "fused": med["fused"] / med["predict"], "anchor": med["anchor"] / med["predict"],
            "request": med["request_cam"] / med["request_none"]}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    print(f"device={args.device} threads={args.threads} size={args.size} rounds={args.rounds}")
    print(f"{'arch':16} {'batch':>5} {'predict ms':>10} {'fused':>7} {'anchor':>7} {'request':>8}")
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        for arch in args.archs.split(","):
            r = bench_arch(arch, batch, args)
            rows.append(r)
            print(f"{arch:16} {batch:5d} {r['predict_ms']:10.1f} {r['fused']:6.2f}x {r['anchor']:6.2f}x "
                  f"{r['request']:7.2f}x", flush=True)
    summary = {}
    for batch in sorted({r["batch"] for r in rows}):
        sel = [r for r in rows if r["batch"] == batch]
        summary[batch] = {k: round(statistics.median(r[k] for r in sel), 3) for k in ("fused", "anchor", "request")}
        print(f"median over {len(sel)} archs, batch {batch}: fused {summary[batch]['fused']:.2f}x, "
              f"anchor {summary[batch]['anchor']:.2f}x, explained request {summary[batch]['request']:.2f}x "
              f"(bar <= {BAR:.2f}x)")
    result = {"device": args.device, "size": args.size, "rows": rows, "median": summary}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
