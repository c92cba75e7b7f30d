"""End to end: the real DVC CLI on a tiny configuration in a temporary git copy of the repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TINY = {"epochs": 1, "batch_size": 32, "data.image_size": 16, "data.samples_per_class": 4,
        "evaluate.misclassified_images": 2, "vae.image_size": 16, "vae.epochs": 1,
        "vae.batch_size": 32, "vae.width": 8, "vae.latent_dim": 4}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def set_params(path: Path, values: dict) -> None:
    params = yaml.safe_load(path.read_text())
    for dotted, value in values.items():
        *parents, key = dotted.split(".")
        node = params
        for part in parents:
            node = node[part]
        assert key in node, f"params.yaml has no key {dotted}"
        node[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> Path:
    """The project's files (tracked and new, not ignored) in a fresh git repo with tiny params."""
    target = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    set_params(target / "params.yaml", TINY)
    run(["git", "init", "-q"], target)
    run(["git", "add", "-A"], target)
    run(["git", "commit", "-qm", "tiny"], target)
    return target


def test_repro_status_and_experiments(repo_copy: Path) -> None:
    run(["dvc", "repro"], repo_copy)
    for out in ("data/prepared/images.npy", "data/split/split.json", "models/classifier.pt2",
                "metrics/train/metrics.json"):
        assert (repo_copy / out).is_file(), out
    metrics = json.loads((repo_copy / "metrics/evaluate.json").read_text())
    assert {"accuracy", "top5_accuracy", "macro_f1", "loss", "ece"} <= set(metrics)
    assert 0.0 <= metrics["accuracy"] <= metrics["top5_accuracy"] <= 1.0

    status = run(["dvc", "status", "--json"], repo_copy)
    assert json.loads(status.stdout) == {}
    again = run(["dvc", "repro"], repo_copy)
    assert "didn't change, skipping" in again.stdout and "Running stage" not in again.stdout
    run(["git", "add", "-A"], repo_copy)
    run(["git", "commit", "-qm", "baseline"], repo_copy)

    run(["dvc", "exp", "run", "-S", "lr=1e-4"], repo_copy)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo_copy).stdout)
    lrs = [exp["data"]["params"]["params.yaml"]["data"]["lr"]
           for rev in shown for exp in [rev] + [e for x in (rev.get("experiments") or [])
                                               for e in x.get("revs", [])]
           if exp.get("data")]
    assert 0.0001 in lrs
    diff = run(["dvc", "metrics", "diff", "--json"], repo_copy)
    assert "metrics/evaluate.json" in json.loads(diff.stdout)
    plots = run(["dvc", "plots", "show", "--json"], repo_copy)
    assert "Confusion matrix" in plots.stdout
