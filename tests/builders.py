"""Test-only builders: a small served root (untrained classifier, its int8 served artifact, VAE,
dvc.lock, metrics) and uploads, good and bad.

``python -m tests.builders DIR`` writes a served root; then ``FLOWERLAB_ROOT=DIR uvicorn serve.app:app``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from flowerlab import paths
from flowerlab.classifier.network import IMAGENET_MEAN, IMAGENET_STD, ExportedClassifier, ImageClassifier
from flowerlab.classifier.optimize import INT8_CPU_FLAGS, frozen_script, int8_classifier
from flowerlab.export import (
    ClassifierMeta,
    ServedClassifierMeta,
    VaeMeta,
    export_program,
    image_input,
    load_scripted,
    save_scripted,
)
from flowerlab.files import file_md5
from flowerlab.vae.network import ConvVAE, VaeDecoder, VaeEncoder

CLASSES = ("daisy", "rose", "tulip")
IMAGE_SIZE = 32
TEST_METRICS = {"accuracy": 0.5, "top5_accuracy": 1.0, "macro_f1": 0.25, "loss": 1.5, "ece": 0.125,
                "samples": 12}
VAE_LATENT_DIM, VAE_WIDTH, VAE_IMAGE_SIZE = 4, 8, 16
VAE_METRICS = {"mse": 0.0625, "psnr": 12.5, "ssim": 0.25, "kl": 3.5, "elbo_per_pixel": 0.125,
               "classifier_confidence": 0.5, "class_coverage": 0.75, "fd_classifier": 42.0,
               "fd_classifier_reconstructions": 21.0, "sharpness_samples": 0.5,
               "sharpness_reconstructions": 0.25, "samples": 12, "test_images": 12}


def write_lock(root: Path, classifier_md5: str | None = None, decoder_md5: str | None = None,
               served_md5: str | None = None, optimize: bool = True) -> None:
    """dvc.lock as DVC writes it for train, optimize, evaluate, train_vae and evaluate_vae;
    ``classifier_md5``, ``decoder_md5`` and ``served_md5`` override the real hashes of those models;
    ``optimize=False``, or no served file under ``root``, writes a lock from before the optimize stage."""
    def entry(path: str, md5: str | None = None) -> dict:
        file = root / path
        return {"path": path, "hash": "md5", "md5": md5 or file_md5(file), "size": file.stat().st_size}

    model = entry(paths.CLASSIFIER, classifier_md5)
    encoder, decoder = entry(paths.VAE_ENCODER), entry(paths.VAE_DECODER, decoder_md5)
    optimized = {}
    if optimize and (root / paths.CLASSIFIER_SERVED).is_file():
        optimized = {"optimize": {"cmd": "python -m stages.optimize", "deps": [dict(model)],
                                  "outs": [entry(paths.CLASSIFIER_SERVED, served_md5)]}}
    lock = {"schema": "2.0", "stages": {
        "train": {"cmd": "python -m stages.train", "outs": [model]},
        **optimized,
        "evaluate": {"cmd": "python -m stages.evaluate",
                     "deps": [dict(model), *[dict(s["outs"][0]) for s in optimized.values()]],
                     "outs": [entry(paths.EVALUATE_METRICS),
                              *([entry(paths.DRIFT_REFERENCE)] if (root / paths.DRIFT_REFERENCE).is_file()
                                else [])]},
        "train_vae": {"cmd": "python -m stages.train_vae", "outs": [encoder, decoder]},
        "evaluate_vae": {"cmd": "python -m stages.evaluate_vae",
                         "deps": [dict(model), dict(encoder), dict(decoder)],
                         "outs": [entry(paths.VAE_METRICS)]}}}
    (root / paths.DVC_LOCK).write_text(yaml.safe_dump(lock, sort_keys=False))


def classifier_meta(image_size: int = IMAGE_SIZE, classes: tuple[str, ...] = CLASSES) -> ClassifierMeta:
    """Metadata as the train stage writes it."""
    return ClassifierMeta(architecture="resnet18", classes=list(classes), image_size=image_size,
                          source="synthetic", best_val_acc=0.75,
                          normalisation={"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "built_in": True})


def vae_meta(kind: str) -> VaeMeta:
    """Metadata as the train_vae stage writes it."""
    size, latent = VAE_IMAGE_SIZE, VAE_LATENT_DIM
    common = dict(kind=kind, architecture="conv-vae", latent_dim=latent, width=VAE_WIDTH, image_size=size,
                  beta=1.0, loss="mse", num_classes=len(CLASSES), source="synthetic", best_val_loss=123.5)
    if kind == "vae_encoder":
        return VaeMeta(**common, input=image_input(size), outputs=["mu", "logvar"])
    return VaeMeta(**common, input=f"float32 latents, shape (N, {latent})", output=image_input(size))


def served_meta(image_size: int = IMAGE_SIZE, classes: tuple[str, ...] = CLASSES,
                **changes) -> ServedClassifierMeta:
    """Metadata as the optimize stage writes it for an int8 pick."""
    fields = {**classifier_meta(image_size, classes).model_dump(), "artifact": "int8",
              "requires_cpu_flags": list(INT8_CPU_FLAGS)}
    return ServedClassifierMeta(**{**fields, **changes})


def write_served_artifact(root: Path, classifier: ImageClassifier, image_size: int = IMAGE_SIZE,
                          classes: tuple[str, ...] = CLASSES) -> None:
    """The optimize stage's int8 artifact of ``classifier``, calibrated on noise."""
    calibration = [torch.rand(8, 3, image_size, image_size, generator=torch.Generator().manual_seed(i))
                   for i in range(2)]
    save_scripted(frozen_script(int8_classifier(classifier, calibration), calibration[0][:2]),
                  root / paths.CLASSIFIER_SERVED, served_meta(image_size, classes))


