"""The /predict path as it was before the inference worker, for benchmarks/serve_load.py: a sync
endpoint (Starlette runs it in its default thread pool, up to 40 threads at once) that decodes the
upload with the service's decoder and runs the exported classifier on that one image. No batching,
no queue bound; torch keeps its default thread count, as the service did then.

    FLOWERLAB_ROOT=ROOT uvicorn benchmarks.naive_server:app
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import torch
from fastapi import FastAPI, File, Request, UploadFile

from serve.predictor import ClassifierPredictor
from serve.registry import CLASSIFIER, load_artifacts
from serve.rejections import InputRejected, handle_input_rejected
from serve.schemas import PredictResponse
from serve.settings import ServeSettings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = ServeSettings()
    loaded = load_artifacts(settings.root, (CLASSIFIER,))[CLASSIFIER.name]  # verified against dvc.lock
    app.state.predictor = ClassifierPredictor(loaded, settings.max_pixels)
    yield


app = FastAPI(title="flowerlab naive /predict", lifespan=lifespan)
app.add_exception_handler(InputRejected, handle_input_rejected)


@app.get("/ready")
def ready(request: Request) -> dict:
    predictor: ClassifierPredictor = request.app.state.predictor
    return {"image_size": predictor.image_size, "torch_threads": torch.get_num_threads()}


@app.post("/predict", response_model=PredictResponse)
def predict(request: Request, file: Annotated[UploadFile, File()], k: int = 5) -> PredictResponse:
    predictor: ClassifierPredictor = request.app.state.predictor
    image = predictor.decode_request(file.file.read())
    probabilities = predictor.predict(image.unsqueeze(0))
    return predictor.encode_response(probabilities[0], min(k, predictor.num_classes))
