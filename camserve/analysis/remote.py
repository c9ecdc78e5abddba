"""The analysis's requests: one prediction per image, then the two maps of each error shown.

The prediction pass asks only for what it uses: no images ever (``images=none``), and no map at all
(``explain=none``) unless a mask, a lesion mask or faithfulness needs one. The maps of an error card
come from one request for two classes (``target=PRED,TRUE``); the overlays are rendered locally.
Retriable failures (503, connection error, timeout, 507 worker died) are retried with backoff, moving
to the next server; every failure is recorded with its real type.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from camserve.analysis.dataset import Item
from camserve.analysis.localisation import DEFAULT_DILATE_PX, focus, pointing_game_hit
from camserve.analysis.records import Record
from camserve.analysis.runner import with_retries
from camserve.client import Client
from camserve.clinical_table import ClinicalTable
from camserve.errors import CamserveError, ServerError
from camserve.imaging import decode_image, decode_mask
from camserve.schema import ExplainResponse, Explanation, ModelInfo

log = logging.getLogger(__name__)
R = TypeVar("R")


class Servers:
    """One client per (thread, server). Each thread starts on its own server, round-robin, and a retry
    moves on to the next one, so a slow or dead server does not hold images back."""

    def __init__(self, urls: Sequence[str], tokens: Sequence[str | None], timeout: float) -> None:
        self.urls, self.tokens, self.timeout = list(urls), list(tokens), timeout
        self._slots = itertools.count()
        self._local = threading.local()

    def client(self, attempt: int = 0) -> Client:
        local = self._local
        if not hasattr(local, "slot"):
            local.slot, local.clients = next(self._slots), {}
        k = (local.slot + attempt) % len(self.urls)
        if k not in local.clients:
            local.clients[k] = Client(self.urls[k], self.tokens[k] or None, timeout=self.timeout)
        client: Client = local.clients[k]
        return client


@dataclass(frozen=True)
class Settings:
    """What every request of a run asks for.

    Attributes:
        model: Served model name.
        method: CAM method of every map (``schema.CAM_METHODS``).
        masks: Region-of-interest masks were given (the server reports a focus score).
        lesions: Lesion masks were given (pointing game and lesion focus, computed here).
        faithfulness: Ask the server for per-request faithfulness.
        dilate_px: The pointing game's tolerance.
        retries: Retries of a retriable failure.
        backoff: First retry delay in seconds, doubled at each retry.
    """

    model: str
    method: str = "gradcam"
    masks: bool = False
    lesions: bool = False
    faithfulness: bool = False
    dilate_px: int = DEFAULT_DILATE_PX
    retries: int = 3
    backoff: float = 0.5

    @property
    def needs_map(self) -> bool:
        """Whether the prediction pass needs the predicted class's map."""
        return self.masks or self.lesions or self.faithfulness


