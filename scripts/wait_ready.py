"""Wait until a TorchServe started with camserve's config has every model READY (``make serve`` runs it).

    python scripts/wait_ready.py [--url URL] [--management-url URL] [--token-file key_file.json] [--timeout S]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from camserve import cli  # noqa: E402
from scripts.torchserve_local import wait_ready  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_server_args(p, management=True, timeout=180.0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        models = wait_ready(args.management_url, args.token_file, timeout=args.timeout)
    except TimeoutError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(f"TorchServe ready at {args.url} with models: {', '.join(models)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
