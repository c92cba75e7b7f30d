"""The request paths of the classifier and the VAE, LitServe-shaped:
decode_request -> predict -> encode_response.

``predict`` takes a batch: the app decodes each upload in a thread pool and the inference worker
(serve/batching.py) runs ``predict`` on the requests waiting together.
Preprocessing is flowerlab.imaging's, the same functions prepare applied to every training and
test image, and the models are the files the evaluate stages ran: the classifier is the optimize
stage's artifact where this CPU runs it (:func:`choose_classifier`), else the exported program.
"""

from __future__ import annotations

import base64
import io
import logging
import secrets
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError

from flowerlab.export import ClassifierMeta, VaeMeta
from flowerlab.imaging import (
    ExtremeAspectError,
    ImageDecodeError,
    ImageTooLargeError,
    decode_image,
    grid_png,
    pillow_refusal,
    square_resize,
    to_png,
)
from serve.registry import CLASSIFIER_SERVED, LoadedArtifact, ModelLoadError, load_optimized
from serve.rejections import InputRejected
from serve.schemas import GenerateResponse, Prediction, PredictResponse

logger = logging.getLogger(__name__)

# Pillow's opener names (its JPEG opener also takes the MPO files many cameras write).
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
MAX_SAMPLES = 256  # per /generate request: 256 decoder outputs stay well under a second on CPU
# Seeds stay exact in JavaScript numbers (the web page shows and reuses them).
MAX_SEED = 2**53 - 1
# The first bytes of each accepted format: a file that starts so but does not parse is corrupt (422),
# not of another format (415).
SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
WARMUP_RUNS = 3  # at the largest batch, before /ready: TorchScript optimises its graph on the first calls


