"""Multi-node training: two "nodes" on this machine, started as a cluster launcher starts them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flowerlab.export import ClassifierMeta, load_model
from tests.datasets import run_stages, stage_env, write_params
from tests.servers import free_port

pytestmark = pytest.mark.slow

TWO_NODES = {"epochs": 1, "batch_size": 16, "data.image_size": 16, "data.samples_per_class": 4,
             "train.accelerator": "cpu", "train.devices": 1, "train.num_nodes": 2,
             "train.strategy": "ddp"}


def test_train_stage_on_two_nodes_exports_once(tmp_path: Path) -> None:
    write_params(tmp_path, TWO_NODES)
    prepared = run_stages(tmp_path, "prepare", "split")
    assert prepared.returncode == 0, prepared.stderr
    earlier = tmp_path / "models/checkpoints/classifier/last.ckpt"  # a stopped run's, in the shared folder
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"a stopped run's state")
    port = free_port()
    nodes = []
    for rank in (0, 1):  # what SLURM or a launcher sets on each node; the code is the same
        env = stage_env(PYTHONUNBUFFERED="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                        NODE_RANK=str(rank), WORLD_SIZE="2")
        log = open(tmp_path / f"node{rank}.log", "w")  # noqa: SIM115 (closed once the node exits)
        nodes.append((subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=tmp_path, env=env,
                                       stdout=log, stderr=subprocess.STDOUT), log))
    outputs = []
    for rank, (process, log) in enumerate(nodes):
        try:
            process.wait(timeout=600)
        finally:
            process.kill()
            log.close()
        outputs.append((tmp_path / f"node{rank}.log").read_text())
        assert process.returncode == 0, outputs[-1][-3000:]

    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in outputs[0] and "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1]
    assert outputs[0].count("exported models/classifier.pt2") == 1
    assert "exported" not in outputs[1]  # rank 1 trains, rank 0 alone writes the model
    # Rank 0 alone set the stopped run's checkpoints aside, once: rank 1 did not move them on again.
    aside = tmp_path / "models/checkpoints/classifier.previous/last.ckpt"
    assert aside.read_bytes() == b"a stopped run's state"
    assert [output.count("set the previous run's checkpoints aside") for output in outputs] == [1, 0]
    module, meta = load_model(tmp_path / "models/classifier.pt2", ClassifierMeta)
    assert meta.image_size == 16 and len(meta.classes) == 102
    import torch

    logits, features = module(torch.rand(3, 3, 16, 16))
    assert logits.shape == (3, 102) and features.shape == (3, 512)
