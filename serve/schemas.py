"""Pydantic models for every response (the /docs contract) and the OpenAPI entries for PNG and error
responses. The models' metadata is flowerlab.export's (ClassifierMeta, VaeMeta)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class Prediction(BaseModel):
    label: str = Field(description="class name, from the model's metadata")
    class_id: int = Field(description="index of the class in the model's output")
    probability: float = Field(ge=0, le=1, description="softmax probability")


class PredictResponse(BaseModel):
    predictions: list[Prediction] = Field(description="top-k classes, most probable first")


class ErrorResponse(BaseModel):
    detail: str = Field(description="what was wrong with the request")


class ValidationErrorResponse(BaseModel):
    detail: str | list[dict[str, Any]] = Field(
        description="a message, or FastAPI's list of validation errors for a malformed request")


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class TestMetrics(BaseModel):
    """metrics/evaluate.json as the evaluate stage writes it."""

    accuracy: float
    top5_accuracy: float
    macro_f1: float
    loss: float
    ece: float
    samples: int


class VaeMetrics(BaseModel):
    """metrics/vae.json as the evaluate_vae stage writes it."""

    mse: float = Field(description="mean squared error per pixel of test reconstructions, range [0, 1]")
    psnr: float = Field(description="PSNR of test reconstructions, dB")
    ssim: float = Field(description="SSIM of test reconstructions")
    kl: float = Field(description="mean KL divergence per test image, nats")
    elbo_per_pixel: float = Field(description="negative ELBO per image dimension, nats")
    classifier_confidence: float = Field(description="mean top-1 probability the classifier gives samples")
    class_coverage: float = Field(description="fraction of classes the classifier predicts for samples")
    fd_classifier: float = Field(description="Fréchet distance of samples to test images in classifier "
                                             "feature space")
    fd_classifier_reconstructions: float | None = None
    sharpness_samples: float | None = Field(None, description="high-frequency (Laplacian) energy of the "
                                                              "samples' luma, relative to test images' (1: "
                                                              "as sharp)")
    sharpness_reconstructions: float | None = Field(None, description="the same for test reconstructions")
    samples: int | None = None
    test_images: int | None = None


class ModelInfo(BaseModel):
    path: str = Field(description="model file, relative to FLOWERLAB_ROOT")
    md5: str = Field(description="md5 of the file, as dvc.lock records it")
    source: str = Field(description="data set the model was trained on")
    architecture: str
    image_size: int = Field(description="side of the square input the model takes")
    num_classes: int
    best_val_acc: float | None


class ServedClassifier(BaseModel):
    path: str = Field(description="the classifier file /predict runs, relative to FLOWERLAB_ROOT")
    md5: str = Field(description="md5 of the file, as dvc.lock records it")
    artifact: str = Field(description="int8, bf16 or fp32: the optimize stage's TorchScript "
                                      "(models/classifier_served.pt); exported: the portable "
                                      "models/classifier.pt2")
    fallback_reason: str | None = Field(description="why the optimize stage's artifact is not served, "
                                                    "or null")


class ModelFile(BaseModel):
    path: str = Field(description="model file, relative to FLOWERLAB_ROOT")
    md5: str = Field(description="md5 of the file, as dvc.lock records it")


class VaeInfo(BaseModel):
    encoder: ModelFile
    decoder: ModelFile
    source: str = Field(description="data set the VAE was trained on")
    architecture: str
    latent_dim: int
    image_size: int = Field(description="side of the square images it reconstructs and generates")
    beta: float
    loss: str
    best_val_loss: float | None


class ReadyResponse(BaseModel):
    status: Literal["ready"] = "ready"
    model: ModelInfo
    served: ServedClassifier = Field(description="the classifier file that answers /predict")
    test_metrics: TestMetrics | None = Field(
        description="metrics/evaluate.json, or null when missing or not computed from this model")
    vae: VaeInfo
    vae_metrics: VaeMetrics | None = Field(
        description="metrics/vae.json, or null when missing or not computed from these models")


class GenerateResponse(BaseModel):
    seed: int = Field(description="the seed that reproduces these samples")
    images: list[str] = Field(description="one base64-encoded PNG per sample, image_size x image_size")


ERROR_DESCRIPTIONS = {
    400: "the body is not valid multipart/form-data",
    408: "the request body did not arrive within FLOWERLAB_UPLOAD_TIMEOUT_S of its headers; the "
         "connection is closed",
    413: "upload over FLOWERLAB_MAX_UPLOAD_BYTES, or image over FLOWERLAB_MAX_PIXELS (decompression bomb)",
    415: "not an image in a supported format",
    422: "bad k, empty file, truncated or corrupt image, an aspect ratio too extreme to resize within "
         "FLOWERLAB_MAX_PIXELS (detail is a string), "
         "or a malformed request such as a missing field or an out-of-range query parameter "
         "(detail is FastAPI's list of errors)",
    503: "model not loaded yet, or FLOWERLAB_MAX_QUEUE requests already wait for a decoding thread or "
         "for the inference worker "
         "(then Retry-After says when to retry)",
    504: "no answer within FLOWERLAB_REQUEST_TIMEOUT_S; the request was not computed",
}
RETRY_AFTER_HEADER = {"Retry-After": {"description": "seconds to wait before retrying",
                                      "schema": {"type": "integer"}}}
PNG_RESPONSE = {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}
SEED_HEADER = {"X-Seed": {"description": "the seed that reproduces this response",
                          "schema": {"type": "integer"}}}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error codes an endpoint can answer."""
    return {code: {"model": ValidationErrorResponse if code == 422 else ErrorResponse,
                   "description": ERROR_DESCRIPTIONS[code],
                   **({"headers": RETRY_AFTER_HEADER} if code == 503 else {})} for code in codes}


class MonitoringResponse(BaseModel):
    """GET /monitoring: drift of recent /predict requests against the training reference."""

    enabled: bool = Field(description="false when dvc.lock vouches for no drift reference")
    disabled_reason: str | None = None
    window: int = Field(description="requests in the sliding window now")
    window_size: int
    min_samples: int = Field(description="requests needed before scores appear")
    threshold: float = Field(description="a score above it counts as drift")
    scores: dict[str, float] = Field(description="KS statistic per statistic, 0 to 1")
    drifted: list[str] = Field(description="statistics whose score is above the threshold")
