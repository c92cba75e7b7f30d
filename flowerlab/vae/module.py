"""The LightningModule that trains an injected :class:`ConvVAE`: loss terms, schedule, progress images."""

from __future__ import annotations

import lightning as L
import torch
from dvclive.lightning import DVCLiveLogger
from torchmetrics import MeanMetric, MinMetric

from flowerlab.imaging import image_grid, paired_grid
from flowerlab.vae.network import ConvVAE


class VaeModule(L.LightningModule):
    """Trains ``vae``; logs ``{train,val}/{loss,recon,kl}`` per epoch, and each epoch, to a
    DVCLiveLogger, the first val images beside their reconstructions and a grid of samples from
    fixed noise."""

    def __init__(self, vae: ConvVAE, lr: float, plateau_patience: int = 2, seed: int = 0,
                 preview: int = 16, num_samples: int = 64):
        super().__init__()
        self.save_hyperparameters(ignore=["vae"])
        self.vae = vae
        noise = torch.randn(num_samples, vae.latent_dim, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("sample_noise", noise, persistent=False)
        self.val_loss = MeanMetric()
        self.val_loss_best = MinMetric()
        self.preview_images: torch.Tensor | None = None

    def _terms(self, images: torch.Tensor, split: str) -> dict[str, torch.Tensor]:
        recons, mu, logvar = self.vae(images)
        terms = self.vae.loss_function(recons, images, mu, logvar)
        for name, value in terms.items():
            self.log(f"{split}/{name}", value, on_step=False, on_epoch=True,
                     prog_bar=name == "loss", batch_size=len(images))
        return terms

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._terms(batch[0], "train")["loss"]

    def validation_step(self, batch, batch_idx: int) -> None:
        images = batch[0]
        if batch_idx == 0 and self.preview_images is None:  # the val loader does not shuffle
            self.preview_images = images[: self.hparams.preview].clone()
        self.val_loss.update(self._terms(images, "val")["loss"], weight=len(images))

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        if self.trainer.sanity_checking:
            return
        self.val_loss_best(loss)
        self.log("val/loss_best", self.val_loss_best.compute())
        if isinstance(self.logger, DVCLiveLogger) and self.trainer.is_global_zero:
            # Fixed names: dvclive overwrites them each epoch, so the plots show the latest epoch.
            live = self.logger.experiment
            live.log_image("reconstructions.png",
                           paired_grid(self.preview_images, self.vae.generate(self.preview_images)))
            live.log_image("samples.png", image_grid(self.vae.decode(self.sample_noise)))

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.vae.parameters(), lr=self.hparams.lr)
        schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=0.5, patience=self.hparams.plateau_patience)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": schedule, "monitor": "val/loss", "interval": "epoch"}}
