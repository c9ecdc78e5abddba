"""The Gradio app through its API (``gradio_client``), and the command line's refusals."""

from __future__ import annotations

import os
import select
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import gradio_client
import numpy as np
import pytest
import requests
from PIL import Image

from gradio_app.__main__ import build_parser, settings_from_args
from gradio_app.app import launch_kwargs, serve
from gradio_app.settings import AUTH_ENV, Settings, parse_auth
from tests.conftest import CLASSES, png_bytes
from tests.harness import REPO, free_port


@contextmanager
def launched(settings: Settings) -> Iterator[str]:
    """``build_app(settings)`` served as ``python -m gradio_app`` serves it, on a free loopback port; yields its URL."""
    settings = replace(settings, host="127.0.0.1", port=free_port())
    demo = serve(settings, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{settings.port}/"
    finally:
        demo.close()


@contextmanager
def forwarding(port: int, target: str) -> Iterator[None]:
    """Relay TCP from 127.0.0.1:``port`` to ``target``'s host and port: a server that "comes up" later."""
    upstream_addr = (urlsplit(target).hostname, urlsplit(target).port)

    class Pipe(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with socket.create_connection(upstream_addr) as upstream, suppress(OSError):  # peers reset: done
                peer = {self.request: upstream, upstream: self.request}
                while True:
                    ready, _, _ = select.select(list(peer), [], [], 30)
                    chunks = [(s, s.recv(1 << 16)) for s in ready]
                    if not ready or any(not data for _, data in chunks):
                        return
                    for s, data in chunks:
                        peer[s].sendall(data)

    class Relay(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    with Relay(("127.0.0.1", port), Pipe) as relay:
        threading.Thread(target=relay.serve_forever, daemon=True).start()
        try:
            yield
        finally:
            relay.shutdown()


def api(url: str, tmp: Path, **kwargs) -> gradio_client.Client:
    return gradio_client.Client(url, verbose=False, analytics_enabled=False, download_files=str(tmp), **kwargs)


def image_tree(root: Path) -> Path:
    """A small ImageFolder test split with lung masks beside it, laid out like data/phantoms."""
    for i, cls in enumerate(("COVID", "Normal")):
        for sub in ("test", "masks/lungs/test"):
            (root / sub / cls).mkdir(parents=True)
        (root / "test" / cls / "a.png").write_bytes(png_bytes((80, 80), seed=20 + i))
        Image.new("L", (80, 80), 255).save(root / "masks/lungs/test" / cls / "a.png")
    return root / "test"


@pytest.fixture(scope="module")
def app_url(server, tmp_path_factory) -> Iterator[str]:
    examples = image_tree(tmp_path_factory.mktemp("phantoms"))
    settings = Settings(server_url=server.url, management_url=server.management_url, token_file=server.key_file,
                        examples_dir=examples, timeout=30)
    with launched(settings) as url:
        yield url


@pytest.mark.integration
def test_explain_through_the_app(app_url, server, tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes((96, 72), seed=5))
    client = api(app_url, tmp_path)
    expected = server.client().explain("tiny", path.read_bytes(), label="Normal").prediction
    scores, original, heatmap, overlay, focus, verdict, details = client.predict(
        gradio_client.handle_file(str(path)), "tiny", "auto", "jet", 0.5, None, "Normal", api_name="/explain")
    assert scores["label"] == expected.label
    assert scores["confidences"][0]["confidence"] == pytest.approx(expected.confidence, abs=1e-4)
    over, orig = Image.open(overlay), Image.open(original)
    assert over.format == "PNG" and over.size == orig.size == (96, 72)
    assert np.abs(np.asarray(over, np.int16) - np.asarray(orig.convert("RGB"), np.int16)).mean() > 5
    assert focus is None
    assert verdict.startswith("Correct") == (expected.label == "Normal") and "Normal" in verdict

    # colormap change: re-rendered in the app from the cached map (same session), not re-predicted
    gray_heat, gray_overlay = client.predict("gray", 0.5, api_name="/rerender")
    arr = np.asarray(Image.open(gray_heat).convert("RGB"), np.int16)
    assert arr.shape == (72, 96, 3) and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    assert not np.array_equal(arr, np.asarray(Image.open(heatmap).convert("RGB"), np.int16))


@pytest.mark.integration
def test_explain_with_mask_and_target(app_url, tmp_path):
    path, mask = tmp_path / "x.png", tmp_path / "m.png"
    path.write_bytes(png_bytes((64, 64), seed=6))
    Image.new("L", (64, 64), 255).save(mask)
    client = api(app_url, tmp_path)
    out = client.predict(gradio_client.handle_file(str(path)), "tiny", "COVID", "hot", 0.4,
                         gradio_client.handle_file(str(mask)), "(unknown)", api_name="/explain")
    assert out[4] == pytest.approx(1.0)  # the whole image is inside the mask
    assert "Grad-CAM of **COVID**" in out[6]


@pytest.mark.integration
def test_batch_through_the_app(app_url, tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"b{i}.png")
        paths[-1].write_bytes(png_bytes((64, 64), seed=30 + i))
    summary, gallery = api(app_url, tmp_path).predict([gradio_client.handle_file(str(p)) for p in paths], "tiny",
                                                      "jet", 0.5, api_name="/batch")
    assert "**3 image(s)**, 3 explained, 0 with a known label" in summary
    assert len(gallery) == 3 and all(g["caption"].startswith("pred ") for g in gallery)


def test_app_starts_with_the_server_down_and_auth_and_upload_limit(tmp_path):
    port = free_port()
    settings = Settings(server_url=f"http://127.0.0.1:{port}", management_url=f"http://127.0.0.1:{port}",
                        token_file=tmp_path / "none.json", auth=("ann", "s3cret:x"), max_file_size="1kb", timeout=5)
    with launched(settings) as url:
        with pytest.raises(Exception):  # noqa: B017 (gradio_client raises a bare ValueError on bad login)
            api(url, tmp_path)
        client = api(url, tmp_path, auth=("ann", "s3cret:x"))
        status = client.predict(None, "auto", "(unknown)", api_name="/reconnect")[0]
        assert status.startswith("**Server down.**") and "not reachable" in status and "Reconnect" in status
        assert str(port) not in status
        img = tmp_path / "x.png"
        img.write_bytes(png_bytes((8, 8)))
        with pytest.raises(gradio_client.exceptions.AppError, match="not reachable") as caught:
            client.predict(gradio_client.handle_file(str(img)), None, "auto", "jet", 0.5, None, "(unknown)",
                           api_name="/explain")
        assert "http" not in str(caught.value)
        # max_file_size (1kb here) is enforced by the upload route; the client's cookies carry the login
        def upload(size: int) -> int:
            return requests.post(f"{url}gradio_api/upload", files={"files": ("f.png", os.urandom(size))},
                                 cookies=dict(client.cookies), timeout=10).status_code
        assert upload(4096) == 413
        assert upload(256) == 200


@pytest.mark.integration
def test_app_started_before_the_server_works_once_it_is_up(server, tmp_path):
    ports = free_port(), free_port()
    settings = Settings(server_url=f"http://127.0.0.1:{ports[0]}", management_url=f"http://127.0.0.1:{ports[1]}",
                        token_file=server.key_file, timeout=30)
    img = tmp_path / "x.png"
    img.write_bytes(png_bytes((64, 64), seed=8))
    explain_args = (gradio_client.handle_file(str(img)), None, "auto", "jet", 0.5, None, "(unknown)")
    with launched(settings) as url:
        client = api(url, tmp_path)
        assert client.predict(None, "auto", "(unknown)", api_name="/reconnect")[0].startswith("**Server down.**")
        with pytest.raises(gradio_client.exceptions.AppError, match="not reachable"):
            client.predict(*explain_args, api_name="/explain")
        with forwarding(ports[0], server.url), forwarding(ports[1], server.management_url):
            # no model was selectable at start: the click itself finds the server's model
            assert client.predict(*explain_args, api_name="/explain")[0]["label"] in CLASSES
            status, model, *_ = client.predict(None, "auto", "(unknown)", api_name="/reconnect")
            assert status.startswith("**Server up.**") and "tiny" in status and model["value"] == "tiny"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k != AUTH_ENV or env and AUTH_ENV in env}
    return subprocess.run([sys.executable, "-m", "gradio_app", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)


def test_share_without_auth_is_refused_before_gradio_starts():
    proc = run_cli("--share", "--port", str(free_port()))
    assert proc.returncode == 2, proc.stderr
    assert "refusing to --share without a password" in proc.stderr and AUTH_ENV in proc.stderr
    # the refusal happens in argument handling: Gradio (and its tunnel code) is never imported
    probe = ("import sys\nfrom gradio_app.__main__ import main\n"
             "try:\n    main(['--share'])\nexcept SystemExit as e:\n"
             "    print(e.code, any(m == 'gradio' or m.startswith('gradio.') for m in sys.modules))\n")
    env = {k: v for k, v in os.environ.items() if k != AUTH_ENV}
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.split() == ["2", "False"], out.stderr


def test_auth_parsing(monkeypatch):
    assert parse_auth("ann:pa:ss") == ("ann", "pa:ss")
    for bad in ("ann", ":pw", "ann:", " :pw"):
        with pytest.raises(ValueError):
            parse_auth(bad)
    parser = build_parser()
    with pytest.raises(SystemExit) as caught:
        parser.parse_args(["--auth", "nocolon"])
    assert caught.value.code == 2
    monkeypatch.delenv(AUTH_ENV, raising=False)
    args = parser.parse_args(["--auth", "ann:pw", "--share"])
    assert settings_from_args(args, parser).auth == ("ann", "pw")
    monkeypatch.setenv(AUTH_ENV, "bob:pw2")
    settings = settings_from_args(parser.parse_args(["--share"]), parser)
    assert settings.share and settings.auth == ("bob", "pw2")
    assert "pw2" not in repr(settings)
    monkeypatch.setenv(AUTH_ENV, "broken")
    with pytest.raises(SystemExit):
        settings_from_args(parser.parse_args([]), parser)
    with pytest.raises(ValueError, match="refusing"):
        Settings(share=True)


def test_launch_options_are_the_safe_ones():
    opts = launch_kwargs(Settings())
    assert opts["server_name"] == "127.0.0.1" and opts["share"] is False and opts["auth"] is None
    assert opts["show_error"] is False and opts["allowed_paths"] == [] and opts["max_file_size"] == "20mb"
    assert opts["run_history"] is False and opts["mcp_server"] is False
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    args = build_parser().parse_args([])
    assert args.server_url == "http://127.0.0.1:8080" and args.management_url == "http://127.0.0.1:8081"
    assert args.host == "127.0.0.1" and args.port == 7860 and args.token_file == Path("key_file.json")
