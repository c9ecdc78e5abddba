"""Helpers for the Gradio app's tests: launch the app on a free port, talk to it, and lay out the
example data of the session server's ``tiny`` (chest-like) and ``fusion`` (thyroid-like) models."""

from __future__ import annotations

import csv
import select
import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import gradio_client
from PIL import Image

from gradio_app.app import serve
from gradio_app.examples import ExampleSource
from gradio_app.settings import Settings
from tests.harness import CLASSES, free_port, png_bytes, red_left_blue_right

THYROID_CLASSES = ("benign", "malignant")
# Clinical rows of the thyroid-like examples: (class, file, composition, age); the other fields empty.
THYROID_ROWS = (("benign", "a.png", "cystic", "37"), ("benign", "b.png", "mixed", "45"),
                ("malignant", "c.png", "solid", "61"), ("malignant", "d.png", "solid", "70"))


@contextmanager
def launched(settings: Settings) -> Iterator[str]:
    """The app served as ``python -m gradio_app`` serves it, on a free loopback port; yields its URL."""
    settings = replace(settings, host="127.0.0.1", port=free_port())
    demo = serve(settings, prevent_thread_lock=True)
    try:
        yield f"http://127.0.0.1:{settings.port}/"
    finally:
        demo.close()


def api(url: str, tmp: Path, **kwargs) -> gradio_client.Client:
    return gradio_client.Client(url, verbose=False, analytics_enabled=False, download_files=str(tmp), **kwargs)


def chest_tree(root: Path, per_class: int = 2) -> ExampleSource:
    """A chest-like test split for ``tiny`` (its classes), with a lung mask per image, laid out like the demo's."""
    for i, cls in enumerate(CLASSES):
        for sub in ("test", "masks/lungs/test"):
            (root / sub / cls).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            (root / "test" / cls / f"{k}.png").write_bytes(png_bytes((128, 128), seed=40 + 10 * i + k))
            mask = Image.new("L", (128, 128), 0)
            mask.paste(255, (16, 24, 112, 104))
            mask.save(root / "masks/lungs/test" / cls / f"{k}.png")
    return ExampleSource(root / "test", masks=root / "masks/lungs/test", mask_name="lung mask",
                         description="Synthetic chest radiographs.")


def thyroid_tree(root: Path) -> ExampleSource:
    """A thyroid-like test split for ``fusion`` with its clinical CSV (paths relative to ``root``)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "clinical.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "composition", "echogenicity", "margins", "calcifications", "sex", "age"])
        for cls, name, composition, age in THYROID_ROWS:
            (root / "test" / cls).mkdir(parents=True, exist_ok=True)
            (root / "test" / cls / name).write_bytes(red_left_blue_right(96))
            writer.writerow([f"test/{cls}/{name}", composition, "", "", "", "F", age])
    return ExampleSource(root / "test", clinical=root / "clinical.csv", clinical_root=root,
                         description="Synthetic thyroid ultrasound images with clinical records.")


def demo_settings(server, root: Path, **overrides) -> Settings:
    """The app's settings against ``server``, with examples for ``tiny`` and ``fusion`` under ``root``."""
    examples = {"tiny": chest_tree(root / "chest"), "fusion": thyroid_tree(root / "thyroid")}
    options = {"url": server.url, "management_url": server.management_url, "token_file": server.key_file,
               "timeout": 30, "examples": examples, **overrides}
    return Settings(**options)


@contextmanager
def forwarding(port: int, target: str) -> Iterator[None]:
    """Relay TCP from 127.0.0.1:``port`` to ``target``'s host and port: a server that goes down (the
    block exits) and comes back (a new block) on the same address."""
    upstream_addr = (urlsplit(target).hostname, urlsplit(target).port)

    class Pipe(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with socket.create_connection(upstream_addr) as upstream, suppress(OSError):  # peers reset: done
                peer = {self.request: upstream, upstream: self.request}
                while not relay.stopping:
                    ready, _, _ = select.select(list(peer), [], [], 0.5)
                    chunks = [(s, s.recv(1 << 16)) for s in ready]
                    if any(not data for _, data in chunks):
                        return
                    for s, data in chunks:
                        peer[s].sendall(data)

    class Relay(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True
        stopping = False

    with Relay(("127.0.0.1", port), Pipe) as relay:
        threading.Thread(target=relay.serve_forever, daemon=True).start()
        try:
            yield
        finally:
            relay.stopping = True  # open keep-alive connections close too: the "server" is really gone
            relay.shutdown()
