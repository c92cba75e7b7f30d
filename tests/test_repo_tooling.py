"""The repo's own tooling: the GitHub Actions workflow is valid, and `pre-commit run --all-files` passes.

Both tools run offline from commands that requirements.txt installs. Each check is also run once on
a deliberately broken input, so a check that can no longer fail is noticed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"
BIN = Path(sys.executable).parent


def tool_env(**extra: str) -> dict[str, str]:
    """The environment with this interpreter's scripts (ruff, pre-commit, ...) first on PATH."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", **extra}


def check_workflow(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                           str(path)], capture_output=True, text=True, env=tool_env(), timeout=120)


def test_workflow_matches_the_github_actions_schema() -> None:
    result = check_workflow(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "ok -- validation done", result.stdout + result.stderr


def test_workflow_runs_ci_run_on_push_and_pull_request() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as a boolean
    assert {"push", "pull_request"} <= set(triggers)
    assert workflow["concurrency"]["cancel-in-progress"] is True
    (job,) = workflow["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest" and job["timeout-minutes"] == 40
    uses = {step["uses"].split("@")[0]: step for step in job["steps"] if "uses" in step}
    assert "actions/checkout" in uses
    assert uses["actions/setup-python"]["with"]["python-version"] == "3.11"
    assert [step["run"] for step in job["steps"] if "run" in step] == ["bash .ci/run"]


def test_workflow_check_fails_on_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "ci.yml"
    broken.write_text(WORKFLOW.read_text().replace("timeout-minutes: 40", "timeout-minutes: forty")
                      .replace("    steps:", "    step:"))
    result = check_workflow(broken)
    assert result.returncode != 0
    assert "'step' was unexpected" in result.stdout and "'forty' is not of type" in result.stdout


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's files (tracked and new, not ignored) committed in a fresh git repo."""
    target = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "copy", "--no-verify"]):
        subprocess.run(["git", *args], cwd=target, env=tool_env(), check=True, capture_output=True)
    return target


def pre_commit(repo: Path, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "pre-commit"), "run", "--all-files", "--color=never"], cwd=repo,
                          env=tool_env(PRE_COMMIT_HOME=str(home)), capture_output=True, text=True,
                          timeout=300)


def test_pre_commit_passes_on_the_repo(repo_copy: Path, tmp_path: Path) -> None:
    result = pre_commit(repo_copy, tmp_path / "pre-commit-home")
    assert result.returncode == 0, result.stdout + result.stderr
    passed = [line for line in result.stdout.splitlines() if line.endswith("Passed")]
    for hook in ("ruff check", "no files over 500 KB", "files end in one newline",
                 "no trailing whitespace", "YAML parses", "workflows match the GitHub Actions schema"):
        assert any(line.startswith(hook) for line in passed), f"{hook!r} did not pass:\n{result.stdout}"


def test_pre_commit_fails_on_trailing_whitespace(repo_copy: Path, tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo_copy), str(clone)], check=True, capture_output=True)
    (clone / "notes.txt").write_text("a line with trailing spaces   \nno final newline")
    subprocess.run(["git", "add", "notes.txt"], cwd=clone, check=True, capture_output=True)
    result = pre_commit(clone, tmp_path / "pre-commit-home")
    assert result.returncode != 0
    assert "Fixing notes.txt" in result.stdout
    assert (clone / "notes.txt").read_text() == "a line with trailing spaces\nno final newline\n"
