"""Old name of the thyroid demo trainer, now ``scripts/demo/train_thyroid.py``.

Kept only for callers not yet moved; import from ``scripts.demo.train_thyroid``.
"""

from scripts.demo.train_thyroid import MODEL_FILE, main

__all__ = ["MODEL_FILE", "main"]
