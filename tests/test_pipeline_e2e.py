"""End to end: the real DVC CLI on a tiny configuration in temporary git copies of the repo.

One module fixture runs the pipeline and commits two runs (a baseline, then ``dvc exp run -S
lr=1e-4``), as a team's history would hold them. The tests then work as teammates do: in fresh
clones, against a GCS remote served by a local emulator, and through the experiment queue.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest
import yaml

from tests.builders import encode_image, noise_image
from tests.datasets import TINY_PIPELINE, md5, set_params
from tests.servers import gcs_emulator, uvicorn_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BUCKET = "flowerlab-team"
SERVED = ("models/classifier.pt2", "models/classifier_served.pt", "models/vae_encoder.pt2",
          "models/vae_decoder.pt2")


def run(args: list[str], cwd: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", **env}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def dvc_json(args: list[str], cwd: Path, **env: str):
    return json.loads(run(["dvc", *args, "--json"], cwd, **env).stdout)


def locked_outs(repo: Path) -> dict[str, str]:
    """Every file output dvc.lock records, with its md5."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])
            if not out["md5"].endswith(".dir")}


def clone(source: Path, target: Path) -> Path:
    run(["git", "clone", "-q", str(source), str(target)], source.parent)
    return target


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> Path:
    """The project's files (tracked and new, not ignored) in a fresh git repo with tiny params,
    ``dvc repro`` run and committed, then ``dvc exp run -S lr=1e-4`` committed on top."""
    target = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        source = REPO / name
        if source.is_file() and not name.startswith(("metrics/", "models/")):  # outputs come from repro
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    (target / "dvc.lock").unlink(missing_ok=True)
    set_params(target / "params.yaml", TINY_PIPELINE)
    run(["git", "init", "-q"], target)
    run(["git", "add", "-A"], target)
    run(["git", "commit", "-qm", "tiny"], target)
    run(["dvc", "repro"], target)
    run(["git", "add", "-A"], target)
    run(["git", "commit", "-qm", "baseline"], target)
    run(["dvc", "exp", "run", "-S", "lr=1e-4"], target)
    run(["git", "add", "-A"], target)
    run(["git", "commit", "-qm", "lr=1e-4"], target)
    return target


def test_repro_status_and_experiments(history: Path) -> None:
    for out in ("data/prepared/images.npy", "data/split/split.json", "models/classifier.pt2",
                "metrics/train/metrics.json"):
        assert (history / out).is_file(), out
    for stage in ("train", "train_vae"):  # precision: auto is resolved, and the choice recorded
        logged = yaml.safe_load((history / f"metrics/{stage}/params.yaml").read_text())
        assert logged["precision"] in ("32-true", "bf16-mixed") and logged["precision_reason"], logged
        if stage == "train":
            assert logged["augment"].startswith("light crop_scale_min=0.85"), logged
    metrics = json.loads((history / "metrics/evaluate.json").read_text())
    assert {"accuracy", "top5_accuracy", "macro_f1", "loss", "ece"} <= set(metrics)
    assert 0.0 <= metrics["accuracy"] <= metrics["top5_accuracy"] <= 1.0
    assert set(metrics["served"]) == {"accuracy", "top5_accuracy", "macro_f1", "loss", "ece"}
    optimized = json.loads((history / "metrics/optimize.json").read_text())  # the optimize stage ran
    assert optimized["chosen"] in optimized["candidates"] and "fp32" in optimized["candidates"]
    assert optimized["candidates"]["fp32"]["speedup_batch16"] == 1.0 and optimized["chosen_speedup"] > 0
    served = extra_meta(history / "models/classifier_served.pt")
    assert served["artifact"] == optimized["chosen"] and isinstance(served["requires_cpu_flags"], list)

    assert dvc_json(["status"], history) == {}
    again = run(["dvc", "repro"], history)
    assert "didn't change, skipping" in again.stdout and "Running stage" not in again.stdout
    shown = dvc_json(["exp", "show"], history)
    lrs = [rev["data"]["params"]["params.yaml"]["data"]["lr"] for rev in shown if rev.get("data")]
    assert 0.0001 in lrs
    plots = run(["dvc", "plots", "show", "--json"], history)
    assert "Confusion matrix" in plots.stdout


