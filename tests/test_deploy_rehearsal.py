"""The deployment rehearsed on loopback: two pods (TorchServe + auth proxy, started by the image's
entrypoint) behind a front load balancer standing for the Service (deploy/rehearsal.py).

The tests share one topology and run in file order: the burst kills pod-1, the last test crashes and
restarts pod-0's TorchServe.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from camserve.client import Client
from camserve.errors import ServerUnavailable, Unauthorized
from deploy.rehearsal import ENTRYPOINT, Pod, Topology, nginx_binary, stream_module_line, topology, wait_pod_ready
from scripts import analyze_errors, archive
from tests.harness import CLASSES, make_checkpoint, png_bytes

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """``tiny`` (resnet18, 64 px, batches of 8 within 20 ms) on two pods."""
    try:
        stream_module_line(nginx_binary())
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("rehearsal")
    store = root / "model_store"
    checkpoint = make_checkpoint(root / "tiny.pt")
    assert archive.main([str(checkpoint), "--name", "tiny", "--model-store", str(store),
                         "--batch-size", "8", "--max-batch-delay", "20"]) == 0
    started = time.monotonic()
    with topology(store, root / "pods", replicas=2) as topo:
        log.warning("rehearsal: 2 pods ready behind the front in %.1f s", time.monotonic() - started)
        yield topo


def post(url: str, token: str | None = None, route: str = "/predictions/tiny", **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.post(url + route, data=png_bytes(), headers=headers, timeout=30, **kwargs)


def test_requests_without_the_shared_token_are_refused_at_the_front_and_at_every_proxy(stack: Topology) -> None:
    for url in [stack.front.url] + [pod.url for pod in stack.pods]:
        own_keys = [pod.server.token() for pod in stack.pods]  # TorchServe's per-instance keys
        for token in [None, "0" * 64, stack.token[:-1], *own_keys]:
            resp = post(url, token)
            assert resp.status_code == 401, (url, token, resp.text)
            assert resp.json()["type"] == "Unauthorized"
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        with pytest.raises(Unauthorized):
            Client(url, None).explain("tiny", png_bytes(), explain="none")
        ok = post(url, stack.token)
        assert ok.status_code == 200, ok.text
        assert ok.json()["model"]["name"] == "tiny"


def test_only_the_inference_routes_pass_a_proxy(stack: Topology) -> None:
    headers = stack.headers()
    for url in [stack.front.url] + [pod.url for pod in stack.pods]:
        for path in ("/models", "/models/tiny", "/metrics", "/api-description", "/token?type=inference"):
            assert requests.get(url + path, headers=headers, timeout=10).status_code == 404, (url, path)
        assert requests.get(url + "/predictions/tiny", headers=headers, timeout=10).status_code == 405
        assert requests.get(url + "/ping", headers=headers, timeout=10).json()["status"] == "Healthy"
        assert requests.get(url + "/ping", timeout=10).status_code == 401
    for pod in stack.pods:
        assert requests.get(pod.health_url + "/ping", timeout=10).status_code == 200  # probes: no token
        assert post(pod.health_url, stack.token).status_code == 404
        assert post(pod.metrics_url.removesuffix("/metrics"), stack.token).status_code == 404


def samples(text: str, name: str) -> dict[str, float]:
    """Prometheus text exposition: ``{labels: value}`` of every sample of ``name``."""
    found = {}
    for line in text.splitlines():
        m = re.match(rf"^{name}{{(.*)}} (\S+)$", line)
        if m:
            found[m.group(1)] = float(m.group(2))
    return found


def test_torchserve_metrics_are_scraped_in_the_pod_and_not_through_the_proxy(stack: Topology) -> None:
    for pod in stack.pods:
        assert post(pod.url, stack.token).status_code == 200
        inside = requests.get(pod.torchserve_metrics_url, timeout=10).text
        scraped = requests.get(pod.metrics_url, timeout=10).text
        for name in ("ts_queue_latency_microseconds", "ts_inference_latency_microseconds",
                     "ts_inference_requests_total"):
            tiny = {k: v for k, v in samples(inside, name).items() if 'model_name="tiny"' in k}
            assert tiny and all(v > 0 for v in tiny.values()), (pod.name, name, inside[:2000])
            assert samples(scraped, name).keys() == samples(inside, name).keys()
        for url in (pod.url, stack.front.url):
            resp = requests.get(url + "/metrics", headers=stack.headers(), timeout=10)
            assert resp.status_code == 404 and "ts_queue_latency" not in resp.text


def test_the_handler_metrics_declared_in_metrics_yaml_reach_prometheus(stack: Topology) -> None:
    pod = stack.pods[0]

    def scrape() -> dict[str, float]:
        text = requests.get(pod.torchserve_metrics_url, timeout=10).text
        labels = ('ModelName="tiny"', 'Level="Model"', 'Hostname="')
        return {name: sum(v for k, v in samples(text, name).items() if all(w in k for w in labels + extra))
                for name, extra in [("CamserveRequestLatencyMs_count", ()), ("CamserveRequestLatencyMs_sum", ()),
                                    ("CamserveBatchSize_count", ()), ("CamserveBatchSize_sum", ()),
                                    ("CamserveRejectedRequests", ('Code="415"',))]}
    before = scrape()
    assert post(pod.url, stack.token).status_code == 200
    bad = requests.post(pod.url + "/predictions/tiny", data=b"not an image", headers=stack.headers(), timeout=30)
    assert bad.status_code == 415, bad.text
    expected = {"CamserveRequestLatencyMs_count": 2, "CamserveBatchSize_count": 2, "CamserveBatchSize_sum": 2,
                "CamserveRejectedRequests": 1}
    deadline = time.monotonic() + 10  # the frontend reads the worker's metric lines asynchronously
    while True:
        delta = {k: v - before[k] for k, v in scrape().items()}
        if all(delta[k] >= v for k, v in expected.items()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert {k: delta[k] for k in expected} == expected
    assert delta["CamserveRequestLatencyMs_sum"] > 0


def image_folder(root: Path, per_class: int) -> int:
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{name}_{i:03d}.png").write_bytes(png_bytes((72, 64), seed=100 * k + i))
    return len(CLASSES) * per_class


class Probe(threading.Thread):
    """A client sending one request through the front every 50 ms, without retries."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(daemon=True)
        self.url, self.token, self.results = url, token, []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.05):
            sent = time.time()
            try:
                ok = post(self.url, self.token, params=None).status_code == 200
            except requests.RequestException:
                ok = False
            self.results.append((sent, ok))


