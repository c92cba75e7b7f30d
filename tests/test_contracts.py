"""Contracts that must not drift, derived from the code rather than kept by hand.

- each stage's code deps in dvc.yaml are exactly the project files its script imports, transitively
  (plus the package data files those modules open);
- the params each stage reads are the params it declares;
- config.py's defaults are params.yaml's values;
- the service never imports Lightning, dvclive or torchmetrics.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.contracts import (
    PROJECT_PACKAGES,
    code_deps,
    module_file,
    param_reads,
    uncovered_and_unused,
)
from tests.datasets import param_leaves

REPO = Path(__file__).resolve().parents[1]
DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = DVC_YAML["stages"]


def stage_module(stage: dict) -> str:
    cmd = stage["cmd"].split()
    assert cmd[:3] == ["python", "-m", cmd[2]] and cmd[2].startswith("stages."), stage["cmd"]
    return cmd[2]


def declared_code(stage: dict) -> set[str]:
    return {dep for dep in stage.get("deps", []) if dep.split("/")[0] in PROJECT_PACKAGES}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_code_deps_are_its_import_closure(name: str) -> None:
    stage = STAGES[name]
    derived = code_deps(stage_module(stage), REPO)
    declared = declared_code(stage)
    assert declared == derived, (
        f"dvc.yaml stage {name!r}: add {sorted(derived - declared)}, remove {sorted(declared - derived)}")


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_params_are_the_params_it_reads(name: str) -> None:
    stage = STAGES[name]
    script = module_file(stage_module(stage), REPO)
    reads = param_reads(script, REPO)
    assert reads, f"{script} reads no params: the checker did not find load_params"
    declared = {p for p in stage.get("params", []) if isinstance(p, str)}
    uncovered, unused = uncovered_and_unused(reads, declared)
    assert not uncovered and not unused, (
        f"dvc.yaml stage {name!r}: declare {sorted(uncovered)}, drop {sorted(unused)} "
        f"(the stage reads {sorted(reads)})")


def test_checkers_catch_what_they_are_for(tmp_path: Path) -> None:
    """The checkers on a small fake project: a missed import and an undeclared param are found."""
    (tmp_path / "flowerlab" / "sub").mkdir(parents=True)
    (tmp_path / "stages").mkdir()
    for init in ("flowerlab/__init__.py", "flowerlab/sub/__init__.py", "stages/__init__.py"):
        (tmp_path / init).write_text("")
    (tmp_path / "flowerlab" / "sub" / "names.txt").write_text("a\n")
    (tmp_path / "flowerlab" / "sub" / "deep.py").write_text(
        'from pathlib import Path\nNAMES = Path(__file__).with_name("names.txt")\n'
        "def run(opts):\n    return opts.accelerator, opts.devices\n")
    (tmp_path / "flowerlab" / "top.py").write_text("from flowerlab.sub import deep\n")
    (tmp_path / "stages" / "job.py").write_text(
        "from flowerlab import top\nfrom flowerlab.sub.deep import run\n"
        "from flowerlab.config import load_params\n"
        "def main():\n    params = load_params('params.yaml')\n    train = params.train\n"
        "    run(train)\n    print(params.lr, params.data.image_size)\n")
    (tmp_path / "flowerlab" / "config.py").write_text("def load_params(path):\n    pass\n")
    assert code_deps("stages.job", tmp_path) == {
        "stages/__init__.py", "stages/job.py", "flowerlab/__init__.py", "flowerlab/top.py",
        "flowerlab/config.py", "flowerlab/sub/__init__.py", "flowerlab/sub/deep.py",
        "flowerlab/sub/names.txt"}
    reads = param_reads(tmp_path / "stages" / "job.py", tmp_path)
    assert reads == {"lr", "data.image_size", "train.accelerator", "train.devices"}
    assert uncovered_and_unused(reads, {"lr", "data", "train.devices", "seed"}) == (
        {"train.accelerator"}, {"seed"})


def test_config_defaults_are_the_values_in_params_yaml() -> None:
    from omegaconf import OmegaConf

    from flowerlab.config import Params

    defaults = dict(param_leaves(OmegaConf.to_container(OmegaConf.structured(Params), enum_to_str=True)))
    in_file = dict(param_leaves(yaml.safe_load((REPO / "params.yaml").read_text())))
    differing = {key: (defaults.get(key), value) for key, value in in_file.items()
                 if defaults.get(key) != value}
    assert not differing, f"config.py default != params.yaml value: {differing}"


SERVICE_MAY_IMPORT = {"flowerlab/__init__.py", "flowerlab/export.py", "flowerlab/imaging.py",
                      "flowerlab/files.py", "flowerlab/paths.py",
                      "flowerlab/hardware.py",  # the CPU flags the optimized classifier requires
                      "flowerlab/drift.py"}  # the statistics the drift monitor compares


def test_service_imports_only_loading_and_preprocessing_code() -> None:
    imported = {path for path in code_deps("serve.app", REPO) if path.startswith("flowerlab/")}
    assert imported <= SERVICE_MAY_IMPORT, sorted(imported - SERVICE_MAY_IMPORT)


FORBIDDEN_IN_SERVICE = ("lightning", "pytorch_lightning", "dvclive", "torchmetrics")

_SERVICE_IMPORTS = """
import json, sys
from fastapi.testclient import TestClient
from serve.app import create_app
with TestClient(create_app()) as client:
    assert client.get("/ready").status_code == 200
    assert client.post("/predict", files={"file": ("x.png", open(sys.argv[1], "rb"))}).status_code == 200
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


@pytest.mark.slow
def test_service_never_imports_training_libraries(served_root: Path, tmp_path: Path) -> None:
    """Started and answering a prediction, the service has loaded none of the training stack."""
    from tests.builders import encode_image, noise_image

    upload = tmp_path / "upload.png"
    upload.write_bytes(encode_image(noise_image(), "PNG"))
    result = subprocess.run([sys.executable, "-c", _SERVICE_IMPORTS, str(upload)], cwd=REPO,
                            env={"FLOWERLAB_ROOT": str(served_root), "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout.splitlines()[-1]))
    assert "torch" in loaded and "serve" in loaded  # the check sees real imports
    assert not loaded & set(FORBIDDEN_IN_SERVICE), sorted(loaded & set(FORBIDDEN_IN_SERVICE))