def extra_meta(path: Path) -> dict:
    """The meta.json a TorchScript file carries, read without loading it."""
    with zipfile.ZipFile(path) as archive:
        return json.loads(next(archive.read(n) for n in archive.namelist() if n.endswith("/extra/meta.json")))


def test_git_tracks_small_metrics_and_dvc_the_large_outputs(history: Path) -> None:
    tracked = set(run(["git", "ls-files"], history).stdout.split())
    for small in ("metrics/prepare.json", "metrics/evaluate.json", "metrics/vae.json",
                  "metrics/optimize.json", "metrics/train/metrics.json", "metrics/train/params.yaml",
                  "metrics/evaluate/plots/confusion.json", "metrics/evaluate/plots/per_class.json",
                  "metrics/train/plots/metrics/val/acc.tsv", "metrics/train_vae/plots/metrics/val/loss.tsv",
                  "metrics/vae/plots/images/samples.png", "models/.gitignore"):
        assert small in tracked, small
    large = [name for name in tracked if name.endswith((".pt2", ".pt", ".ckpt", ".npy"))]
    assert not large, large
    assert any(name.startswith("metrics/vae/plots/images/") for name in tracked)  # small image plots
    assert not run(["git", "status", "--porcelain"], history).stdout  # nothing left unexplained


def test_fresh_clone_shows_metrics_params_and_plots_without_pull(history: Path, tmp_path: Path) -> None:
    fresh = clone(history, tmp_path / "fresh")
    assert (fresh / "models").is_dir() and not (fresh / "models/classifier.pt2").exists()
    shown = dvc_json(["metrics", "show"], fresh)
    evaluated = json.loads((history / "metrics/evaluate.json").read_text())
    assert json.dumps(shown).count(str(evaluated["accuracy"])) >= 1
    assert "metrics/evaluate.json" in json.dumps(shown) and "metrics/vae.json" in json.dumps(shown)

    diff = dvc_json(["metrics", "diff", "HEAD~1"], fresh)
    assert diff["metrics/evaluate.json"]["loss"]["old"] != diff["metrics/evaluate.json"]["loss"]["new"]
    params = dvc_json(["params", "diff", "HEAD~1"], fresh)
    assert (params["params.yaml"]["lr"]["old"], params["params.yaml"]["lr"]["new"]) == (0.004, 0.0001)
    experiments = dvc_json(["exp", "show"], fresh)
    workspace_metrics = experiments[0]["data"]["metrics"]
    assert workspace_metrics["metrics/evaluate.json"]["data"]["accuracy"] == evaluated["accuracy"]
    plots = run(["dvc", "plots", "diff", "HEAD~1", "--json"], fresh)
    for title in ("Loss", "Accuracy", "Confusion matrix", "Per-class accuracy"):
        assert title in plots.stdout, title
    assert dvc_json(["status"], fresh) != {}  # the models themselves are not there until dvc pull


@pytest.fixture(scope="module")
def gcs(tmp_path_factory) -> str:
    base = tmp_path_factory.mktemp("gcs")
    with gcs_emulator(base / "data", BUCKET, base / "emulator.log") as url:
        yield url


def add_remote(repo: Path, url: str) -> None:
    run(["dvc", "remote", "add", "-f", "-d", "storage", url], repo)


