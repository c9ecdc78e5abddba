"""Request options and the response, typed once and imported by every component (STYLE.md #2).

The handler builds an :class:`ExplainResponse` and serialises it with :meth:`ExplainResponse.to_json`;
the Gradio app and the analysis script read the server's JSON back with :meth:`ExplainResponse.from_dict`.
Nobody builds the response dict by hand elsewhere.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1

COLORMAPS = ("jet", "hot", "viridis", "inferno", "gray")
EXPLAIN_METHODS = ("gradcam", "none")
DEFAULT_ALPHA = 0.5
DEFAULT_MAX_SIDE = 512
MAX_MAX_SIDE = 1024  # bounds the response size: two PNGs of at most 1024 px a side


@dataclass(frozen=True)
class ExplainOptions:
    """What one request asks for, validated (see ``camserve.parsing``).

    ``target`` and ``label`` are class indices; ``None`` means "the predicted class" and "no label".
    ``topk`` is ``None`` for the default, min(5, number of classes).
    """

    target: int | None = None
    label: int | None = None
    topk: int | None = None
    explain: str = "gradcam"
    colormap: str = "jet"
    alpha: float = DEFAULT_ALPHA
    max_side: int = DEFAULT_MAX_SIDE

    @property
    def wants_cam(self) -> bool:
        return self.explain != "none"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    arch: str
    layer: str
    classes: list[str]
    input_size: int
    tabular: dict[str, Any] | None = None  # the clinical-field schema of a multimodal model


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    confidence: float


@dataclass(frozen=True)
class ClassScore:
    label: str
    index: int
    probability: float


@dataclass(frozen=True)
class Target:
    label: str
    index: int


@dataclass(frozen=True)
class Explanation:
    """Grad-CAM of one image for one class.

    ``cam`` is at feature-map resolution, normalised to [0, 1]; ``cam_max`` is its raw maximum before
    normalisation (0 when the map has no positive evidence, and then ``cam`` is all zeros).
    ``heatmap`` and ``overlay`` are PNG data URLs at the original aspect ratio. ``focus_score`` is the
    share of heatmap energy inside the request's mask, or ``None`` without a mask (or with no evidence).
    """

    method: str
    target: Target
    cam: list[list[float]]
    cam_max: float
    heatmap: str
    overlay: str
    focus_score: float | None = None


@dataclass(frozen=True)
class ErrorInfo:
    """Per-sample error metadata, present when the request sent its true label.

    ``margin`` is p(true) minus the highest other probability (negative when wrong);
    ``loss`` is the cross-entropy -ln p(true); ``pair`` is ``"TRUE_as_PRED"`` or ``None`` when correct.
    """

    true_label: str
    true_index: int
    correct: bool
    pair: str | None
    true_probability: float
    margin: float
    loss: float


@dataclass(frozen=True)
class ExplainResponse:
    model: ModelInfo
    prediction: Prediction
    topk: list[ClassScore]
    probabilities: dict[str, float]
    explanation: Explanation | None
    error: ErrorInfo | None = None
    timing_ms: dict[str, float] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict; ``error`` is left out when no label was sent."""
        out = asdict(self)
        if self.error is None:
            del out["error"]
        return out

    def to_json(self) -> str:
        """Compact JSON (TorchServe would otherwise pretty-print with indent=2)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExplainResponse:
        """Parse a server's JSON response."""
        exp = data.get("explanation")
        err = data.get("error")
        return cls(
            model=ModelInfo(**data["model"]),
            prediction=Prediction(**data["prediction"]),
            topk=[ClassScore(**c) for c in data["topk"]],
            probabilities=dict(data["probabilities"]),
            explanation=None if exp is None else explanation_from_dict(exp),
            error=None if err is None else ErrorInfo(**err),
            timing_ms=dict(data.get("timing_ms", {})),
            schema_version=int(data.get("schema_version", SCHEMA_VERSION)),
        )


def explanation_from_dict(data: dict[str, Any]) -> Explanation:
    """Parse an ``explanation`` object (the whole body of ``/explanations/{name}``)."""
    return Explanation(**{**data, "target": Target(**data["target"])})
