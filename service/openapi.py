"""Write (or `--check`) the committed OpenAPI spec: `python -m ftjobs.service.openapi [--check]`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ftjobs.core.settings import Settings
from ftjobs.service.main import create_app

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"


def render() -> str:
    """The spec as committed: sorted keys, indent 2, trailing newline (needs no Redis)."""
    spec = create_app(Settings.from_env({})).openapi()
    return json.dumps(spec, sort_keys=True, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ftjobs.service.openapi", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed spec differs")
    parser.add_argument("--path", type=Path, default=SPEC_PATH, help="where the spec lives")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.path.read_text() if args.path.exists() else ""
        if current != text:
            print(
                f"{args.path} is out of date: run `python -m ftjobs.service.openapi` (make openapi)", file=sys.stderr
            )
            return 1
        print(f"{args.path} is up to date")
        return 0
    args.path.parent.mkdir(parents=True, exist_ok=True)
    args.path.write_text(text)
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
