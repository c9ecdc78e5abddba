"""The batch pipeline: request rows in, one ``ExplainResponse`` or ``CamserveError`` per row out.

Isolation is the invariant: whatever one row raises while it is read, run or rendered (any exception
type), only that row fails — with its 4xx when the request is at fault, else a 500 — and every other
row of the batch is answered as if it had come alone. A batch whose forward fails is re-run one row
at a time, so a row that breaks the model cannot take its batch-mates down with it.

Work per batch: rows are decoded and resized on the CPU into uint8 tensors; the batch is stacked,
copied to the model's device (pinned, non-blocking on CUDA) and normalised there; one fused forward
gives the predictions and the maps; each row's images are rendered and encoded in a small thread pool
(PIL releases the GIL while encoding), so rendering scales with cores instead of queuing behind the
forward.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from camserve import cam as cam_ops
from camserve import faithfulness
from camserve.archs import get_module
from camserve.cam_methods import FUSION
from camserve.checkpoint import ModelSpec, load_checkpoint
from camserve.errors import CamserveError, InvalidRequest, RequestError, ServerError
from camserve.imaging import decode_image, decode_mask, input_tensor
from camserve.parsing import parse_options, split_request
from camserve.render import colormap_lut, encode_images, shown_image
from camserve.schema import (
    COLORMAPS,
    ClassScore,
    ErrorInfo,
    ExplainOptions,
    ExplainResponse,
    Explanation,
    Faithfulness,
    ModelInfo,
    Prediction,
    Target,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
Result = ExplainResponse | CamserveError
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class RunSettings:
    """How the model runs: from the model-config YAML's ``camserve`` section (see ``docs/serving.md``).

    Attributes:
        channels_last: Convert the model and batches to channels-last memory format (faster convs on GPUs).
        autocast: ``None``, ``"bf16"`` or ``"fp16"``: the forward under ``torch.autocast`` on CUDA
            (maps are combined in float32 whatever the forward's precision).
        render_threads: Threads that render and encode a batch's images (0: ``min(4, cores)``).
    """

    channels_last: bool = False
    autocast: str | None = None
    render_threads: int = 0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RunSettings:
        autocast = config.get("autocast") or None
        if autocast is not None and autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"camserve.autocast must be one of {', '.join(AUTOCAST_DTYPES)}, got {autocast!r}")
        return cls(bool(config.get("channels_last", False)), autocast, int(config.get("render_threads", 0)))


@dataclass
class Prepared:
    """One valid request, decoded: the image (for display), its model input as uint8 ``[3, S, S]``."""

    image: Image.Image
    pixels: torch.Tensor
    mask: np.ndarray | None
    options: ExplainOptions
    preprocess_ms: float
    tabular: torch.Tensor | None = None


class Explainer:
    """A loaded model and everything needed to answer explain requests for it.

    Args:
        model: The classifier; its forward takes ``(images)``, or ``(images, tabular)`` when the spec
            has a tabular schema.
        spec: Its description (classes, preprocessing, target layer).
        name: Model name as served.
        version: Model version as served.
        device: Where to run; TorchServe's assigned GPU, or the CPU.
        settings: Memory format, mixed precision and rendering threads.
    """

    def __init__(self, model: nn.Module, spec: ModelSpec, name: str, version: str = "1.0",
                 device: str | torch.device = "cpu", settings: RunSettings | None = None) -> None:
        self.device = torch.device(device)
        self.settings = settings or RunSettings()
        self.model = model.to(self.device).eval()
        if self.settings.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.spec = spec
        self.layer = get_module(self.model, spec.target_layer)
        self.fusion = [get_module(self.model, n) for n in spec.fusion_layers] or [self.layer]
        self.schema = spec.schema
        self.info = ModelInfo(name=name, version=version, arch=spec.arch, layer=spec.target_layer,
                              classes=list(spec.class_names), input_size=spec.input_size,
                              tabular=spec.tabular, cam_method=spec.cam_method,
                              fusion_layers=list(spec.fusion_layers))
        self.mean = torch.tensor(spec.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        for name in COLORMAPS:  # read the colormaps now, not in the first request
            colormap_lut(name)
        threads = self.settings.render_threads or min(4, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="camserve-render")

    @classmethod
    def from_checkpoint(cls, path: str | Path, name: str, version: str = "1.0",
                        device: str | torch.device = "cpu", settings: RunSettings | None = None,
                        **overrides: Any) -> Explainer:
        model, spec = load_checkpoint(path, **overrides)
        return cls(model, spec, name, version, device, settings)

    def handle(self, rows: Sequence[Mapping[str, Any]]) -> list[Result]:
        """Answer a batch of request rows, one result per row, in order (never raises)."""
        results: list[Result | None] = [None] * len(rows)
        prepared: dict[int, Prepared] = {}
        for i, row in enumerate(rows):
            outcome = guarded(partial(self.prepare, row), "reading this request")
            if isinstance(outcome, CamserveError):
                results[i] = outcome
            else:
                prepared[i] = outcome
        if prepared:
            for i, result in zip(prepared, self.run_isolated(list(prepared.values())), strict=True):
                results[i] = result
        return [r if r is not None else ServerError("no answer was produced for this request") for r in results]

    def prepare(self, row: Mapping[str, Any]) -> Prepared:
        """Decode and validate one row (raises ``RequestError``)."""
        start = time.perf_counter()
        raw = split_request(row, self.schema.names if self.schema else ())
        options = parse_options(raw.fields, self.spec.class_names, self.spec.cam_method)
        if self.schema is None and raw.clinical:
            raise InvalidRequest("field 'clinical': this model takes no clinical fields")
        tabular = None if self.schema is None else self.schema.encode(raw.clinical)
        image = decode_image(raw.image, "data")
        mask = None if raw.mask is None else decode_mask(raw.mask, image.size, "mask")
        pixels = input_tensor(image, self.spec.input_size)
        return Prepared(image, pixels, mask, options, (time.perf_counter() - start) * 1e3, tabular)

    def run_isolated(self, items: Sequence[Prepared]) -> list[Result]:
        """``run`` the batch; if its forward fails, run each row alone so only the culprit fails."""
        try:
            return self.run(items)
        except Exception:
            if len(items) == 1:
                log.exception("camserve: a request failed in the forward")
                return [ServerError("internal error while explaining this request; see the server log")]
            log.warning("camserve: a batch of %d failed in the forward; retrying row by row", len(items),
                        exc_info=True)
        return [result for item in items for result in self.run_isolated([item])]

    def run(self, items: Sequence[Prepared]) -> list[Result]:
        """The forward(s) of the batch (raises if one fails), then per-row rendering (never raises).

        Rows asking for the same method share one fused forward (rows with ``explain=none`` join the
        first); rows asking for faithfulness add one no-grad forward for their group.
        """
        start = time.perf_counter()
        x, extra = self.batch(items)
        precision = (torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.settings.autocast])
                     if self.settings.autocast and self.device.type == "cuda" else nullcontext())
        outputs: list[RowOutput | None] = [None] * len(items)
        with precision:
            for rows, method in self.groups(items):
                for i, row in zip(rows, self.forward(items, rows, method, x, extra), strict=True):
                    outputs[i] = row
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        forward_ms = (time.perf_counter() - start) * 1e3

        def respond(i: int) -> Result:
            out = outputs[i]
            assert out is not None
            return guarded(lambda: self.respond(items[i], out, forward_ms, len(items)), "rendering this answer")

        if len(items) == 1 or not any(p.options.wants_cam and p.options.images != "none" for p in items):
            return [respond(i) for i in range(len(items))]
        return list(self.pool.map(respond, range(len(items))))

    @staticmethod
    def groups(items: Sequence[Prepared]) -> list[tuple[list[int], str | None]]:
        """Rows sharing a forward: one group per requested method (``None``: prediction only)."""
        methods = list(dict.fromkeys(p.options.explain for p in items if p.options.wants_cam))
        if not methods:
            return [(list(range(len(items))), None)]
        groups = {m: [i for i, p in enumerate(items) if p.options.explain == m] for m in methods}
        groups[methods[0]] = sorted(groups[methods[0]] + [i for i, p in enumerate(items) if not p.options.wants_cam])
        return [(rows, m) for m, rows in groups.items()]

    def forward(self, items: Sequence[Prepared], rows: list[int], method: str | None, x: torch.Tensor,
                extra: tuple[torch.Tensor, ...]) -> list[RowOutput]:
        """One group's pass: predictions and maps, then its faithfulness rows (one more forward)."""
        index = torch.as_tensor(rows, device=x.device)
        xs = x if len(rows) == len(items) else x.index_select(0, index)
        es = tuple(e if len(rows) == len(items) else e.index_select(0, index) for e in extra)
        if method is None:
            out = cam_ops.predict(self.model, xs, es)
        else:
            layers = self.fusion if method == FUSION else [self.layer]
            out = cam_ops.explain_batch(self.model, layers, xs, [list(items[i].options.targets) for i in rows], es,
                                        method)
        faith: list[list[Faithfulness] | None] = [None] * len(rows)
        asked = [j for j, i in enumerate(rows) if items[i].options.faithfulness and out.cams is not None]
        if asked and out.cams is not None:
            sub = torch.as_tensor(asked, device=x.device)
            maps = cam_ops.input_maps([out.cams[j] for j in asked], self.spec.input_size)
            scores = faithfulness.score(self.model, xs.index_select(0, sub), [e.index_select(0, sub) for e in es],
                                        maps.to(x.device), [out.targets[j] for j in asked],
                                        out.log_probs[asked])
            it = iter(scores)
            for j in asked:
                faith[j] = [next(it) for _ in out.targets[j]]
        return [RowOutput(out.log_probs[j], out.targets[j], None if out.cams is None else out.cams[j], faith[j])
                for j in range(len(rows))]

    def batch(self, items: Sequence[Prepared]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Stack the uint8 inputs, move them to the device and normalise them there."""
        pixels = torch.stack([p.pixels for p in items])
        cuda = self.device.type == "cuda"
        if cuda:
            pixels = pixels.pin_memory()
        x = pixels.to(self.device, non_blocking=cuda).float().div_(255.0).sub_(self.mean).div_(self.std)
        if self.settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        extra: tuple[torch.Tensor, ...] = ()
        if self.schema is not None:
            extra = (torch.stack([p.tabular for p in items if p.tabular is not None]).to(self.device),)
        return x, extra

    def respond(self, item: Prepared, out: RowOutput, forward_ms: float, batch_size: int) -> ExplainResponse:
        """Shape one sample's response."""
        start = time.perf_counter()
        names = self.spec.class_names
        probs = out.log_probs.exp().tolist()
        order = sorted(range(len(names)), key=lambda k: -probs[k])
        topk = item.options.topk or min(5, len(names))
        pred = order[0]
        maps: list[Explanation] = []
        if item.options.wants_cam and out.cams is not None:
            shown = shown_image(item.image, item.options.max_side)
            maps = [self.explanation(item, shown, out.cams[t], target, None if out.faith is None else out.faith[t])
                    for t, target in enumerate(out.targets)]
        timing = {"preprocess": round(item.preprocess_ms, 2), "forward": round(forward_ms, 2),
                  "render": round((time.perf_counter() - start) * 1e3, 2), "batch_size": batch_size}
        return ExplainResponse(
            model=self.info,
            prediction=Prediction(names[pred], pred, probs[pred]),
            topk=[ClassScore(names[k], k, probs[k]) for k in order[:topk]],
            probabilities={names[k]: probs[k] for k in range(len(names))},
            explanation=maps[0] if maps else None,
            error=None if item.options.label is None else error_info(names, out.log_probs, item.options.label),
            timing_ms=timing,
            explanations=maps if len(maps) > 1 else None,
        )

    def explanation(self, item: Prepared, shown: Image.Image, raw_cam: torch.Tensor, target: int,
                    faith: Faithfulness | None) -> Explanation:
        """Normalise, render and score one map."""
        cam, top = cam_ops.normalise(raw_cam)
        opts = item.options
        images = None
        focus = None
        if opts.images != "none" or item.mask is not None:
            cam_up = cam_ops.upsample(cam, shown.height, shown.width)
            images = encode_images(shown, cam_up, opts.colormap, opts.alpha, opts.images, opts.image_format)
            if item.mask is not None:
                mask = Image.fromarray(item.mask).resize(shown.size, Image.Resampling.NEAREST)
                focus = cam_ops.focus_score(cam_up, torch.from_numpy(np.array(mask)))
        return Explanation(
            method=opts.explain, target=Target(self.spec.class_names[target], target),
            cam=np.round(cam.numpy().astype(np.float64), 5).tolist(), cam_max=top,
            heatmap=None if images is None else images.heatmap,
            overlay=None if images is None else images.overlay, focus_score=focus, faithfulness=faith)


@dataclass(frozen=True)
class RowOutput:
    """One row's share of the forward: log-probabilities, explained classes, raw maps, faithfulness."""

    log_probs: torch.Tensor
    targets: list[int]
    cams: torch.Tensor | None
    faith: list[Faithfulness] | None


def guarded(step: Callable[[], T], doing: str) -> T | CamserveError:
    """Run one row's step; return its ``CamserveError`` (4xx as raised, anything else as a logged 500)."""
    try:
        return step()
    except RequestError as exc:
        return exc
    except CamserveError as exc:
        log.warning("camserve: %s failed: %s", doing, exc.message)
        return exc
    except Exception:
        log.exception("camserve: %s failed", doing)
        return ServerError(f"internal error while {doing}; see the server log")


def error_info(names: Sequence[str], log_probs: torch.Tensor, true_index: int) -> ErrorInfo:
    """Per-sample error metadata for a known true class."""
    probs = log_probs.exp().tolist()
    pred = max(range(len(names)), key=lambda k: probs[k])
    others = [p for k, p in enumerate(probs) if k != true_index]
    correct = pred == true_index
    loss = -float(log_probs[true_index])
    return ErrorInfo(
        true_label=names[true_index], true_index=true_index, correct=correct,
        pair=None if correct else f"{names[true_index]}_as_{names[pred]}",
        true_probability=probs[true_index], margin=probs[true_index] - max(others),
        loss=loss if math.isfinite(loss) else 1e9)
