"""Soak test of the served demo models: mixed traffic, a worker killed mid-burst, an analysis that loses nothing.

    python scripts/soak.py [--model-store model_store] [--requests 1000] [--concurrency 16]

One TorchServe (the shipped config, token auth on, loopback, free ports) serves every .mar of
``--model-store`` (``make model`` builds chest_phantom and thyroid_phantom). Three phases:

1. **Mixed traffic**: ``--requests`` requests at ``--concurrency`` over both models, about one in ten a bad
   one (not an image, a truncated PNG, a superscript or negative number, an unknown method or colormap, a
   JSON body nested too deep), the good ones with varied options (``explain=none``, Grad-CAM with
   images, ``images=none``, ``target=all``, a WebP overlay). Every good answer must give the prediction and
   probabilities its image got when sent alone; every bad one a 4xx JSON error; no 5xx.
2. **A worker killed mid-burst** (SIGKILL, by pid): how many requests failed (at most a batch may), and
   the seconds until TorchServe's new worker is READY.
3. **An analysis through a crash**: ``scripts/analyze_errors.py`` on the chest test split while the
   worker is killed again; its retries must account for every image.

Prints one JSON summary (requests/s, p50/p95 latency, 5xx, wrong answers, lost requests, recovery
seconds) and exits 1 when phase 1 saw a 5xx or a wrong answer, phase 2 lost more than a batch, or the
analysis lost an image. Not a CI test: it takes minutes (``make soak``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from camserve import cli  # noqa: E402
from camserve.folders import walk  # noqa: E402
from scripts import analyze_errors  # noqa: E402
from scripts.torchserve_local import Server, running  # noqa: E402

GOOD_OPTIONS: list[dict[str, str]] = [{"explain": "none"}, {}, {"images": "none"}, {"target": "all", "images": "none"},
                                      {"image_format": "webp"}]
BAD: list[tuple[str, dict[str, Any]]] = [
    ("not an image", {"files": {"data": ("x.png", b"this is text, not a picture", "image/png")}}),
    ("truncated PNG", {"truncate": True}),
    ("superscript target", {"data": {"target": "\u00b2"}}),
    ("negative topk", {"data": {"topk": "-3"}}),
    ("unknown method", {"data": {"explain": "magic"}}),
    ("unknown colormap", {"data": {"colormap": "rainbow"}}),
    ("NaN alpha", {"data": {"alpha": "nan"}}),
    ("deep JSON", {"json": "[" * 5000 + "]" * 5000}),
]
BATCH = 8  # the demo archives' batch size: the most one crash may cost


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-store", type=Path, default=REPO / "model_store", help="folder of .mar files")
    p.add_argument("--chest-data", type=Path, default=REPO / "data" / "phantoms" / "test",
                   help="chest_phantom images (ImageFolder tree)")
    p.add_argument("--thyroid-data", type=Path, default=REPO / "data" / "thyroid" / "test",
                   help="thyroid_phantom images (ImageFolder tree)")
    p.add_argument("--requests", type=cli.positive_int, default=1000, help="phase 1 requests (default: %(default)s)")
    p.add_argument("--concurrency", type=cli.positive_int, default=16, help="requests in flight (default: %(default)s)")
    p.add_argument("--seed", type=cli.non_negative_int, default=0, help="traffic mix seed (default: %(default)s)")
    return p


def images_of(root: Path, n: int) -> list[bytes]:
    """``n`` images spread over the tree (every class), as bytes."""
    files = walk(root, images_only=True).files if root.is_dir() else []
    if not files:
        raise SystemExit(f"soak: no images under {root}: run 'make model' first")
    return [(root / rel).read_bytes() for rel in files[:: max(1, len(files) // n)][:n]]


class Traffic:
    """Sends requests with the server's token, one HTTP session per thread."""

    def __init__(self, server: Server) -> None:
        self.url, self.headers = server.url, {"Authorization": f"Bearer {server.token()}"}
        self.local = threading.local()

    def post(self, model: str, image: bytes, fields: dict[str, str] | None = None, **kind: Any
             ) -> tuple[int, dict[str, Any] | None, float]:
        session = getattr(self.local, "session", None) or requests.Session()
        self.local.session = session
        start = time.perf_counter()
        if "json" in kind:
            resp = session.post(f"{self.url}/predictions/{model}", data=kind["json"], timeout=120,
                                headers={**self.headers, "Content-Type": "application/json"})
        else:
            body = image[: len(image) // 3] if kind.get("truncate") else image
            files = kind.get("files") or {"data": ("image.png", body, "image/png")}
            resp = session.post(f"{self.url}/predictions/{model}", headers=self.headers,
                                data={**(fields or {}), **kind.get("data", {})}, files=files, timeout=120)
        took = time.perf_counter() - start
        try:
            payload = resp.json()
        except ValueError:
            payload = None
        return resp.status_code, payload, took


def kill_and_time(server: Server, model: str) -> float:
    """SIGKILL the model's worker; seconds until a new one is READY."""
    victim = server.ready_worker_pid(model)
    assert victim is not None, f"{model} has no READY worker"
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    while server.ready_worker_pid(model) in (None, victim) and time.monotonic() - killed < 180:
        time.sleep(0.1)
    return round(time.monotonic() - killed, 1)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 1)


