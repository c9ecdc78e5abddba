"""The Kubernetes topology on loopback, with real processes: N pods behind a front load balancer.

Each pod is TorchServe and its auth proxy, both started by ``deploy/entrypoint.sh`` with the arguments
the image uses (``serve`` and ``proxy``); only the environment differs from a pod: free loopback ports
and directories under ``root`` standing for the pod's emptyDirs. A front nginx (``deploy/nginx/
front.conf``, a layer-4 round robin) stands for the Service.

    python -m deploy.rehearsal --model-store model_store [--replicas 2] [--root DIR]

starts it by hand and prints the front URL and the token file; Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

DEPLOY = Path(__file__).resolve().parent
REPO = DEPLOY.parent
if str(REPO) not in sys.path:  # allow `python deploy/rehearsal.py`
    sys.path.insert(0, str(REPO))

from scripts.torchserve_local import Server, free_port, wait_ready  # noqa: E402

ENTRYPOINT = DEPLOY / "entrypoint.sh"
FRONT_CONF = DEPLOY / "nginx" / "front.conf"
VENV_BIN = REPO / ".venv" / "bin"
STREAM_MODULES = (Path("/usr/lib/nginx/modules/ngx_stream_module.so"),
                  Path("/usr/lib64/nginx/modules/ngx_stream_module.so"))
PORTS = ("INFERENCE", "MANAGEMENT", "METRICS", "GRPC_INFERENCE", "GRPC_MANAGEMENT",
         "PROXY", "PROXY_HEALTH", "PROXY_METRICS")


def write_token(path: Path) -> str:
    """A fresh shared token, as the Kubernetes Secret would hold it (64 hex characters, mode 0600)."""
    token = secrets.token_hex(32)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


@dataclass
class Pod:
    """One pod: TorchServe and its proxy, each an entrypoint process in its own process group."""

    name: str
    root: Path
    ports: dict[str, int]
    serve: subprocess.Popen
    proxy: subprocess.Popen
    env: dict[str, str] = field(repr=False)
    server: Server = field(init=False)

    def __post_init__(self) -> None:
        work = self.root / "work"
        self.server = Server(f"http://127.0.0.1:{self.ports['INFERENCE']}",
                             f"http://127.0.0.1:{self.ports['MANAGEMENT']}",
                             f"http://127.0.0.1:{self.ports['METRICS']}", work, work / "key_file.json",
                             self.serve_log)

    @property
    def url(self) -> str:
        """The proxy's service port: what the Service sends traffic to."""
        return f"http://127.0.0.1:{self.ports['PROXY']}"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['PROXY_HEALTH']}"

    @property
    def metrics_url(self) -> str:
        """The proxy's metrics port, for the scraper."""
        return f"http://127.0.0.1:{self.ports['PROXY_METRICS']}/metrics"

    @property
    def torchserve_metrics_url(self) -> str:
        """TorchServe's own metrics listener on the pod's loopback."""
        return f"http://127.0.0.1:{self.ports['METRICS']}/metrics"

    @property
    def serve_log(self) -> Path:
        return self.root / "serve.log"

    @property
    def proxy_log(self) -> Path:
        """The proxy's stdout: one access-log line per request (see proxy.conf's log_format)."""
        return self.root / "proxy.log"

    def torchserve_group(self) -> int | None:
        """The process group of TorchServe (the entrypoint starts it with setsid), if it runs."""
        try:
            java = int((self.root / "work" / ".model_server.pid").read_text().strip())
            return os.getpgid(java)
        except (OSError, ValueError):
            return None

    def kill_torchserve(self) -> None:
        """A crashed TorchServe container: the proxy stays up."""
        group = self.torchserve_group()
        if group is not None:
            _killpg(group, signal.SIGKILL)
        self.serve.wait(30)

    def restart_torchserve(self) -> None:
        """The kubelet restarting the TorchServe container: the same entrypoint, the same environment."""
        if self.serve.poll() is None:
            raise RuntimeError(f"TorchServe of {self.name} is still running")
        with open(self.serve_log, "ab") as log:
            self.serve = subprocess.Popen([str(ENTRYPOINT), "serve"], env=self.env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        """A lost pod: every process of it dies at once, no graceful shutdown."""
        group = self.torchserve_group()
        for pgid in (group, self.serve.pid, self.proxy.pid):
            if pgid is not None:
                _killpg(pgid, signal.SIGKILL)
        self.serve.wait(30)
        self.proxy.wait(30)

    def stop(self) -> None:
        """A graceful stop (SIGTERM, as the kubelet sends), then SIGKILL whatever is left."""
        group = self.torchserve_group()
        for proc in (self.serve, self.proxy):
            if proc.poll() is None:
                _killpg(proc.pid, signal.SIGTERM)
        for proc in (self.serve, self.proxy):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if group is not None:
            _killpg(group, signal.SIGKILL)

    def served(self, route: str = "/predictions/", status: int = 200) -> list[float]:
        """Arrival times (epoch s) of the POSTs to ``route`` this pod's proxy answered with ``status``."""
        times = []
        pattern = re.compile(rf'^(\d+\.\d+) {self.ports["PROXY"]} "POST {re.escape(route)}\S*" {status} (\S+)')
        for line in self.proxy_log.read_text().splitlines():
            m = pattern.match(line)
            if m:
                times.append(float(m.group(1)) - float(m.group(2)))
        return times


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def pod_env(root: Path, model_store: Path, token_file: Path, ports: dict[str, int]) -> dict[str, str]:
    """The pod's environment on loopback: its own ports and directories, the repo's virtualenv first."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "CAMSERVE_MODEL_STORE": str(model_store), "CAMSERVE_WORKDIR": str(root / "work"),
           "CAMSERVE_RUN_DIR": str(root / "run"), "CAMSERVE_PROXY_DIR": str(root / "nginx"),
           "CAMSERVE_TOKEN_FILE": str(token_file), "CAMSERVE_PROXY_ADDRESS": "127.0.0.1",
           "CAMSERVE_WORKER_PORT": str(ports["WORKER"])}
    env.update({f"CAMSERVE_{name}_PORT": str(ports[name]) for name in PORTS})
    return env


def start_pod(name: str, root: Path, model_store: Path, token_file: Path) -> Pod:
    """Start ``entrypoint.sh serve`` and ``entrypoint.sh proxy`` for one pod (not waiting for readiness)."""
    root.mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in PORTS}
    ports["WORKER"] = 20000 + secrets.randbelow(40000)
    env = pod_env(root, model_store, token_file, ports)
    procs = []
    for command in ("serve", "proxy"):
        with open(root / f"{command}.log", "wb") as log:
            procs.append(subprocess.Popen([str(ENTRYPOINT), command], env=env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
    return Pod(name, root, ports, *procs, env=env)


def wait_pod_ready(pod: Pod, models: list[str], timeout: float) -> None:
    """TorchServe has every model READY, and the proxy answers /ping with 200 (the readiness probe)."""
    wait_ready(pod.server.management_url, pod.server.key_file, models, timeout,
               alive=lambda: _alive(pod.serve, f"TorchServe of {pod.name}", pod.serve_log))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if pod.proxy.poll() is not None:
            raise RuntimeError(f"proxy of {pod.name} exited:\n{pod.proxy_log.read_text()[-4000:]}")
        try:
            if requests.get(f"{pod.health_url}/ping", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"proxy of {pod.name} not ready:\n{pod.proxy_log.read_text()[-4000:]}")


def _alive(proc: subprocess.Popen, what: str, log: Path) -> None:
    if proc.poll() is not None:
        raise RuntimeError(f"{what} exited ({proc.returncode}):\n{log.read_text()[-4000:]}")


def nginx_binary() -> str:
    """Debian's nginx (``make nginx``)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if not found:
        raise FileNotFoundError("nginx is not installed: run 'make nginx'")
    return found


def stream_module_line(nginx: str) -> str:
    """``load_module`` for the stream module when this nginx builds it as a dynamic module."""
    build = subprocess.run([nginx, "-V"], capture_output=True, text=True).stderr
    if "--with-stream=dynamic" not in build:
        return ""
    for path in STREAM_MODULES:
        if path.exists():
            return f"load_module {path};"
    raise FileNotFoundError("nginx's stream module is missing: run 'make nginx' (libnginx-mod-stream)")


@dataclass
class Front:
    proc: subprocess.Popen
    port: int
    root: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.root / "access.log"

    def stop(self) -> None:
        _killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            _killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def start_front(root: Path, pods: list[Pod]) -> Front:
    """The Service's stand-in over the pods' proxy ports."""
    root.mkdir(parents=True, exist_ok=True)
    nginx = nginx_binary()
    port = free_port()
    servers = "\n".join(f"        server 127.0.0.1:{p.ports['PROXY']} max_fails=1 fail_timeout=30s;" for p in pods)
    text = (FRONT_CONF.read_text().replace("@LOAD_MODULE@", stream_module_line(nginx))
            .replace("@DIR@", str(root)).replace("@PORT@", str(port)).replace("@SERVERS@", servers))
    conf = root / "nginx.conf"
    conf.write_text(text)
    with open(root / "front.log", "wb") as log:
        proc = subprocess.Popen([nginx, "-e", "stderr", "-p", str(root), "-c", str(conf), "-g", "daemon off;"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"front nginx exited:\n{(root / 'front.log').read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return Front(proc, port, root)
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("front nginx did not listen")


@dataclass
class Topology:
    pods: list[Pod]
    front: Front
    token: str
    token_file: Path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@contextmanager
def topology(model_store: Path, root: Path, replicas: int = 2, timeout: float = 180.0) -> Iterator[Topology]:
    """Run ``replicas`` pods and the front until the block exits; every pod ready before it starts."""
    root.mkdir(parents=True, exist_ok=True)
    token_file = root / "token"
    token = write_token(token_file)
    models = sorted(p.stem for p in model_store.glob("*.mar"))
    with ExitStack() as stack:
        pods = []
        for k in range(replicas):
            pod = start_pod(f"pod-{k}", root / f"pod-{k}", model_store, token_file)
            stack.callback(pod.stop)
            pods.append(pod)
        for pod in pods:
            wait_pod_ready(pod, models, timeout)
        front = start_front(root / "front", pods)
        stack.callback(front.stop)
        yield Topology(pods, front, token, token_file)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-store", type=Path, default=REPO / "model_store", help="folder of .mar files")
    p.add_argument("--replicas", type=int, choices=range(1, 9), default=2, metavar="1-8", help="pods to start")
    p.add_argument("--root", type=Path, help="where the pods' directories go (default: a new temp dir)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not any(args.model_store.glob("*.mar")):
        print(f"rehearsal: no .mar in {args.model_store}: run 'make model'", file=sys.stderr)
        return 2
    root = args.root or Path(tempfile.mkdtemp(prefix="camserve-rehearsal-"))
    with topology(args.model_store.resolve(), root.resolve(), args.replicas) as topo:
        print(f"front (the Service): {topo.front.url}\ntoken file: {topo.token_file}\n"
              + "".join(f"{p.name}: proxy {p.url}, logs {p.root}\n" for p in topo.pods) + "Ctrl-C stops.")
        try:
            while all(p.serve.poll() is None for p in topo.pods):
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
