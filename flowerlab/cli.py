"""Running a stage: a known failure becomes one clear line on stderr and exit code 1."""

from __future__ import annotations

import sys
from collections.abc import Callable

from flowerlab.errors import StageError


def run_stage(name: str, main: Callable[[], None]) -> None:
    try:
        main()
    except (StageError, FileNotFoundError, ValueError) as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        sys.exit(1)
