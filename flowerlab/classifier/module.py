"""The LightningModule that trains an injected classifier network: loss, metrics, optimiser, schedule.

The network comes in built (see :func:`flowerlab.classifier.network.ImageClassifier`), so restoring a
checkpoint builds a plain network of the right shape and loads the weights into it: it never
fetches pretrained weights only to overwrite them.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from flowerlab.classifier.small_maps import use_gemm_weight_grad


def param_groups(model: nn.Module, weight_decay: float, lr: float | None = None) -> list[dict]:
    """No weight decay on norm layers and biases (one-dimensional parameters); ``lr`` for both
    groups where given. Frozen parameters are included: AdamW skips them until they get gradients."""
    lr_setting = {} if lr is None else {"lr": lr}
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay, **lr_setting},
            {"params": no_decay, "weight_decay": 0.0, **lr_setting}]


class FreezeBackbone(BaseFinetuning):
    """Fine-tuning pretrained weights: the backbone (batch-norm statistics included) stays frozen
    for the first ``epochs`` epochs, so the new head learns before the features move."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        if self.epochs > 0:
            self.freeze(pl_module.net.backbone, train_bn=False)

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer) -> None:
        if epoch == self.epochs:  # its parameters are in the optimizer already, at their own lr
            self.make_trainable(pl_module.net.backbone)


def match_state_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Gives each optimizer state tensor its parameter's memory layout. Fused AdamW on CPU steps
    raw memory and checks no strides (CUDA's raises): state restored from a checkpoint in another
    layout (``train.channels_last`` changed, or ``precision: auto`` chose differently on another
    machine) would be updated element against the wrong element. Registered as a load-state hook."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if (torch.is_tensor(value) and value.shape == param.shape
                        and value.stride() != param.stride()):
                    optimizer.state[param][key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def warmup_cosine(total_steps: int, warmup_steps: int):
    """Linear warm-up, then cosine decay to zero, as a LambdaLR factor."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


class FlowerClassifier(L.LightningModule):
    """Trains ``net`` (images in [0, 1] -> logits); logs loss, accuracy and ``val/acc_best``.
    ``backbone_lr_scale`` < 1 gives ``net.backbone`` that fraction of ``lr`` (for pretrained
    weights); the head keeps ``lr``."""

    def __init__(self, net: nn.Module, num_classes: int, lr: float, weight_decay: float = 0.05,
                 label_smoothing: float = 0.1, warmup_epochs: int = 1, channels_last: bool = True,
                 backbone_lr_scale: float = 1.0):
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        use_gemm_weight_grad(self.net)  # CPU: fp32 on 1x1/2x2 maps, bf16 up to 8x8: see small_maps
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.loss = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc_best = MaxMetric()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch  # labels: class ids, or class probabilities after CutMix / MixUp
        logits = self(images)
        loss = self.loss(logits, labels)
        self.train_acc(logits, labels if labels.ndim == 1 else labels.argmax(dim=1))
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.val_acc(logits, labels)
        self.log("val/loss", self.loss(logits, labels), on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute())

    def configure_optimizers(self):
        lr, decay, scale = self.hparams.lr, self.hparams.weight_decay, self.hparams.backbone_lr_scale
        groups = (param_groups(self.net, decay) if scale == 1 else
                  param_groups(self.net.backbone, decay, lr * scale) + param_groups(self.net.head, decay, lr))
        optimizer = torch.optim.AdamW(groups, lr=lr, fused=True)  # one kernel: 8% a step at 32 px
        optimizer.register_load_state_dict_post_hook(match_state_layouts)  # on train.resume
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max(1, self.trainer.max_epochs))
        warmup = min(total // 2, self.hparams.warmup_epochs * per_epoch)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
