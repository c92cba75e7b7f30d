"""The service's classifier artifact behind LitServe's own batching, for benchmarks/serve_load.py.

    python -m benchmarks.litserve_server --root ROOT --port PORT [--workers 1] [--threads N]

Needs ``pip install -r requirements-bench.txt`` (litserve). ``--workers`` inference worker processes
on the CPU (LitServe's default: one), each batching up to 16 requests waiting at most 5 ms, with the
service's decoder, model call and top-k response. It serves the artifact the service picks (the
optimize stage's, or the exported program where this CPU cannot run it:
``serve.predictor.choose_classifier``). Each worker's torch runs on ``--threads`` threads (default:
every CPU of the quota, ``serve.batching.cpu_threads``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import litserve as ls
import torch

from serve.batching import cpu_threads
from serve.predictor import choose_classifier
from serve.registry import CLASSIFIER, load_artifacts
from serve.settings import ServeSettings

MAX_BATCH = 16
BATCH_TIMEOUT_S = 0.005
TOP_K = 5


class ClassifierAPI(ls.LitAPI):
    def __init__(self, root: Path, threads: int) -> None:
        super().__init__(max_batch_size=MAX_BATCH, batch_timeout=BATCH_TIMEOUT_S)
        self.root, self.threads = root, threads

    def setup(self, device: str) -> None:
        torch.set_num_threads(self.threads)
        portable = load_artifacts(self.root, (CLASSIFIER,))[CLASSIFIER.name]  # verified against dvc.lock
        self.predictor, _ = choose_classifier(self.root, portable, ServeSettings().max_pixels, MAX_BATCH)
        print(f"litserve worker: {torch.get_num_threads()} torch threads", flush=True)

    def decode_request(self, request) -> torch.Tensor:
        # A multipart form: the field "file" is a starlette UploadFile.
        return self.predictor.decode_request(request["file"].file.read())

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.predictor.predict(images)

    def unbatch(self, output: torch.Tensor) -> list[torch.Tensor]:
        return list(output)

    def encode_response(self, probabilities: torch.Tensor) -> dict:
        k = min(TOP_K, self.predictor.num_classes)
        return self.predictor.encode_response(probabilities, k).model_dump()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="holds dvc.lock and models/")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1, help="inference worker processes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of each (default: all CPUs)")
    args = parser.parse_args()
    api = ClassifierAPI(args.root.resolve(), args.threads or cpu_threads())
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=args.workers)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
