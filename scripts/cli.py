"""Argparse types shared by the scripts (validation happens in the parser, STYLE.md #6)."""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def unit_float(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def class_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give class names separated by commas, e.g. COVID,Normal")
    return names


def positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def input_side(text: str) -> int:
    """A square input side in pixels, 16 to 1024 (the range checkpoints accept)."""
    value = int(text)
    if not 16 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"must be an integer between 16 and 1024, got {text}")
    return value
