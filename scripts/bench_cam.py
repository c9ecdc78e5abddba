"""Cost of every CAM method, of several classes per image and of faithfulness, measured side by side.

    python scripts/bench_cam.py [--archs a,b] [--batch-sizes 1,8] [--size 224] [--rounds 5] [--json OUT]

For each architecture (random init, no downloads) and batch size, every variant below is timed in
interleaved rounds (machine noise hits all alike; each round starts with another variant) on smooth
synthetic images (random colour blobs, not noise), and the fastest round of each (``--stat``: other
jobs only ever add time) is reported as a ratio:

- ``gradcam``: camserve's fused pass (``cam.explain_batch``) over an ``inference_mode`` forward;
- every other method (``gradcam++``, ``xgradcam``, ``hirescam``, ``layercam``, ``layercam-fusion``) over
  the ``gradcam`` pass;
- ``full-backward``: the textbook way (parameters requiring grad, ``score.backward()`` through the whole
  network) over the forward;
- ``all-3``: three classes per image (``target=all`` on a 3-class head) over one map;
- ``faithfulness``: the pass plus the upsampled maps and ``faithfulness.score`` over the pass alone;
- ``earlier``: Grad-CAM at an earlier layer (the middle fusion layer: resnet ``layer3``...) over the
  forward, and ``earlier-all-3`` over one map there.

Every single-layer method runs the same forward and backward and differs only in its formula, and one
more class adds one ``autograd.grad`` of the head: those parts are also timed alone, many times, and
reported "by parts" (``1 + extra / pass``), which stays steady on a busy machine where whole passes do not.

Bars: any single-layer method <= 1.05x the Grad-CAM pass and ``all-3`` <= 1.2x (median over the
architectures), faithfulness <= 2.2x at batch 8. Prints a table, the medians, and JSON with ``--json``.
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
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from camserve import cam as cam_ops  # noqa: E402
from camserve import cli, faithfulness  # noqa: E402
from camserve.archs import DEFAULT_FUSION_LAYERS, DEFAULT_TARGET_LAYERS, get_module  # noqa: E402
from camserve.cam_methods import FUSION, METHODS, compute  # noqa: E402
from camserve.checkpoint import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

OTHERS = [m for m in METHODS if m != "gradcam"]
BARS = {"method": 1.05, "all3": 1.2, "faithfulness": 2.2}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", type=arch_list, default=list(DEFAULT_TARGET_LAYERS),
                   help="comma-separated architectures (default: the seven)")
    p.add_argument("--batch-sizes", type=batch_list, default=[1, 8], help="comma-separated batch sizes (default: 1,8)")
    p.add_argument("--size", type=cli.input_side, default=224, help="input side (default: %(default)s)")
    p.add_argument("--rounds", type=cli.positive_int, default=5, help="interleaved rounds (default: %(default)s)")
    p.add_argument("--threads", type=cli.positive_int, default=2, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--stat", choices=("min", "median"), default="min",
                   help="per variant, the fastest round (other jobs only ever add time) or the median")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall-clock time, or this process's CPU time (steadier on a busy CPU-only machine)")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p


def arch_list(text: str) -> list[str]:
    archs = [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in archs if a not in DEFAULT_TARGET_LAYERS]
    if unknown or not archs:
        raise argparse.ArgumentTypeError(f"must be among {', '.join(DEFAULT_TARGET_LAYERS)}, got {text!r}")
    return archs


def batch_list(text: str) -> list[int]:
    return [cli.positive_int(b) for b in text.split(",")]


def smooth_images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """Normalised ``[B, 3, S, S]`` images of a few soft colour blobs on a gradient, like photographs'
    low-frequency content (noise would make every activation, and so every map, atypical)."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    images = torch.empty(batch, 3, size, size)
    for i in range(batch):
        img = torch.rand(3, 1, 1, generator=gen) * (0.5 + 0.5 * yy)
        for _ in range(5):
            cx, cy, r = torch.rand(3, generator=gen) * torch.tensor([1.0, 1.0, 0.25]) + torch.tensor([0, 0, 0.05])
            blob = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r ** 2))
            img = img + torch.rand(3, 1, 1, generator=gen) * blob
        images[i] = img.clamp(0, 1)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (images - mean) / std


