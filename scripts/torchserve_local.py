"""Run TorchServe on this machine with camserve's shipped configuration, and wait until it is ready.

One home for starting a local server, used by the tests, the served benchmark and ``make serve``
(through ``scripts/wait_ready.py``):

- :func:`config_text`: the shipped ``config.properties`` (token auth on, model API off, loopback only)
  with fresh loopback ports and another model store, so several servers can run side by side;
- :func:`running`: TorchServe in the foreground in its own work directory (its key file, pid file,
  logs and temp files stay there) until the block exits;
- :func:`wait_ready`: poll the management API until every model has a READY worker.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from camserve.client import Client

REPO = Path(__file__).resolve().parents[1]
TORCHSERVE = Path(sys.executable).with_name("torchserve")
PORT_KEYS = ("inference_address", "management_address", "metrics_address")
GRPC_PORT_KEYS = ("grpc_inference_port", "grpc_management_port")


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Server:
    """Where a running TorchServe answers, and its key file."""

    url: str
    management_url: str
    metrics_url: str
    workdir: Path
    key_file: Path
    log: Path

    def token(self, kind: str = "inference") -> str:
        return str(json.loads(self.key_file.read_text())[kind]["key"])

    def client(self, timeout: float = 60.0) -> Client:
        return Client.from_key_file(self.key_file, self.url, self.management_url, timeout=timeout)

    def workers(self, model: str) -> list[dict[str, Any]]:
        """The model's workers as the management API describes them (``pid``, ``status``...)."""
        resp = requests.get(f"{self.management_url}/models/{model}", timeout=10,
                            headers={"Authorization": f"Bearer {self.token('management')}"})
        resp.raise_for_status()
        return list(resp.json()[0]["workers"])

    def ready_worker_pid(self, model: str) -> int | None:
        """The pid of the model's first READY worker, or ``None`` while none is."""
        ready = [w for w in self.workers(model) if w.get("status") == "READY"]
        return int(ready[0]["pid"]) if ready else None


def config_text(model_store: Path, base: Path = REPO / "config.properties", extra: str = "") -> str:
    """The shipped config with fresh loopback ports, ``model_store``, and ``extra`` lines appended."""
    text = base.read_text()
    for key in PORT_KEYS:
        text = re.sub(rf"^{key}=.*$", f"{key}=http://127.0.0.1:{free_port()}", text, flags=re.M)
    for key in GRPC_PORT_KEYS:
        text = re.sub(rf"^{key}=.*$", f"{key}={free_port()}", text, flags=re.M)
    text = re.sub(r"^model_store=.*$", f"model_store={model_store}", text, flags=re.M)
    return text + f"\ninitial_worker_port={random.randint(20000, 60000)}\n{extra}"


def address(config: str, key: str) -> str:
    """The value of ``key`` in a config.properties text."""
    found = re.search(rf"^{key}=(.*)$", config, flags=re.M)
    if found is None:
        raise KeyError(key)
    return found.group(1).strip()


@contextmanager
def running(model_store: Path, workdir: Path, timeout: float = 180.0, extra_config: str = "",
            env: dict[str, str] | None = None) -> Iterator[Server]:
    """TorchServe serving every .mar in ``model_store`` until the block exits; waits for READY workers.

    Args:
        model_store: Folder of .mar files.
        workdir: The server's own directory (config, key file, logs, temp files).
        timeout: Seconds to wait for every model's worker.
        extra_config: Lines appended to the config (e.g. ``default_workers_per_model=2``).
        env: Extra environment variables for the server.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config = config_text(model_store, extra=extra_config)
    (workdir / "config.properties").write_text(config)
    server = Server(address(config, "inference_address"), address(config, "management_address"),
                    address(config, "metrics_address"), workdir, workdir / "key_file.json",
                    workdir / "torchserve.log")
    full_env = {**os.environ, "TMPDIR": str(workdir), "LOG_LOCATION": str(workdir / "logs"),
                "METRICS_LOCATION": str(workdir / "logs"), **(env or {})}
    with open(server.log, "wb") as log:
        proc = subprocess.Popen(
            [str(TORCHSERVE), "--start", "--foreground", "--ncs", "--ts-config", "config.properties",
             "--model-store", str(model_store)],
            cwd=workdir, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(server.management_url, server.key_file, sorted(p.stem for p in model_store.glob("*.mar")),
                   timeout, alive=lambda: _alive(proc, server.log))
        yield server
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _alive(proc: subprocess.Popen[bytes], log: Path) -> None:
    if proc.poll() is not None:
        raise RuntimeError(f"TorchServe exited ({proc.returncode}):\n{log.read_text()[-4000:]}")


def wait_ready(management_url: str, key_file: Path, models: Sequence[str] | None = None, timeout: float = 180.0,
               alive: object = None) -> list[str]:
    """Poll until every model (default: every model the server lists) has a READY worker.

    Args:
        management_url: TorchServe's management API.
        key_file: Its ``key_file.json`` (written once the server has started).
        models: The models to wait for; ``None`` waits for the server's own list (at least one model).
        timeout: Seconds to wait.
        alive: A callable that raises when the server process has died (stops the wait early).

    Returns:
        The ready models.

    Raises:
        TimeoutError: Not ready in time (the message says what was last seen).
    """
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if callable(alive):
            alive()
        try:
            headers = {"Authorization": f"Bearer {json.loads(key_file.read_text())['management']['key']}"}
            names = list(models) if models is not None else _listed(management_url, headers)
            waiting = [m for m in names if not _ready(management_url, headers, m)]
            if names and not waiting:
                return names
            last = f"waiting for {', '.join(waiting) or 'a model'}"
        except (OSError, ValueError, KeyError, requests.RequestException) as exc:
            last = f"{type(exc).__name__}: {str(exc)[:200]}"
        time.sleep(0.5)
    raise TimeoutError(f"TorchServe not ready after {timeout:.0f} s ({last})")


def _listed(management_url: str, headers: dict[str, str]) -> list[str]:
    resp = requests.get(f"{management_url}/models", headers=headers, timeout=5)
    resp.raise_for_status()
    return sorted(m["modelName"] for m in resp.json().get("models", []))


def _ready(management_url: str, headers: dict[str, str], model: str) -> bool:
    resp = requests.get(f"{management_url}/models/{model}", headers=headers, timeout=5)
    if resp.status_code != 200:
        return False
    return any(w.get("status") == "READY" for w in resp.json()[0].get("workers", []))
