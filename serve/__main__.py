"""``python -m serve [--host H] [--port P]``: uvicorn serving serve.app:app, shut down gracefully.

On SIGTERM (or SIGINT) uvicorn stops accepting connections, lets the requests in flight finish for up
to FLOWERLAB_SHUTDOWN_TIMEOUT_S, then runs the lifespan shutdown, which lets the inference worker finish
what is queued. uvicorn then re-raises the signal to the handler it found at startup; the handlers set
here make that a normal exit, status 0, rather than death by the signal (-15). A second signal forces
the exit at once.

A refusal to start (a bad ``FLOWERLAB_*`` value, a model missing or not matching dvc.lock) is one
ERROR line and exit status 3, with no traceback; any other startup failure keeps its traceback.
"""

from __future__ import annotations

import argparse
import copy
import logging
import logging.config
import re
import signal
import sys
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from serve.settings import SettingsError, StartupRefused, read_settings

STARTUP_FAILURE = 3  # uvicorn's own exit status when the application fails to start
# In the traceback Starlette formats (traceback.format_exc), the line naming StartupRefused.
REFUSAL_LINE = re.compile(rf"^{re.escape(StartupRefused.__module__)}\.{StartupRefused.__qualname__}: ",
                          re.MULTILINE)


class OmitRefusalTraceback(logging.Filter):
    """Drop the traceback that Starlette hands uvicorn (logged on ``uvicorn.error``) when the lifespan
    raises :class:`StartupRefused`: the lifespan has already logged why, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Traceback (most recent call last):") and REFUSAL_LINE.search(message))


def log_config() -> dict[str, Any]:
    """uvicorn's logging, plus the project's own loggers (``serve.*``, ``flowerlab.*``) at INFO on
    uvicorn's default handler, so the startup lines (what is served, the inference layout and why)
    reach the log; without it Python's root logger drops everything under WARNING. A refusal to start
    logs no traceback (:class:`OmitRefusalTraceback`)."""
    config = copy.deepcopy(LOGGING_CONFIG)
    for name in ("serve", "flowerlab"):
        config["loggers"][name] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    config.setdefault("filters", {})["omit_refusal_traceback"] = {"()": OmitRefusalTraceback}
    config["loggers"]["uvicorn.error"]["filters"] = ["omit_refusal_traceback"]
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    logging.config.dictConfig(log_config())  # uvicorn configures the same; a refusal here comes first
    try:
        timeout = read_settings().shutdown_timeout_s
    except SettingsError as error:
        logging.getLogger("serve").error("refusing to start: %s", error)
        return STARTUP_FAILURE
    server = uvicorn.Server(uvicorn.Config("serve.app:app", host=args.host, port=args.port,
                                           timeout_graceful_shutdown=timeout, log_config=log_config()))
    for handled in (signal.SIGTERM, signal.SIGINT):
        signal.signal(handled, lambda signum, frame: None)  # uvicorn's re-raise lands here: exit 0
    server.run()
    return 0 if server.started else STARTUP_FAILURE


if __name__ == "__main__":
    sys.exit(main())
