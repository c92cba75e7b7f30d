"""Service configuration, read once from ``FLOWERLAB_*`` environment variables at startup."""

from __future__ import annotations

from pathlib import Path

from pydantic import PositiveInt
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServeSettings(BaseSettings):
    """``FLOWERLAB_ROOT``, ``FLOWERLAB_MAX_UPLOAD_BYTES`` and ``FLOWERLAB_MAX_PIXELS``."""

    model_config = SettingsConfigDict(env_prefix="FLOWERLAB_", extra="ignore")

    # Repo root holding dvc.lock, models/ and metrics/.
    root: Path = Path(".")
    # Largest accepted upload; the request body may carry a little multipart framing on top.
    max_upload_bytes: PositiveInt = 10 * 1024 * 1024
    # Tighter than Pillow's ~89 MP default: 40 MP covers any phone photo, and decoding is bounded.
    max_pixels: PositiveInt = 40_000_000
