"""The analysed results as arrays: every image with a prediction (sorted by path) and every failure.

Everything is a function of the latest record per image, so an interrupted and resumed run gives the
same arrays as an uninterrupted one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from camserve.analysis.dataset import Failure, Scan
from camserve.analysis.records import Record

FAITHFULNESS = ("average_drop", "increase", "deletion_drop")  # per-request scores kept from the server


@dataclass(frozen=True)
class Analysis:
    """Every analysed image (sorted by path) and every image that failed.

    Per-image arrays (``[N]`` unless said): ``y_true``, ``y_pred`` class indices; ``probs`` ``[N, C]``;
    ``focus`` the server's focus score in the ``--masks-dir`` mask; ``hit`` the pointing game on the
    lesion mask (1 or 0); ``lesion_focus`` the focus score in the lesion mask; ``faithfulness``
    ``[N, 3]`` in :data:`FAITHFULNESS` order (``increase`` as 1 or 0). NaN where a value does not apply.
    ``clinical`` is ``"row"``, ``"no_row"`` or ``None`` (no ``--tabular`` CSV) per image.
    """

    classes: list[str]
    rels: list[str]
    y_true: np.ndarray
    y_pred: np.ndarray
    probs: np.ndarray
    focus: np.ndarray
    hit: np.ndarray
    lesion_focus: np.ndarray
    faithfulness: np.ndarray
    failures: list[Failure]
    unknown_folders: list[str]
    mask_status: Counter[str]
    lesion_status: Counter[str]
    clinical: tuple[str | None, ...] = ()

    @property
    def n(self) -> int:
        return len(self.rels)

    @property
    def correct(self) -> np.ndarray:
        return np.asarray(self.y_true == self.y_pred)

    @property
    def confidence(self) -> np.ndarray:
        return self.probs[np.arange(self.n), self.y_pred] if self.n else np.zeros(0)

    def errors_by_confidence(self) -> list[int]:
        """Indices of the misclassified images, most confident first (ties by path)."""
        wrong = np.flatnonzero(~self.correct)
        return sorted(wrong.tolist(), key=lambda i: (-self.confidence[i], self.rels[i]))

    def pair(self, i: int) -> str:
        return f"{self.classes[self.y_true[i]]}_as_{self.classes[self.y_pred[i]]}"


def collect(classes: Sequence[str], scanned: Scan, latest: Mapping[str, Record]) -> Analysis:
    """Join the scan with the latest records; an item with no record counts as failed."""
    index = {c: k for k, c in enumerate(classes)}
    ok: list[Record] = []
    failures = list(scanned.failures)
    for item in scanned.items:
        rec = latest.get(item.rel)
        if rec is None:
            failures.append(Failure(item.rel, "request", "no result recorded"))
        elif rec.ok:
            ok.append(rec)
        else:
            failures.append(Failure(item.rel, rec.stage or "request", rec.reason or "unknown"))
    ok.sort(key=lambda r: r.path)
    probs = np.array([r.probs for r in ok], dtype=np.float64).reshape(len(ok), len(classes))
    faith = np.array([[np.nan if r.faithfulness is None else float(r.faithfulness[k]) for k in FAITHFULNESS]
                      for r in ok], dtype=np.float64).reshape(len(ok), len(FAITHFULNESS))
    return Analysis(
        classes=list(classes), rels=[r.path for r in ok],
        y_true=np.array([index[r.label] for r in ok], dtype=np.int64),
        y_pred=np.array([index[str(r.pred)] for r in ok], dtype=np.int64),
        probs=probs, focus=_floats(r.focus for r in ok),
        hit=_floats(None if r.hit is None else float(r.hit) for r in ok),
        lesion_focus=_floats(r.lesion_focus for r in ok), faithfulness=faith,
        failures=sorted(failures, key=lambda f: (f.rel, f.stage)), unknown_folders=list(scanned.unknown_folders),
        mask_status=Counter(r.mask for r in ok if r.mask is not None),
        lesion_status=Counter(r.lesion for r in ok if r.lesion is not None), clinical=tuple(r.clinical for r in ok))


def _floats(values: Iterable[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def r6(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


def mean_or_none(a: np.ndarray) -> float | None:
    """The mean rounded to 6 decimals, ``None`` for no values."""
    return r6(float(a.mean())) if len(a) else None


def stats(values: np.ndarray) -> dict[str, Any]:
    """``n``, mean, median and quartiles of the finite values (only ``n`` when there are none)."""
    v = values[np.isfinite(values)]
    if not len(v):
        return {"n": 0}
    q25, med, q75 = np.percentile(v, [25, 50, 75])
    return {"n": int(len(v)), "mean": r6(v.mean()), "median": r6(med), "q25": r6(q25), "q75": r6(q75)}


def grouped(an: Analysis, values: np.ndarray, overall: bool = False) -> dict[str, Any]:
    """:func:`stats` of a per-image array by true class and by correct vs wrong prediction (and over
    every image, as ``all``, with ``overall``)."""
    return {**({"all": stats(values)} if overall else {}),
            "by_class": {c: stats(values[an.y_true == k]) for k, c in enumerate(an.classes)},
            "correct": stats(values[an.correct]), "wrong": stats(values[~an.correct])}


