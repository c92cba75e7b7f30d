"""HTTP API: /predict, /health, /ready and /metrics. Run with ``uvicorn serve.app:app``.

Startup loads only the model files that dvc.lock records, and refuses to start otherwise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import Scope

from serve.monitoring import PREDICTION_SECONDS, RequestMetrics, metrics_response
from serve.predictor import ClassifierPredictor
from serve.registry import CLASSIFIER, ModelLoadError, load_artifacts, read_test_metrics
from serve.rejections import (
    MULTIPART_OVERHEAD_BYTES,
    InputRejected,
    UploadLimit,
    handle_input_rejected,
    handle_validation_error,
    too_large,
)
from serve.schemas import (
    ErrorResponse,
    HealthResponse,
    ModelInfo,
    PredictResponse,
    ReadyResponse,
    TestMetrics,
    ValidationErrorResponse,
)
from serve.settings import ServeSettings

logger = logging.getLogger(__name__)

DEFAULT_K = 5


@dataclass(frozen=True)
class Service:
    """Everything built once at startup and shared by all requests."""

    settings: ServeSettings
    predictor: ClassifierPredictor
    ready: ReadyResponse


def build_service(settings: ServeSettings) -> Service:
    """Verify and load the models dvc.lock records under ``settings.root``; raise ModelLoadError."""
    loaded = load_artifacts(settings.root)
    classifier = loaded[CLASSIFIER.name]
    predictor = ClassifierPredictor(classifier, settings.max_pixels)
    meta = predictor.meta
    info = ModelInfo(path=CLASSIFIER.path, md5=classifier.md5, source=meta.source,
                     architecture=meta.architecture, image_size=meta.image_size,
                     num_classes=predictor.num_classes, best_val_acc=meta.best_val_acc)
    test_metrics = None
    if (raw := read_test_metrics(settings.root, classifier.md5)) is not None:
        try:
            test_metrics = TestMetrics.model_validate(raw)
        except ValidationError as error:
            logger.warning("not reporting test metrics, unexpected content: %s", error)
    return Service(settings, predictor, ReadyResponse(model=info, test_metrics=test_metrics))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Read settings and load the models once; an exception here makes uvicorn exit non-zero."""
    try:
        # Read here, not at import, so tests and deployments can set FLOWERLAB_* before startup.
        settings = ServeSettings()
        service = build_service(settings)
    except (ModelLoadError, ValidationError) as error:
        logger.error("refusing to start: %s", error)
        raise RuntimeError(f"refusing to start: {error}") from None
    app.state.service = service
    logger.info("serving %s (md5 %s) from %s", CLASSIFIER.path, service.ready.model.md5,
                settings.root.resolve())
    try:
        yield
    finally:
        app.state.service = None


def upload_limit(scope: Scope) -> int | None:
    """Body limit for the request: the upload limit plus multipart framing; none before startup."""
    service: Service | None = getattr(scope["app"].state, "service", None)
    return None if service is None else service.settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES


def current_service(request: Request) -> Service:
    """The loaded service, or a 503 while the model is not loaded."""
    service: Service | None = getattr(request.app.state, "service", None)
    if service is None:
        # Not a rejected input, so a plain HTTPException: no rejection counted.
        raise HTTPException(503, "model not loaded yet")
    return service


ERROR_DESCRIPTIONS = {
    413: "upload over FLOWERLAB_MAX_UPLOAD_BYTES, or image over FLOWERLAB_MAX_PIXELS (decompression bomb)",
    415: "not an image in a supported format",
    422: "bad k, empty file, truncated or corrupt image (detail is a string), "
         "or a malformed request such as a missing field (detail is FastAPI's list of errors)",
    503: "model not loaded yet",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error codes an endpoint can answer."""
    return {code: {"model": ValidationErrorResponse if code == 422 else ErrorResponse,
                   "description": ERROR_DESCRIPTIONS[code]} for code in codes}


def create_app() -> FastAPI:
    """The FastAPI application; models load when its lifespan starts."""
    app = FastAPI(title="flowerlab", summary="Flower classifier served from the DVC pipeline's outputs",
                  lifespan=lifespan)
    app.state.service = None
    app.add_exception_handler(InputRejected, handle_input_rejected)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_middleware(UploadLimit, limit=upload_limit)
    app.add_middleware(RequestMetrics)  # added last, so outermost: it also counts UploadLimit's 413s

    @app.get("/health", response_model=HealthResponse)
    def health() -> HealthResponse:
        """Liveness: the process answers."""
        return HealthResponse()

    @app.get("/ready", response_model=ReadyResponse, responses=error_responses(503))
    def ready(request: Request) -> ReadyResponse:
        """Readiness: the model is loaded; describes it and its test metrics."""
        return current_service(request).ready

    @app.post("/predict", response_model=PredictResponse, responses=error_responses(413, 415, 422, 503))
    async def predict(
        request: Request,
        file: Annotated[UploadFile, File(description="JPEG, PNG, WebP, BMP or GIF (first frame)")],
        k: Annotated[int | None, Query(description="how many classes to return, 1 to the number of "
                                                    "classes; default 5, or all classes if fewer")] = None,
    ) -> PredictResponse:
        """Classify one image: the top-k classes with their softmax probabilities."""
        service = current_service(request)
        num_classes = service.predictor.num_classes
        k = min(DEFAULT_K, num_classes) if k is None else k
        if not 1 <= k <= num_classes:
            raise InputRejected(422, "bad_k", f"k must be between 1 and {num_classes} "
                                              f"(the number of classes), got {k}")
        limit = service.settings.max_upload_bytes
        data = await file.read(limit + 1)  # never more than the limit, whatever the part claims
        if len(data) > limit:
            raise too_large(limit, "uploaded file")
        if not data:
            raise InputRejected(422, "empty", "the uploaded file is empty")
        start = time.perf_counter()
        # Decoding and inference block; keep them off the event loop.
        response = await run_in_threadpool(service.predictor, data, k)
        elapsed = time.perf_counter() - start
        PREDICTION_SECONDS.observe(elapsed)
        logger.debug("predicted %s in %.3f s", response.predictions[0].label, elapsed)
        return response

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return metrics_response()

    return app


app = create_app()
