"""TorchServe adapter over the camserve core: parse the batch, call the core, shape responses.

Packed into every .mar by ``scripts/archive.py`` beside a copy of the ``camserve`` package (TorchServe
puts the model directory on ``sys.path``). Per-request failures never fail the batch: each bad request
gets its own status via ``context.set_response_status`` and a ``{code, type, message}`` body, and the
handler always answers exactly one body per request (TorchServe fails the whole batch otherwise).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from typing import Any

import torch

from camserve.errors import CamserveError, InvalidRequest, PayloadTooLarge, RequestError, ServerError
from camserve.explainer import Explainer, Result, RunSettings
from camserve.schema import ExplainResponse

log = logging.getLogger(__name__)
DEFAULT_MAX_RESPONSE_BYTES = 6_553_500  # TorchServe's own default max_response_size
COMPACT = (",", ":")


class CamserveHandler:
    """Predictions, class-activation maps and error metadata in one request."""

    def __init__(self) -> None:
        self.explainer: Explainer | None = None
        self.max_response_bytes = DEFAULT_MAX_RESPONSE_BYTES
        self.initialized = False

    def initialize(self, context: Any) -> None:
        props = context.system_properties
        manifest = context.manifest["model"]
        gpu = props.get("gpu_id")
        device = f"cuda:{gpu}" if gpu is not None and torch.cuda.is_available() else "cpu"
        config = context.model_yaml_config or {}
        settings = config.get("camserve", {}) or {}
        self.max_response_bytes = int(settings.get("max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES))
        if device == "cpu":
            torch.set_num_threads(cpu_threads(settings, config))
        path = os.path.join(props["model_dir"], manifest["serializedFile"])
        model_file = manifest.get("modelFile")  # a custom model class, packed with --model-file
        self.explainer = Explainer.from_checkpoint(
            path, name=manifest["modelName"], version=str(manifest.get("modelVersion", "1.0")), device=device,
            settings=RunSettings.from_config(settings),
            model_file=os.path.join(props["model_dir"], model_file) if model_file else None)
        log.info("camserve: %s (%s, layer %s) on %s, %d torch threads", manifest["modelName"],
                 self.explainer.spec.arch, self.explainer.spec.target_layer, device, torch.get_num_threads())
        self.initialized = True

    def handle(self, data: list[Any], context: Any) -> list[str]:
        """One JSON string per request, in order; statuses set per request."""
        explainer = self.explainer
        if explainer is None:
            raise RuntimeError("the handler was not initialised")
        if is_describe(data, context):  # GET /models/{name}?customized=true
            return [json.dumps(asdict(explainer.info), separators=COMPACT)]
        start = time.perf_counter()
        try:
            results = explainer.handle(data)
        except Exception:  # the core answers every row itself; this is the last line of defence
            log.exception("camserve: batch of %d failed", len(data))
            results = [ServerError("internal error while explaining; see the server log")] * len(data)
        bodies = [self.shape(result, idx, context) for idx, result in enumerate(results)]
        record_metrics(context, results, (time.perf_counter() - start) * 1e3)
        return bodies

    def shape(self, result: Result, idx: int, context: Any) -> str:
        """Serialise one result compactly: the full response or, on /explanations, the explanation alone."""
        try:
            outcome: str | CamserveError = result if isinstance(result, CamserveError) else self.body_of(
                result, context.get_request_header(idx, "explain") == "True")
        except Exception:
            log.exception("camserve: serialising answer %d failed", idx)
            outcome = ServerError("internal error while serialising this answer; see the server log")
        if isinstance(outcome, CamserveError):
            body = json.dumps(outcome.to_payload(), separators=COMPACT)
            context.set_response_status(outcome.status, type(outcome).__name__, idx)
        else:
            body = outcome
        context.set_response_content_type(idx, "application/json")
        return body

    def body_of(self, response: ExplainResponse, explain_route: bool) -> str | CamserveError:
        if explain_route:
            if response.explanation is None:
                return InvalidRequest("field 'explain': /explanations always explains; drop explain=none")
            body = json.dumps(response.to_dict()["explanation"], separators=COMPACT, allow_nan=False)
        else:
            body = response.to_json()
        if len(body) > self.max_response_bytes:
            return PayloadTooLarge(
                f"the response would be {len(body)} bytes, over the {self.max_response_bytes} limit: "
                "lower 'max_side', ask for fewer classes, or images=none")
        return body


def is_describe(data: list[Any], context: Any) -> bool:
    """TorchServe's own describe call: one row, no payload, header ``describe: True``.

    A client can send any header with a prediction; a describe header on a row that carries a body
    is a prediction and is answered as one (honouring it would answer one body for the whole batch).
    """
    if len(data) != 1 or context.get_request_header(0, "describe") != "True":
        return False
    row = data[0]
    return not row or (isinstance(row, dict) and not any(row.values()))


def cpu_threads(settings: dict[str, Any], config: dict[str, Any]) -> int:
    """Torch threads per worker: the model's ``camserve.threads``, else the cores shared by its workers.

    Workers x threads never exceeding the cores: two workers of two threads each on a 2-core machine
    halve the throughput of one.
    """
    if settings.get("threads"):
        return max(1, int(settings["threads"]))
    workers = int(config.get("minWorkers") or 1)
    return max(1, (os.cpu_count() or 1) // workers)


def record_metrics(context: Any, results: list[Result], elapsed_ms: float) -> None:
    """The handler's own metrics, through TorchServe's metrics API (never fails a batch)."""
    metrics = getattr(context, "metrics", None)
    if metrics is None:
        return
    try:
        from ts.metrics.dimension import Dimension  # TorchServe's own; absent outside a worker
        from ts.metrics.metric_type_enum import MetricTypes

        # Declared in the deployed metrics config (deploy/torchserve/metrics.yaml); fresh dimension lists
        # each call: TorchServe's default list is shared and mutated.
        metrics.add_metric("CamserveRequestLatencyMs", elapsed_ms, "ms", dimensions=[],
                           metric_type=MetricTypes.HISTOGRAM)
        metrics.add_metric("CamserveBatchSize", len(results), "count", dimensions=[],
                           metric_type=MetricTypes.HISTOGRAM)
        for result in results:
            if isinstance(result, RequestError):
                metrics.add_counter("CamserveRejectedRequests", 1, dimensions=[Dimension("Code", str(result.status))])
    except Exception:
        log.debug("camserve: metrics not recorded", exc_info=True)
