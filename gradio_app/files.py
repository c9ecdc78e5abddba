"""Files the app hands to Gradio (pictures, tables), written to its own temp folder and swept after an hour."""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
import time
import uuid
from pathlib import Path

from PIL import Image

from camserve.render import encode

OUT_DIR = Path(tempfile.mkdtemp(prefix="camserve-app-"))
MAX_AGE = 3600  # seconds a file is kept (Gradio copies what it serves into its own cache)
_last_sweep = 0.0


def write_csv(text: str) -> str:
    """The batch table as a file to download."""
    return _write(f"camserve-batch-{uuid.uuid4().hex[:8]}.csv", text.encode("utf-8"))


def picture(image: Image.Image) -> str:
    """An output picture as a PNG file: zlib level 1 is 3-4x faster than Gradio's own PNG encoding and
    just as lossless, which keeps a slider's re-draw quick."""
    data = encode(image, "png")
    return _write(f"{hashlib.sha256(data).hexdigest()[:24]}.png", data)


def _write(name: str, data: bytes) -> str:
    """A file in the app's own temp folder (Gradio copies it into its cache); files over an hour old go."""
    global _last_sweep
    now = time.time()
    if now - _last_sweep > 60:
        _last_sweep = now
        for old in OUT_DIR.iterdir():
            with contextlib.suppress(OSError):
                if now - old.stat().st_mtime > MAX_AGE:
                    old.unlink()
    path = OUT_DIR / name
    path.write_bytes(data)
    return str(path)


