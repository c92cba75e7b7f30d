"""train: fine-tune ResNet18 with Lightning, log with dvclive, export the model to models/ (the last
epoch's or the best val/acc epoch's weights: ``train.export``)."""

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping

from flowerlab import paths
from flowerlab.classifier.module import FlowerClassifier, FreezeBackbone
from flowerlab.classifier.network import IMAGENET_MEAN, IMAGENET_STD, ExportedClassifier, ImageClassifier
from flowerlab.cli import run_stage
from flowerlab.config import load_params
from flowerlab.data.datamodule import FlowerData
from flowerlab.data.transforms import choose_augmentation, choose_progressive, describe, progressive_size
from flowerlab.export import ClassifierMeta, export_program
from flowerlab.hardware import choose_channels_last, choose_precision
from flowerlab.trainer import checkpoints, exported_checkpoint, make_trainer, require_finite, resume_from


def main() -> None:
    params = load_params(paths.PARAMS)
    train = params.train
    L.seed_everything(params.seed, workers=True)
    size = params.data.image_size
    preset, augmentation = choose_augmentation(train.augment, size, crop_scale_min=train.crop_scale_min,
                                               trivial_augment=train.trivial_augment,
                                               random_erasing=train.random_erasing, mix=train.mix)
    progressive, progressive_why = choose_progressive(train.progressive_resize, size)
    if progressive:
        progressive_why += f": {progressive_size(0, params.epochs, size)} px to {size} px"
    data = FlowerData(paths.PREPARED_DIR, paths.SPLIT_FILE, params.batch_size, train.num_workers,
                      augmentation, progressive_epochs=params.epochs if progressive else None)
    data.setup()
    num_classes = len(data.data.classes)
    net = ImageClassifier(num_classes, params.model.pretrained, params.model.weights_path)
    pretrained = params.model.pretrained  # fine-tuning: a slower backbone, frozen at first
    precision = choose_precision(train.precision, train.accelerator, image_size=size)
    channels_last, why = choose_channels_last(train.channels_last, precision[0], train.accelerator)
    model = FlowerClassifier(net, num_classes, params.lr, train.weight_decay, train.label_smoothing,
                             train.warmup_epochs, channels_last,
                             params.model.backbone_lr_scale if pretrained else 1.0)
    checkpoint, last = checkpoints(paths.CLASSIFIER_CHECKPOINTS, monitor="val/acc", mode="max")
    trainer = make_trainer(train, params.epochs, paths.TRAIN_LOG_DIR,
                           [checkpoint, last, EarlyStopping("val/acc", mode="max", patience=train.patience),
                            *([FreezeBackbone(params.model.freeze_epochs)] if pretrained else [])],
                           name="train", image_size=size, precision=precision, reload_train_data=progressive,
                           choices={"channels_last": f"{channels_last} ({why})",
                                    "augment": describe(preset, augmentation),
                                    "progressive_resize": f"{progressive} ({progressive_why})",
                                    "batch_size": f"{data.batch_size} "
                                                  f"({'set' if params.batch_size else 'auto'})"})
    # Last, once every setting has been checked: a bad one must not cost the last run's checkpoints.
    resume = resume_from(paths.CLASSIFIER_CHECKPOINTS, train.resume, params.epochs, trainer.is_global_zero)
    trainer.fit(model, datamodule=data, ckpt_path=resume)

    if trainer.is_global_zero:
        path, weights = exported_checkpoint(train.export, checkpoint, last)
        chosen = FlowerClassifier.load_from_checkpoint(path, map_location="cpu",
                                                       net=ImageClassifier(num_classes))
        require_finite(chosen.net, "train", "lr")
        meta = ClassifierMeta(architecture="resnet18", classes=data.data.classes, image_size=size,
                              source=data.data.source, best_val_acc=float(checkpoint.best_model_score),
                              weights=weights,
                              normalisation={"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "built_in": True})
        export_program(ExportedClassifier(chosen.net.float()).to(memory_format=torch.contiguous_format),
                       torch.rand(2, 3, size, size), paths.CLASSIFIER, meta)
        print(f"exported {paths.CLASSIFIER}: {weights} weights (best val/acc {meta.best_val_acc:.4f})")


if __name__ == "__main__":
    run_stage("train", main)
