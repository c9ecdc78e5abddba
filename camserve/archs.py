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
| vgg16           | features.29      | 14x14         | last ReLU; seed 000's features.30 is the max-pool |
| alexnet         | features.11      | 13x13         | last ReLU; seed 000's features.12 is the max-pool |

DenseNet applies ``F.relu(features, inplace=True)`` after ``features``; a hook that kept the tensor it
returned would see it changed in place (a known anchor bug). The CAM hook keeps its own leaf and hands
the model a clone, so the captured activation stays the pre-ReLU one. Pre-ReLU is a choice: applying
the ReLU in the hook would let the model's own ReLU zero the gradients where the activation is 0, giving
a map that is Grad-CAM at neither point.

Other torchvision CNN classifiers get an automatic choice (:func:`auto_target_layer`), and any layer can
be named by its dotted path.
"""

from __future__ import annotations

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
    return torchvision.models.get_model(arch, weights=None, num_classes=num_outputs)


def get_module(model: nn.Module, dotted: str) -> nn.Module:
    """The submodule at a dotted path, with an error that lists what exists."""
    try:
        return model.get_submodule(dotted)
    except AttributeError as exc:
        names = [n for n, _ in model.named_modules() if n and n.count(".") < 2]
        raise CheckpointError(
            f"target layer {dotted!r} does not exist in the model; top-level layers are: "
            f"{', '.join(names[:40])}") from exc


def auto_target_layer(model: nn.Module, input_size: int, dummy_inputs: tuple = ()) -> str:
    """The last module whose output is a 4-D map larger than 1x1 and that is not a pooling layer.

    Pooling layers are skipped because torchcam's rule (last 4-D output) picks VGG's and AlexNet's
    final max-pool, which halves the map's resolution for nothing.

    Args:
        model: The classifier, in eval mode.
        input_size: Side of the square input.
        dummy_inputs: Extra forward arguments (e.g. tabular features) for multi-input models.
    """
    found: list[str] = []
    hooks = []
    for name, module in model.named_modules():
        if not name or isinstance(module, _POOLS) or list(module.children()):
            continue

        def record(_m: nn.Module, _i: tuple, out: object, name: str = name) -> None:
            if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1:
                found.append(name)

        hooks.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size), *dummy_inputs)
    finally:
        for h in hooks:
            h.remove()
    if not found:
        raise CheckpointError("no convolutional layer with a spatial map found: pass --target-layer")
    return _stage_of(found[-1])


def _stage_of(leaf: str) -> str:
    """Lift a leaf (e.g. ``features.7.2``) to its enclosing stage so the map is post-activation."""
    parts = leaf.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else leaf
