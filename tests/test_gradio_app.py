"""The Gradio app through its API (``gradio_client``), its command line, and its launch options."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gradio_client
import numpy as np
import pytest
import requests
from PIL import Image

from gradio_app.__main__ import build_parser, settings_from_args
from gradio_app.app import launch_kwargs
from gradio_app.client import DOWN
from gradio_app.settings import AUTH_ENV, Settings, parse_auth
from tests.gradio_support import api, demo_settings, forwarding, launched
from tests.harness import CLASSES, REPO, free_port, png_bytes

OUTPUTS = ("banner", "overlay", "overlay_true", "colorbar", "heatmap", "focus", "details", "every_class", "scores",
           "original", "status")


@pytest.fixture(scope="module")
def app_url(server, tmp_path_factory) -> Iterator[str]:
    with launched(demo_settings(server, tmp_path_factory.mktemp("demo"))) as url:
        yield url


def value(output):
    """An output's value: a component update comes back as a dict of its properties."""
    return output["value"] if isinstance(output, dict) else output


def explain(client: gradio_client.Client, image: Path | None, **kwargs) -> dict:
    path = None if image is None else gradio_client.handle_file(str(image))
    out = client.predict(image=path, api_name="/explain", **{"model": "tiny", **kwargs})
    return dict(zip(OUTPUTS, out, strict=True))


@pytest.mark.integration
def test_explain_and_redraw_through_the_api(app_url, server, tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes((96, 72), seed=5))
    client = gradio_client.Client(app_url, verbose=False, download_files=str(tmp_path))
    expected = server.client().explain("tiny", path.read_bytes(), label="Normal").prediction
    out = explain(client, path, label="Normal")
    assert out["scores"]["label"] == expected.label
    assert out["scores"]["confidences"][0]["confidence"] == pytest.approx(expected.confidence, abs=1e-4)
    over, orig = Image.open(value(out["overlay"])), Image.open(out["original"])
    assert over.format == "PNG" and over.size == orig.size == (512, 384)
    assert np.abs(np.asarray(over, np.int16) - np.asarray(orig.convert("RGB"), np.int16)).mean() > 5
    assert out["focus"] == "" and out["status"].startswith("**Model server up.**")
    kind = "right" if expected.label == "Normal" else "wrong"
    assert f'class="verdict {kind}"' in out["banner"] and "Normal" in out["banner"]
    assert len(out["every_class"]) == len(CLASSES)

    # a colormap change is drawn in the app from the cached maps (same session), not predicted again
    drawn = client.predict("auto", "gray", 0.5, False, api_name="/redraw")
    heat = np.asarray(Image.open(value(drawn[4])).convert("RGB"), np.int16)
    assert heat.shape == (384, 512, 3) and (heat[..., 0] == heat[..., 1]).all() and (heat[..., 1] == heat[..., 2]).all()


@pytest.mark.integration
def test_failures_are_one_message_in_the_page_not_an_error(app_url, tmp_path):
    client = api(app_url, tmp_path)
    out = explain(client, None)
    assert out["banner"] == '<div class="verdict failed" role="alert">Upload an image first (or pick an example).</div>'
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    out = explain(client, fake)
    assert "This file is not an image the model can read" in out["banner"]
    assert out["overlay"] is None and not out["scores"] and not out["every_class"]


@pytest.mark.integration
def test_batch_through_the_api(app_url, tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"b{i}.png")
        paths[-1].write_bytes(png_bytes((64, 64), seed=30 + i))
    summary, gallery, table, csv_file, status = api(app_url, tmp_path).predict(
        [gradio_client.handle_file(str(p)) for p in paths], "tiny", "gradcam", "jet", 0.5, None, None,
        api_name="/batch")
    assert "**3 image(s)**, 3 explained, 0 with a known label" in summary
    assert len(gallery["value"]) == 3
    assert table["headers"] == ["file", "true", "predicted", "confidence", "correct", "focus", "note"]
    assert Path(csv_file).read_text().startswith("file,true,predicted,")


