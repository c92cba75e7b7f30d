"""ONNX Runtime against the optimize stage's FX int8, side by side in one process.

    pip install -r requirements-bench.txt
    python -m benchmarks.onnx_int8 [--image-size 224] [--calls 8]

The model is the project's ResNet18 (102 classes, random weights; batch-norm statistics from a few
training-mode passes over random images), as ``ExportedClassifier`` serves it. Candidates, each
timed at batch 1 and 16 on 1 and on 2 torch / ONNX Runtime threads as the optimize stage times
its candidates (``images_per_second``: the median of ``--calls`` calls, the candidates taking turns):

- ``torch fp32``: the eager network;
- ``torch FX int8``: ``flowerlab.classifier.optimize.int8_classifier``, traced and frozen as the
  optimize stage serves it;
- ``ort fp32``: the network exported with ``torch.onnx.export``;
- ``ort int8 ...``: that file quantized by ``onnxruntime.quantization.quantize_static`` (per
  channel), in the QDQ and QOperator formats, with int8 or uint8 weights.

Both int8 flows are calibrated on the same random images. It also prints each candidate's
largest logit difference from fp32 and its top-1 agreement with fp32 on one batch.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from flowerlab.classifier.network import ExportedClassifier, ImageClassifier
from flowerlab.classifier.optimize import frozen_script, images_per_second, int8_classifier
from flowerlab.hardware import cpu_model

CLASSES = 102


def onnx_candidates(model: torch.nn.Module, calibration: list[torch.Tensor], directory: Path,
                    example: torch.Tensor) -> dict[str, Path]:
    """fp32 ONNX of ``model`` and its static int8 variants, written under ``directory``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32 = directory / "fp32.onnx"
    torch.onnx.export(model, (example,), fp32, input_names=["images"], output_names=["logits", "features"],
                      dynamic_axes={"images": {0: "n"}, "logits": {0: "n"}, "features": {0: "n"}},
                      dynamo=False)
    prepared = directory / "prepared.onnx"
    quant_pre_process(str(fp32), str(prepared))

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"images": batch.numpy()} for batch in calibration])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    files = {"ort fp32": fp32}
    for name, quant_format, weights in (("QDQ int8 weights", QuantFormat.QDQ, QuantType.QInt8),
                                        ("QOperator int8 weights", QuantFormat.QOperator, QuantType.QInt8),
                                        ("QDQ uint8 weights", QuantFormat.QDQ, QuantType.QUInt8)):
        path = directory / f"{name.replace(' ', '_')}.onnx"
        quantize_static(str(prepared), str(path), Batches(), quant_format=quant_format, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=weights)
        files[f"ort int8 {name}"] = path
    return files


def ort_session(path: Path, threads: int) -> Callable[[torch.Tensor], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda images: session.run(["logits"], {"images": images.numpy()})[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--calls", type=int, default=8,
                        help="timed calls per candidate, batch and thread count")
    args = parser.parse_args(argv)
    import onnxruntime

    size = args.image_size
    torch.manual_seed(0)
    classifier = ImageClassifier(CLASSES)
    with torch.no_grad():  # batch-norm statistics other than the initial 0 and 1
        classifier.train()
        for _ in range(3):
            classifier(torch.rand(8, 3, size, size))
    classifier.eval()
    exported = ExportedClassifier(classifier).eval()
    calibration = [torch.rand(8, 3, size, size) for _ in range(4)]
    pixels = torch.randint(0, 256, (16, 3, size, size), dtype=torch.uint8)  # timed as uint8 / 255
    sixteen = pixels.float() / 255
    fx_int8 = frozen_script(int8_classifier(classifier, calibration), sixteen[:1])
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; "
          f"ResNet18, {CLASSES} classes, {size} px")
    with tempfile.TemporaryDirectory(prefix="onnx_int8_") as directory:
        files = onnx_candidates(exported, calibration, Path(directory), sixteen)
        with torch.inference_mode():
            reference = exported(sixteen)[0].numpy()
        for threads in (1, 2):
            torch.set_num_threads(threads)
            modules: dict[str, Callable] = {"torch fp32": lambda x: exported(x)[0],
                                            "torch FX int8": lambda x: fx_int8(x)[0]}
            modules |= {name: ort_session(path, threads) for name, path in files.items()}
            for batch in (1, 16):
                for name, speed in images_per_second(modules, pixels, batch, args.calls).items():
                    print(f"threads {threads}  batch {batch:2d}  {name:30s} {1000 * batch / speed:8.2f} ms "
                          f"{speed:7.1f} images/s", flush=True)
            if threads == 1:
                with torch.inference_mode():
                    for name, module in modules.items():
                        logits = np.asarray(module(sixteen))
                        agree = (logits.argmax(1) == reference.argmax(1)).mean()
                        print(f"  {name:30s} max |logit - fp32| {np.abs(logits - reference).max():.4f}, "
                              f"top-1 agrees with fp32 on {agree:.2f}")


if __name__ == "__main__":
    main()
