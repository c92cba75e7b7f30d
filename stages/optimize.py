"""optimize: the fastest inference artifact of the trained classifier that keeps its val accuracy."""

from flowerlab import paths
from flowerlab.classifier.network import network_of
from flowerlab.classifier.optimize import (
    TIMED_BATCHES,
    build_candidates,
    calibration_indices,
    choose_artifact,
    measure,
    optimize_report,
)
from flowerlab.cli import run_stage
from flowerlab.config import load_params
from flowerlab.data.split import load_split
from flowerlab.data.store import load_prepared
from flowerlab.export import ClassifierMeta, ServedClassifierMeta, load_model, save_scripted
from flowerlab.files import write_json
from flowerlab.hardware import cpu_flags, cpu_model


def main() -> None:
    params = load_params(paths.PARAMS)
    exported, meta = load_model(paths.CLASSIFIER, ClassifierMeta)
    net = network_of(exported, len(meta.classes))  # the eager network, with the exported weights
    data, split = load_prepared(paths.PREPARED_DIR), load_split(paths.SPLIT_FILE)
    picked = calibration_indices(split["train"], params.optimize.calibration_images)
    calibration = (data.tensors(picked)[0].float() / 255).split(32)  # the eval transform: uint8 / 255
    candidates, skipped = build_candidates(exported, net, calibration, cpu_flags())
    measured = measure(candidates, *data.tensors(split["val"]))
    chosen, reason = choose_artifact(measured, params.optimize.max_accuracy_drop, TIMED_BATCHES[-1])

    served = ServedClassifierMeta(**meta.model_dump(), artifact=chosen,
                                  requires_cpu_flags=candidates[chosen].requires_cpu_flags)
    save_scripted(candidates[chosen].script(), paths.CLASSIFIER_SERVED, served)
    report = optimize_report(measured, chosen, reason, skipped)
    write_json(paths.OPTIMIZE_METRICS, {**report, "cpu": cpu_model()})
    for name, row in report["candidates"].items():
        print(f"{name}: val accuracy {row['val_accuracy']:.4f}, " + ", ".join(
            f"batch {b} {row[f'images_per_s_batch{b}']:.0f} img/s ({row[f'speedup_batch{b}']:.2f}x)"
            for b in TIMED_BATCHES))
    for name, why in skipped.items():
        print(f"{name}: not built ({why})")
    print(f"wrote {paths.CLASSIFIER_SERVED}: {reason}")


if __name__ == "__main__":
    run_stage("optimize", main)
