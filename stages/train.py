"""train: fine-tune ResNet18 with Lightning, log with dvclive, export the best model to models/."""

from pathlib import Path

import lightning as L
import torch
from dvclive.lightning import DVCLiveLogger
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

from flowerlab import paths
from flowerlab.cli import run_stage
from flowerlab.config import load_params
from flowerlab.data import FlowerData
from flowerlab.export import export_program
from flowerlab.model import IMAGENET_MEAN, IMAGENET_STD, ExportedClassifier
from flowerlab.training import FlowerClassifier
from flowerlab.transforms import train_transform


def main() -> None:
    params = load_params(paths.PARAMS)
    train = params.train
    L.seed_everything(params.seed, workers=True)
    data = FlowerData(paths.PREPARED_DIR, paths.SPLIT_FILE, params.batch_size, train.num_workers,
                      train_transform(params.data.image_size, train.crop_scale_min,
                                      train.trivial_augment, train.random_erasing))
    data.setup()
    model = FlowerClassifier(len(data.data.classes), params.lr, train.weight_decay,
                             train.label_smoothing, train.warmup_epochs, params.model.pretrained,
                             params.model.weights_path, train.channels_last)
    checkpoint = ModelCheckpoint(dirpath=paths.CLASSIFIER_CHECKPOINTS, filename="best",
                                 monitor="val/acc", mode="max", save_top_k=1,
                                 save_weights_only=True)
    trainer = L.Trainer(
        max_epochs=params.epochs, accelerator=train.accelerator, devices=train.devices,
        num_nodes=train.num_nodes, strategy=train.strategy, precision=train.precision,
        deterministic=True, log_every_n_steps=10,
        logger=DVCLiveLogger(dir=paths.TRAIN_LOG_DIR, dvcyaml=False, save_dvc_exp=False),
        callbacks=[checkpoint, LearningRateMonitor("epoch"), TQDMProgressBar(refresh_rate=10),
                   EarlyStopping("val/acc", mode="max", patience=train.patience)])
    trainer.fit(model, datamodule=data)

    if trainer.is_global_zero:
        best = FlowerClassifier.load_from_checkpoint(checkpoint.best_model_path, map_location="cpu")
        size = params.data.image_size
        meta = {"kind": "classifier", "architecture": "resnet18", "classes": data.data.classes,
                "image_size": size, "source": data.data.source,
                "input": "float32 RGB in [0, 1], shape (N, 3, image_size, image_size)",
                "preprocessing": "decode, resize shorter side to image_size, centre crop",
                "normalisation": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "built_in": True},
                "outputs": ["logits", "features"],
                "best_val_acc": float(checkpoint.best_model_score)}
        export_program(ExportedClassifier(best.net.float()).to(memory_format=torch.contiguous_format),
                       torch.rand(2, 3, size, size), Path(paths.CLASSIFIER), meta)
        print(f"exported {paths.CLASSIFIER} (best val/acc {meta['best_val_acc']:.4f})")


if __name__ == "__main__":
    run_stage("train", main)
