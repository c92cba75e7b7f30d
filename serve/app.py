"""HTTP API: /predict, /reconstruct, /generate, /health, /ready, /metrics and the web page at /.
Run with ``python -m serve`` (or ``uvicorn serve.app:app``).

Startup loads only the model files that dvc.lock records, and refuses to start otherwise.
Uploads decode in a thread pool as wide as the CPU quota; every model call goes through one
inference worker that batches waiting requests and runs the batches on its runner threads
(serve/batching.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import anyio.to_thread
import torch
from anyio import CapacityLimiter
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.types import Scope

from flowerlab.imaging import to_png
from serve.batching import (
    DeadlineExceeded,
    InferenceLayout,
    InferenceWorker,
    QueueFull,
    WorkerStopped,
    choose_inference_layout,
    cpu_threads,
    use_torch_threads,
)
from serve.drift import DriftMonitor, load_reference
from serve.monitoring import (
    DECODE_SECONDS,
    GENERATED_SAMPLES,
    GENERATION_SECONDS,
    INFERENCE_RUNNERS,
    INFERENCE_THREADS,
    PREDICTION_SECONDS,
    RECONSTRUCTION_SECONDS,
    RequestMetrics,
    metrics_response,
)
from serve.predictor import MAX_SAMPLES, MAX_SEED, ClassifierPredictor, VaePredictor, choose_classifier
from serve.registry import (
    CLASSIFIER,
    VAE_DECODER,
    VAE_ENCODER,
    ModelLoadError,
    load_artifacts,
    read_test_metrics,
    read_vae_metrics,
)
from serve.rejections import (
    InputRejected,
    UploadLimit,
    UploadLimits,
    file_too_large,
    handle_http_error,
    handle_input_rejected,
    handle_validation_error,
    require_multipart,
)
from serve.schemas import (
    PNG_RESPONSE,
    SEED_HEADER,
    GenerateResponse,
    HealthResponse,
    ModelFile,
    ModelInfo,
    MonitoringResponse,
    PredictResponse,
    ReadyResponse,
    ServedClassifier,
    TestMetrics,
    VaeInfo,
    VaeMetrics,
    error_responses,
)
from serve.settings import ServeSettings, SettingsError, StartupRefused, read_settings

logger = logging.getLogger(__name__)

DEFAULT_K = 5
DEFAULT_SAMPLES = 64
STATIC_DIR = Path(__file__).parent / "static"
RETRY_AFTER_S = 1  # a full queue drains in a few batches
T = TypeVar("T")


@dataclass(frozen=True)
class Service:
    """Everything built once at startup and shared by all requests."""

    settings: ServeSettings
    predictor: ClassifierPredictor
    vae: VaePredictor
    ready: ReadyResponse
    worker: InferenceWorker  # runs every model call, in batches
    cpu_pool: CapacityLimiter  # threads decoding uploads and encoding PNGs at once
    drift: DriftMonitor  # /predict's recent inputs and confidences against the training reference
    layout: InferenceLayout  # the worker's runners and their torch threads, and why


def validated_metrics(schema: type[BaseModel], raw: dict[str, Any] | None, what: str) -> Any:
    """``raw`` as ``schema``, or None (logged) when absent or not shaped as expected."""
    if raw is None:
        return None
    try:
        return schema.model_validate(raw)
    except ValidationError as error:
        logger.warning("not reporting %s, unexpected content: %s", what, error)
        return None


def build_service(settings: ServeSettings, threads: int) -> Service:
    """Verify and load the models dvc.lock records under ``settings.root``; raise ModelLoadError.
    ``threads``: the CPUs of the quota: the width of the pool that decodes uploads; the inference
    worker's runners and their torch threads, unless set, are ``choose_inference_layout``'s choice from
    the classifier's and a photo's decode costs, measured here after the warm-up."""
    loaded = load_artifacts(settings.root)
    classifier, encoder, decoder = (loaded[a.name] for a in (CLASSIFIER, VAE_ENCODER, VAE_DECODER))
    predictor, fallback_reason = choose_classifier(settings.root, classifier, settings.max_pixels,
                                                   settings.max_batch)
    vae = VaePredictor(encoder, decoder, settings.max_pixels)
    meta, vae_meta = predictor.meta, vae.meta
    info = ModelInfo(path=CLASSIFIER.path, md5=classifier.md5, source=meta.source,
                     architecture=meta.architecture, image_size=meta.image_size,
                     num_classes=predictor.num_classes, best_val_acc=meta.best_val_acc)
    vae_info = VaeInfo(encoder=ModelFile(path=VAE_ENCODER.path, md5=encoder.md5),
                       decoder=ModelFile(path=VAE_DECODER.path, md5=decoder.md5),
                       source=vae_meta.source, architecture=vae_meta.architecture,
                       latent_dim=vae_meta.latent_dim, image_size=vae_meta.image_size, beta=vae_meta.beta,
                       loss=vae_meta.loss, best_val_loss=vae_meta.best_val_loss)
    test_metrics = validated_metrics(TestMetrics, read_test_metrics(settings.root, classifier.md5),
                                     "test metrics")
    vae_metrics = validated_metrics(
        VaeMetrics, read_vae_metrics(settings.root, encoder.md5, decoder.md5, classifier.md5), "VAE metrics")
    served = ServedClassifier(path=predictor.loaded.artifact.path, md5=predictor.loaded.md5,
                              artifact=predictor.artifact, fallback_reason=fallback_reason)
    ready = ReadyResponse(model=info, served=served, test_metrics=test_metrics, vae=vae_info,
                          vae_metrics=vae_metrics)
    layout = choose_inference_layout(threads, settings.inference_runners, settings.inference_threads,
                                     lambda: predictor.measure_costs(settings.max_batch))
    INFERENCE_THREADS.set(layout.threads)
    INFERENCE_RUNNERS.set(layout.runners)
    worker = InferenceWorker(settings.max_batch, settings.batch_wait_ms / 1000, settings.max_queue,
                             layout.threads, wait_only_for_incoming=settings.batch_wait_for_incoming_only,
                             runners=layout.runners)
    reference, no_reference = load_reference(settings.root)  # logs why when there is none
    drift = DriftMonitor(reference, settings.drift_window, settings.drift_min_samples,
                         settings.drift_threshold, no_reference)
    return Service(settings, predictor, vae, ready, worker, CapacityLimiter(threads), drift, layout)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Read settings and load the models once; an exception here makes uvicorn exit non-zero."""
    try:
        # Read here, not at import, so tests and deployments can set FLOWERLAB_* before startup.
        settings = read_settings()
        # The CPUs of the container's quota. Only the inference runners may run torch on several
        # threads (see single_threaded): this thread loads and warms up the models on one.
        threads = cpu_threads()
        use_torch_threads(1)
        service = build_service(settings, threads)
    except (ModelLoadError, SettingsError, ValidationError) as error:
        logger.error("refusing to start: %s", error)
        raise StartupRefused(f"refusing to start: {error}") from None
    service.worker.start()
    app.state.service = service
    layout = service.layout
    logger.info("%d CPUs: inference on %d runner(s) of %d torch thread(s) (%s), %d decoding threads; "
                "batches of up to %d, %.1f ms wait, %d queued at most", threads, layout.runners,
                layout.threads, layout.reason, threads, settings.max_batch, settings.batch_wait_ms,
                settings.max_queue)
    served = service.ready.served
    logger.info("serving %s (%s, md5 %s), %s (md5 %s) and %s (md5 %s) from %s",
                served.path, served.artifact, served.md5, VAE_ENCODER.path, service.ready.vae.encoder.md5,
                VAE_DECODER.path, service.ready.vae.decoder.md5, settings.root.resolve())
    try:
        yield
    finally:
        app.state.service = None
        # Finishes the queued jobs; in a thread, so this loop delivers their results meanwhile.
        await anyio.to_thread.run_sync(service.worker.stop)


