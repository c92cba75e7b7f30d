"""Save and load models as ``torch.export`` programs with their metadata inside the same file.

A consumer needs only torch: no model classes, no Lightning. The metadata (class names, image
size, input range, ...) travels in the file as ``meta.json``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch.export import Dim

META_FILE = "meta.json"


def export_program(module: torch.nn.Module, example: torch.Tensor, path: Path | str,
                   meta: dict, max_batch: int = 4096) -> None:
    """Export ``module`` (batch dimension dynamic) to ``path`` with ``meta`` embedded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    batch = Dim("batch", min=1, max=max_batch)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    for node in program.graph.nodes:
        # Stack traces hold absolute source paths: without them, the same commit exports the
        # same bytes in any checkout.
        node.meta.pop("stack_trace", None)
    torch.export.save(program, path, extra_files={META_FILE: json.dumps(meta, sort_keys=True)})


def load_program(path: Path | str) -> tuple[torch.nn.Module, dict]:
    """Load an exported program as a callable module, plus its metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    extra = {META_FILE: ""}
    program = torch.export.load(path, extra_files=extra)
    return program.module(), json.loads(extra[META_FILE])


def file_md5(path: Path | str) -> str:
    """The MD5 of a file, as DVC records it in dvc.lock."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
