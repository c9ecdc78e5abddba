"""Wait until a TorchServe started with camserve's config answers and has every model READY.

    python scripts/wait_ready.py [--url URL] [--management-url URL] [--key-file key_file.json] [--timeout S]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from camserve.client import DEFAULT_MANAGEMENT_URL, DEFAULT_URL, Client  # noqa: E402
from camserve.errors import CamserveError  # noqa: E402
from scripts.cli import positive_int  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--url", default=DEFAULT_URL, help="inference API")
    p.add_argument("--management-url", default=DEFAULT_MANAGEMENT_URL, help="management API")
    p.add_argument("--key-file", type=Path, default=Path("key_file.json"), help="TorchServe's token file")
    p.add_argument("--timeout", type=positive_int, default=180, help="seconds to wait")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    deadline = time.monotonic() + args.timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            client = Client.from_key_file(args.key_file, args.url, args.management_url, timeout=5)
            models = client.models()
            for name in models:
                client.describe(name)  # the handler answers only once a worker is READY
            print(f"TorchServe ready at {args.url} with models: {', '.join(models)}")
            return 0
        except CamserveError as exc:
            last = exc.message
        time.sleep(1)
    print(f"TorchServe not ready after {args.timeout} s: {last}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
