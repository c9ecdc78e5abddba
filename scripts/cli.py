"""Transitional: the argparse vocabulary moved to ``camserve.cli``; import it from there."""

from camserve.cli import class_list, input_side, non_negative_int, positive_float, positive_int, unit_float

__all__ = ["class_list", "input_side", "non_negative_int", "positive_float", "positive_int", "unit_float"]
