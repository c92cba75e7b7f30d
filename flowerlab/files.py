"""Files as the pipeline writes and DVC hashes them: deterministic JSON, and the MD5 DVC records."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def write_json(path: Path | str, payload) -> None:
    """Write JSON deterministically (sorted keys, fixed indentation) so hashes reproduce."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def file_md5(path: Path | str) -> str:
    """The MD5 of a file, as DVC records it in dvc.lock."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_failure(error: Exception) -> str:
    """Why ``torch.load`` could not read a file, in one line: torch raises many exception types
    for a foreign or damaged file, with messages that run to many lines or say nothing (a bare
    ``KeyError: '101'``)."""
    kind = type(error)
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
    return f"not a file that torch.save wrote, or a damaged one ({name})"