def test_a_burst_through_the_front_survives_losing_a_pod(stack: Topology, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    images = image_folder(data, per_class=16)
    survivor, victim = stack.pods
    out = tmp_path / "analysis"
    argv = ["--data-dir", str(data), "--output-dir", str(out), "--url", stack.front.url, "--token", stack.token,
            "--model", "tiny", "--concurrency", "8", "--retries", "5", "--backoff", "0.2", "--timeout", "30"]
    caplog.set_level(logging.DEBUG, logger="camserve.analysis.runner")
    before = {pod.name: len(pod.served()) for pod in stack.pods}
    codes: list[int] = []
    run = threading.Thread(target=lambda: codes.append(analyze_errors.main(argv)))
    probe = Probe(stack.front.url, stack.token)
    started = time.time()
    run.start()
    probe.start()
    while len(victim.served()) - before[victim.name] < 8 and run.is_alive():
        time.sleep(0.02)
    killed = time.time()
    victim.kill()
    run.join(180)
    finished = time.time()
    probe.stopping.set()
    probe.join(5)

    assert codes == [0], (out / "failures.csv").read_text() if (out / "failures.csv").exists() else codes
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    records = [r for r in lines if "status" in r]  # after the run's metadata line
    assert len(records) == images and {r["status"] for r in records} == {"ok"}
    assert len({r["path"] for r in records}) == images

    served = {pod.name: len(pod.served()) - before[pod.name] for pod in stack.pods}
    after_kill = [t for t in survivor.served() if t > killed]
    retries = [r for r in caplog.records if r.getMessage().startswith("attempt ")]
    assert served[victim.name] >= 8 and served[survivor.name] > 0 and after_kill
    assert served[victim.name] + served[survivor.name] >= images  # every image answered by one of them
    assert retries, "nothing was in flight on the killed pod: no retry was exercised"
    recovered = min(sent for sent, ok in probe.results if ok and sent > killed) - killed
    failed_probes = sum(1 for sent, ok in probe.results if not ok)
    log.warning("rehearsal burst: %d images in %.1f s through the front; %s served %d and %s %d predictions; "
                "%s killed %.1f s in; %d attempts retried (last %.2f s after the kill); probes: %d sent, "
                "%d failed, first success %.0f ms after the kill", images, finished - started, victim.name,
                served[victim.name], survivor.name, served[survivor.name], victim.name, killed - started,
                len(retries), max(r.created for r in retries) - killed, len(probe.results), failed_probes,
                1000 * recovered)


def health(pod: Pod, *flags: str) -> int:
    """The image's HEALTHCHECK and the startup/readiness/liveness probes' command, in the pod."""
    return subprocess.run([str(ENTRYPOINT), "health", *flags], env=pod.env, capture_output=True).returncode


def test_a_crashed_torchserve_answers_503_at_its_proxy_until_the_restart(stack: Topology) -> None:
    pod = stack.pods[0]
    old_key = pod.server.token()
    assert health(pod) == 0 and health(pod, "--live") == 0
    pod.kill_torchserve()
    assert pod.serve.returncode != 0 and pod.proxy.poll() is None
    assert health(pod) != 0 and health(pod, "--live") != 0
    resp = post(pod.url, stack.token)
    assert resp.status_code == 503 and resp.json()["type"] == "ServerUnavailable"
    assert resp.headers.get("Connection") == "close"
    assert requests.get(pod.health_url + "/ping", timeout=10).status_code == 503  # readiness fails
    with pytest.raises(ServerUnavailable):
        Client(pod.url, stack.token).explain("tiny", png_bytes(), explain="none")

    pod.restart_torchserve()
    wait_pod_ready(pod, ["tiny"], timeout=120)
    assert pod.server.token() != old_key  # a new instance, a new key: the proxy reloaded it
    assert post(pod.url, stack.token).status_code == 200
    assert health(pod) == 0
