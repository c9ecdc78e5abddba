"""Where a report comes from: date, model, data, command line and servers, written to ``provenance.json``
and shown at the top of ``report.html``. Secrets never appear: token values on the command line are
replaced by ``***`` and URLs lose their user, password, query and fragment."""

from __future__ import annotations

import datetime as dt
import shlex
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

SECRET_FLAGS = ("--token",)  # flags whose value is a secret


def redact_url(url: str) -> str:
    """``url`` without credentials, query or fragment (``http://u:p@h:1/x?k=v`` -> ``http://h:1/x``)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def redact_argv(argv: Sequence[str]) -> list[str]:
    """The command line with the values of :data:`SECRET_FLAGS` replaced and URLs redacted."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append("***")
            hide_next = False
        elif arg in SECRET_FLAGS:
            out.append(arg)
            hide_next = True
        elif any(arg.startswith(f"{flag}=") for flag in SECRET_FLAGS):
            out.append(arg.split("=", 1)[0] + "=***")
        elif "://" in arg:
            flag, eq, url = arg.rpartition("=") if arg.startswith("--") and "=" in arg else ("", "", arg)
            out.append(f"{flag}{eq}{redact_url(url)}")
        else:
            out.append(arg)
    return out


def version() -> str:
    """The installed camserve version, or ``unknown``."""
    try:
        return metadata.version("camserve")
    except metadata.PackageNotFoundError:
        return "unknown"


def provenance(*, model: Mapping[str, Any], method: str, argv: Sequence[str], urls: Sequence[str],
               folders: Mapping[str, Path | None], images: Mapping[str, int], file_list_sha256: str,
               tabular: Mapping[str, str] | None = None, now: dt.datetime | None = None) -> dict[str, Any]:
    """The provenance record of one report.

    Args:
        model: The served model's name, version, arch, layer, input size and classes.
        method: The CAM method of every map.
        argv: The command line (``sys.argv``), redacted here.
        urls: The servers' inference URLs, redacted here.
        folders: ``data_dir``, ``masks_dir``, ``lesion_masks_dir`` (``None`` when not given).
        images: Counts: ``files`` listed, ``analysed``, ``failed``.
        file_list_sha256: SHA-256 of the sorted list of listed paths (``Scan.file_list_sha256``).
        tabular: The clinical CSV's path and SHA-256, for multimodal models.
        now: The report's time (default: now, UTC).
    """
    when = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    return {
        "created": when.isoformat(),
        "camserve_version": version(),
        "model": dict(model),
        "method": method,
        "command": shlex.join(redact_argv(argv)),
        "servers": [redact_url(u) for u in urls],
        **{k: None if v is None else str(v.resolve()) for k, v in folders.items()},
        "clinical_csv": dict(tabular) if tabular else None,
        "images": dict(images),
        "file_list_sha256": file_list_sha256,
    }
