"""Request options and the response, typed once and imported by every component.

The handler builds an :class:`ExplainResponse` and serialises it with :meth:`ExplainResponse.to_json`;
the Gradio app and the analysis script read the server's JSON back with :meth:`ExplainResponse.from_dict`.
Nobody builds the response dict by hand elsewhere.

Schema version 2 (backwards compatible with 1: every version-1 field keeps its name and meaning):

- ``explanation`` is the map of the first requested class, as before; when a request asks for several
  classes (``target=all`` or ``target=a,b``), ``explanations`` lists every map in request order (its
  first item equals ``explanation``); single-map answers leave ``explanations`` out;
- ``heatmap`` / ``overlay`` are ``null`` when the request's ``images`` option leaves them out; the
  overlay's data URL carries its own MIME type (``image/jpeg``, ``image/webp`` or ``image/png``);
- ``faithfulness`` (an :class:`Faithfulness`) is present with ``faithfulness=true``, else ``null``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 2

COLORMAPS = ("jet", "hot", "viridis", "inferno", "gray")
CAM_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "layercam-fusion")
EXPLAIN_METHODS = (*CAM_METHODS, "none")
IMAGE_SETS = ("both", "overlay", "heatmap", "none")  # which rendered images the answer carries
IMAGE_FORMATS = ("jpeg", "webp", "png")  # of the overlay; the heatmap is always a palette PNG (lossless)
DEFAULT_ALPHA = 0.5
DEFAULT_MAX_SIDE = 512
DEFAULT_IMAGE_FORMAT = "jpeg"
MAX_MAX_SIDE = 1024  # bounds the response size: two images of at most 1024 px a side
MAX_TARGETS = 32  # classes explained in one request (target=all on a larger model is refused)


@dataclass(frozen=True)
class ExplainOptions:
    """What one request asks for, validated (see ``camserve.parsing``).

    ``targets`` are the class indices to explain, in order; empty means "the predicted class".
    ``label`` is the true class index or ``None``. ``topk`` is ``None`` for the default,
    min(5, number of classes).
    """

    targets: tuple[int, ...] = ()
    label: int | None = None
    topk: int | None = None
    explain: str = "gradcam"
    colormap: str = "jet"
    alpha: float = DEFAULT_ALPHA
    max_side: int = DEFAULT_MAX_SIDE
    images: str = "both"
    image_format: str = DEFAULT_IMAGE_FORMAT
    faithfulness: bool = False

    @property
    def wants_cam(self) -> bool:
        return self.explain != "none"

    @property
    def target(self) -> int | None:
        """The first requested class (``None``: the predicted one); the single-map view of ``targets``."""
        return self.targets[0] if self.targets else None


@dataclass(frozen=True)
class ModelInfo:
    """What a served model is: ``cam_method`` is the map a request gets when it names none, and
    ``fusion_layers`` the layers ``layercam-fusion`` fuses (``layer`` is every other method's)."""

    name: str
    version: str
    arch: str
    layer: str
    classes: list[str]
    input_size: int
    tabular: dict[str, Any] | None = None  # the clinical-field schema of a multimodal model
    cam_method: str = "gradcam"
    fusion_layers: list[str] = field(default_factory=list)


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
class Faithfulness:
    """How much the prediction depends on what the map shows, from one extra no-grad forward.

    Attributes:
        confidence: p(target | image).
        masked_confidence: p(target | image multiplied by its map, upsampled to the input).
        average_drop: ``max(0, confidence - masked_confidence) / confidence`` (lower is better).
        increase: ``masked_confidence > confidence`` (averaged over a dataset: "increase in confidence").
        deletion_confidence: p(target | image with the map's top ``deletion_fraction`` of pixels removed).
        deletion_drop: ``max(0, confidence - deletion_confidence) / confidence`` (higher is better).
        deletion_fraction: The share of pixels removed (0.2).
    """

    confidence: float
    masked_confidence: float
    average_drop: float
    increase: bool
    deletion_confidence: float
    deletion_drop: float
    deletion_fraction: float = 0.2


@dataclass(frozen=True)
class Explanation:
    """A class-activation map of one image for one class.

    ``cam`` is at feature-map resolution, normalised to [0, 1]; ``cam_max`` is its raw maximum before
    normalisation (0 when the map has no positive evidence, and then ``cam`` is all zeros).
    ``heatmap`` (palette PNG) and ``overlay`` (``image_format``) are data URLs at the original aspect
    ratio, or ``None`` when the request's ``images`` option leaves them out. ``focus_score`` is the share
    of the map's energy inside the request's mask, or ``None`` without a mask (or with no evidence).
    """

    method: str
    target: Target
    cam: list[list[float]]
    cam_max: float
    heatmap: str | None
    overlay: str | None
    focus_score: float | None = None
    faithfulness: Faithfulness | None = None


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
    explanations: list[Explanation] | None = None

    @property
    def maps(self) -> list[Explanation]:
        """Every explanation of the answer, in request order (empty with ``explain=none``)."""
        if self.explanations:
            return list(self.explanations)
        return [] if self.explanation is None else [self.explanation]

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict; ``error`` is left out when no label was sent, ``explanations`` when
        the answer has at most one map."""
        out = asdict(self)
        if self.error is None:
            del out["error"]
        if not self.explanations or len(self.explanations) < 2:
            del out["explanations"]
        return out

    def to_json(self) -> str:
        """Compact JSON (TorchServe would otherwise pretty-print with indent=2)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExplainResponse:
        """Parse a server's JSON response."""
        exp = data.get("explanation")
        err = data.get("error")
        many = data.get("explanations")
        return cls(
            model=ModelInfo(**data["model"]),
            prediction=Prediction(**data["prediction"]),
            topk=[ClassScore(**c) for c in data["topk"]],
            probabilities=dict(data["probabilities"]),
            explanation=None if exp is None else explanation_from_dict(exp),
            error=None if err is None else ErrorInfo(**err),
            timing_ms=dict(data.get("timing_ms", {})),
            schema_version=int(data.get("schema_version", SCHEMA_VERSION)),
            explanations=None if not many else [explanation_from_dict(e) for e in many],
        )


def explanation_from_dict(data: dict[str, Any]) -> Explanation:
    """Parse an ``explanation`` object (the whole body of ``/explanations/{name}``)."""
    faith = data.get("faithfulness")
    return Explanation(**{**data, "target": Target(**data["target"]),
                          "faithfulness": None if faith is None else Faithfulness(**faith)})