class Remote:
    """The servers, the run's settings and the clinical table, for the requests of one run."""

    def __init__(self, servers: Servers, settings: Settings, table: ClinicalTable | None = None) -> None:
        self.servers, self.settings, self.table = servers, settings, table

    def call(self, send: Callable[[Client], R]) -> R:
        """``send(client)`` with the retry policy, on the next server at each retry."""
        s = self.settings
        return with_retries(lambda attempt: send(self.servers.client(attempt)), s.retries, s.backoff)

    def failure_reason(self, exc: CamserveError) -> str:
        """The recorded reason: the error's real type and status, and the attempts made if it was retried."""
        tries = f" after {self.settings.retries + 1} attempts" if exc.retriable else ""
        return f"{type(exc).__name__} ({exc.status}){tries}: {exc.message}"

    def describe(self) -> ModelInfo:
        """The served model's metadata; every server must serve the same classes and version."""
        clients = [Client(url, token, timeout=self.servers.timeout)
                   for url, token in zip(self.servers.urls, self.servers.tokens, strict=True)]
        infos = [self._describe(c) for c in clients]
        for url, info in zip(self.servers.urls[1:], infos[1:], strict=True):
            if (info.classes, info.version) != (infos[0].classes, infos[0].version):
                raise CamserveError(f"{url} serves {info.name} v{info.version} {info.classes}, but "
                                    f"{self.servers.urls[0]} serves v{infos[0].version} {infos[0].classes}")
        return infos[0]

    def _describe(self, client: Client) -> ModelInfo:
        s = self.settings
        return with_retries(lambda _attempt: client.describe(s.model), s.retries, s.backoff)

    def clinical(self, rel: str) -> tuple[dict[str, str], str | None]:
        """Request options carrying an image's clinical fields (as one JSON object, so no field name can
        collide with an option), and its record status: "row", "no_row" (all fields missing) or None."""
        if self.table is None:
            return {}, None
        fields = self.table.lookup(rel)
        if not fields:
            return {}, "row" if fields is not None else "no_row"
        return {"clinical": json.dumps(fields, separators=(",", ":"))}, "row"

    def predict(self, item: Item, classes: Sequence[str]) -> Record:
        """One image's record; every failure becomes a failed record with its reason."""
        s = self.settings
        clinical, status = self.clinical(item.rel)

        def failed(stage: str, reason: str) -> Record:
            return Record.failed(item.rel, item.label, stage, reason, status)
        try:
            data = item.path.read_bytes()
        except OSError as exc:
            return failed("read", f"{type(exc).__name__}: {exc.strerror or exc}")
        try:
            image = decode_image(data, field=item.rel)  # exactly the server's decoding (EXIF, modes, size limits)
        except CamserveError as exc:
            return failed("decode", exc.message)
        mask, mask_status = read_mask(item.mask, s.masks, item.rel)
        lesion, lesion_status = lesion_mask(item.lesion, s.lesions, image.size, item.rel)
        options: dict[str, Any] = {"explain": s.method if s.needs_map else "none", "images": "none", **clinical}
        if s.faithfulness:
            options["faithfulness"] = "true"
        try:
            resp = self.call(lambda c: c.explain(s.model, data, mask=mask, **options))
        except CamserveError as exc:
            return failed("request", self.failure_reason(exc))
        if list(resp.model.classes) != list(classes):
            return failed("request", f"the server's classes changed during the run: {resp.model.classes}")
        return self._record(item, resp, mask_status, status, lesion, lesion_status, classes)

    def _record(self, item: Item, resp: ExplainResponse, mask_status: str | None, status: str | None,
                lesion: np.ndarray | None, lesion_status: str | None, classes: Sequence[str]) -> Record:
        exp = resp.explanation
        hit = lesion_focus = None
        if exp is not None and lesion is not None and lesion_status == "ok":
            hit = pointing_game_hit(exp.cam, lesion, self.settings.dilate_px)
            lesion_focus = focus(exp.cam, lesion)
        faith = None
        if exp is not None and exp.faithfulness is not None:
            f = exp.faithfulness
            faith = {"average_drop": f.average_drop, "increase": float(f.increase), "deletion_drop": f.deletion_drop}
        return Record(item.rel, item.label, "ok", resp.prediction.label, [resp.probabilities[c] for c in classes],
                      exp.focus_score if exp else None, mask_status, clinical=status, lesion=lesion_status,
                      hit=hit, lesion_focus=lesion_focus, faithfulness=faith)

    def error_maps(self, path: Path, rel: str, true: int, pred: int) -> list[Explanation]:
        """The maps of the predicted and of the true class of one error, from one request."""
        s = self.settings
        data = path.read_bytes()
        options: dict[str, Any] = {"explain": s.method, "images": "none", "target": f"{pred},{true}", "label": true,
                                   **self.clinical(rel)[0]}
        resp = self.call(lambda c: c.explain(s.model, data, **options))
        maps = {exp.target.index: exp for exp in resp.maps}
        if pred not in maps or true not in maps:
            raise ServerError(f"the server answered maps for {sorted(maps)}, not for classes {pred} and {true}")
        return [maps[pred], maps[true]]


def read_mask(path: Path | None, wanted: bool, rel: str) -> tuple[bytes | None, str | None]:
    """A region-of-interest mask's bytes (sent to the server) and its status."""
    if not wanted:
        return None, None
    if path is None:
        return None, "missing"
    try:
        data = path.read_bytes()
        decode_image(data, field="mask")
    except (OSError, CamserveError) as exc:
        log.warning("mask %s unreadable (%s): no focus score for %s", path, exc, rel)
        return None, "unreadable"
    return data, "ok"


def lesion_mask(path: Path | None, wanted: bool, size: tuple[int, int], rel: str
                ) -> tuple[np.ndarray | None, str | None]:
    """A lesion mask at the image's size (as the server resizes masks) and its status: ``ok``, ``empty``
    (no lesion: the pointing game does not apply), ``missing`` or ``unreadable``."""
    if not wanted:
        return None, None
    if path is None:
        return None, "missing"
    try:
        mask = decode_mask(path.read_bytes(), size, field="lesion mask")
    except (OSError, CamserveError) as exc:
        log.warning("lesion mask %s unreadable (%s): no pointing game for %s", path, exc, rel)
        return None, "unreadable"
    return mask, "ok" if mask.any() else "empty"


def clinical_values(table: ClinicalTable | None, rel: str) -> Mapping[str, str]:
    """The clinical fields an image was sent with (for its error card)."""
    return (table.lookup(rel) or {}) if table is not None else {}
