"""Running a stage: its command line, and a known failure as one clear line on stderr, exit code 1."""

from __future__ import annotations

import argparse
import os
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
    restore = UNDER_DVC if "DVC_STAGE" in os.environ else ""
    try:
        main()
    except (StageError, FileNotFoundError, ValueError) as error:
        print(f"{name}: error: {error}{restore}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback; 130 as a shell reports SIGINT
        print(f"\n{name}: interrupted{restore}", file=sys.stderr)
        sys.exit(130)


# DVC sets DVC_STAGE for a stage's command, and removes the stage's outputs before running it.
UNDER_DVC = (" (DVC removed this stage's previous outputs before running it; `dvc checkout` "
             "restores the ones dvc.lock records, from the cache)")
