"""evaluate: run the test split through the exported model and the served artifact; write metrics and
DVC plots (plots of the exported model)."""

from pathlib import Path

import torch
from torchvision.transforms.v2.functional import to_pil_image

from flowerlab import paths
from flowerlab.classifier.evaluation import classification_metrics, per_class_accuracy
from flowerlab.cli import run_stage
from flowerlab.config import load_params
from flowerlab.data.split import load_split
from flowerlab.data.store import load_prepared
from flowerlab.drift import build_reference, reference_indices, write_reference
from flowerlab.export import ClassifierMeta, load_model, load_scripted
from flowerlab.files import write_json
from flowerlab.inference import predict_batches


def main() -> None:
    params = load_params(paths.PARAMS)
    module, meta = load_model(paths.CLASSIFIER, ClassifierMeta)
    data = load_prepared(paths.PREPARED_DIR)
    split = load_split(paths.SPLIT_FILE)
    images, labels = data.tensors(split["test"])
    logits, _ = predict_batches(module, images, params.evaluate.batch_size)
    metrics = classification_metrics(logits, labels)
    served, served_meta = load_scripted(paths.CLASSIFIER_SERVED)
    served_logits, _ = predict_batches(served, images, params.evaluate.batch_size)
    served_metrics = classification_metrics(served_logits, labels)
    served_metrics.pop("samples")
    write_json(paths.EVALUATE_METRICS, {**metrics, "served": served_metrics})
    # The reference the service's drift monitor compares requests with: training images' colours
    # and the served model's confidence on validation images.
    train_images, _ = data.tensors(reference_indices(split["train"]))
    val_logits, _ = predict_batches(served, data.tensors(split["val"])[0], params.evaluate.batch_size)
    reference = build_reference(train_images.numpy(), val_logits.softmax(dim=1).numpy())
    write_reference(paths.DRIFT_REFERENCE, reference)

    classes = meta.classes
    predicted = logits.argmax(dim=1)
    plots = Path(paths.EVALUATE_PLOTS) / "plots"
    write_json(plots / "confusion.json", [{"actual": classes[a], "predicted": classes[p]}
                                          for a, p in zip(labels.tolist(), predicted.tolist())])
    write_json(plots / "per_class.json", per_class_accuracy(logits, labels, classes))
    # Image plots, where dvclive's log_image would put them; dvclive itself would also leave an
    # undeclared empty metrics.json.
    misclassified = plots / "images" / "misclassified"
    misclassified.mkdir(parents=True, exist_ok=True)
    wrong = torch.nonzero(predicted != labels).flatten()[: params.evaluate.misclassified_images]
    for i in wrong.tolist():
        name = f"{i:04d}_{classes[labels[i]]}_as_{classes[predicted[i]]}.png"
        to_pil_image(images[i]).save(misclassified / name.replace(" ", "_"))
    print(", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    print(f"served ({served_meta['artifact']}): "
          + ", ".join(f"{k}={v:.4f}" for k, v in served_metrics.items()))


if __name__ == "__main__":
    run_stage("evaluate", main)
