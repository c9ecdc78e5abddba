"""The cache of ``scripts/demo/build.py``: a step reruns exactly when an input file's content, its
arguments or its output change, and every step's inputs cover the files that make it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scripts import archive, train, training
from scripts.demo import build, chest_phantoms, thyroid_phantoms, train_thyroid


class Counter:
    def __init__(self, output: Path) -> None:
        self.output, self.calls = output, 0

    def __call__(self, argv: list[str]) -> int:
        self.calls += 1
        self.output.write_text(" ".join(argv))
        return 0


@pytest.fixture
def step(tmp_path: Path) -> build.Step:
    source = tmp_path / "generator.py"
    source.write_text("VERSION = 1\n")
    out = tmp_path / "model.pt"
    return build.Step("model", out, ["--epochs", "1"], [source], Counter(out))


def test_a_step_runs_once_then_is_kept(step: build.Step) -> None:
    assert "made" in step.make(force=False) and step.run.calls == 1
    assert "kept" in step.make(force=False) and step.run.calls == 1
    assert "made" in step.make(force=True) and step.run.calls == 2


def test_an_edited_input_reruns_a_touched_one_does_not(step: build.Step) -> None:
    step.make(force=False)
    source = step.inputs[0]
    os.utime(source, (1, 1))  # an older or newer mtime alone changes nothing
    assert "kept" in step.make(force=False)
    source.write_text("VERSION = 2\n")
    assert "made" in step.make(force=False) and step.run.calls == 2


def test_other_arguments_or_a_changed_output_rerun(step: build.Step) -> None:
    step.make(force=False)
    step.argv = ["--epochs", "2"]
    assert "made" in step.make(force=False)
    step.output.write_text("edited by hand")
    assert "made" in step.make(force=False)
    step.output.unlink()
    assert "made" in step.make(force=False) and step.run.calls == 4


def test_a_failing_step_stops_the_build(tmp_path: Path) -> None:
    failing = build.Step("model", tmp_path / "m.pt", [], [], lambda argv: 2)
    with pytest.raises(SystemExit, match="model step"):
        failing.make(force=False)
    assert not failing.stamp.exists()


def _inputs(steps: list[build.Step]) -> dict[str, set[Path]]:
    return {s.kind: {p.resolve() for p in s.inputs} for s in steps}


def test_chest_steps_cover_generator_trainer_core_and_archive(tmp_path: Path) -> None:
    args = build.build_parser().parse_args(["chest", "--data-dir", str(tmp_path / "d")])
    inputs = _inputs(build.chest_steps(args))
    assert inputs["data"] == {Path(chest_phantoms.__file__).resolve()}
    assert {Path(train.__file__).resolve(), Path(training.__file__).resolve(),
            (tmp_path / "d" / "manifest.json").resolve(), build.CORE / "imaging.py", build.CORE / "archs.py",
            build.CORE / "checkpoint.py"} <= inputs["model"]
    assert {args.checkpoint.resolve(), archive.HANDLER.resolve(), Path(archive.__file__).resolve(),
            build.CORE / "cam.py", build.CORE / "explainer.py"} <= inputs["archive"]
    assert set(archive.serving_modules()) <= inputs["archive"]


def test_thyroid_steps_cover_generator_trainer_and_model_file(tmp_path: Path) -> None:
    args = build.build_parser().parse_args(["thyroid", "--data-dir", str(tmp_path / "d")])
    inputs = _inputs(build.thyroid_steps(args))
    assert inputs["data"] == {Path(thyroid_phantoms.__file__).resolve()}
    assert {Path(train_thyroid.__file__).resolve(), train_thyroid.MODEL_FILE, build.CORE / "tabular.py"} \
        <= inputs["model"]
    assert train_thyroid.MODEL_FILE in inputs["archive"]


@pytest.mark.parametrize("argv", [["chest", "--epochs", "0"], ["thyroid", "--size", "x"], ["lung"],
                                  ["chest", "--threads", "-1"]])
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build.main(argv)
    assert exc.value.code == 2


def test_chest_recipe_reaches_the_trainer_and_eval_draws_another_seed(tmp_path: Path) -> None:
    args = build.build_parser().parse_args(["chest", "--data-dir", str(tmp_path / "d"), "--roi-weight", "0.5"])
    fit = {k: v for k, v in zip(build.chest_steps(args)[1].argv[::2], build.chest_steps(args)[1].argv[1::2],
                                strict=True)}
    assert fit["--target-layer"] == build.CHEST["target_layer"] and fit["--cam-method"] == build.CHEST["cam_method"]
    assert fit["--batch-size"] == str(build.CHEST["batch_size"]) and fit["--lr"] == str(build.CHEST["lr"])
    assert fit["--roi-weight"] == "0.5" and fit["--roi-masks"] == str(tmp_path / "d" / "masks" / "lungs")
    held_out = build.build_parser().parse_args(["eval", "--data-dir", str(tmp_path / "e")])
    data = build.eval_steps(held_out)[0].argv
    assert data[data.index("--seed") + 1] != str(args.data_seed)
    assert data[data.index("--split-fractions") + 1] == "0,0,1"
