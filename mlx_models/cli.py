"""Shared CLI plumbing: user errors become one line on stderr and exit code 2."""

import sys
from collections.abc import Callable

from .errors import MLXModelsError


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    try:
        return main(argv) or 0
    except MLXModelsError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