def sniff_format(data: bytes, max_pixels: int) -> str:
    """Pillow's name for the format of ``data``; only headers are read, nothing is decoded.
    ``max_pixels``: the limit a 413 names when Pillow refuses to open the image at all."""
    try:
        with warnings.catch_warnings():
            # decode_image applies the pixel limit; here only Pillow's hard limit can stop us.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
                return str(image.format)
    except UnidentifiedImageError:
        if data.startswith(SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            raise InputRejected(422, "corrupt", "corrupt image: the file starts as a supported format "
                                                "but does not parse as one") from None
        raise InputRejected(415, "unsupported_format",
                            "not an image in a supported format (JPEG, PNG, WebP, BMP, GIF)") from None
    except Image.DecompressionBombError as error:
        raise InputRejected(413, "too_many_pixels", str(pillow_refusal(error, max_pixels))) from None
    except (OSError, ValueError, EOFError) as error:  # Pillow's other parse errors become Unidentified
        raise InputRejected(422, "corrupt", f"corrupt image header: {error}") from None


def decode_upload(data: bytes, size: int, max_pixels: int) -> torch.Tensor:
    """Upload bytes -> uint8 tensor (3, size, size), exactly as prepare stored the evaluated images."""
    sniff_format(data, max_pixels)
    try:
        return square_resize(decode_image(data, max_pixels, draft_size=size), size, max_pixels)
    except ExtremeAspectError as error:  # a 1000000x1 line is small, but resized it would take gigabytes
        raise InputRejected(422, "extreme_aspect", str(error)) from None
    except ImageTooLargeError as error:
        raise InputRejected(413, "too_many_pixels", str(error)) from None
    except ImageDecodeError as error:
        raise InputRejected(422, "corrupt", str(error)) from None
    except InputRejected:
        raise
    except Exception as error:  # a damaged file must be a 4xx, not a 500; the log shows what slipped by
        logger.warning("decode failed with %s: %s", type(error).__name__, error)
        raise InputRejected(422, "corrupt", f"cannot decode image: {error}") from None


PHOTO_SIZE = (500, 375)  # a phone photo as uploads commonly are, once resized by the client


def photo_jpeg(size: tuple[int, int] = PHOTO_SIZE, seed: int = 0) -> bytes:
    """A deterministic photo-sized JPEG (quality 90): smooth gradients, a few shapes, mild noise."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    red = 255 * x / width
    green = 255 * (0.5 + 0.5 * np.sin(x / 37 + y / 53))
    blue = 255 * y / height
    pixels = np.stack([red, green, blue], axis=-1)
    pixels += np.random.default_rng(seed).normal(0, 6, pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((150, 80, 350, 290), fill=(230, 60, 120), outline=(250, 240, 40), width=6)
    draw.ellipse((225, 155, 275, 215), fill=(250, 210, 30))
    draw.rectangle((20, 300, 140, 360), fill=(40, 140, 50))
    draw.polygon([(400, 40), (480, 160), (330, 150)], fill=(90, 60, 200))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def median_seconds(function: Callable[[], object], calls: int, warmup: int = 2) -> float:
    """The median wall time of ``calls`` calls of ``function``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class ClassifierPredictor:
    """Classify uploaded image bytes with an exported classifier; built once at startup."""

    def __init__(self, loaded: LoadedArtifact, max_pixels: int, warmup_batch: int = 1) -> None:
        try:
            self.meta = ClassifierMeta.model_validate(loaded.meta)
        except ValueError as error:
            raise ModelLoadError(f"{loaded.artifact.path} has unusable metadata: {error}") from None
        self.loaded = loaded
        self.module = loaded.module
        self.max_pixels = max_pixels
        # One dry run at startup: fail now if outputs do not match the class list, and warm up.
        blank = torch.zeros(1, 3, self.image_size, self.image_size, dtype=torch.uint8)
        try:
            shape = tuple(self.predict(blank).shape)
        except Exception as error:  # e.g. the program was exported for another image size
            raise ModelLoadError(f"{loaded.artifact.path} fails on one blank {self.image_size}x"
                                 f"{self.image_size} image: {error}") from None
        if shape != (1, self.num_classes):
            raise ModelLoadError(f"{loaded.artifact.path} outputs shape {shape} for one image, but its "
                                 f"metadata lists {self.num_classes} classes")
        try:
            for _ in range(WARMUP_RUNS):
                self.predict(blank.expand(warmup_batch, -1, -1, -1))
        except Exception as error:
            raise ModelLoadError(f"{loaded.artifact.path} fails on a batch of {warmup_batch}: "
                                 f"{error}") from None

    @property
    def artifact(self) -> str:
        """What is served: fp32, int8 or bf16 (the optimize stage's file), or exported (the portable one)."""
        return str(self.loaded.meta.get("artifact", "exported"))

    @property
    def classes(self) -> list[str]:
        return self.meta.classes

    @property
    def num_classes(self) -> int:
        return len(self.meta.classes)

    @property
    def image_size(self) -> int:
        return self.meta.image_size

    def decode_request(self, data: bytes) -> torch.Tensor:
        """Upload bytes -> uint8 tensor (3, S, S), exactly as prepare stored the evaluated images."""
        return decode_upload(data, self.image_size, self.max_pixels)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, 3, S, S) -> class probabilities (N, C); as evaluation, /255 then softmax."""
        logits, _features = self.module(images.float() / 255)
        return logits.softmax(dim=1)

    def measure_costs(self, batch: int, calls: int = 3) -> tuple[float, float]:
        """Seconds per image of ``predict`` on a batch of ``batch``, and of decoding a photo-sized
        JPEG (:func:`photo_jpeg`), on this thread's torch threads: medians of ``calls`` calls."""
        blank = torch.zeros(batch, 3, self.image_size, self.image_size, dtype=torch.uint8)
        model_s = median_seconds(lambda: self.predict(blank), calls, warmup=0) / batch  # warm already
        jpeg = photo_jpeg()
        return model_s, median_seconds(lambda: self.decode_request(jpeg), max(calls, 5))

    def encode_response(self, probabilities: torch.Tensor, k: int) -> PredictResponse:
        """One image's probabilities (C,) -> the top ``k`` classes, most probable first."""
        top = torch.topk(probabilities, k, sorted=True)
        return PredictResponse(predictions=[
            Prediction(label=self.classes[i], class_id=i, probability=p)
            for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)])