def mixed(traffic: Traffic, pools: dict[str, list[bytes]], args: argparse.Namespace) -> dict[str, Any]:
    """Phase 1: references alone, then the mixed burst compared with them."""
    reference = {(m, i): traffic.post(m, img, {"explain": "none"})[1] for m, imgs in pools.items()
                 for i, img in enumerate(imgs)}
    rng = random.Random(args.seed)
    plan = []
    for _ in range(args.requests):
        model = rng.choice(sorted(pools))
        index = rng.randrange(len(pools[model]))
        plan.append((model, index, rng.choice(BAD) if rng.random() < 0.1 else None, rng.choice(GOOD_OPTIONS)))

    def one(item: tuple[str, int, tuple[str, dict[str, Any]] | None, dict[str, str]]) -> dict[str, Any]:
        model, index, bad, options = item
        status, payload, took = traffic.post(model, pools[model][index], options, **(bad[1] if bad else {}))
        if bad:
            ok = 400 <= status < 500 and isinstance(payload, dict) and {"code", "type", "message"} <= set(payload)
        else:
            ref = reference[(model, index)] or {}
            ok = (status == 200 and payload is not None
                  and payload["prediction"]["label"] == ref["prediction"]["label"]
                  and all(abs(payload["probabilities"][k] - p) < 1e-4 for k, p in ref["probabilities"].items()))
        return {"status": status, "ok": ok, "bad": bad[0] if bad else None, "took": took}

    start = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        outcomes = list(pool.map(one, plan))
    wall = time.perf_counter() - start
    good = [o for o in outcomes if o["bad"] is None]
    return {"requests": len(outcomes), "bad_requests": len(outcomes) - len(good),
            "requests_per_s": round(len(outcomes) / wall, 1),
            "p50_ms": percentile([o["took"] for o in good], 0.50),
            "p95_ms": percentile([o["took"] for o in good], 0.95),
            "http_5xx": sum(o["status"] >= 500 for o in outcomes),
            "wrong_answers": sum(not o["ok"] for o in good),
            "bad_not_4xx": sorted({o["bad"] for o in outcomes if o["bad"] and not o["ok"]})}


def crash(traffic: Traffic, server: Server, images: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    """Phase 2: a burst on chest_phantom with the worker killed after the first quarter."""
    n = 200
    recovery: list[float] = []

    def one(i: int) -> int:
        status = traffic.post("chest_phantom", images[i % len(images)], {"images": "none"})[0]
        if i == n // 4:
            recovery.append(kill_and_time(server, "chest_phantom"))
        return status

    with ThreadPoolExecutor(args.concurrency) as pool:
        statuses = list(pool.map(one, range(n)))
    failed = [s for s in statuses if s != 200]
    return {"requests": n, "lost": len(failed), "statuses_of_lost": sorted(set(failed)), "recovery_s": recovery[0]}


def analysis(server: Server, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Phase 3: the error analysis of the chest test split, the worker killed while it runs."""
    argv = ["--url", server.url, "--token-file", str(server.key_file), "--model", "chest_phantom",
            "--data-dir", str(args.chest_data), "--output-dir", str(out), "--concurrency", "4"]
    killer = threading.Timer(3.0, lambda: recovery.append(kill_and_time(server, "chest_phantom")))
    recovery: list[float] = []
    killer.start()
    with contextlib.redirect_stdout(sys.stderr):  # this script's stdout is its JSON summary
        code = analyze_errors.main(argv)
    killer.join()
    summary = json.loads((out / "error_summary.json").read_text())
    return {"exit": code, "images": summary["total_files"], "analysed": summary["total_samples"],
            "failed": summary["failed"], "recovery_s": recovery[0] if recovery else None}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    pools = {"chest_phantom": images_of(args.chest_data, 40), "thyroid_phantom": images_of(args.thyroid_data, 40)}
    with tempfile.TemporaryDirectory(prefix="camserve-soak-") as tmp, \
            running(args.model_store, Path(tmp) / "ts") as server:
        traffic = Traffic(server)
        report = {"mixed": mixed(traffic, pools, args)}
        report["worker_kill"] = crash(traffic, server, pools["chest_phantom"], args)
        report["analysis_through_a_kill"] = analysis(server, args, Path(tmp) / "analysis")
    m, k, a = report["mixed"], report["worker_kill"], report["analysis_through_a_kill"]
    report["passed"] = (m["http_5xx"] == 0 and m["wrong_answers"] == 0 and not m["bad_not_4xx"]
                        and k["lost"] <= BATCH and a["failed"] == 0 and a["analysed"] == a["images"])
    print(json.dumps(report, indent=1))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
