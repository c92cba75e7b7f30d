"""benchmarks/serve_load.py end to end on a tiny model: the naive and service rows, no litserve."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.builders import write_served_root


@pytest.mark.slow
def test_serve_load_table_for_naive_and_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import serve_load

    root = write_served_root(tmp_path / "root", image_size=16)
    monkeypatch.setitem(sys.modules, "litserve", None)  # as without requirements-bench.txt: import fails
    results = serve_load.main(["--root", str(root), "--seconds", "1", "--concurrency", "2", "--warmup", "0",
                               "--forward-calls", "2", "--logs", str(tmp_path / "logs")])
    out = capsys.readouterr().out

    assert serve_load.LITSERVE_MISSING in out
    assert [(r.server, r.concurrency) for r in results] == [("naive", 2), ("service", 2)]
    for result in results:
        assert result.latencies and not result.errors, (result, out)
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:2] in
            (["naive", "2"], ["service", "2"])}
    assert set(rows) == {"naive", "service"}, out
    assert all(row[-1] == "0" for row in rows.values()), out  # the errors column
    assert "bare forward of the served artifact (" in out and "torch threads" in out


def test_litserve_matched_runs_the_services_layout(tmp_path: Path) -> None:
    from benchmarks import serve_load
    from serve.batching import InferenceLayout

    matched = serve_load.server_spec("litserve-matched", tmp_path, 8123, layout=InferenceLayout(2, 1, "why"))
    assert matched.command[-4:] == ["--workers", "2", "--threads", "1"]
    default = serve_load.server_spec("litserve", tmp_path, 8123, layout=InferenceLayout(2, 1, "why"))
    assert "--workers" not in default.command and "--threads" not in default.command
    with pytest.raises(ValueError, match="layout"):
        serve_load.server_spec("litserve-matched", tmp_path, 8123)
