"""Every CAM method against an independent reference, on every architecture and on awkward models.

The reference is the slow, obvious way and shares no code with ``camserve.cam``/``cam_methods``: a float64
copy of the model, one sample and one class at a time, ``score.backward()`` through the whole network
(parameters and input requiring grad), the activations and their ``.grad`` read back from forward hooks,
and each paper's formula written out in numpy (bilinear resizing included).

camserve's pass runs on a float64 copy too, so that the comparison measures the method and not float32
rounding: a Grad-CAM map is a sum over up to 2048 channels with weights of both signs, and on resnet50
the float32 forward alone moves it by ~2e-3 of its maximum; at earlier layers of vgg16 a near-tie in a
max-pool routes the float32 gradient to another pixel.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from camserve import cam as cam_ops
from camserve.archs import DEFAULT_FUSION_LAYERS, DEFAULT_TARGET_LAYERS, auto_fusion_layers, get_module
from camserve.cam_methods import METHODS
from camserve.checkpoint import load_model_class
from camserve.schema import CAM_METHODS

ASSETS = Path(__file__).parent / "assets"
ARCHS = sorted(DEFAULT_TARGET_LAYERS)
SIZES = {"alexnet": 96}  # alexnet's 64 px map would be 3x3
SIZE = 64
TOL = 1e-4
MIXED = [[2], [], [0, 1, 2]]  # a given class, the predicted one, several classes for one sample


# ---------------------------------------------------------------- the independent reference (numpy, float64)

def ref_gradcam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    k, h, w = a.shape
    weights = g.reshape(k, -1).sum(axis=1) / (h * w)
    return np.maximum(np.tensordot(weights, a, axes=1), 0.0)


def ref_hirescam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    return np.maximum((g * a).sum(axis=0), 0.0)


def ref_xgradcam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    weights = np.zeros(a.shape[0])
    for k in range(a.shape[0]):
        total = a[k].sum()
        weights[k] = (a[k] * g[k]).sum() / total if total != 0 else 0.0
    return np.maximum(np.tensordot(weights, a, axes=1), 0.0)


def ref_gradcam_pp(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The paper's eq. 19 as printed: alpha = g^2 / (2 g^2 + sum(A) g^3), weights = sum(alpha * relu(g))."""
    weights = np.zeros(a.shape[0])
    for k in range(a.shape[0]):
        g2, g3 = g[k] ** 2, g[k] ** 3
        denominator = 2 * g2 + a[k].sum() * g3
        alpha = np.divide(g2, denominator, out=np.zeros_like(g2), where=(g[k] != 0) & (denominator > 0))
        weights[k] = (alpha * np.maximum(g[k], 0.0)).sum()
    return np.maximum(np.tensordot(weights, a, axes=1), 0.0)


def ref_layercam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    return np.maximum((np.maximum(g, 0.0) * a).sum(axis=0), 0.0)