def upload_limits(scope: Scope) -> UploadLimits | None:
    """The upload's size limit (UploadLimit adds the multipart framing) and time limit; none before
    startup."""
    service: Service | None = getattr(scope["app"].state, "service", None)
    if service is None:
        return None
    return UploadLimits(service.settings.max_upload_bytes, service.settings.upload_timeout_s)


def current_service(request: Request) -> Service:
    """The loaded service, or a 503 while the model is not loaded."""
    service: Service | None = getattr(request.app.state, "service", None)
    if service is None:
        # Not a rejected input, so a plain HTTPException: no rejection counted.
        raise HTTPException(503, "model not loaded yet")
    return service


async def read_upload(service: Service, file: UploadFile) -> bytes:
    """The uploaded file's bytes: 413 over the upload limit, 422 when empty."""
    limit = service.settings.max_upload_bytes
    data = await file.read(limit + 1)  # never more than the limit, whatever the part claims
    if len(data) > limit:
        raise file_too_large(limit)
    if not data:
        raise InputRejected(422, "empty", "the uploaded file is empty")
    return data


def single_threaded(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` with one torch (OpenMP) thread in the calling thread.

    Only the inference runners may run torch on several threads. Each other thread that ran torch
    multi-threaded would keep an OpenMP team of its own, and once libgomp manages more threads than
    there are CPUs it stops spinning between parallel regions: on an AMX Xeon (2 cores) that made
    the int8 forward at batch 1 take 6.1 ms in a second thread against 2.7 ms alone."""
    use_torch_threads(1)  # cheap: set on every call
    return function(*args)


async def in_pool(service: Service, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in a thread, at most one thread per torch thread at a time."""
    return await anyio.to_thread.run_sync(single_threaded, function, *args, limiter=service.cpu_pool)


async def decoded(service: Service, kind: str, decode: Callable[[bytes], torch.Tensor], data: bytes,
                  until: float) -> torch.Tensor:
    """An upload decoded and preprocessed off the event loop, as a batch of one.

    Waiting for a decoding thread counts against the request's deadline ``until`` (504 once it
    passes, before the decode starts), and at most ``FLOWERLAB_MAX_QUEUE`` requests wait for one (503
    beyond): a flood of costly uploads (a 40-MP 16-bit PNG decodes for seconds) backs up nobody for
    longer than the deadline, and is refused once the line is full."""
    if service.cpu_pool.statistics().tasks_waiting >= service.settings.max_queue:
        raise QueueFull(f"{service.settings.max_queue} requests already wait to be decoded; retry later")
    start = time.perf_counter()
    with service.worker.incoming():  # a batch forming meanwhile may wait for this request
        try:
            with anyio.fail_after(max(0.0, until - time.monotonic())):
                image = await in_pool(service, decode, data)
        except TimeoutError:
            raise DeadlineExceeded("no answer within the request timeout") from None
    DECODE_SECONDS.labels(kind).observe(time.perf_counter() - start)
    return image.unsqueeze(0)


def deadline(service: Service) -> float:
    return time.monotonic() + service.settings.request_timeout_s


async def handle_busy(request: Request, error: Exception) -> Response:
    """The queue is full, or the worker is stopping: 503, retry soon."""
    return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


async def handle_deadline(request: Request, error: Exception) -> Response:
    return JSONResponse({"detail": str(error)}, status_code=504)


# minLength: an empty file is refused (422), so the schema does not offer it as valid. The bytes are
# sniffed, whatever the part's declared Content-Type says.
ImageUpload = Annotated[UploadFile, File(description="JPEG, PNG, WebP, BMP or GIF (first frame), not empty",
                                         json_schema_extra={"minLength": 1})]

def create_app() -> FastAPI:
    """The FastAPI application; models load when its lifespan starts."""
    app = FastAPI(title="flowerlab", lifespan=lifespan,
                  summary="Flower classifier and VAE served from the DVC pipeline's outputs")
    app.state.service = None
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_exception_handler(InputRejected, handle_input_rejected)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(QueueFull, handle_busy)
    app.add_exception_handler(WorkerStopped, handle_busy)
    app.add_exception_handler(DeadlineExceeded, handle_deadline)
    app.add_middleware(UploadLimit, limits=upload_limits)
    app.add_middleware(RequestMetrics)  # added last, so outermost: it also counts UploadLimit's 413s

    @app.api_route("/health", methods=["GET", "HEAD"], response_model=HealthResponse)
    def health() -> HealthResponse:
        """Liveness: the process answers."""
        return HealthResponse()

    @app.get("/ready", response_model=ReadyResponse, responses=error_responses(503))
    def ready(request: Request) -> ReadyResponse:
        """Readiness: the models are loaded; describes them and their evaluation metrics."""
        return current_service(request).ready

    @app.get("/monitoring", response_model=MonitoringResponse, responses=error_responses(503))
    def monitoring(request: Request) -> MonitoringResponse:
        """Drift: the KS statistic of each statistic (mean red, green, blue, brightness, contrast of
        the images, and the model's top-1 confidence) over the last requests to /predict, against
        the reference the pipeline recorded from the training images and validation confidences.
        Scores appear once ``min_samples`` requests are in the window."""
        return MonitoringResponse(**current_service(request).drift.report())

    # Uploads: a body that is not multipart is a 400 that says so, before FastAPI's 422 for no file.
    uploads = [Depends(require_multipart)]

    @app.post("/predict", response_model=PredictResponse, dependencies=uploads,
              responses=error_responses(400, 408, 413, 415, 422, 503, 504))
    async def predict(
        request: Request,
        file: ImageUpload,
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
        data = await read_upload(service, file)
        start, until = time.perf_counter(), deadline(service)
        predictor = service.predictor
        image = await decoded(service, "predict", predictor.decode_request, data, until)
        probabilities = await service.worker.infer("predict", predictor.predict, image, until)
        service.drift.observe(image.reshape(1, *image.shape[-3:]).numpy(), probabilities.numpy())
        response = predictor.encode_response(probabilities[0], k)
        elapsed = time.perf_counter() - start
        PREDICTION_SECONDS.observe(elapsed)
        logger.debug("predicted %s in %.3f s", response.predictions[0].label, elapsed)
        return response

    @app.post("/reconstruct", response_class=Response, dependencies=uploads,
              responses={200: {**PNG_RESPONSE, "description": "the reconstruction, image_size x image_size"},
                         **error_responses(400, 408, 413, 415, 422, 503, 504)})
    async def reconstruct(request: Request, file: ImageUpload) -> Response:
        """The VAE's reconstruction of one image: decoder(encoder mean), as a PNG at the VAE's size.

        The upload is checked and preprocessed exactly as for /predict, at the VAE's image size.
        """
        service = current_service(request)
        data = await read_upload(service, file)
        start, until = time.perf_counter(), deadline(service)
        image = await decoded(service, "reconstruct", service.vae.decode_request, data, until)
        reconstruction = await service.worker.infer("reconstruct", service.vae.reconstruct, image, until)
        png = await in_pool(service, to_png, reconstruction[0])
        RECONSTRUCTION_SECONDS.observe(time.perf_counter() - start)
        return Response(png, media_type="image/png")

    @app.post("/generate", response_model=GenerateResponse,
              responses={200: {**PNG_RESPONSE, "headers": SEED_HEADER,
                               "description": "a PNG grid of the samples (format=png), or each sample "
                                              "as a base64 PNG (format=json)"},
                         **error_responses(422, 503, 504)})
    async def generate(
        request: Request,
        n: Annotated[int, Query(ge=1, le=MAX_SAMPLES, description=f"how many samples, 1 to {MAX_SAMPLES}")
                     ] = DEFAULT_SAMPLES,
        seed: Annotated[int | None, Query(ge=0, le=MAX_SEED, description="the same seed gives the same "
                                          "bytes; random (and returned in X-Seed) when omitted")] = None,
        output_format: Annotated[Literal["png", "json"], Query(
            alias="format", description="png: one grid, ceil(sqrt(n)) samples per row, 2-pixel padding; "
                                        "json: {seed, images: [base64 PNG, ...]}")] = "png",
    ) -> Any:
        """New images from the VAE's decoder, with latents drawn from the prior N(0, I)."""
        service = current_service(request)
        start, until = time.perf_counter(), deadline(service)
        seed = service.vae.seed_or_random(seed)
        images = []
        # One chunk of at most max_batch samples at a time: requests queued meanwhile run in between.
        for latents in service.vae.latents(n, seed).split(service.settings.max_batch):
            images.append(await service.worker.infer("generate", service.vae.decode, latents, until))
        body = await in_pool(service, service.vae.encode_samples, torch.cat(images), seed,
                             output_format == "json")
        GENERATION_SECONDS.observe(time.perf_counter() - start)
        GENERATED_SAMPLES.inc(n)
        headers = {"X-Seed": str(seed)}
        if isinstance(body, GenerateResponse):
            return Response(body.model_dump_json(), media_type="application/json", headers=headers)
        return Response(body, media_type="image/png", headers=headers)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def index() -> FileResponse:
        """The web page: classify a photo, browse samples."""
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return metrics_response()

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    return app


app = create_app()
