"""The batch pipeline's options end to end, in process: several classes, methods and faithfulness per
row, each row answered as if it had come alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from camserve.cam_methods import METHODS
from camserve.explainer import Explainer
from camserve.schema import ExplainResponse
from tests.harness import CLASSES, make_checkpoint, png_bytes


@pytest.fixture(scope="module")
def explainer(tiny_checkpoint: Path) -> Explainer:
    return Explainer.from_checkpoint(tiny_checkpoint, "tiny")


def answer(explainer: Explainer, **fields: str) -> ExplainResponse:
    rows = [{"data": png_bytes(seed=int(fields.pop("seed", "3"))), **{k: v.encode() for k, v in fields.items()}}]
    result = explainer.handle(rows)[0]
    assert isinstance(result, ExplainResponse), result
    return result


def test_target_all_gives_one_map_per_class_from_the_same_forward(explainer: Explainer) -> None:
    many = answer(explainer, target="all", images="none")
    assert [e.target.label for e in many.maps] == CLASSES and many.explanation == many.maps[0]
    assert many.to_dict()["explanations"][1]["target"]["label"] == "Normal"
    for exp in many.maps:
        alone = answer(explainer, target=exp.target.label, images="none").explanation
        assert alone is not None and np.allclose(exp.cam, alone.cam, atol=1e-5)
        assert exp.cam_max == pytest.approx(alone.cam_max, rel=1e-5)
    single = answer(explainer, target="Normal")
    assert single.explanations is None and "explanations" not in single.to_dict(), "old clients see schema 1"


def test_a_comma_list_keeps_the_request_order(explainer: Explainer) -> None:
    got = answer(explainer, target="Viral_Pneumonia,0", images="none")
    assert [e.target.index for e in got.maps] == [2, 0]


@pytest.mark.parametrize("method", [m for m in METHODS])
def test_every_method_is_served_and_named_in_the_answer(explainer: Explainer, method: str) -> None:
    got = answer(explainer, explain=method, images="both")
    assert got.explanation is not None and got.explanation.method == method
    assert got.explanation.heatmap is not None and got.explanation.overlay is not None
    if method == "layercam-fusion":  # fused at layer2's resolution: 8x8 at 64 px, where layer4 is 2x2
        assert np.asarray(got.explanation.cam).shape == (8, 8)


def test_rows_asking_different_methods_share_a_batch_and_match_their_single_answers(explainer: Explainer) -> None:
    kinds = [("gradcam", "1"), ("layercam", "2"), ("none", "3"), ("layercam-fusion", "4"), ("gradcam++", "5")]
    rows: list[dict[str, Any]] = [{"data": png_bytes(seed=int(s)), "explain": m.encode(), "images": b"none"}
                                  for m, s in kinds]
    together = explainer.handle(rows)
    for (method, seed), got in zip(kinds, together, strict=True):
        assert isinstance(got, ExplainResponse)
        alone = answer(explainer, explain=method, images="none", seed=seed)
        assert got.probabilities == pytest.approx(alone.probabilities, abs=1e-6)
        if method == "none":
            assert got.explanation is None
        else:
            assert got.explanation is not None and alone.explanation is not None
            assert np.allclose(got.explanation.cam, alone.explanation.cam, atol=1e-4)


def test_faithfulness_is_filled_for_every_map_when_asked(explainer: Explainer) -> None:
    got = answer(explainer, target="all", faithfulness="true", images="none")
    for exp in got.maps:
        f = exp.faithfulness
        assert f is not None and f.confidence == pytest.approx(got.probabilities[exp.target.label], rel=1e-5)
        assert 0.0 <= f.average_drop <= 1.0 and 0.0 <= f.deletion_drop <= 1.0
        assert f.increase == (f.masked_confidence > f.confidence)
    assert answer(explainer).explanation.faithfulness is None, "opt-in"


def test_the_checkpoints_default_method_is_used_when_a_request_names_none(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "m.pt", cam_method="layercam")
    model = Explainer.from_checkpoint(ckpt, "m")
    assert model.info.cam_method == "layercam"
    assert answer(model).explanation.method == "layercam"
    assert answer(model, explain="gradcam").explanation.method == "gradcam"


def test_a_failed_group_forward_is_rerun_row_by_row(explainer: Explainer, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"data": png_bytes(seed=1)}, {"data": png_bytes(seed=2), "explain": b"layercam"}]
    calls = {"n": 0}
    original = explainer.model.forward

    def flaky(x: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 2:  # the second group's forward
            raise RuntimeError("boom")
        return original(x, *extra)

    monkeypatch.setattr(explainer.model, "forward", flaky)
    out = explainer.handle(rows)
    assert calls["n"] == 4, "two group forwards, the second failed, then one forward per row"
    assert all(isinstance(o, ExplainResponse) for o in out) and out[1].explanation.method == "layercam"
