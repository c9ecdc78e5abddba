"""Drawing helpers shared by the demo's phantom generators (float images, numpy only)."""

from __future__ import annotations

import numpy as np


def box_blur(a: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1) x (2r+1) box, edges padded with their own values (separable)."""
    if radius < 1:
        return np.asarray(a, dtype=np.float64)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        p = np.pad(a, pad, mode="edge")
        n = a.shape[axis]
        a = sum(np.take(p, range(k, k + n), axis=axis) for k in range(2 * radius + 1)) / (2 * radius + 1)
    return a


def soft(x: np.ndarray, edge: float) -> np.ndarray:
    """Soft indicator of ``x < 1`` with an edge of width ~``edge``."""
    return 1.0 / (1.0 + np.exp(np.clip((x - 1.0) / edge, -50, 50)))
