"""The fused Grad-CAM pass against an independent reference (captum's LayerGradCam), per architecture."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import LayerGradCam
from torch import nn

from camserve import cam as cam_ops
from camserve.archs import DEFAULT_TARGET_LAYERS, auto_target_layer, get_module

ARCHS = sorted(DEFAULT_TARGET_LAYERS)
SIZE = 64
TOL = 1e-4


def seeded(arch: str, num_classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    # Random-init nets are near-uniform: BatchNorm statistics from real batches and a larger head make
    # the activations, the maps and so the comparison non-trivial.
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.5)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average
    with torch.no_grad():
        model.train()(torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)))
    return model.eval()


class DenseNetReference(nn.Module):
    """DenseNet without its in-place ReLU (which corrupts captum's captured activation)."""

    def __init__(self, densenet: nn.Module) -> None:
        super().__init__()
        self.features, self.classifier = densenet.features, densenet.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.adaptive_avg_pool2d(F.relu(self.features(x)), 1)
        return self.classifier(torch.flatten(out, 1))


def reference_cams(model: nn.Module, arch: str, x: torch.Tensor, targets: list[int]) -> torch.Tensor:
    """captum LayerGradCam at the same (post-activation) layer, one sample at a time."""
    if arch == "densenet121":
        model = DenseNetReference(model).eval()
    layer = get_module(model, DEFAULT_TARGET_LAYERS[arch])
    gc = LayerGradCam(model, layer)
    maps = [gc.attribute(x[i:i + 1], target=t, relu_attributions=True)[0, 0] for i, t in enumerate(targets)]
    return torch.stack(maps).detach()


def ours(model: nn.Module, arch: str, x: torch.Tensor, targets: list[int | None]) -> cam_ops.FusedOutput:
    layer_name = DEFAULT_TARGET_LAYERS[arch]
    return cam_ops.predict_and_explain(model, get_module(model, layer_name), x, targets)


def normalised(cams: torch.Tensor) -> torch.Tensor:
    return torch.stack([cam_ops.normalise(c)[0] for c in cams])


@pytest.mark.parametrize("arch", ARCHS)
def test_cam_matches_captum_with_mixed_targets(arch: str) -> None:
    model = seeded(arch)
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    out = ours(model, arch, x, [2, None, 0])
    with torch.no_grad():
        predicted = model(x).argmax(1).tolist()
    assert out.targets == [2, predicted[1], 0]
    ref = reference_cams(model, arch, x, out.targets)
    assert out.cams.shape == ref.shape
    assert out.cams.abs().sum() > 0, "a map of zeros would make the comparison vacuous"
    torch.testing.assert_close(normalised(out.cams), normalised(ref), atol=TOL, rtol=0)
    # The prediction from the fused pass is the plain forward's.
    torch.testing.assert_close(out.probs, torch.softmax(model(x), 1).detach(), atol=1e-5, rtol=0)


def test_batch_equals_single_requests() -> None:
    model = seeded("resnet18")
    x = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    targets = [0, 1, 2, None]
    batch = ours(model, "resnet18", x, targets)
    for i, t in enumerate(targets):
        single = ours(model, "resnet18", x[i:i + 1], [t])
        torch.testing.assert_close(batch.cams[i], single.cams[0], atol=1e-5, rtol=1e-4)
    assert len({tuple(c.flatten().tolist()) for c in batch.cams}) == 4, "each target gets its own map"


def test_hooks_grad_flags_and_mode_restored_even_on_error() -> None:
    model = seeded("resnet18").train()
    model.fc.weight.requires_grad_(True)
    layer = get_module(model, "layer4")
    x = torch.randn(2, 3, SIZE, SIZE)
    ours(model, "resnet18", x, [0, 1])
    assert not layer._forward_hooks and model.training and model.fc.weight.requires_grad
    with pytest.raises(ValueError, match="class index 7 out of range"):
        ours(model, "resnet18", x, [0, 7])  # class 7 does not exist
    assert not layer._forward_hooks and model.training and model.fc.weight.requires_grad
    assert all(p.grad is None for p in model.parameters()), "no parameter gradient is ever computed"


def test_batchnorm_runs_in_eval_mode() -> None:
    model = seeded("resnet18")
    x = torch.randn(2, 3, SIZE, SIZE)
    in_eval = ours(model, "resnet18", x, [0, 0]).cams
    in_train = ours(model.train(), "resnet18", x, [0, 0]).cams
    torch.testing.assert_close(in_eval, in_train)


def test_all_zero_map_normalises_to_zero() -> None:
    model = seeded("resnet18")
    nn.init.zeros_(model.fc.weight)  # no class depends on any feature: no positive evidence
    out = ours(model, "resnet18", torch.randn(1, 3, SIZE, SIZE), [1])
    cam, top = cam_ops.normalise(out.cams[0])
    assert top == 0.0 and torch.count_nonzero(cam) == 0 and not torch.isnan(cam).any()


def test_densenet_inplace_relu_does_not_alter_the_map() -> None:
    """The captured activation is norm5's pre-ReLU output, untouched by DenseNet's in-place ReLU."""
    model = seeded("densenet121")
    x = torch.randn(1, 3, SIZE, SIZE)
    out = ours(model, "densenet121", x, [1])
    feats = model.features(x).detach()
    assert (feats < 0).any(), "pre-ReLU features have negatives: the in-place ReLU would change them"
    grads = torch.autograd.functional.jacobian(
        lambda a: model.classifier(torch.relu(a).mean((2, 3)))[0, 1], feats)
    expected = torch.relu((grads.mean((2, 3), keepdim=True) * feats).sum(1))
    torch.testing.assert_close(out.cams, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("target", [0, 1])
def test_single_logit_explains_the_signed_logit(target: int) -> None:
    """Binary [B,1] heads: class 1 explains +logit, class 0 explains -logit (not +logit)."""
    model = seeded("resnet18", num_classes=1)
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    out = ours(model, "resnet18", x, [target])
    sign = 1.0 if target == 1 else -1.0
    signed = nn.Sequential()  # a model whose single output is the explained score
    signed.forward = lambda inp: sign * model(inp)  # type: ignore[method-assign]
    ref = LayerGradCam(signed.forward, model.layer4).attribute(x, target=0, relu_attributions=True)[0]
    torch.testing.assert_close(out.cams, ref.detach(), atol=1e-5, rtol=1e-4)
    z = model(x)[0, 0].item()
    expected = [1 - torch.sigmoid(torch.tensor(z)).item(), torch.sigmoid(torch.tensor(z)).item()]
    torch.testing.assert_close(out.probs[0], torch.tensor(expected), atol=1e-6, rtol=0)


def test_opposite_binary_maps_differ() -> None:
    model = seeded("resnet18", num_classes=1)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    out = ours(model, "resnet18", x, [0, 1])
    pos = ours(model, "resnet18", x, [1, 1])
    assert not torch.allclose(out.cams[0], pos.cams[0])


@pytest.mark.parametrize("arch,expected", [("vgg11", "features.19"), ("resnet34", "layer4.2")])
def test_auto_target_layer_skips_pooling(arch: str, expected: str) -> None:
    model = torchvision.models.get_model(arch, weights=None, num_classes=2).eval()
    assert auto_target_layer(model, SIZE) == expected


def test_focus_score_and_upsample() -> None:
    cam = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    up = cam_ops.upsample(cam, 20, 20)
    mask = torch.zeros(20, 20, dtype=torch.bool)
    mask[:, 10:] = True  # right half holds the peak
    score = cam_ops.focus_score(up, mask)
    assert 0.8 < score <= 1.0
    assert cam_ops.focus_score(torch.zeros(20, 20), mask) is None
    assert cam_ops.focus_score(up, ~mask) == pytest.approx(1.0 - score, abs=1e-6)
