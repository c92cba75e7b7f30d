"""Fixtures shared by the test modules: one served root per session, the in-process app, a uvicorn
process. Builders live in tests/builders.py (service), tests/datasets.py (data) and tests/servers.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.builders import write_served_root
from tests.servers import uvicorn_server


@pytest.fixture(autouse=True)
def _restore_deterministic_mode() -> Iterator[None]:
    """Undo ``torch.use_deterministic_algorithms``, which Lightning's ``deterministic=True`` sets
    for the whole process: left on, it breaks later tests that quantize (no deterministic kernel)."""
    import torch

    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@pytest.fixture(scope="session")
def served_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 3-class classifier and VAE with their metrics and dvc.lock; never modified."""
    return write_served_root(tmp_path_factory.mktemp("served_root"))


@pytest.fixture(scope="module")
def client(served_root: Path) -> Iterator[TestClient]:
    """The module-level app, started once per test module with the default settings.

    Tests with other settings start their own create_app(): restarting this shared app would
    unload the model under this client.
    """
    from serve.app import app

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLOWERLAB_ROOT", str(served_root))
        with TestClient(app) as started:
            yield started


@pytest.fixture
def server(served_root: Path, tmp_path: Path) -> Iterator[tuple[str, httpx.Response]]:
    """A real uvicorn process serving ``served_root``: its URL and first /ready answer."""
    with uvicorn_server(served_root, tmp_path / "uvicorn.log") as started:
        yield started