def rewrite_served_meta(root: Path, **changes) -> None:
    """Save the served artifact again with ``changes`` in its metadata (lock it again after)."""
    module, meta = load_scripted(root / paths.CLASSIFIER_SERVED)
    (root / paths.CLASSIFIER_SERVED).unlink()  # it may be a hard link to the original root's file
    save_scripted(module, root / paths.CLASSIFIER_SERVED, ServedClassifierMeta(**{**meta, **changes}))


def write_served_root(root: Path, seed: int = 0, image_size: int = IMAGE_SIZE,
                      classes: tuple[str, ...] = CLASSES) -> Path:
    """Export an untrained classifier (3 classes at 32x32 unless told) with its int8 served
    artifact, and an untrained VAE at 16x16, write their metrics and dvc.lock.
    benchmarks/serve_load.py uses it too (``--image-size``)."""
    torch.manual_seed(seed)
    classifier = ImageClassifier(len(classes)).eval()
    export_program(ExportedClassifier(classifier), torch.rand(2, 3, image_size, image_size),
                   root / paths.CLASSIFIER, classifier_meta(image_size, classes))
    write_served_artifact(root, classifier, image_size, classes)
    vae = ConvVAE(VAE_LATENT_DIM, VAE_WIDTH, VAE_IMAGE_SIZE)
    size = VAE_IMAGE_SIZE
    export_program(VaeEncoder(vae), torch.rand(2, 3, size, size), root / paths.VAE_ENCODER,
                   vae_meta("vae_encoder"))
    export_program(VaeDecoder(vae), torch.randn(2, VAE_LATENT_DIM), root / paths.VAE_DECODER,
                   vae_meta("vae_decoder"))
    for path, values in ((paths.EVALUATE_METRICS, TEST_METRICS), (paths.VAE_METRICS, VAE_METRICS)):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(json.dumps(values))
    write_lock(root)
    return root


def copy_root(source: Path, target: Path) -> Path:
    """A copy of a served root to damage; the model is hard-linked (cheap), never written through."""
    def link_models(src: str, dst: str) -> None:
        (os.link if src.endswith((".pt2", ".pt")) else shutil.copy2)(src, dst)

    shutil.copytree(source, target, copy_function=link_models)
    return target


def noise_image(width: int = 64, height: int = 40, seed: int = 0) -> Image.Image:
    """Random RGB pixels: distinct images give distinct predictions even from an untrained model."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def encode_image(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims ``width`` x ``height``: a decompression bomb's shape, in 70 bytes."""
    data = bytearray(encode_image(Image.new("RGB", (1, 1)), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])  # IHDR data follows the 16-byte preamble
    data[16:33] = ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


if __name__ == "__main__":
    print(write_served_root(Path(sys.argv[1])))
