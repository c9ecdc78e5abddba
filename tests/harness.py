"""Shared test helpers: tiny seeded checkpoints and images, a mock TorchServe context, and a real
TorchServe in a temp dir (free loopback ports, token auth on).

The server's configuration is the shipped ``config.properties`` with only the ports and the model
store replaced, so the tests exercise the security settings users get. Test modules import helpers
from here (never from one another).
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import socket
import subprocess
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests
import torch
import torchvision
import yaml
from PIL import Image

from camserve.client import Client
from camserve.tabular import TabularSchema

REPO = Path(__file__).resolve().parents[1]
TORCHSERVE = REPO / ".venv" / "bin" / "torchserve"
ASSETS = Path(__file__).parent / "assets"
CLASSES = ["COVID", "Normal", "Viral_Pneumonia"]
TINY_SIZE = 64
SCHEMA = json.loads((ASSETS / "thyroid_schema.json").read_text())
CLINICAL = {"composition": "solid", "echogenicity": "hypoechoic", "margins": "irregular",
            "calcifications": "micro", "sex": "F", "age": "61"}


def make_checkpoint(path: Path, arch: str = "resnet18", classes: list[str] = CLASSES, seed: int = 0,
                    input_size: int = TINY_SIZE, **extra: Any) -> Path:
    """A randomly initialised, self-describing checkpoint (camserve's layout)."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None, num_classes=len(classes))
    torch.save({"state_dict": model.state_dict(), "arch": arch, "class_names": classes,
                "input_size": input_size, **extra}, path)
    return path


def signed_checkpoint(tmp: Path, tabular_weight: float = 0.0) -> Path:
    """A single-logit model whose right map is known (tests/assets/signed_net.py)."""
    from tests.assets.signed_net import SignedNet
    path = tmp / "signed.pt"
    torch.save({"state_dict": SignedNet().state_dict(), "class_names": ["benign", "malignant"], "input_size": 32,
                "model_args": {"tabular_weight": tabular_weight}}, path)
    return path


def fusion_checkpoint(tmp: Path) -> Path:
    """An image + clinical-table model (tests/assets/fusion_net.py) whose tabular branch matters."""
    from tests.assets.fusion_net import FusionNet
    torch.manual_seed(0)
    width = TabularSchema.from_dict(SCHEMA).width
    model = FusionNet(width)
    with torch.no_grad():
        model.head.weight[0, 512:] = 3.0
    path = tmp / "fusion.pt"
    torch.save({"state_dict": model.state_dict(), "class_names": ["benign", "malignant"], "input_size": 64,
                "target_layer": "cnn.layer4", "model_args": {"tabular_width": width}, "tabular": SCHEMA}, path)
    return path


def png_bytes(size: tuple[int, int] = (96, 72), seed: int = 0, mode: str = "RGB") -> bytes:
    """A random-noise image, encoded as PNG."""
    gen = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size[1], size[0], 3, generator=gen) * 255).to(torch.uint8).numpy()
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def red_left_blue_right(size: int = 64) -> bytes:
    arr = np.zeros((size, size, 3), dtype=np.uint8)
    arr[:, : size // 2, 0] = 255
    arr[:, size // 2:, 2] = 255
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def unpack_mar(mar: Path, dest: Path) -> Path:
    """Extract a .mar (a zip) the way TorchServe lays out a model directory."""
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(dest)
    return dest


@dataclass
class MockContext:
    """What the handler uses of ``ts.context.Context``, read from an unpacked .mar."""

    model_dir: Path
    headers: list[dict[str, str]] | None = None
    status: dict[int, tuple[int, str]] = field(default_factory=dict)
    content_types: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.manifest = json.loads((self.model_dir / "MAR-INF" / "MANIFEST.json").read_text())
        self.system_properties = {"model_dir": str(self.model_dir), "gpu_id": None, "batch_size": 8}
        self.model_yaml_config = yaml.safe_load((self.model_dir / "model-config.yaml").read_text())

    def get_request_header(self, idx: int, key: str) -> str | None:
        return self.headers[idx].get(key) if self.headers and idx < len(self.headers) else None

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.status[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_types[idx] = value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    management_url: str
    workdir: Path
    key_file: Path
    log: Path

    def token(self, kind: str = "inference") -> str:
        return json.loads(self.key_file.read_text())[kind]["key"]

    def client(self, timeout: float = 60.0) -> Client:
        return Client.from_key_file(self.key_file, self.url, self.management_url, timeout=timeout)


def server_config(model_store: Path) -> str:
    """The shipped config with fresh loopback ports and the given model store."""
    text = (REPO / "config.properties").read_text()
    for key in ("inference_address", "management_address", "metrics_address"):
        text = re.sub(rf"^{key}=.*$", f"{key}=http://127.0.0.1:{free_port()}", text, flags=re.M)
    for key in ("grpc_inference_port", "grpc_management_port"):
        text = re.sub(rf"^{key}=.*$", f"{key}={free_port()}", text, flags=re.M)
    text = re.sub(r"^model_store=.*$", f"model_store={model_store}", text, flags=re.M)
    return text + f"\ninitial_worker_port={random.randint(20000, 60000)}\n"


def _address(config: str, key: str) -> str:
    return re.search(rf"^{key}=(.*)$", config, flags=re.M).group(1)


@contextmanager
def torchserve(model_store: Path, workdir: Path, timeout: float = 180.0) -> Iterator[Server]:
    """Run TorchServe on every .mar in ``model_store`` until the block exits; waits for READY workers."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = server_config(model_store)
    (workdir / "config.properties").write_text(config)
    server = Server(_address(config, "inference_address"), _address(config, "management_address"),
                    workdir, workdir / "key_file.json", workdir / "torchserve.log")
    env = {**os.environ, "TMPDIR": str(workdir), "LOG_LOCATION": str(workdir / "logs"),
           "METRICS_LOCATION": str(workdir / "logs")}
    with open(server.log, "wb") as log:
        proc = subprocess.Popen(
            [str(TORCHSERVE), "--start", "--foreground", "--ncs", "--ts-config", "config.properties",
             "--model-store", str(model_store)],
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(server, proc, sorted(p.stem for p in model_store.glob("*.mar")), timeout)
        yield server
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_ready(server: Server, proc: subprocess.Popen, models: list[str], timeout: float) -> None:
    """Poll until every model has a READY worker; fail with the server log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"TorchServe exited ({proc.returncode}):\n{server.log.read_text()[-4000:]}")
        if server.key_file.exists() and all(_ready(server, m) for m in models):
            return
        time.sleep(0.5)
    raise RuntimeError(f"TorchServe not ready after {timeout:.0f} s:\n{server.log.read_text()[-4000:]}")


def _ready(server: Server, model: str) -> bool:
    try:
        resp = requests.get(f"{server.management_url}/models/{model}",
                            headers={"Authorization": f"Bearer {server.token('management')}"}, timeout=5)
        workers = resp.json()[0].get("workers", []) if resp.status_code == 200 else []
    except (requests.RequestException, ValueError, KeyError, IndexError):
        return False
    return any(w.get("status") == "READY" for w in workers)
