"""Service configuration, read once from ``FLOWERLAB_*`` environment variables at startup."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServeSettings(BaseSettings):
    """``FLOWERLAB_ROOT``, ``FLOWERLAB_MAX_UPLOAD_BYTES``, ``FLOWERLAB_UPLOAD_TIMEOUT_S``,
    ``FLOWERLAB_MAX_PIXELS`` and the inference
    worker's ``FLOWERLAB_MAX_BATCH``, ``FLOWERLAB_BATCH_WAIT_MS``, ``_BATCH_WAIT_FOR_INCOMING_ONLY``,
    ``FLOWERLAB_INFERENCE_RUNNERS``, ``FLOWERLAB_INFERENCE_THREADS``, ``FLOWERLAB_MAX_QUEUE`` and
    ``FLOWERLAB_REQUEST_TIMEOUT_S``;
    ``FLOWERLAB_SHUTDOWN_TIMEOUT_S`` for ``python -m serve``; the drift monitor's
    ``FLOWERLAB_DRIFT_WINDOW``, ``_DRIFT_MIN_SAMPLES`` and ``_DRIFT_THRESHOLD``."""

    model_config = SettingsConfigDict(env_prefix="FLOWERLAB_", extra="ignore")

    # Repo root holding dvc.lock, models/ and metrics/.
    root: Path = Path(".")
    # Largest accepted upload; the request body may carry a little multipart framing on top.
    max_upload_bytes: PositiveInt = 10 * 1024 * 1024
    # From a request's headers to the last byte of its body; past it the request answers 408 and its
    # connection closes, so a client that trickles its upload holds nothing for long. 60 s carries
    # 10 MiB at 1.4 Mbit/s.
    upload_timeout_s: PositiveFloat = 60.0
    # Tighter than Pillow's ~89 MP default: 40 MP covers any phone photo, and decoding is bounded.
    max_pixels: PositiveInt = 40_000_000
    # Most images (or latents) per model call; /generate runs in chunks of this many samples.
    max_batch: PositiveInt = 16
    # How long the worker waits for more requests once one arrives, to fill a batch.
    batch_wait_ms: NonNegativeFloat = 5.0
    # True: it waits only while other requests are still decoding, so a lone request runs at once;
    # False: always the whole window (a fixed delay, e.g. to hold requests in flight in a test).
    batch_wait_for_incoming_only: bool = True
    # The inference worker's runner threads (each takes and runs whole batches) and the torch threads
    # of each; unset: chosen at startup from the model's and a photo's decode costs
    # (serve.batching.inference_layout): one runner on every CPU of the quota, or a runner per CPU.
    inference_runners: PositiveInt | None = None
    inference_threads: PositiveInt | None = None
    # Jobs waiting for the worker; one more answers 503 with Retry-After.
    max_queue: PositiveInt = 64
    # From the upload read to the answer; past it the request answers 504 and is never computed.
    request_timeout_s: PositiveFloat = 30.0
    # python -m serve: after SIGTERM, how long requests in flight may take before they are cancelled.
    shutdown_timeout_s: PositiveFloat = 30.0
    # Drift monitor (GET /monitoring): requests in the sliding window, how many before it scores,
    # and the KS statistic above which a statistic counts as drifted.
    drift_window: PositiveInt = 200
    drift_min_samples: PositiveInt = 50
    drift_threshold: Annotated[float, Field(gt=0, lt=1)] = 0.3  # a KS statistic is at most 1

    @model_validator(mode="after")
    def drift_can_score(self) -> ServeSettings:
        if self.drift_min_samples > self.drift_window:
            raise ValueError(f"{env_name('drift_min_samples')}={self.drift_min_samples} is more than "
                             f"{env_name('drift_window')}={self.drift_window}: the monitor would never score")
        return self


class StartupRefused(RuntimeError):
    """The service must not start (bad settings, a model missing or not matching dvc.lock); the
    lifespan has logged why, in one line, and ``python -m serve`` shows no traceback for it. Here,
    not in serve.app, so that ``python -m serve`` (and its ``--help``) need not import torch."""


class SettingsError(ValueError):
    """A ``FLOWERLAB_*`` variable holds a value the service cannot use; the message names it."""


def env_name(field: str) -> str:
    """The environment variable that sets ``field``: ``max_batch`` -> ``FLOWERLAB_MAX_BATCH``."""
    return f"{ServeSettings.model_config['env_prefix']}{field}".upper()


def read_settings() -> ServeSettings:
    """The settings from the environment; :class:`SettingsError` names each bad variable, on one line."""
    try:
        return ServeSettings()
    except ValidationError as error:
        problems = [f"{env_name('.'.join(map(str, problem['loc'])))}={problem['input']!r}: {problem['msg']}"
                    if problem["loc"] else problem["msg"].removeprefix("Value error, ")  # across variables
                    for problem in error.errors()]
        raise SettingsError("; ".join(problems)) from None
