"""Checkpoints that describe themselves, read as weights only.

Accepted layouts, all loaded with ``torch.load(..., weights_only=True)``:

(a) camserve's own: ``{"state_dict", "arch", "class_names"[, "input_size", "mean", "std", "target_layer",
    "cam_method", "fusion_layers"]}``;
(b) a common training-script layout: ``{"model_state_dict", "class_names", "model_name" or "arch"}``,
    keys possibly prefixed ``backbone.``, ``module.`` (DataParallel) or ``_orig_mod.`` (torch.compile);
(c) a bare state_dict, with ``arch`` and ``class_names`` given by the caller.

A custom model class (TorchServe's ``--model-file`` convention: one file, one ``nn.Module`` class, built
with the checkpoint's ``model_args``) replaces the torchvision ``arch``; its forward takes ``(image)`` or,
with a tabular schema (``camserve.tabular``), ``(image, tabular)``.

Everything that could go wrong at the first request (unknown arch, missing or unexpected keys, a head
whose size does not match the class names, a pickled full model) fails here, with what to do about it.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from camserve.archs import (
    DEFAULT_FUSION_LAYERS,
    DEFAULT_TARGET_LAYERS,
    auto_fusion_layers,
    auto_target_layer,
    build_arch,
    get_module,
)
from camserve.cam_methods import METHODS
from camserve.errors import CheckpointError
from camserve.tabular import TabularSchema

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FORMAT = "camserve-checkpoint/1"
_PREFIXES = ("module.", "_orig_mod.", "backbone.")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild, preprocess for and explain a model.

    ``num_outputs`` is the head size: ``len(class_names)`` for softmax heads, 1 for a single-logit
    binary head (then ``class_names`` is ``[negative, positive]`` and probabilities come from a sigmoid).
    ``cam_method`` is the map a request gets when it names none (one of ``camserve.cam_methods.METHODS``);
    ``fusion_layers`` are the layers ``layercam-fusion`` fuses (empty until :func:`build_model` settles
    them: the arch's defaults, or an automatic choice).
    """

    arch: str
    class_names: tuple[str, ...]
    num_outputs: int
    target_layer: str
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    model_file: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    tabular: dict[str, Any] | None = None
    cam_method: str = "gradcam"
    fusion_layers: tuple[str, ...] = ()

    @property
    def single_logit(self) -> bool:
        return self.num_outputs == 1

    @property
    def schema(self) -> TabularSchema | None:
        return None if self.tabular is None else TabularSchema.from_dict(self.tabular)

    def dummy_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        """Zero inputs of the right shapes, for checking a model at archive time."""
        image = torch.zeros(batch, 3, self.input_size, self.input_size)
        schema = self.schema
        return (image,) if schema is None else (image, torch.zeros(batch, schema.width))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {**d, "class_names": list(self.class_names), "mean": list(self.mean), "std": list(self.std),
                "fusion_layers": list(self.fusion_layers)}


def load_file(path: str | Path) -> Any:
    """``torch.load`` with ``weights_only=True``, mapping failures to actionable errors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if not found:
            raise CheckpointError(f"{path.name} is not a readable torch checkpoint") from exc
        raise CheckpointError(
            f"{path.name} holds pickled Python objects ({found.group(1)}: a full model?), which camserve "
            "never unpickles: save `{'state_dict': model.state_dict(), 'arch': ..., 'class_names': [...]}` "
            "with torch.save instead") from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path.name} is not a readable torch checkpoint: {exc}") from exc


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop ``module.``, ``_orig_mod.`` and ``backbone.`` prefixes (in any order, repeatedly)."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def split_checkpoint(obj: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Separate the weights from the metadata of any accepted layout."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a dict checkpoint, got {type(obj).__name__}")
    for key in ("state_dict", "model_state_dict"):
        if isinstance(obj.get(key), Mapping):
            meta = {k: v for k, v in obj.items() if k != key}
            if "arch" not in meta and "model_name" in meta:
                meta["arch"] = meta["model_name"]
            return strip_prefixes(obj[key]), meta
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return strip_prefixes(obj), {}
    raise CheckpointError(
        "checkpoint has neither 'state_dict' nor 'model_state_dict' and is not a bare state_dict; "
        f"its keys are: {', '.join(map(str, list(obj)[:20]))}")


def head_size(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Output size of the classifier: the last 2-D weight in a torchvision state_dict."""
    for key in reversed(list(state_dict)):
        if key.endswith("weight") and state_dict[key].dim() == 2:
            return int(state_dict[key].shape[0])
    raise CheckpointError("no linear classifier weight found in the state_dict")