def test_push_to_gcs_then_a_teammate_pulls_and_serves(history: Path, gcs: str, tmp_path: Path) -> None:
    team = clone(history, tmp_path / "team")
    run(["dvc", "cache", "dir", "--local", str(history / ".dvc/cache")], team)  # the author's cache
    add_remote(team, f"gs://{BUCKET}/flowerlab")
    run(["git", "commit", "-qam", "team remote"], team)
    run(["dvc", "push"], team, STORAGE_EMULATOR_HOST=gcs)

    mate = clone(team, tmp_path / "mate")  # a new machine: empty cache, remote from .dvc/config
    assert not (mate / ".dvc/cache").exists()
    pulled = run(["dvc", "pull"], mate, STORAGE_EMULATOR_HOST=gcs)
    assert "fetched" in pulled.stdout, pulled.stdout
    assert dvc_json(["status"], mate) == {}
    assert dvc_json(["status", "--cloud"], mate, STORAGE_EMULATOR_HOST=gcs) == {}
    for path, digest in locked_outs(mate).items():
        assert md5(mate / path) == digest, path

    upload = encode_image(noise_image(), "PNG")
    with uvicorn_server(mate, tmp_path / "uvicorn.log", cwd=mate) as (url, ready):
        assert ready.json()["model"]["md5"] == locked_outs(mate)["models/classifier.pt2"]
        assert ready.json()["served"]["md5"] == locked_outs(mate)["models/classifier_served.pt"]
        answer = httpx.post(f"{url}/predict", files={"file": ("f.png", upload, "image/png")}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["predictions"]) == 5


def _assert_nothing_half_written(repo: Path) -> None:
    """Each locked output is absent or whole (its md5 as locked); nothing else appears in models/."""
    for path, digest in locked_outs(repo).items():
        if (repo / path).exists():
            assert md5(repo / path) == digest, f"{path} is half-written"
    locked = {Path(path).name for path in locked_outs(repo) if path.startswith("models/")}
    assert {p.name for p in (repo / "models").iterdir()} <= {".gitignore", "checkpoints", *locked}


def test_pull_from_an_unreachable_remote_fails_and_writes_nothing(history: Path, tmp_path: Path) -> None:
    mate = clone(history, tmp_path / "mate")
    add_remote(mate, f"gs://{BUCKET}/flowerlab")
    # One target: gcsfs retries each object with back-off, which for every output took 12 minutes.
    failed = run(["dvc", "pull", "models/classifier.pt2"], mate, check=False,
                 STORAGE_EMULATOR_HOST="http://127.0.0.1:9")
    assert failed.returncode != 0
    assert "failed to pull data from the cloud" in failed.stderr, failed.stderr[-2000:]
    for path in SERVED:
        assert not (mate / path).exists(), path
    _assert_nothing_half_written(mate)


def test_pull_with_an_object_missing_on_the_remote_fails_and_writes_no_partial_file(
        history: Path, gcs: str, tmp_path: Path) -> None:
    author = clone(history, tmp_path / "author")
    run(["dvc", "cache", "dir", "--local", str(history / ".dvc/cache")], author)
    add_remote(author, f"gs://{BUCKET}/missing")
    run(["dvc", "push"], author, STORAGE_EMULATOR_HOST=gcs)
    digest = locked_outs(author)["models/classifier.pt2"]
    name = f"missing/files/md5/{digest[:2]}/{digest[2:]}".replace("/", "%2F")
    deleted = httpx.delete(f"{gcs}/storage/v1/b/{BUCKET}/o/{name}", timeout=30)
    assert deleted.status_code in (200, 204), deleted.text

    run(["git", "commit", "-qam", "remote"], author)
    mate = clone(author, tmp_path / "mate")
    failed = run(["dvc", "pull"], mate, check=False, STORAGE_EMULATOR_HOST=gcs)
    assert failed.returncode != 0
    assert "failed to pull data from the cloud" in failed.stderr, failed.stderr[-2000:]
    assert digest[2:] in failed.stderr or "models/classifier.pt2" in failed.stderr, failed.stderr[-2000:]
    assert not (mate / "models/classifier.pt2").exists()
    assert (mate / "models/vae_decoder.pt2").is_file()  # what the remote has still arrives, whole
    _assert_nothing_half_written(mate)


