"""Running a stage: its command line, and a known failure as one clear line on stderr, exit code 1."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from flowerlab.errors import StageError


def run_stage(name: str, main: Callable[[], None]) -> None:
    """Run ``main``. A stage takes no arguments: ``--help`` describes it (the stage module's
    docstring) and anything else is refused, before the stage touches any file."""
    if main.__module__ == "__main__":  # the program (python -m stages.<name>), not imported by a test
        argparse.ArgumentParser(
            prog=f"python -m stages.{name}", description=sys.modules["__main__"].__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=f"Reads params.yaml (set values there, or `dvc exp run -S key=value`); "
                   f"usually run by `dvc repro {name}`.").parse_args()
    try:
        main()
    except (StageError, FileNotFoundError, ValueError) as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        sys.exit(1)
