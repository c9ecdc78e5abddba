"""Old name of the thyroid phantom generator, now ``scripts/demo/thyroid_phantoms.py``.

Kept only for callers not yet moved; import from ``scripts.demo.thyroid_phantoms``.
"""

from scripts.demo.thyroid_phantoms import FEATURES, main

__all__ = ["FEATURES", "main"]
