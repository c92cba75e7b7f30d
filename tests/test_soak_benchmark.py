"""benchmarks/soak.py end to end on a tiny model: every kind of request answered as expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.builders import write_served_root


@pytest.mark.slow
def test_soak_reports_each_kind_and_no_server_errors(tmp_path: Path) -> None:
    from benchmarks import soak

    root = write_served_root(tmp_path / "root", image_size=16)
    lines = soak.main(["--root", str(root), "--seconds", "2", "--concurrency", "4", "--warmup", "0.5"])
    out = "\n".join(lines)
    kinds = {line.split()[0] for line in lines[1:-2]}
    assert {"predict", "reconstruct", "generate", "text", "truncated"} <= kinds, out
    assert "5xx: 0; dropped connections: 0; unexpected statuses: 0" in out, out
    assert "server RSS:" in out