def resolve_spec(meta: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor],
                 overrides: Mapping[str, Any]) -> ModelSpec:
    """Merge checkpoint metadata and caller overrides (overrides win) into a checked ``ModelSpec``."""
    merged = {**meta, **{k: v for k, v in overrides.items() if v is not None}}
    names = merged.get("class_names")
    model_file = merged.get("model_file")
    arch = merged.get("arch") or (f"custom:{Path(model_file).stem}" if model_file else None)
    if not arch:
        raise CheckpointError("the checkpoint does not name its architecture: pass --arch")
    if not names:
        raise CheckpointError("the checkpoint does not list its class names: pass --classes a,b,c")
    names = tuple(str(n) for n in names)
    if len(set(names)) != len(names) or any(not n.strip() for n in names):
        raise CheckpointError(f"class names must be unique and non-empty, got {list(names)}")
    outputs = 0 if model_file else head_size(state_dict)  # a custom model's head is found by a forward
    if outputs:
        check_head(outputs, names)
    tabular = merged.get("tabular")
    if tabular is not None:
        tabular = TabularSchema.from_dict(tabular).to_dict()
    size = int(merged.get("input_size") or 224)
    if not 16 <= size <= 1024:
        raise CheckpointError(f"input_size must be between 16 and 1024, got {size}")
    return ModelSpec(
        arch=str(arch), class_names=names, num_outputs=outputs,
        target_layer=str(merged.get("target_layer") or DEFAULT_TARGET_LAYERS.get(str(arch), "")),
        input_size=size,
        mean=rgb(merged.get("mean") or IMAGENET_MEAN, "mean"),
        std=rgb(merged.get("std") or IMAGENET_STD, "std"),
        model_file=str(model_file) if model_file else None,
        model_args=dict(merged.get("model_args") or {}),
        tabular=tabular,
        cam_method=cam_method(merged.get("cam_method")),
        fusion_layers=layer_list(merged.get("fusion_layers")),
    )


def rgb(values: Any, name: str) -> tuple[float, float, float]:
    """Three per-channel floats (the normalisation's mean or std)."""
    items = [float(v) for v in values]
    if len(items) != 3:
        raise CheckpointError(f"{name} must have 3 values (R, G, B), got {len(items)}")
    return items[0], items[1], items[2]


def cam_method(value: Any) -> str:
    """The model's default CAM method; raises ``CheckpointError`` for an unknown one."""
    method = str(value or "gradcam")
    if method not in METHODS:
        raise CheckpointError(f"unknown CAM method {method!r}: use one of {', '.join(METHODS)}")
    return method


