"""``predictions.jsonl``: one line per result, appended and flushed as results arrive.

The first line is a header (``{"meta": {...}}``) naming the model, its classes and the data; each
following line is one :class:`Record`. A crash or Ctrl-C loses at most the line being written; on
``--resume`` a torn last line is cut off, the header is checked against the current run, and images
with an ``ok`` record are skipped. When an image has several records (a failure retried on resume),
the last one wins, so the final report depends only on the set of latest records, not on their order.
Heatmaps are never stored here: they are re-requested for the few images that need them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from camserve.errors import ResumeMismatch

log = logging.getLogger(__name__)
FORMAT = "camserve-analysis/1"


@dataclass(frozen=True)
class Record:
    """The outcome for one image.

    ``probs`` follows the model's class order. ``mask`` is ``"ok"``, ``"missing"``, ``"unreadable"``,
    or ``None`` when no masks directory was given; ``focus`` is the server's focus score.
    ``stage``/``reason`` say why a ``failed`` record has no prediction. ``clinical`` is ``"row"`` (sent
    with the fields of its ``--tabular`` CSV row), ``"no_row"`` (sent with every field missing), or
    ``None`` when no CSV was given. ``lesion`` is the lesion mask's status (``"ok"``, ``"empty"``,
    ``"missing"``, ``"unreadable"``, or ``None`` without ``--lesion-masks``); ``hit`` (pointing game) and
    ``lesion_focus`` are computed from the predicted class's map where the mask is ``"ok"``.
    ``faithfulness`` holds the server's ``average_drop``, ``increase`` and ``deletion_drop`` when asked.
    """

    path: str
    label: str
    status: str  # "ok" or "failed"
    pred: str | None = None
    probs: list[float] | None = None
    focus: float | None = None
    mask: str | None = None
    stage: str | None = None
    reason: str | None = None
    clinical: str | None = None
    lesion: str | None = None
    hit: bool | None = None
    lesion_focus: float | None = None
    faithfulness: dict[str, float] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def failed(cls, path: str, label: str, stage: str, reason: str, clinical: str | None = None) -> Record:
        return cls(path, label, "failed", stage=stage, reason=reason, clinical=clinical)

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, separators=(",", ":"))


def read_log(path: Path) -> tuple[dict[str, Any] | None, list[Record], int]:
    """Header, records and the byte length of the complete lines (a torn last line is not counted)."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    meta, records = None, []
    for n, line in enumerate(data[:end].splitlines()):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if n == 0 and "meta" in obj:
                meta = obj["meta"]
            else:
                records.append(Record(**obj))
        except (ValueError, TypeError) as exc:
            raise ResumeMismatch(f"{path.name} line {n + 1} is not a result record ({type(exc).__name__}); "
                                 "run without --resume") from exc
    return meta, records, end


class RecordLog:
    """The append-only log of one run.

    Args:
        path: ``predictions.jsonl``.
        meta: What the results depend on (model, classes, data and masks dirs); checked on resume.
        resume: Keep the existing records (after checking ``meta``) instead of starting over.
    """

    def __init__(self, path: Path, meta: dict[str, Any], resume: bool) -> None:
        self.path = path
        self.records: list[Record] = []
        meta = json.loads(json.dumps({"format": FORMAT, **meta}))  # as it reads back
        if resume and path.exists():
            old_meta, self.records, end = read_log(path)
            if old_meta != meta:
                changed = sorted(k for k in {**(old_meta or {}), **meta}
                                 if (old_meta or {}).get(k) != meta.get(k))
                raise ResumeMismatch(f"{path.name} was written with another {', '.join(changed)}: "
                                     "run without --resume (or with the same settings)")
            with open(path, "r+b") as fh:
                fh.truncate(end)  # drop a line torn by a crash
            self._fh: IO[str] = open(path, "a", encoding="utf-8")
        else:
            if resume:
                log.info("nothing to resume at %s: starting a new run", path)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(path, "w", encoding="utf-8")
            self._fh.write(json.dumps({"meta": meta}, separators=(",", ":")) + "\n")
            self._fh.flush()

    def done(self) -> set[str]:
        """Images that already have a prediction."""
        return {r.path for r in self.records if r.ok}

    def write(self, record: Record) -> None:
        """Append one record and flush it to the OS, so an interrupted run keeps it."""
        self._fh.write(record.to_json() + "\n")
        self._fh.flush()
        self.records.append(record)

    def latest(self) -> dict[str, Record]:
        """The last record of every image."""
        return {r.path: r for r in self.records}

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> RecordLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