def ref_bilinear(m: np.ndarray, h: int, w: int) -> np.ndarray:
    """Half-pixel-centre bilinear resize (the ``align_corners=False`` convention), edges clamped."""
    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo
    y0, y1, fy = axis(m.shape[0], h)
    x0, x1, fx = axis(m.shape[1], w)
    top = m[y0][:, x0] * (1 - fx) + m[y0][:, x1] * fx
    bottom = m[y1][:, x0] * (1 - fx) + m[y1][:, x1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


def ref_fusion(acts: list[np.ndarray], grads: list[np.ndarray]) -> np.ndarray:
    maps = [ref_layercam(a, g) for a, g in zip(acts, grads, strict=True)]
    h, w = max((m.shape for m in maps), key=lambda s: s[0] * s[1])
    scaled = [np.tanh(2.0 * m / m.max()) if m.max() > 0 else m for m in maps]
    return np.max([ref_bilinear(m, h, w) for m in scaled], axis=0)


REFERENCE = {"gradcam": ref_gradcam, "hirescam": ref_hirescam, "xgradcam": ref_xgradcam,
             "gradcam++": ref_gradcam_pp, "layercam": ref_layercam}


def full_backward(m: nn.Module, layer_names: list[str], x: torch.Tensor, extra: tuple, sample: int,
                  target: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Activations and gradients at each layer for one sample and class: whole-network backward."""
    for p in m.parameters():
        p.requires_grad_(True)
    m.zero_grad()
    kept: dict[str, torch.Tensor] = {}

    def keep(name: str):  # noqa: ANN202
        def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> torch.Tensor:
            out.retain_grad()
            kept[name] = out
            return out.clone()  # DenseNet's in-place ReLU would otherwise overwrite the kept activation
        return hook

    handles = [m.get_submodule(n).register_forward_hook(keep(n)) for n in layer_names]
    try:
        xi = x[sample:sample + 1].double().requires_grad_(True)
        logits = m(xi, *[e[sample:sample + 1].double() for e in extra])
        if logits.shape[1] == 1:
            score = logits[0, 0] if target == 1 else -logits[0, 0]
        else:
            score = logits[0, target]
        score.backward()
    finally:
        for h in handles:
            h.remove()
    return ([kept[n].detach()[0].numpy() for n in layer_names],
            [kept[n].grad[0].numpy() for n in layer_names])


def reference_maps(model: nn.Module, target_layer: str, fusion_layers: list[str], x: torch.Tensor,
                   extra: tuple, targets: list[list[int]]) -> dict[str, list[list[np.ndarray]]]:
    """Every method's maps, per sample and per target, from one full backward per (sample, class)."""
    out: dict[str, list[list[np.ndarray]]] = {m: [[] for _ in targets] for m in METHODS}
    names = list(dict.fromkeys([target_layer, *fusion_layers]))
    model64 = copy.deepcopy(model).double().eval()
    for i, classes in enumerate(targets):
        for t in classes:
            acts, grads = full_backward(model64, names, x, extra, i, t)
            a, g = acts[0], grads[0]
            for method, formula in REFERENCE.items():
                out[method][i].append(formula(a, g))
            picked = [names.index(n) for n in fusion_layers]
            out["layercam-fusion"][i].append(ref_fusion([acts[j] for j in picked], [grads[j] for j in picked]))
    return out


# ---------------------------------------------------------------- models

def seeded(arch: str, num_classes: int = 3, seed: int = 0, size: int = SIZE) -> nn.Module:
    """A random-init torchvision model made non-trivial: BatchNorm statistics from a real batch, a larger
    head (random-init nets are near-uniform and their maps near-flat)."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.5)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    with torch.no_grad():
        model.train()(torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(seed)))
    return model.eval()


def predicted(model: nn.Module, x: torch.Tensor, extra: tuple = ()) -> list[int]:
    with torch.no_grad():
        logits = model(x, *extra)
    return (logits[:, 0] > 0).long().tolist() if logits.shape[1] == 1 else logits.argmax(1).tolist()


def assert_maps_match(ours: list[torch.Tensor], ref: list[list[np.ndarray]], method: str) -> None:
    """Raw maps equal up to TOL, both divided by the reference's maximum (so the scale is checked too)."""
    assert len(ours) == len(ref)
    nonzero = 0
    for i, (stack, maps) in enumerate(zip(ours, ref, strict=True)):
        assert stack.shape[0] == len(maps), f"sample {i}: {stack.shape[0]} maps for {len(maps)} targets"
        for t, (mine, theirs) in enumerate(zip(stack, maps, strict=True)):
            theirs_t = torch.from_numpy(theirs)
            assert mine.shape == theirs_t.shape, f"{method} sample {i} target {t}"
            assert mine.dtype == torch.float32
            top = float(theirs_t.max())
            if top == 0:
                assert float(mine.abs().max()) <= TOL, f"{method} sample {i} target {t}: reference is all zero"
                continue
            nonzero += 1
            torch.testing.assert_close(mine.double() / top, theirs_t / top, atol=TOL, rtol=0,
                                       msg=lambda m, i=i, t=t: f"{method} sample {i} target {t}: {m}")
    assert nonzero >= max(1, sum(len(m) for m in ref) - 2), "too many all-zero maps: a vacuous comparison"


_CACHE: dict[str, tuple] = {}


def arch_case(arch: str) -> tuple:
    """Model, input, targets and reference maps for one architecture (computed once per session)."""
    if arch not in _CACHE:
        size = SIZES.get(arch, SIZE)
        model = seeded(arch, size=size).double()
        x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        resolved = [t or [p] for t, p in zip(MIXED, predicted(model, x), strict=True)]
        ref = reference_maps(model, DEFAULT_TARGET_LAYERS[arch], list(DEFAULT_FUSION_LAYERS[arch]), x, (),
                             resolved)
        _CACHE[arch] = (model, x, resolved, ref)
    return _CACHE[arch]


def layers_for(model: nn.Module, method: str, target: str, fusion: list[str]) -> list[nn.Module]:
    return [get_module(model, n) for n in (fusion if method == "layercam-fusion" else [target])]


# ---------------------------------------------------------------- tests

def test_methods_are_the_schema_methods() -> None:
    assert METHODS == CAM_METHODS


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_method_matches_full_backward_reference(arch: str, method: str) -> None:
    model, x, resolved, ref = arch_case(arch)
    layers = layers_for(model, method, DEFAULT_TARGET_LAYERS[arch], list(DEFAULT_FUSION_LAYERS[arch]))
    out = cam_ops.explain_batch(model, layers, x, MIXED, method=method)
    assert out.targets == resolved
    assert out.cams is not None
    assert_maps_match(out.cams, ref[method], method)
    torch.testing.assert_close(out.log_probs.exp(), torch.softmax(model(x), 1).detach().float(), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def fusion_net() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The two-input (image, tabular) single-logit model, with a tabular branch that matters."""
    torch.manual_seed(0)
    model = load_model_class(ASSETS / "fusion_net.py")(tabular_width=4)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    nn.init.normal_(model.head.weight, std=0.5)
    with torch.no_grad():
        model.train()(torch.randn(8, 3, SIZE, SIZE), torch.randn(8, 4))
    x = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    tab = torch.randn(4, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    model = model.eval().double()
    fusion = list(auto_fusion_layers(model, SIZE, (torch.zeros(1, 4, dtype=torch.float64),)))
    resolved = [t or [p] for t, p in zip(FUSION_TARGETS, predicted(model, x, (tab,)), strict=True)]
    return model, x, tab, fusion, resolved, reference_maps(model, "cnn.layer4", fusion, x, (tab,), resolved)


FUSION_TARGETS = [[0], [1], [], [1, 0]]


@pytest.mark.parametrize("method", METHODS)
def test_two_input_single_logit_model(fusion_net: tuple, method: str) -> None:
    model, x, tab, fusion, resolved, ref = fusion_net
    assert fusion == ["cnn.layer2", "cnn.layer3", "cnn.layer4"]
    targets = FUSION_TARGETS
    out = cam_ops.explain_batch(model, layers_for(model, method, "cnn.layer4", fusion), x, targets, (tab,),
                                method=method)
    assert out.targets == resolved
    assert_maps_match(out.cams, ref[method], method)
    z = model(x, tab)[:, 0].detach().float()
    torch.testing.assert_close(out.log_probs.exp(), torch.stack([torch.sigmoid(-z), torch.sigmoid(z)], 1),
                               atol=1e-6, rtol=0)


def signed_image() -> torch.Tensor:
    """Left half red (evidence for class 1), right half blue (evidence for class 0), a green stripe."""
    x = torch.zeros(2, 3, 16, 16)
    x[:, 0, :, :8] = 1.0
    x[:, 2, :, 8:] = 1.0
    x[:, 1, 4:6, :] = 0.5
    x[1] = x[1].flip(-1)  # the second sample mirrored
    return x


@pytest.mark.parametrize("method", METHODS)
def test_single_logit_head_explains_the_signed_logit(method: str) -> None:
    """+logit for class 1 lights the red half, -logit for class 0 the blue half, with every method."""
    model = load_model_class(ASSETS / "signed_net.py")(tabular_weight=0.7).eval().double()
    x = signed_image().double()
    tab = torch.tensor([[1.0], [-2.0]], dtype=torch.float64)
    ref = reference_maps(model, "features", ["features.0", "features"], x, (tab,), [[1, 0], [0]])
    layers = [get_module(model, n) for n in (["features.0", "features"] if method == "layercam-fusion"
                                             else ["features"])]
    out = cam_ops.explain_batch(model, layers, x, [[1, 0], [0]], (tab,), method=method)
    assert_maps_match(out.cams, ref[method], method)
    red, blue = out.cams[0][0], out.cams[0][1]  # sample 0: red on the left
    assert red[:, :8].sum() > 10 * red[:, 8:].sum() and blue[:, 8:].sum() > 10 * blue[:, :8].sum()
    assert out.cams[1][0][:, :8].sum() > 10 * out.cams[1][0][:, 8:].sum(), "mirrored: blue on the left"


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0", "mobilenet_v2"])
def test_gradcam_hirescam_xgradcam_coincide_before_gap_and_linear(arch: str) -> None:
    """Same map, same scale at a layer followed only by GAP + linear; different at an earlier layer."""
    model = seeded(arch)
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    earlier = {"resnet18": "layer3", "efficientnet_b0": "features.6", "mobilenet_v2": "features.14"}[arch]
    for name, coincide in [(DEFAULT_TARGET_LAYERS[arch], True), (earlier, False)]:
        layer = [get_module(model, name)]
        maps = {m: cam_ops.explain_batch(model, layer, x, [[0, 1, 2]] * 3, method=m).cams
                for m in ("gradcam", "hirescam", "xgradcam", "layercam")}
        for other in ("hirescam", "xgradcam"):
            pairs = list(zip(torch.cat(maps["gradcam"]), torch.cat(maps[other]), strict=True))
            if coincide:
                assert sum(float(mine.max()) > 0 for mine, _ in pairs) >= 3, "mostly all-zero maps: vacuous"
                for mine, theirs in pairs:
                    scale = max(float(mine.max()), 1e-12)
                    torch.testing.assert_close(theirs / scale, mine / scale, atol=1e-5, rtol=0)
            else:
                assert any(float((unit(a) - unit(b)).abs().max()) > 1e-2 for a, b in pairs), f"{other} at {name}"
        # LayerCAM drops the negative weights: it differs from Grad-CAM even at the last layer.
        assert any(float((unit(a) - unit(b)).abs().max()) > 1e-2
                   for a, b in zip(torch.cat(maps["gradcam"]), torch.cat(maps["layercam"]), strict=True))


def unit(m: torch.Tensor) -> torch.Tensor:
    top = float(m.max())
    return m / top if top > 0 else m


def test_several_targets_equal_separate_passes() -> None:
    model = seeded("resnet50").double()  # float64: float32 convolutions differ with the batch size
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    layer = [get_module(model, "layer3")]
    together = cam_ops.explain_batch(model, layer, x, [[0, 1, 2], [2, 0]], method="gradcam++")
    for i, classes in enumerate([[0, 1, 2], [2, 0]]):
        for j, c in enumerate(classes):
            alone = cam_ops.explain_batch(model, layer, x[i:i + 1], [[c]], method="gradcam++")
            torch.testing.assert_close(together.cams[i][j], alone.cams[0][0], atol=1e-6, rtol=1e-5)


def test_fusion_is_at_the_finest_layer_resolution() -> None:
    model = seeded("resnet18")
    layers = [get_module(model, n) for n in ("layer4", "layer2", "layer3")]  # any order
    out = cam_ops.explain_batch(model, layers, torch.randn(1, 3, SIZE, SIZE), [[]], method="layercam-fusion")
    assert out.cams[0].shape == (1, SIZE // 8, SIZE // 8)
    assert 0 < float(out.cams[0].max()) <= float(np.tanh(2.0)) + 1e-6


@pytest.mark.parametrize("case,error", [
    ("unknown_method", ValueError), ("two_layers_single_method", ValueError), ("duplicate_layer", ValueError),
    ("bad_class", ValueError), ("target_count", ValueError), ("not_a_map", TypeError),
    ("layer_not_run", RuntimeError),
])
def test_errors_leave_hooks_flags_and_mode_restored(case: str, error: type) -> None:
    model = seeded("resnet18").train()
    for p in model.layer1.parameters():
        p.requires_grad_(False)  # a partly frozen model gets its own flags back
    flags = [p.requires_grad for p in model.parameters()]
    x = torch.randn(2, 3, SIZE, SIZE)
    layers, targets, method = [model.layer4], [[0], [1]], "gradcam"
    if case == "unknown_method":
        method = "guided-backprop"
    elif case == "two_layers_single_method":
        layers = [model.layer3, model.layer4]
    elif case == "duplicate_layer":
        layers, method = [model.layer4, model.layer4], "layercam-fusion"
    elif case == "bad_class":
        targets = [[0], [1, 3]]
    elif case == "target_count":
        targets = [[0]]
    elif case == "not_a_map":
        layers = [model.fc]  # a [B, classes] output
    elif case == "layer_not_run":
        layers = [nn.Conv2d(3, 3, 1)]
    with pytest.raises(error):
        cam_ops.explain_batch(model, layers, x, targets, method=method)
    hooked = [m for m in model.modules() if m._forward_hooks]
    assert not hooked and model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters()), "no parameter gradient is ever computed"


def test_predict_is_a_camless_batch() -> None:
    model = seeded("resnet18")
    x = torch.randn(3, 3, SIZE, SIZE)
    out = cam_ops.predict(model, x)
    assert out.cams is None and out.targets == [[p] for p in predicted(model, x)]
    torch.testing.assert_close(out.probs, torch.softmax(model(x), 1).detach(), atol=1e-6, rtol=0)


def test_no_parameter_grad_and_the_graph_starts_at_the_first_layer() -> None:
    """Only the head is differentiated: nothing before the first target layer is recorded."""
    model = seeded("resnet18")
    recorded: list[bool] = []
    model.layer1.register_forward_hook(lambda _m, _i, out: recorded.append(out.requires_grad))
    cam_ops.explain_batch(model, [model.layer2, model.layer4], torch.randn(1, 3, SIZE, SIZE), [[0]],
                          method="layercam-fusion")
    assert recorded == [False]


def test_bench_script_runs_every_variant(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from scripts import bench_cam

    out = tmp_path / "bench.json"
    assert bench_cam.main(["--archs", "resnet18", "--batch-sizes", "2", "--size", "32", "--rounds", "1",
                           "--threads", "1", "--json", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert set(bench_cam.COLUMNS) <= set(row) and all(row[c] > 0 for c in bench_cam.COLUMNS)
    assert "slowest single-layer method" in capsys.readouterr().out
    for bad in (["--archs", "resnet9000"], ["--batch-sizes", "0"], ["--rounds", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            bench_cam.main(bad)
        assert exit_info.value.code == 2