def test_app_starts_with_the_server_down_and_auth_and_upload_limit(tmp_path):
    port = free_port()
    settings = Settings(url=f"http://127.0.0.1:{port}", management_url=f"http://127.0.0.1:{port}",
                        token_file=tmp_path / "none.json", auth=("ann", "s3cret:x"), max_file_size="1kb", timeout=5)
    with launched(settings) as url:
        with pytest.raises(Exception):  # noqa: B017 (gradio_client raises a bare ValueError on bad login)
            api(url, tmp_path)
        client = api(url, tmp_path, auth=("ann", "s3cret:x"))
        status = client.predict(None, api_name="/status")[0]
        assert status == f"**Model server down.** {DOWN}" and str(port) not in status
        img = tmp_path / "x.png"
        img.write_bytes(png_bytes((8, 8)))
        out = explain(client, img, model=None)
        assert DOWN in out["banner"] and "http" not in out["banner"]

        # max_file_size (1kb here) is enforced by the upload route; the client's cookies carry the login
        def upload(size: int) -> int:
            return requests.post(f"{url}gradio_api/upload", files={"files": ("f.png", os.urandom(size))},
                                 cookies=dict(client.cookies), timeout=10).status_code
        assert upload(4096) == 413
        assert upload(256) == 200


@pytest.mark.integration
def test_app_started_before_the_server_works_once_it_is_up(server, tmp_path):
    ports = free_port(), free_port()
    settings = demo_settings(server, tmp_path, url=f"http://127.0.0.1:{ports[0]}",
                             management_url=f"http://127.0.0.1:{ports[1]}")
    img = tmp_path / "x.png"
    img.write_bytes(png_bytes((64, 64), seed=8))
    with launched(settings) as url:
        client = api(url, tmp_path)
        assert client.predict(None, api_name="/status")[0].startswith("**Model server down.**")
        with forwarding(ports[0], server.url), forwarding(ports[1], server.management_url):
            # no model was selectable at start: the click itself finds the server's first model (fusion,
            # which answers that its required clinical field is missing)
            out = explain(client, img, model=None)
            assert out["status"].startswith("**Model server up.**")
            assert "clinical field &#x27;age&#x27; is required" in out["banner"]
            assert explain(client, img, model="tiny")["scores"]["label"] in CLASSES
            status, model = client.predict(None, api_name="/status")
            assert status == "**Model server up.** Serving fusion, signed, tiny."
            assert model["choices"] == [[m, m] for m in ("fusion", "signed", "tiny")] and model["value"] == "fusion"


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


def test_the_app_says_where_it_is_and_nothing_about_sharing(tmp_path):
    port, down = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gradio_app", "--url", f"http://127.0.0.1:{down}",
                             "--management-url", f"http://127.0.0.1:{down}", "--token-file", str(tmp_path / "none"),
                             "--port", str(port), "--data-dir", str(tmp_path)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "the demo page is on" in line:
                break
    finally:
        proc.terminate()
        proc.wait(30)
    text = "".join(lines)
    assert f"the demo page is on http://127.0.0.1:{port}/" in text, text
    assert "share" not in text.lower() and "public link" not in text.lower(), text


def test_command_line_vocabulary_old_spelling_and_bad_values(capsys):
    parser = build_parser()
    args = parser.parse_args([])
    assert args.url == "http://127.0.0.1:8080" and args.management_url == "http://127.0.0.1:8081"
    assert args.host == "127.0.0.1" and args.port == 7860 and args.token_file == Path("key_file.json")
    assert parser.parse_args(["--server-url", "http://h:1"]).url == "http://h:1"  # the old spelling still works
    assert "--server-url" not in parser.format_help() and "--url" in parser.format_help()
    for bad in (["--port", "0"], ["--timeout", "inf"], ["--status-every", "-1"], ["--examples", "nofolder"],
                ["--max-file-size", "lots"]):
        with pytest.raises(SystemExit) as caught:
            parser.parse_args(bad)
        assert caught.value.code == 2, bad
    assert "usage:" in capsys.readouterr().err
    settings = settings_from_args(parser.parse_args(["--data-dir", "d", "--examples", "mine=/x/test"]), parser)
    assert settings.examples["chest_phantom"].images == Path("d/phantoms/test")
    assert settings.examples["thyroid_phantom"].clinical == Path("d/thyroid/clinical.csv")
    assert settings.examples["mine"].images == Path("/x/test")


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


def test_launch_options_are_the_safe_and_quiet_ones():
    opts = launch_kwargs(Settings())
    assert opts["server_name"] == "127.0.0.1" and opts["share"] is False and opts["auth"] is None
    assert opts["show_error"] is False and opts["allowed_paths"] == [] and opts["max_file_size"] == "20mb"
    assert opts["run_history"] is False and opts["mcp_server"] is False
    assert opts["quiet"] is True  # no "set share=True" hint beside the --share/--auth flags
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
