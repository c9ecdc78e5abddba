"""What a .mar holds (the serving modules only), the model-config YAML it carries, and a handler that
runs from the unpacked archive alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from handlers.camserve_handler import CamserveHandler
from scripts import archive
from tests.harness import REPO, MockContext, png_bytes, unpack_mar

FLAGS = ["--workers", "auto", "--threads", "1", "--channels-last", "--render-threads", "2"]
SERVING = ["__init__.py", "archs.py", "cam.py", "cam_methods.py", "checkpoint.py", "errors.py", "explainer.py",
           "faithfulness.py", "imaging.py", "parsing.py", "render.py", "schema.py", "tabular.py"]


@pytest.fixture(scope="module")
def mar(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    store = tmp_path_factory.mktemp("store")
    assert archive.main([str(tiny_checkpoint), "--name", "m", "--model-store", str(store), *FLAGS]) == 0
    return store / "m.mar"


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory, mar: Path) -> Path:
    return unpack_mar(mar, tmp_path_factory.mktemp("unpacked"))


def test_the_archive_packs_only_the_modules_the_handler_imports(mar: Path) -> None:
    with zipfile.ZipFile(mar) as packed:
        names = sorted(n for n in packed.namelist() if not n.endswith("/"))
    assert names == sorted(["MAR-INF/MANIFEST.json", "camserve_handler.py", "model-config.yaml", "weights.pt",
                            *[f"camserve/{m}" for m in SERVING]])
    assert [p.name for p in archive.serving_modules()] == SERVING
    assert not {"client.py", "cli.py", "folders.py", "sanity.py"} & set(SERVING), "no client or tool code"
    assert not any("analysis" in n for n in names)


def test_the_handler_runs_from_the_unpacked_archive_alone(unpacked: Path) -> None:
    """As TorchServe runs it: the model dir first on sys.path; a module missing from the .mar fails here."""
    code = f"""
import json, sys
sys.path.insert(0, {str(REPO / 'tests')!r})  # the mock context only
from harness import MockContext
from pathlib import Path
import camserve, camserve_handler
assert camserve.__file__.startswith({str(unpacked)!r}), camserve.__file__
h = camserve_handler.CamserveHandler()
h.initialize(MockContext(Path({str(unpacked)!r})))
from harness import png_bytes
rows = [{{"data": bytearray(png_bytes()), "target": bytearray(b"all"), "explain": bytearray(b"layercam-fusion"),
          "faithfulness": bytearray(b"true")}}]
out = json.loads(h.handle(rows, MockContext(Path({str(unpacked)!r})))[0])
print(len(out["explanations"]), out["explanation"]["method"], out["explanation"]["faithfulness"] is not None)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(unpacked)}
    out = subprocess.run([sys.executable, "-c", code], cwd=unpacked, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["3", "layercam-fusion", "True"]


def test_model_config_carries_batching_workers_and_camserve_settings(mar: Path) -> None:
    config = yaml.safe_load(zipfile.ZipFile(mar).read("model-config.yaml"))
    expected_workers = archive.resolve_workers("auto")
    assert config["minWorkers"] == config["maxWorkers"] == expected_workers
    assert config["batchSize"] == 8 and config["maxBatchDelay"] == 5, "a lone client pays the delay"
    assert config["camserve"] == {"max_response_bytes": archive.MAX_RESPONSE_BYTES, "threads": 1,
                                  "channels_last": True, "render_threads": 2}


def test_workers_auto_is_one_on_a_cpu_only_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert archive.resolve_workers("auto") == 1 and archive.resolve_workers("3") == 3
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    monkeypatch.setattr("os.cpu_count", lambda: 32)
    assert archive.resolve_workers("auto") == 4


@pytest.mark.parametrize("flags", [["--workers", "0"], ["--workers", "many"], ["--autocast", "fp8"],
                                   ["--max-batch-delay", "-1"], ["--render-threads", "100"]])
def test_bad_archive_flags_exit_2(tmp_path: Path, tiny_checkpoint: Path, flags: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        archive.main([str(tiny_checkpoint), "--name", "m", "--model-store", str(tmp_path), *flags])
    assert exc.value.code == 2


def test_handler_applies_the_model_configs_settings(unpacked: Path) -> None:
    before = torch.get_num_threads()
    try:
        handler = CamserveHandler()
        handler.initialize(MockContext(unpacked))
        assert torch.get_num_threads() == 1
        assert handler.explainer is not None and handler.explainer.settings.channels_last
        out = json.loads(handler.handle([{"body": bytearray(png_bytes())}], MockContext(unpacked))[0])
        assert out["prediction"]["label"]
    finally:
        torch.set_num_threads(before)
