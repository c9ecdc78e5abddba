"""Torchvision architectures and where Grad-CAM looks in each.

Every default target layer is the output of the last convolutional stage before global pooling, after
its final activation wherever that activation is a module (all but DenseNet):

| arch            | layer            | map at 224 px | note                                              |
|-----------------|------------------|---------------|---------------------------------------------------|
| resnet18/50     | layer4           | 7x7           | each block ends with its ReLU                     |
| densenet121     | features         | 7x7           | = norm5 output, BEFORE DenseNet.forward's         |
|                 |                  |               | functional ReLU (pytorch-grad-cam's features[-1]) |
| efficientnet_b0 | features.8       | 7x7           | Conv-BN-SiLU                                      |
| mobilenet_v2    | features.18      | 7x7           | Conv-BN-ReLU6                                     |
| vgg16           | features.29      | 14x14         | last ReLU; features.30 is the max-pool    |
| alexnet         | features.11      | 13x13         | last ReLU; features.12 is the max-pool    |

DenseNet applies ``F.relu(features, inplace=True)`` after ``features``; a hook that kept the tensor it
returned would see it changed in place (a classic CAM-library bug). The CAM hook keeps its own leaf and hands
the model a clone, so the captured activation stays the pre-ReLU one. Pre-ReLU is a choice: applying
the ReLU in the hook would let the model's own ReLU zero the gradients where the activation is 0, giving
a map that is Grad-CAM at neither point.

Other torchvision CNN classifiers get an automatic choice (:func:`auto_target_layer`), and any layer can
be named by its dotted path.

LayerCAM fusion (``layercam-fusion``) fuses the maps of several layers at the finest one's resolution;
the defaults take the target layer's stage and the two before it (maps at 224 px):

| arch            | fusion layers                                       | fused map |
|-----------------|-----------------------------------------------------|-----------|
| resnet18/50     | layer2, layer3, layer4                              | 28x28     |
| densenet121     | features.denseblock2, features.denseblock3, features | 28x28    |
| efficientnet_b0 | features.3, features.5, features.8                  | 28x28     |
| mobilenet_v2    | features.6, features.13, features.18                | 28x28     |
| vgg16           | features.15, features.22, features.29               | 56x56     |
| alexnet         | features.4, features.7, features.11                 | 27x27     |

Other models get :func:`auto_fusion_layers` (one whole stage at each of the three coarsest map sizes);
a checkpoint or ``archive.py --fusion-layers`` may name its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from camserve.errors import CheckpointError

DEFAULT_TARGET_LAYERS: dict[str, str] = {
    "resnet18": "layer4",
    "resnet50": "layer4",
    "densenet121": "features",
    "efficientnet_b0": "features.8",
    "mobilenet_v2": "features.18",
    "vgg16": "features.29",
    "alexnet": "features.11",
}

DEFAULT_FUSION_LAYERS: dict[str, tuple[str, ...]] = {
    "resnet18": ("layer2", "layer3", "layer4"),
    "resnet50": ("layer2", "layer3", "layer4"),
    "densenet121": ("features.denseblock2", "features.denseblock3", "features"),
    "efficientnet_b0": ("features.3", "features.5", "features.8"),
    "mobilenet_v2": ("features.6", "features.13", "features.18"),
    "vgg16": ("features.15", "features.22", "features.29"),
    "alexnet": ("features.4", "features.7", "features.11"),
}
FUSION_DEPTH = 3  # layers fused by default: the target stage and the two finer ones before it

SUPPORTED_ARCHS = tuple(DEFAULT_TARGET_LAYERS)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def build_arch(arch: str, num_outputs: int) -> nn.Module:
    """A randomly initialised torchvision classifier (never downloads weights).

    Args:
        arch: A torchvision classification model name.
        num_outputs: Size of the head (1 for a single-logit binary model).

    Raises:
        CheckpointError: The name is not a torchvision classification model.
    """
    import torchvision

    known = set(torchvision.models.list_models(module=torchvision.models))
    if arch not in known:
        raise CheckpointError(
            f"unknown arch {arch!r}: use one of {', '.join(SUPPORTED_ARCHS)} "
            "or another torchvision classification model name")
    model: nn.Module = torchvision.models.get_model(arch, weights=None, num_classes=num_outputs)
    return model


def get_module(model: nn.Module, dotted: str) -> nn.Module:
    """The submodule at a dotted path, with an error that lists what exists."""
    try:
        return model.get_submodule(dotted)
    except AttributeError as exc:
        names = [n for n, _ in model.named_modules() if n and n.count(".") < 2]
        raise CheckpointError(
            f"target layer {dotted!r} does not exist in the model; top-level layers are: "
            f"{', '.join(names[:40])}") from exc


def auto_target_layer(model: nn.Module, input_size: int, dummy_inputs: tuple[torch.Tensor, ...] = ()) -> str:
    """The last module whose output is a 4-D map larger than 1x1 and that is not a pooling layer.

    Pooling layers are skipped because torchcam's rule (last 4-D output) picks VGG's and AlexNet's
    final max-pool, which halves the map's resolution for nothing.

    Args:
        model: The classifier, in eval mode.
        input_size: Side of the square input.
        dummy_inputs: Extra forward arguments (e.g. tabular features) for multi-input models.
    """
    leaves = [m for m in module_maps(model, input_size, dummy_inputs) if m.leaf and not m.pool]
    if not leaves:
        raise CheckpointError("no convolutional layer with a spatial map found: pass --target-layer")
    return _stage_of(leaves[-1].name)


def auto_fusion_layers(model: nn.Module, input_size: int,
                       dummy_inputs: tuple[torch.Tensor, ...] = ()) -> tuple[str, ...]:
    """The layers LayerCAM fusion uses when none are named: one per map size, the coarsest sizes.

    For each of the ``FUSION_DEPTH`` smallest map sizes, the module with that output size that is
    highest in the module tree (fewest dots; the last to finish among equals): a whole stage rather
    than a layer inside it. Pooling layers, containers whose output is a pooling layer's, and modules
    that run more than once per forward are never chosen. Returned in forward order; a model with
    fewer map sizes gets fewer layers.
    """
    best: dict[int, SpatialOutput] = {}
    for m in module_maps(model, input_size, dummy_inputs):
        if m.pool or m.calls != 1:
            continue
        held = best.get(m.area)
        if held is None or m.name.count(".") <= held.name.count("."):
            best[m.area] = m
    if not best:
        raise CheckpointError("no convolutional layer with a spatial map found: pass --fusion-layers")
    chosen = sorted((best[area] for area in sorted(best)[:FUSION_DEPTH]), key=lambda m: m.order)
    return tuple(m.name for m in chosen)


@dataclass
class SpatialOutput:
    """A module whose output is a 4-D map larger than 1x1, as seen in one forward."""

    name: str
    area: int  # h * w of its (last) output
    order: int  # when it (last) finished, in the forward
    calls: int
    leaf: bool
    pool: bool  # a pooling layer, or a container that returns a pooling layer's output


def module_maps(model: nn.Module, input_size: int,
                dummy_inputs: tuple[torch.Tensor, ...] = ()) -> list[SpatialOutput]:
    """Every named module with a spatial 4-D output in one forward on zeros, by the order it finished."""
    seen: dict[str, SpatialOutput] = {}
    pooled: list[torch.Tensor] = []  # kept alive, so that identity checks cannot match a recycled id
    finished = iter(range(1 << 30))
    hooks = []
    for name, module in model.named_modules():
        if not name:
            continue
        leaf, is_pool = not list(module.children()), isinstance(module, _POOLS)

        def record(_m: nn.Module, _i: tuple[object, ...], out: object, name: str = name, leaf: bool = leaf,
                   is_pool: bool = is_pool) -> None:
            if not (isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1):
                return
            if is_pool:
                pooled.append(out)
            calls = seen[name].calls + 1 if name in seen else 1
            seen[name] = SpatialOutput(name, int(out.shape[-1] * out.shape[-2]), next(finished), calls, leaf,
                                       is_pool or any(out is p for p in pooled))

        hooks.append(module.register_forward_hook(record))
    dtype = next(model.parameters(), torch.zeros(())).dtype
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size, dtype=dtype), *dummy_inputs)
    finally:
        for h in hooks:
            h.remove()
    return sorted(seen.values(), key=lambda m: m.order)


def _stage_of(leaf: str) -> str:
    """Lift a leaf (e.g. ``features.7.2``) to its enclosing stage so the map is post-activation."""
    parts = leaf.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else leaf