def layer_list(value: Any) -> tuple[str, ...]:
    """Dotted layer names from a list or a comma-separated string (empty: choose automatically)."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    names = tuple(str(n).strip() for n in items if str(n).strip())
    if len(set(names)) != len(names):
        raise CheckpointError(f"fusion layers must be distinct, got {list(names)}")
    return names


def check_head(outputs: int, names: tuple[str, ...]) -> None:
    """The head must have one output per class, or one logit for two classes."""
    if outputs != len(names) and not (outputs == 1 and len(names) == 2):
        raise CheckpointError(
            f"the classifier head has {outputs} outputs but {len(names)} class names were given "
            f"({', '.join(names)}); a single-logit head needs exactly 2 names (negative, positive)")


def build_model(spec: ModelSpec, state_dict: Mapping[str, torch.Tensor]) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model, load the weights strictly and settle the target and fusion layers.

    Returns:
        The model in eval mode, and the spec with its target layer and fusion layers filled in (the
        arch's defaults, or auto-located, where empty).
    """
    if spec.model_file:
        model = load_model_class(spec.model_file)(**spec.model_args)
    else:
        model = build_arch(spec.arch, spec.num_outputs)
    result = model.load_state_dict(state_dict, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"missing keys: {', '.join(result.missing_keys[:8])}")
    if result.unexpected_keys:
        problems.append(f"unexpected keys: {', '.join(result.unexpected_keys[:8])}")
    if problems:
        raise CheckpointError(
            f"the weights do not fit a {spec.arch} ({'; '.join(problems)}): check --arch, "
            "or strip the wrapper prefix the keys carry")
    model.eval()
    if spec.model_file:
        spec = replace(spec, num_outputs=custom_head_size(model, spec))
    layer = spec.target_layer or auto_target_layer(model, spec.input_size, spec.dummy_inputs()[1:])
    fusion = spec.fusion_layers or DEFAULT_FUSION_LAYERS.get(spec.arch) or ()
    if not fusion:
        try:
            fusion = auto_fusion_layers(model, spec.input_size, spec.dummy_inputs()[1:])
        except CheckpointError:  # no spatial map but a named target layer: fuse that one alone
            fusion = (layer,)
    for name in (layer, *fusion):
        get_module(model, name)
    return model, replace(spec, target_layer=layer, fusion_layers=tuple(fusion))


def custom_head_size(model: nn.Module, spec: ModelSpec) -> int:
    """Run a custom model once on zero inputs: its output must be ``[B, outputs]``."""
    try:
        with torch.no_grad():
            out = model(*spec.dummy_inputs(2))
    except Exception as exc:
        schema = spec.schema
        takes = f"(image, tabular of width {schema.width} from the schema)" if schema else "(image)"
        raise CheckpointError(f"the custom model's forward{takes} fails on zero inputs: {exc}; check "
                              "--model-args and that the tabular schema matches the model") from exc
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
        raise CheckpointError("the custom model's forward must return logits of shape [batch, outputs]")
    check_head(int(out.shape[1]), spec.class_names)
    return int(out.shape[1])


def load_model_class(path: str | Path) -> type[nn.Module]:
    """The one ``nn.Module`` class defined in a model file (TorchServe's ``--model-file`` rule)."""
    import importlib.util

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file {str(path)!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"camserve_model_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise CheckpointError(f"model file {path.name} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise CheckpointError(f"model file {path.name} fails to import: {exc}") from exc
    classes = [c for c in vars(module).values()
               if isinstance(c, type) and issubclass(c, nn.Module) and c.__module__ == module.__name__]
    if len(classes) != 1:
        raise CheckpointError(f"model file {path.name} must define exactly one nn.Module class, "
                              f"found {len(classes)}: {', '.join(c.__name__ for c in classes)}")
    return classes[0]


def load_checkpoint(path: str | Path, **overrides: Any) -> tuple[nn.Module, ModelSpec]:
    """Read any accepted checkpoint layout into a ready model and its spec.

    Args:
        path: The checkpoint file.
        **overrides: ``arch``, ``class_names``, ``input_size``, ``mean``, ``std``, ``target_layer``,
            ``cam_method``, ``fusion_layers`` (names, or one comma-separated string), ``model_file``
            (path of a custom model class), ``model_args``, ``tabular`` (schema dict); ``None`` values
            are ignored.
    """
    state_dict, meta = split_checkpoint(load_file(path))
    spec = resolve_spec(meta, state_dict, overrides)
    try:
        return build_model(spec, state_dict)
    except RuntimeError as exc:  # size mismatches from load_state_dict
        raise CheckpointError(f"the weights do not fit a {spec.arch}: {str(exc)[:600]}") from exc


def save_checkpoint(path: str | Path, model: nn.Module, spec: ModelSpec, **extra: Any) -> None:
    """Write camserve's self-describing layout (a), readable with ``weights_only=True``."""
    torch.save({"format": FORMAT, "state_dict": model.state_dict(), **spec.to_dict(), **extra}, path)
