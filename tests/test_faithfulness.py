"""Per-request faithfulness against a row-by-row recomputation built in pixel space."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from camserve import cam as cam_ops
from camserve import faithfulness
from camserve.checkpoint import load_model_class

ASSETS = Path(__file__).parent / "assets"
SIZE = 64
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def pixels(seed: int, n: int = 3) -> np.ndarray:
    """Smooth [n, 3, S, S] images in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    out = np.empty((n, 3, SIZE, SIZE))
    for i in range(n):
        for c in range(3):
            fx, fy, phase = rng.uniform(1, 4, 3)
            out[i, c] = 0.5 + 0.45 * np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
    return out


def normalised(p: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((p - MEAN[:, None, None]) / STD[:, None, None]).float()


def reference_row(model: nn.Module, pix: np.ndarray, tab: torch.Tensor | None, cam: np.ndarray, target: int,
                  fraction: float = 0.2) -> dict[str, float]:
    """One row the obvious way: images built in pixel space, one forward each."""
    mean = MEAN[:, None, None] * np.ones_like(pix)
    masked = mean + (pix - mean) * cam  # blend towards the mean colour by 1 - map
    order = np.argsort(-cam.ravel(), kind="stable")[:int(fraction * cam.size)]
    order = order[cam.ravel()[order] > 0]
    gone = np.zeros(cam.size, bool)
    gone[order] = True
    deleted = np.where(gone.reshape(cam.shape)[None], mean, pix)

    model64 = copy.deepcopy(model).double()

    def prob(img: np.ndarray) -> float:
        extra = () if tab is None else (tab[None].double(),)
        with torch.no_grad():
            logits = model64(normalised(img[None]).double(), *extra)
        if logits.shape[1] == 1:
            z = float(logits[0, 0])
            return 1 / (1 + math.exp(-z)) if target == 1 else 1 / (1 + math.exp(z))
        return float(torch.softmax(logits, 1)[0, target])

    c, mc, dc = prob(pix), prob(masked), prob(deleted)
    return {"confidence": c, "masked_confidence": mc, "average_drop": max(0.0, (c - mc) / c),
            "increase": mc > c, "deletion_confidence": dc, "deletion_drop": max(0.0, (c - dc) / c),
            "deletion_fraction": gone.sum() / cam.size}


def seeded_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    nn.init.normal_(model.fc.weight, std=0.5)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        model.train()(normalised(pixels(9, 8)))
    return model.eval()


def check_rows(got: list, expected: list[dict[str, float]]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        for key, value in e.items():
            assert getattr(g, key) == pytest.approx(value, rel=2e-3, abs=2e-5), key  # float32 vs float64


def counting(model: nn.Module) -> list[int]:
    calls: list[int] = []
    model.register_forward_hook(lambda _m, inputs, _o: calls.append(inputs[0].shape[0]))
    return calls


@pytest.mark.parametrize("given_log_probs", [True, False])
def test_rows_match_pixel_space_reference_in_one_forward(given_log_probs: bool) -> None:
    model = seeded_resnet()
    pix = pixels(1)
    x = normalised(pix)
    out = cam_ops.explain_batch(model, [model.layer3], x, [[0, 2], [], [1]], method="gradcam")
    maps = cam_ops.input_maps(out.cams, SIZE)
    assert maps.shape == (4, SIZE, SIZE) and float(maps.min()) >= 0 and 0.9 < float(maps.max()) <= 1
    calls = counting(model)
    got = faithfulness.score(model, x, (), maps, out.targets, log_probs=out.log_probs if given_log_probs else None)
    assert calls == [8 if given_log_probs else 11], "one forward: masked and deleted rows (and the originals)"
    rows = [(i, t) for i, ts in enumerate(out.targets) for t in ts]
    expected = [reference_row(model, pix[i], None, maps[r].double().numpy(), t) for r, (i, t) in enumerate(rows)]
    check_rows(got, expected)
    assert all(r.deletion_fraction <= 0.2 for r in got) and sum(r.deletion_fraction > 0.15 for r in got) >= 3


def test_two_input_single_logit_model() -> None:
    model = load_model_class(ASSETS / "signed_net.py")(tabular_weight=0.5).eval()
    pix = pixels(2, 2)
    tab = torch.tensor([[1.0], [-1.5]])
    x = normalised(pix)
    out = cam_ops.explain_batch(model, [model.features], x, [[0, 1], [1]], (tab,), method="layercam")
    maps = cam_ops.input_maps(out.cams, SIZE)
    got = faithfulness.score(model, x, (tab,), maps, out.targets)
    rows = [(0, 0), (0, 1), (1, 1)]
    check_rows(got, [reference_row(model, pix[i], tab[i], maps[r].double().numpy(), t)
                     for r, (i, t) in enumerate(rows)])


def test_all_zero_map_removes_nothing_and_masks_everything() -> None:
    model = seeded_resnet()
    pix = pixels(3, 1)
    x = normalised(pix)
    got = faithfulness.score(model, x, (), torch.zeros(1, SIZE, SIZE), [[1]])[0]
    assert got.deletion_fraction == 0 and got.deletion_confidence == pytest.approx(got.confidence, abs=1e-6)
    grey = MEAN[:, None, None] * np.ones_like(pix[0])
    check_rows([got], [reference_row(model, pix[0], None, np.zeros((SIZE, SIZE)), 1)])
    with torch.no_grad():
        assert got.masked_confidence == pytest.approx(float(torch.softmax(model(normalised(grey[None])), 1)[0, 1]),
                                                      abs=1e-6)


def test_ties_and_partial_positive_area() -> None:
    """A map positive on 10 % of the pixels removes those 10 % only; a flat map removes the first 20 %."""
    flat = torch.ones(1, 10, 10)
    keep, share = faithfulness.deletion_keep(flat)
    assert share == [0.2] and not keep.reshape(-1)[:20].any() and keep.reshape(-1)[20:].all()
    small = torch.zeros(1, 10, 10)
    small[0, 0, :] = torch.linspace(0.1, 1.0, 10)
    keep, share = faithfulness.deletion_keep(small)
    assert share == [0.1] and not keep[0, 0].any() and keep[0, 1:].all()


def test_underflowing_probability_stays_finite() -> None:
    """A class with p = exp(-800), 0 in float64, gives finite, JSON-safe fields."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([800.0, 0.0]))
    x = normalised(pixels(4, 1))
    got = faithfulness.score(model, x, (), torch.full((1, SIZE, SIZE), 0.5), [[1]])[0]
    json.dumps(asdict(got), allow_nan=False)
    assert got.confidence == 0.0 and got.average_drop == 0.0 and not got.increase


def test_shape_mismatch_is_refused() -> None:
    model = seeded_resnet()
    x = normalised(pixels(5, 2))
    with pytest.raises(ValueError, match="3 targets"):
        faithfulness.score(model, x, (), torch.zeros(2, SIZE, SIZE), [[0, 1], [2]])
