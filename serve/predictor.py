"""The classifier's request path, LitServe-shaped: decode_request -> predict -> encode_response.

``predict`` takes a batch, so a dynamic-batching queue can later sit between decode and predict.
Preprocessing is flowerlab.imaging's, the same functions prepare applied to every training and
test image, and the model is the exported program evaluation ran.
"""

from __future__ import annotations

import io
import logging
import warnings

import torch
from PIL import Image, UnidentifiedImageError

from flowerlab.imaging import ImageDecodeError, ImageTooLargeError, decode_image, square_resize
from serve.registry import LoadedArtifact, ModelLoadError
from serve.rejections import InputRejected
from serve.schemas import ClassifierMeta, Prediction, PredictResponse

logger = logging.getLogger(__name__)

# Pillow's opener names (its JPEG opener also takes the MPO files many cameras write).
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")


def sniff_format(data: bytes) -> str:
    """Pillow's name for the format of ``data``; only headers are read, nothing is decoded."""
    try:
        with warnings.catch_warnings():
            # decode_image applies the pixel limit; here only Pillow's hard limit can stop us.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
                return str(image.format)
    except UnidentifiedImageError:
        raise InputRejected(415, "unsupported_format",
                            "not an image in a supported format (JPEG, PNG, WebP, BMP, GIF)") from None
    except Image.DecompressionBombError as error:
        raise InputRejected(413, "too_many_pixels", f"rejected as a decompression bomb: {error}") from None
    except (OSError, ValueError, EOFError) as error:  # Pillow's other parse errors become Unidentified
        raise InputRejected(422, "corrupt", f"corrupt image header: {error}") from None


class ClassifierPredictor:
    """Classify uploaded image bytes with an exported classifier; built once at startup."""

    def __init__(self, loaded: LoadedArtifact, max_pixels: int) -> None:
        try:
            self.meta = ClassifierMeta.model_validate(loaded.meta)
        except ValueError as error:
            raise ModelLoadError(f"{loaded.artifact.path} has unusable metadata: {error}") from None
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
        sniff_format(data)
        try:
            return square_resize(decode_image(data, self.max_pixels), self.image_size)
        except ImageTooLargeError as error:
            raise InputRejected(413, "too_many_pixels", str(error)) from None
        except ImageDecodeError as error:
            raise InputRejected(422, "corrupt", str(error)) from None
        except Exception as error:  # a damaged file must be a 4xx, not a 500; the log shows what slipped by
            logger.warning("decode failed with %s: %s", type(error).__name__, error)
            raise InputRejected(422, "corrupt", f"cannot decode image: {error}") from None

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, 3, S, S) -> class probabilities (N, C); as evaluation, /255 then softmax."""
        logits, _features = self.module(images.float() / 255)
        return logits.softmax(dim=1)

    def encode_response(self, probabilities: torch.Tensor, k: int) -> PredictResponse:
        """One image's probabilities (C,) -> the top ``k`` classes, most probable first."""
        top = torch.topk(probabilities, k, sorted=True)
        return PredictResponse(predictions=[
            Prediction(label=self.classes[i], class_id=i, probability=p)
            for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)])

    def __call__(self, data: bytes, k: int) -> PredictResponse:
        """The whole path for one upload (a batch of one)."""
        return self.encode_response(self.predict(self.decode_request(data).unsqueeze(0))[0], k)