def test_queued_sweep_runs_every_experiment_and_reports_the_failed_one(history: Path, tmp_path: Path) -> None:
    sweep = clone(history, tmp_path / "sweep")
    run(["dvc", "cache", "dir", "--local", str(history / ".dvc/cache")], sweep)
    run(["dvc", "checkout"], sweep)
    for lr in ("0.001", "-1"):  # lr=-1 fails the train stage's params check
        run(["dvc", "exp", "run", "--queue", "-S", f"lr={lr}"], sweep)
    run(["dvc", "queue", "start"], sweep)
    deadline = time.monotonic() + 900
    while True:
        status = run(["dvc", "queue", "status"], sweep).stdout
        if not any(state in status for state in ("Queued", "Running")):
            break
        assert time.monotonic() < deadline, status
        time.sleep(3)
    assert status.count("Success") == 1 and status.count("Failed") == 1, status

    shown = dvc_json(["exp", "show"], sweep)
    finished, failed = {}, []
    for rev in shown:
        for experiment in rev.get("experiments") or []:
            for exp in experiment.get("revs", []):
                data = exp.get("data") or {}
                lr = data.get("params", {}).get("params.yaml", {}).get("data", {}).get("lr")
                if exp.get("error"):
                    failed.append(lr)
                    continue
                accuracy = (data.get("metrics", {}).get("metrics/evaluate.json", {})
                            .get("data", {}).get("accuracy"))
                finished[lr] = accuracy
    assert set(finished) == {0.001}, json.dumps(shown)[:3000]
    assert all(0 <= accuracy <= 1 for accuracy in finished.values()), finished
    assert failed == [-1]


def test_kill_9_during_train_then_repro_completes_and_resume_continues(history: Path, tmp_path: Path) -> None:
    """``kill -9`` of ``dvc repro`` mid-train records nothing partial in dvc.lock; the next
    ``dvc repro`` completes, and ``dvc exp run -S train.resume=true`` (the README's command)
    continues from the stopped run's last checkpoint, not from the committed run's."""
    import signal

    import torch

    repo = tmp_path / "repo"
    shutil.copytree(history, repo, symlinks=True)
    set_params(repo / "params.yaml", {"epochs": 8})  # 7 epochs of margin for the kill
    last = repo / "models/checkpoints/classifier/last.ckpt"

    def epochs_done() -> int:
        if not last.is_file():
            return 0
        return torch.load(last, map_location="cpu", weights_only=True, mmap=True)["epoch"] + 1

    def start_and_kill_after(epochs: int) -> int:
        """Start ``dvc repro train``, kill it once ``epochs`` are checkpointed: the epochs done."""
        last.unlink(missing_ok=True)
        lock_before = (repo / "dvc.lock").read_text()
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               "DVC_NO_ANALYTICS": "1"}
        repro = subprocess.Popen(["dvc", "repro", "train"], cwd=repo, env=env, start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while epochs_done() < epochs and repro.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert repro.poll() is None, "train finished before it could be killed"
        os.killpg(repro.pid, signal.SIGKILL)
        repro.wait()
        assert (repo / "dvc.lock").read_text() == lock_before  # nothing of the killed run recorded
        return epochs_done()

    start_and_kill_after(1)
    run(["dvc", "repro"], repo)  # DVC clears its stale lock; train starts over
    assert run(["dvc", "status", "--json"], repo).stdout.strip() == "{}"
    for path, digest in locked_outs(repo).items():
        assert md5(repo / path) == digest, path  # every recorded output is the file on disk

    set_params(repo / "params.yaml", {"epochs": 12})
    done = start_and_kill_after(2)  # the committed run trained 1 epoch: the two must differ
    resumed = run(["dvc", "exp", "run", "-S", "train.resume=true"], repo)
    assert (f"resuming from models/checkpoints/classifier/last.ckpt after its epoch {done} of 12"
            in resumed.stdout + resumed.stderr), resumed.stdout[-3000:]
    assert epochs_done() == 12