def choose_classifier(root: Path, portable: LoadedArtifact, max_pixels: int, warmup_batch: int
                      ) -> tuple[ClassifierPredictor, str | None]:
    """The optimize stage's classifier where dvc.lock has it and this CPU runs it, else the portable
    exported program (one warning line says why); and that reason.

    A locked file that is missing or differs from dvc.lock raises :class:`ModelLoadError`."""
    optimized, reason = load_optimized(root)
    if optimized is not None:
        try:
            predictor = ClassifierPredictor(optimized, max_pixels, warmup_batch)
            portable_meta = ClassifierMeta.model_validate(portable.meta)
            for key in ("classes", "image_size"):
                if getattr(predictor.meta, key) != getattr(portable_meta, key):
                    raise ModelLoadError(f"{optimized.artifact.path} and {portable.artifact.path} "
                                         f"disagree on {key}")
            return predictor, None
        except (ModelLoadError, ValueError) as error:
            reason = str(error)
    if reason is not None:
        logger.warning("serving %s instead of %s: %s", portable.artifact.path, CLASSIFIER_SERVED.path, reason)
    return ClassifierPredictor(portable, max_pixels, warmup_batch), reason


class VaePredictor:
    """Reconstruct uploads and sample the prior with the exported VAE halves; built once at startup."""

    def __init__(self, encoder: LoadedArtifact, decoder: LoadedArtifact, max_pixels: int) -> None:
        metas = []
        for loaded, kind in ((encoder, "vae_encoder"), (decoder, "vae_decoder")):
            try:
                meta = VaeMeta.model_validate(loaded.meta)
            except ValueError as error:
                raise ModelLoadError(f"{loaded.artifact.path} has unusable metadata: {error}") from None
            if meta.kind != kind:
                raise ModelLoadError(f"{loaded.artifact.path} is a {meta.kind}, not a {kind}")
            metas.append(meta)
        self.meta, decoder_meta = metas
        for key in ("latent_dim", "image_size"):
            if getattr(self.meta, key) != getattr(decoder_meta, key):
                raise ModelLoadError(f"the VAE halves disagree on {key}: {getattr(self.meta, key)} in "
                                     f"{encoder.artifact.path}, {getattr(decoder_meta, key)} in "
                                     f"{decoder.artifact.path}")
        self.encoder, self.decoder, self.max_pixels = encoder.module, decoder.module, max_pixels
        size, latent = self.image_size, self.latent_dim
        # One dry run of each half at startup: fail now if they do not match their metadata.
        try:
            mu = self.encode(torch.zeros(1, 3, size, size, dtype=torch.uint8))
            shape = tuple(self.decode(torch.zeros(1, latent)).shape)
        except Exception as error:
            raise ModelLoadError(f"the VAE fails on one blank {size}x{size} image or latent of size "
                                 f"{latent}: {error}") from None
        if tuple(mu.shape) != (1, latent) or shape != (1, 3, size, size):
            raise ModelLoadError(f"the VAE maps a {size}x{size} image to a latent of shape {tuple(mu.shape)} "
                                 f"and a latent to an image of shape {shape}; its metadata says "
                                 f"latent_dim {latent}, image_size {size}")

    @property
    def image_size(self) -> int:
        return self.meta.image_size

    @property
    def latent_dim(self) -> int:
        return self.meta.latent_dim

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, 3, S, S) -> posterior means (N, latent_dim); /255 as evaluate_vae."""
        mu, _logvar = self.encoder(images.float() / 255)
        return mu

    @torch.inference_mode()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, latent_dim) -> float images (N, 3, S, S) in [0, 1]."""
        return self.decoder(z)

    # /reconstruct: upload bytes -> uint8 image -> decoder(encoder mean) -> PNG.
    def decode_request(self, data: bytes) -> torch.Tensor:
        return decode_upload(data, self.image_size, self.max_pixels)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, 3, S, S) -> deterministic reconstructions, float in [0, 1]."""
        return self.decode(self.encode(images))

    # /generate: (n, seed) -> z ~ N(0, I) -> decoder, in chunks -> a PNG grid, or one base64 PNG each.
    def latents(self, n: int, seed: int) -> torch.Tensor:
        """``n`` prior draws from a generator of its own: the global RNG is never touched."""
        return torch.randn(n, self.latent_dim, generator=torch.Generator().manual_seed(seed))

    @staticmethod
    def seed_or_random(seed: int | None) -> int:
        return secrets.randbelow(MAX_SEED + 1) if seed is None else seed

    @staticmethod
    def encode_samples(images: torch.Tensor, seed: int, as_json: bool) -> bytes | GenerateResponse:
        if as_json:
            return GenerateResponse(seed=seed, images=[base64.b64encode(to_png(image)).decode("ascii")
                                                       for image in images])
        return grid_png(images)
