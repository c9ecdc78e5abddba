"""The batch pipeline: request rows in, one ``ExplainResponse`` or ``RequestError`` per row out.

A bad row (undecodable image, unknown class, alpha out of range...) becomes its own error and is left
out of the forward; the others are batched into one fused prediction + Grad-CAM pass.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from camserve import cam as cam_ops
from camserve.archs import get_module
from camserve.checkpoint import ModelSpec, load_checkpoint
from camserve.errors import InvalidRequest, RequestError
from camserve.imaging import decode_image, decode_mask, preprocess
from camserve.parsing import parse_options, split_request
from camserve.render import render, to_data_url
from camserve.schema import (
    ClassScore,
    ErrorInfo,
    ExplainOptions,
    ExplainResponse,
    Explanation,
    ModelInfo,
    Prediction,
    Target,
)

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """One valid request, decoded."""

    image: Image.Image
    tensor: torch.Tensor
    mask: Any  # numpy bool array at the image's size, or None
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
    """

    def __init__(self, model: nn.Module, spec: ModelSpec, name: str, version: str = "1.0",
                 device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.spec = spec
        self.layer = get_module(self.model, spec.target_layer)
        self.schema = spec.schema
        self.info = ModelInfo(name=name, version=version, arch=spec.arch, layer=spec.target_layer,
                              classes=list(spec.class_names), input_size=spec.input_size,
                              tabular=spec.tabular)

    @classmethod
    def from_checkpoint(cls, path: str | Path, name: str, version: str = "1.0",
                        device: str | torch.device = "cpu", **overrides: Any) -> Explainer:
        model, spec = load_checkpoint(path, **overrides)
        return cls(model, spec, name, version, device)

    def handle(self, rows: Sequence[Mapping[str, Any]]) -> list[ExplainResponse | RequestError]:
        """Answer a batch of request rows, one result per row, in order."""
        results: list[ExplainResponse | RequestError | None] = [None] * len(rows)
        prepared: dict[int, Prepared] = {}
        for i, row in enumerate(rows):
            try:
                prepared[i] = self.prepare(row)
            except RequestError as exc:
                results[i] = exc
        if prepared:
            for i, response in zip(prepared, self.run(list(prepared.values())), strict=True):
                results[i] = response
        return results  # type: ignore[return-value]

    def prepare(self, row: Mapping[str, Any]) -> Prepared:
        """Decode and validate one row (raises ``RequestError``)."""
        start = time.perf_counter()
        raw = split_request(row, self.schema.names if self.schema else ())
        options = parse_options(raw.fields, self.spec.class_names)
        if options.explain not in ("gradcam", "none"):
            raise InvalidRequest(f"field 'explain': {options.explain!r} is not served by this version yet")
        if self.schema is None and raw.clinical:
            raise InvalidRequest("field 'clinical': this model takes no clinical fields")
        tabular = None if self.schema is None else self.schema.encode(raw.clinical)
        image = decode_image(raw.image, "data")
        mask = None if raw.mask is None else decode_mask(raw.mask, image.size, "mask")
        tensor = preprocess(image, self.spec.input_size, self.spec.mean, self.spec.std)
        return Prepared(image, tensor, mask, options, (time.perf_counter() - start) * 1e3, tabular)

    def run(self, items: Sequence[Prepared]) -> list[ExplainResponse]:
        """One forward for the whole batch, then per-item rendering."""
        start = time.perf_counter()
        x = torch.stack([p.tensor for p in items]).to(self.device)
        extra = () if self.schema is None else (torch.stack([p.tabular for p in items]).to(self.device),)
        if any(p.options.wants_cam for p in items):
            out = cam_ops.predict_and_explain(self.model, self.layer, x, [p.options.target for p in items], extra)
        else:
            out = cam_ops.predict(self.model, x, extra)
        forward_ms = (time.perf_counter() - start) * 1e3
        return [self.respond(p, out, i, forward_ms, len(items)) for i, p in enumerate(items)]

    def respond(self, item: Prepared, out: cam_ops.FusedOutput, i: int, forward_ms: float,
                batch_size: int) -> ExplainResponse:
        """Shape one sample's response."""
        start = time.perf_counter()
        names = self.spec.class_names
        log_probs = out.log_probs[i]
        probs = log_probs.exp().tolist()
        order = sorted(range(len(names)), key=lambda k: -probs[k])
        topk = item.options.topk or min(5, len(names))
        pred = order[0]
        explanation = None
        if item.options.wants_cam and out.cams is not None:
            explanation = self.explanation(item, out.cams[i], out.targets[i])
        return ExplainResponse(
            model=self.info,
            prediction=Prediction(names[pred], pred, probs[pred]),
            topk=[ClassScore(names[k], k, probs[k]) for k in order[:topk]],
            probabilities={names[k]: probs[k] for k in range(len(names))},
            explanation=explanation,
            error=None if item.options.label is None else error_info(names, log_probs, item.options.label),
            timing_ms={"preprocess": round(item.preprocess_ms, 2), "forward": round(forward_ms, 2),
                       "render": round((time.perf_counter() - start) * 1e3, 2), "batch_size": batch_size},
        )

    def explanation(self, item: Prepared, raw_cam: torch.Tensor, target: int) -> Explanation:
        """Normalise, render and score one map."""
        cam, top = cam_ops.normalise(raw_cam)
        opts = item.options
        heat, overlay, cam_up = render(item.image, cam, opts.colormap, opts.alpha, opts.max_side)
        focus = None
        if item.mask is not None:
            mask = Image.fromarray(item.mask).resize(overlay.size, Image.NEAREST)
            focus = cam_ops.focus_score(cam_up, torch.from_numpy(np.array(mask)))
        return Explanation(
            method="gradcam", target=Target(self.spec.class_names[target], target),
            cam=[[round(v, 5) for v in row] for row in cam.tolist()], cam_max=top,
            heatmap=to_data_url(heat), overlay=to_data_url(overlay), focus_score=focus)


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