def full_backward(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Grad-CAM the textbook way: hooks, parameters requiring grad, backward through the whole network."""
    kept: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> torch.Tensor:
        out.retain_grad()
        kept.append(out)
        return out.clone()

    handle = layer.register_forward_hook(hook)
    try:
        for p in model.parameters():
            p.requires_grad_(True)
        model.zero_grad(set_to_none=True)
        logits = model(x)
        logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
        acts, grads = kept[0].detach(), kept[0].grad
        return torch.relu((grads.mean((2, 3), keepdim=True) * acts).sum(1))
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)


def timed(fn: Callable[[], object], device: str, clock: str = "wall") -> float:
    now = time.process_time if clock == "cpu" else time.perf_counter
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = now()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return now() - start


def variants(model: nn.Module, arch: str, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    """Every way of answering that is timed, by name."""
    batch = x.shape[0]
    layer = [get_module(model, DEFAULT_TARGET_LAYERS[arch])]
    fusion = [get_module(model, n) for n in DEFAULT_FUSION_LAYERS[arch]]
    earlier = [get_module(model, DEFAULT_FUSION_LAYERS[arch][1])]
    one, three = [[]] * batch, [[0, 1, 2]] * batch

    def explain(layers: list[nn.Module], targets: list, method: str = "gradcam") -> Callable[[], object]:
        return lambda: cam_ops.explain_batch(model, layers, x, targets, method=method)

    def with_faithfulness() -> None:
        out = cam_ops.explain_batch(model, layer, x, one)
        maps = cam_ops.input_maps(out.cams or [], x.shape[-1])
        faithfulness.score(model, x, (), maps, out.targets, log_probs=out.log_probs)

    fns: dict[str, Callable[[], object]] = {"predict": lambda: cam_ops.predict(model, x),
                                            "gradcam": explain(layer, one)}
    for method in OTHERS:
        fns[method] = explain(fusion if method == FUSION else layer, one, method)
    fns["full-backward"] = lambda: full_backward(model, layer[0], x)
    fns["all-3"] = explain(layer, three)
    fns["faithfulness"] = with_faithfulness
    fns["earlier"] = explain(earlier, one)
    fns["earlier-all-3"] = explain(earlier, three)
    return fns


def fastest(fn: Callable[[], object], args: argparse.Namespace, repeats: int = 20) -> float:
    return min(timed(fn, args.device, args.clock) for _ in range(repeats))


def parts(model: nn.Module, arch: str, x: torch.Tensor, args: argparse.Namespace) -> dict[str, float]:
    """What differs between the single-layer methods, and what one more class adds, timed alone.

    Every single-layer method runs the same forward and the same ``autograd.grad``; only the formula on
    the captured activations and gradients differs (``formula:<method>``). One more class per image
    adds one ``autograd.grad`` of the head and one formula (``slot``). Short operations repeated and
    their fastest run kept are far steadier than whole passes on a busy machine.
    """
    layer = [get_module(model, DEFAULT_TARGET_LAYERS[arch])]
    with cam_ops.frozen(model), cam_ops.graph_from(layer) as captured, torch.enable_grad():
        logits = model(x)
        acts = [a for a in captured if a is not None]
        scores = cam_ops.target_scores(logits, logits.argmax(1).tolist()).sum()
        grads = torch.autograd.grad(scores, acts, retain_graph=True)
        detached = [a.detach() for a in acts]
        out = {f"formula:{m}": fastest(lambda m=m: compute(m, detached, grads), args)
               for m in METHODS if m != FUSION}
        out["slot"] = fastest(lambda: compute("gradcam", detached, torch.autograd.grad(scores, acts,
                                                                                       retain_graph=True)), args)
    return out


def bench_arch(arch: str, batch: int, args: argparse.Namespace) -> dict[str, object]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=3).eval().to(args.device)
    x = smooth_images(batch, args.size).to(args.device)
    fns = variants(model, arch, x)
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # each round starts elsewhere
            times[name].append(timed(fns[name], args.device, args.clock))
    med = {name: (min(ts) if args.stat == "min" else statistics.median(ts)) for name, ts in times.items()}
    row: dict[str, object] = {"arch": arch, "batch": batch, "predict_ms": round(med["predict"] * 1e3, 1),
                              "gradcam_ms": round(med["gradcam"] * 1e3, 1),
                              "gradcam/predict": med["gradcam"] / med["predict"]}
    row.update({f"{m}/gradcam": med[m] / med["gradcam"] for m in OTHERS})
    row["full-backward/predict"] = med["full-backward"] / med["predict"]
    row["all-3/one"] = med["all-3"] / med["gradcam"]
    row["faithfulness/off"] = med["faithfulness"] / med["gradcam"]
    row["earlier/predict"] = med["earlier"] / med["predict"]
    row["earlier-all-3/one"] = med["earlier-all-3"] / med["earlier"]
    alone = parts(model, arch, x, args)
    for m in OTHERS:
        if m != FUSION:
            row[f"{m}/gradcam by parts"] = 1 + (alone[f"formula:{m}"] - alone["formula:gradcam"]) / med["gradcam"]
    row["all-3/one by parts"] = 1 + 2 * alone["slot"] / med["gradcam"]
    row["parts_ms"] = {k: round(v * 1e3, 3) for k, v in alone.items()}
    return row


COLUMNS = ["gradcam/predict", *[f"{m}/gradcam" for m in OTHERS], "full-backward/predict", "all-3/one",
           "faithfulness/off", "earlier/predict", "earlier-all-3/one"]
PARTS = [*[f"{m}/gradcam by parts" for m in OTHERS if m != FUSION], "all-3/one by parts"]
SHORT = {"gradcam/predict": "gcam/fwd", "gradcam++/gradcam": "gc++", "xgradcam/gradcam": "xgc",
         "hirescam/gradcam": "hires", "layercam/gradcam": "layer", "layercam-fusion/gradcam": "fusion",
         "full-backward/predict": "fullbw/fwd", "all-3/one": "all3", "faithfulness/off": "faith",
         "earlier/predict": "early/fwd", "earlier-all-3/one": "e.all3"}


def line(cells: list[str]) -> str:
    return " ".join(f"{c:>9}" for c in cells)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return report(args)
    finally:
        torch.set_num_threads(threads)


def report(args: argparse.Namespace) -> int:
    """Run every architecture and batch size, print the table and the medians."""
    archs, batches = args.archs, args.batch_sizes
    print(f"device={args.device} threads={args.threads} size={args.size} rounds={args.rounds} clock={args.clock} "
          f"stat={args.stat}")
    print(f"{'arch':16} {'batch':>5} {'fwd ms':>7} " + line([SHORT[c] for c in COLUMNS]))
    rows = []
    for batch in batches:
        for arch in archs:
            r = bench_arch(arch, batch, args)
            rows.append(r)
            print(f"{arch:16} {batch:5d} {r['predict_ms']:7.1f} " + line([f"{r[c]:.2f}x" for c in COLUMNS]),
                  flush=True)
    medians = {}
    for batch in batches:
        sel = [r for r in rows if r["batch"] == batch]
        medians[batch] = {c: round(statistics.median(float(r[c]) for r in sel), 3) for c in COLUMNS + PARTS}
        print(f"{'median':16} {batch:5d} {'':7} " + line([f"{medians[batch][c]:.2f}x" for c in COLUMNS]))
    print("\nby parts (the formula and the extra class timed alone, over the whole Grad-CAM pass):")
    print(f"{'arch':16} {'batch':>5} {'':7} " + line([c.split("/")[0] for c in PARTS]))
    for r in rows:
        print(f"{r['arch']:16} {r['batch']:5d} {'':7} " + line([f"{r[c]:.3f}x" for c in PARTS]))
    for batch, med in medians.items():
        print(f"{'median':16} {batch:5d} {'':7} " + line([f"{med[c]:.3f}x" for c in PARTS]))
    for batch, med in medians.items():
        single = [m for m in OTHERS if m != FUSION]
        worst = max(single, key=lambda m: med[f"{m}/gradcam"])
        worst_parts = max(single, key=lambda m: med[f"{m}/gradcam by parts"])
        print(f"batch {batch}: slowest single-layer method {worst} {med[f'{worst}/gradcam']:.2f}x the Grad-CAM pass "
              f"(by parts {worst_parts} {med[f'{worst_parts}/gradcam by parts']:.3f}x; bar <= {BARS['method']}); "
              f"3 classes {med['all-3/one']:.2f}x one map (by parts {med['all-3/one by parts']:.3f}x; bar <= "
              f"{BARS['all3']}); faithfulness {med['faithfulness/off']:.2f}x "
              f"(bar <= {BARS['faithfulness']} at batch 8)")
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "size": args.size, "threads": args.threads,
                                         "rounds": args.rounds, "clock": args.clock, "stat": args.stat, "rows": rows,
                                         "median": medians}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
