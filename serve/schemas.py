"""Pydantic models for every response (the /docs contract) and for the classifier's metadata."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt


class ClassifierMeta(BaseModel):
    """What the service needs from the metadata embedded in models/classifier.pt2."""

    model_config = ConfigDict(extra="ignore")

    kind: Literal["classifier"]
    architecture: str
    classes: list[str] = Field(min_length=1)
    image_size: PositiveInt
    source: str
    best_val_acc: float | None = None


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


class ModelInfo(BaseModel):
    path: str = Field(description="model file, relative to FLOWERLAB_ROOT")
    md5: str = Field(description="md5 of the file, as dvc.lock records it")
    source: str = Field(description="data set the model was trained on")
    architecture: str
    image_size: int = Field(description="side of the square input the model takes")
    num_classes: int
    best_val_acc: float | None


class ReadyResponse(BaseModel):
    status: Literal["ready"] = "ready"
    model: ModelInfo
    test_metrics: TestMetrics | None = Field(
        description="metrics/evaluate.json, or null when missing or not computed from this model")
