"""Start a real TorchServe for the tests: temp dir, free loopback ports, token auth on.

The server's configuration is the shipped ``config.properties`` with only the ports and the model
store replaced, so the tests exercise the security settings users get.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from camserve.client import Client

REPO = Path(__file__).resolve().parents[1]
TORCHSERVE = REPO / ".venv" / "bin" / "torchserve"


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
