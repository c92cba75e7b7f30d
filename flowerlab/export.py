"""The model file format: a ``torch.export`` program with its metadata inside the same file.

The optimize stage's served classifier is a frozen TorchScript file instead (an FX int8 model cannot
be saved with torch.export), with the same ``meta.json`` in its ``_extra_files``.

A consumer needs only torch and pydantic: no model classes, no Lightning. The metadata travels in
the file as ``meta.json``; :class:`ClassifierMeta` and :class:`VaeMeta` are its one definition,
used by the stages that write it, the service that reads it, and the tests.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch.export import Dim

META_FILE = "meta.json"


class ModelMeta(BaseModel):
    """Fields every exported model carries."""

    # Unknown keys are kept, so a newer writer's extra fields survive a round trip.
    model_config = ConfigDict(extra="allow")

    kind: str
    architecture: str
    image_size: PositiveInt = Field(description="side of the square images the model takes or makes")
    source: str = Field(description="data set the model was trained on")
    input: str = Field(description="what the program takes")


class ClassifierMeta(ModelMeta):
    """models/classifier.pt2: float RGB in [0, 1] -> (logits, penultimate features)."""

    kind: Literal["classifier"] = "classifier"
    input: str = "float32 RGB in [0, 1], shape (N, 3, image_size, image_size)"
    classes: list[str] = Field(min_length=1)
    preprocessing: str = "decode, resize shorter side to image_size, centre crop"
    normalisation: dict[str, object] = Field(description="mean, std, and built_in: true")
    outputs: list[str] = ["logits", "features"]
    best_val_acc: float | None = None
    weights: str | None = Field(None, description="which epoch's weights: train.export")


class ServedClassifierMeta(ClassifierMeta):
    """models/classifier_served.pt: the classifier as the optimize stage picked it, same contract."""

    artifact: Literal["fp32", "int8", "bf16"] = Field(description="numeric format of the weights")
    requires_cpu_flags: list[str] = Field(description="/proc/cpuinfo flags its kernels need (else "
                                                      "serve the portable models/classifier.pt2)")


class VaeMeta(ModelMeta):
    """models/vae_encoder.pt2 (images -> mu, logvar) and models/vae_decoder.pt2 (latents -> images)."""

    kind: Literal["vae_encoder", "vae_decoder"]
    latent_dim: PositiveInt
    width: PositiveInt
    beta: float
    loss: str
    prior: str = "N(0, I)"
    num_classes: int
    loss_scale: str = "per-image sums (pixels, latent dims), averaged over the batch"
    best_val_loss: float | None = None
    outputs: list[str] | None = None  # encoder
    output: str | None = None  # decoder


Meta = TypeVar("Meta", bound=ModelMeta)


def image_input(size: int) -> str:
    """The ``input`` description of a program taking square float images."""
    return f"float32 RGB in [0, 1], shape (N, 3, {size}, {size})"


def export_program(module: torch.nn.Module, example: torch.Tensor, path: Path | str,
                   meta: ModelMeta, max_batch: int = 4096) -> None:
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
    payload = json.dumps(meta.model_dump(mode="json", exclude_none=True), sort_keys=True)
    torch.export.save(program, path, extra_files={META_FILE: payload})


def load_program(path: Path | str) -> tuple[torch.nn.Module, dict]:
    """Load an exported program as a callable module, plus its raw metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    extra = {META_FILE: ""}
    program = torch.export.load(path, extra_files=extra)
    return program.module(), json.loads(extra[META_FILE])


def load_model(path: Path | str, schema: type[Meta]) -> tuple[torch.nn.Module, Meta]:
    """Load an exported program with its metadata validated as ``schema``."""
    module, meta = load_program(path)
    return module, schema.model_validate(meta)


def save_scripted(module: torch.jit.ScriptModule, path: Path | str, meta: ModelMeta) -> None:
    """Save a TorchScript module to ``path`` with ``meta`` embedded as ``meta.json``.

    The archive is written without its ``.debug_pkl`` records: for a traced module they hold the
    Python stack of the trace, absolute paths of the checkout and the virtual environment
    included. Without them, and since the archive's ``serialization_id`` is a hash of its
    records, the same commit saves the same bytes in any checkout, as :func:`export_program` does.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(meta.model_dump(mode="json", exclude_none=True), sort_keys=True)
    buffer = io.BytesIO()
    torch.jit.save(module, buffer, _extra_files={META_FILE: payload})
    buffer.seek(0)
    reader = torch._C.PyTorchFileReader(buffer)
    writer = torch._C.PyTorchFileWriter(str(path))  # names the archive after the file, as jit.save
    for name in reader.get_all_records():
        if name.endswith(".debug_pkl") or name == ".data/serialization_id":  # the writer adds the id
            continue
        data = reader.get_record(name)
        writer.write_record(name, data, len(data))
    writer.write_end_of_file()


def read_scripted_meta(path: Path | str) -> dict:
    """The raw metadata of a TorchScript file, read from its zip archive without loading any code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    with zipfile.ZipFile(path) as archive:
        names = [name for name in archive.namelist() if name.endswith(f"/extra/{META_FILE}")]
        if len(names) != 1:
            raise ValueError(f"{path} holds no extra/{META_FILE}")
        return json.loads(archive.read(names[0]))


def load_scripted(path: Path | str) -> tuple[torch.jit.ScriptModule, dict]:
    """Load a TorchScript file saved by :func:`save_scripted`, plus its raw metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    extra = {META_FILE: ""}
    module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module.eval(), json.loads(extra[META_FILE])
