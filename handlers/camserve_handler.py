"""TorchServe adapter over the camserve core: parse the batch, call the core, shape responses.

Packed into every .mar by ``scripts/archive.py`` beside a copy of the ``camserve`` package (TorchServe
puts the model directory on ``sys.path``). Per-request failures never fail the batch: each bad request
gets its own 4xx status via ``context.set_response_status`` and a ``{code, type, message}`` body.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from typing import Any

import torch

from camserve.errors import CamserveError, InvalidRequest, PayloadTooLarge, ServerError
from camserve.explainer import Explainer
from camserve.schema import ExplainResponse

log = logging.getLogger(__name__)
DEFAULT_MAX_RESPONSE_BYTES = 6_553_500  # TorchServe's own default max_response_size


class CamserveHandler:
    """Predictions, Grad-CAM and error metadata in one request."""

    def __init__(self) -> None:
        self.explainer: Explainer | None = None
        self.max_response_bytes = DEFAULT_MAX_RESPONSE_BYTES
        self.initialized = False

    def initialize(self, context: Any) -> None:
        props = context.system_properties
        manifest = context.manifest["model"]
        gpu = props.get("gpu_id")
        device = f"cuda:{gpu}" if gpu is not None and torch.cuda.is_available() else "cpu"
        settings = (context.model_yaml_config or {}).get("camserve", {})
        self.max_response_bytes = int(settings.get("max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES))
        path = os.path.join(props["model_dir"], manifest["serializedFile"])
        model_file = manifest.get("modelFile")  # a custom model class, packed with --model-file
        self.explainer = Explainer.from_checkpoint(
            path, name=manifest["modelName"], version=str(manifest.get("modelVersion", "1.0")), device=device,
            model_file=os.path.join(props["model_dir"], model_file) if model_file else None)
        log.info("camserve: %s (%s, layer %s) on %s", manifest["modelName"], self.explainer.spec.arch,
                 self.explainer.spec.target_layer, device)
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[str]:
        """One JSON string per request, in order; statuses set per request."""
        if context.get_request_header(0, "describe") == "True":  # GET /models/{name}?customized=true
            return [json.dumps(asdict(self.explainer.info), separators=(",", ":"))]
        try:
            results = self.explainer.handle(data)
        except Exception:  # a bug or device failure: answer every request, keep the worker alive
            log.exception("camserve: batch of %d failed", len(data))
            results = [ServerError("internal error while explaining; see the server log")] * len(data)
        return [self.shape(result, idx, context) for idx, result in enumerate(results)]

    def shape(self, result: ExplainResponse | CamserveError, idx: int, context: Any) -> str:
        """Serialise one result compactly, as the full response or, on /explanations, the explanation."""
        if not isinstance(result, CamserveError):
            result = self.body_of(result, context.get_request_header(idx, "explain") == "True")
        if isinstance(result, CamserveError):
            body = json.dumps(result.to_payload(), separators=(",", ":"))
            context.set_response_status(result.status, type(result).__name__, idx)
        else:
            body = result
        context.set_response_content_type(idx, "application/json")
        return body

    def body_of(self, response: ExplainResponse, explain_route: bool) -> str | CamserveError:
        if explain_route:
            if response.explanation is None:
                return InvalidRequest("field 'explain': /explanations always explains; drop explain=none")
            body = json.dumps(response.to_dict()["explanation"], separators=(",", ":"))
        else:
            body = response.to_json()
        if len(body) > self.max_response_bytes:
            return PayloadTooLarge(
                f"the response would be {len(body)} bytes, over the {self.max_response_bytes} limit: "
                "lower 'max_side'")
        return body
