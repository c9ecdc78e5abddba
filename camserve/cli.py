"""One argparse vocabulary for every camserve command: value types and the shared flags.

Every value is checked by the parser, so a bad one exits 2 with a usage message instead of a
traceback later (``--timeout inf``, ``--concurrency -1``, ``--port 0``). The same thing has the same
flag everywhere:

| flag               | meaning                                     | older spelling (hidden, still accepted) |
|--------------------|---------------------------------------------|-----------------------------------------|
| ``--url``          | TorchServe inference API                    | ``--server-url``                        |
| ``--management-url`` | TorchServe management API                 |                                         |
| ``--token-file``   | TorchServe's ``key_file.json``              | ``--key-file``                          |
| ``--timeout``      | seconds per request (or to wait)            |                                         |
| ``--data-dir``     | an ImageFolder tree (class folder = label)  | ``--data``                              |
| ``--output-dir``   | where a command writes its results          | ``--out``                               |
| ``--model``        | served model name                           |                                         |
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from camserve.errors import CamserveError

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_MANAGEMENT_URL = "http://127.0.0.1:8081"
DEFAULT_TOKEN_FILE = Path("key_file.json")


def _number(text: str, kind: Callable[[str], Any], what: str) -> Any:
    try:
        value = kind(text.strip())
    except (ValueError, OverflowError) as exc:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from exc
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def int_range(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse type for an integer in ``[low, high]`` (either bound may be open)."""
    what = ("an integer" + (f" >= {low}" if low is not None and high is None else "")
            + (f" between {low} and {high}" if low is not None and high is not None else "")
            + (f" <= {high}" if low is None and high is not None else ""))

    def parse(text: str) -> int:
        value = _number(text, int, what)
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return int(value)

    parse.__name__ = "integer"
    return parse


def float_range(low: float | None = None, high: float | None = None,
                low_open: bool = False) -> Callable[[str], float]:
    """An argparse type for a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"<= {high:g}")
    what = "a finite number" + (" " + " and ".join(parts) if parts else "")

    def parse(text: str) -> float:
        value = float(_number(text, float, what))
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


positive_int = int_range(1)
non_negative_int = int_range(0)
port = int_range(1, 65535)
input_side = int_range(16, 1024)  # the range checkpoints accept
positive_float = float_range(0.0, low_open=True)
non_negative_float = float_range(0.0)
unit_float = float_range(0.0, 1.0)
seconds = positive_float


def class_list(text: str) -> list[str]:
    """Comma-separated class names, in head order."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give class names separated by commas, e.g. COVID,Normal")
    return names


def add(parser: argparse.ArgumentParser | Any, flag: str, *aliases: str, **kwargs: Any) -> argparse.Action:
    """Add ``flag`` and, hidden from ``--help``, older spellings that set the same value.

    Args:
        parser: The parser (or argument group).
        flag: The canonical flag.
        *aliases: Older spellings, accepted for one release and not shown in ``--help``.
        **kwargs: ``add_argument``'s keyword arguments for the canonical flag.
    """
    if kwargs.pop("required", False) and aliases:  # argparse checks "required" per spelling: use a group
        parser = parser.add_mutually_exclusive_group(required=True)
    elif "required" in kwargs or not aliases:
        kwargs.setdefault("required", False)
    action = parser.add_argument(flag, **kwargs)
    hidden = {k: v for k, v in kwargs.items() if k not in ("help", "default", "required", "metavar")}
    for old in aliases:
        parser.add_argument(old, dest=action.dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **hidden)
    return action


def add_server_args(parser: argparse.ArgumentParser, *, repeat_url: bool = False, management: bool = False,
                    timeout: float = 60.0) -> None:
    """``--url`` (repeatable when ``repeat_url``), ``--token-file``, ``--timeout`` [and ``--management-url``]."""
    if repeat_url:
        add(parser, "--url", "--server-url", action="append", metavar="URL",
            help=f"TorchServe inference API; repeat to share the work between servers (default: {DEFAULT_URL})")
    else:
        add(parser, "--url", "--server-url", default=DEFAULT_URL, metavar="URL",
            help="TorchServe inference API (default: %(default)s)")
    if management:
        parser.add_argument("--management-url", default=DEFAULT_MANAGEMENT_URL, metavar="URL",
                            help="TorchServe management API (default: %(default)s)")
    add(parser, "--token-file", "--key-file", type=Path, default=DEFAULT_TOKEN_FILE, metavar="FILE",
        help="TorchServe's key file with the tokens (default: %(default)s)")
    parser.add_argument("--timeout", type=seconds, default=timeout, metavar="SECONDS",
                        help="seconds per request (default: %(default)s)")


def add_data_dir(parser: argparse.ArgumentParser, default: Path | None = None, help: str = "") -> None:
    """``--data-dir`` (alias ``--data``): an ImageFolder tree."""
    add(parser, "--data-dir", "--data", type=Path, default=default, required=default is None, metavar="DIR",
        help=(help or "ImageFolder tree: one folder per class") + (" (default: %(default)s)" if default else ""))


def add_output_dir(parser: argparse.ArgumentParser, default: Path | None = None, help: str = "") -> None:
    """``--output-dir`` (alias ``--out``): where results go."""
    add(parser, "--output-dir", "--out", type=Path, default=default, required=default is None, metavar="DIR",
        help=(help or "where the results are written") + (" (default: %(default)s)" if default else ""))


def choices_help(values: Sequence[str]) -> str:
    """``a, b or c`` for help texts."""
    return ", ".join(values[:-1]) + f" or {values[-1]}" if len(values) > 1 else "".join(values)


def attempt(prog: str, work: Callable[[], T]) -> T | None:
    """``work()``; for a ``CamserveError`` (bad data, an unreachable server...) prints ``prog: message`` to
    stderr and returns ``None``, for the script to exit with status 2."""
    try:
        return work()
    except CamserveError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None
