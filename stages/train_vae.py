"""train_vae: train the convolutional VAE with Lightning, log with dvclive, export its two halves."""

from pathlib import Path

import lightning as L
import torch
from dvclive.lightning import DVCLiveLogger
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

from flowerlab import paths
from flowerlab.cli import run_stage
from flowerlab.config import load_params
from flowerlab.data import FlowerData
from flowerlab.export import export_program
from flowerlab.transforms import vae_transform
from flowerlab.vae import VaeDecoder, VaeEncoder
from flowerlab.vae_training import VAETrainer


def main() -> None:
    params = load_params(paths.PARAMS)
    vae = params.vae
    L.seed_everything(params.seed, workers=True)
    transform = vae_transform(vae.image_size)
    data = FlowerData(paths.PREPARED_DIR, paths.SPLIT_FILE, vae.batch_size,
                      train_transform=transform, val_transform=transform)
    data.setup()
    model = VAETrainer(vae.latent_dim, vae.width, vae.image_size, vae.beta, vae.loss.value, vae.lr,
                       plateau_patience=max(1, vae.patience // 2), seed=params.seed)
    checkpoint = ModelCheckpoint(dirpath=paths.VAE_CHECKPOINTS, filename="best", monitor="val/loss",
                                 mode="min", save_top_k=1, enable_version_counter=False,
                                 save_weights_only=True)
    trainer = L.Trainer(
        max_epochs=vae.epochs, accelerator="auto", devices=1, deterministic=True, log_every_n_steps=10,
        logger=DVCLiveLogger(dir=paths.VAE_TRAIN_LOG_DIR, dvcyaml=False, save_dvc_exp=False),
        callbacks=[checkpoint, LearningRateMonitor("epoch"),
                   EarlyStopping("val/loss", mode="min", patience=vae.patience)])
    trainer.fit(model, datamodule=data)

    best = VAETrainer.load_from_checkpoint(checkpoint.best_model_path, map_location="cpu").vae
    size, latent = vae.image_size, vae.latent_dim
    meta = {"architecture": "conv-vae", "latent_dim": latent, "width": vae.width,
            "image_size": size, "beta": vae.beta, "loss": vae.loss.value, "prior": "N(0, I)",
            "num_classes": len(data.data.classes), "source": data.data.source,
            "loss_scale": "per-image sums (pixels, latent dims), averaged over the batch",
            "best_val_loss": float(checkpoint.best_model_score)}
    images = f"float32 RGB in [0, 1], shape (N, 3, {size}, {size})"
    export_program(VaeEncoder(best), torch.rand(2, 3, size, size), Path(paths.VAE_ENCODER),
                   {**meta, "kind": "vae_encoder", "input": images, "outputs": ["mu", "logvar"]})
    export_program(VaeDecoder(best), torch.randn(2, latent), Path(paths.VAE_DECODER),
                   {**meta, "kind": "vae_decoder", "input": f"float32 latents, shape (N, {latent})",
                    "output": images})
    print(f"exported {paths.VAE_ENCODER} and {paths.VAE_DECODER} "
          f"(best val/loss {meta['best_val_loss']:.2f})")


if __name__ == "__main__":
    run_stage("train_vae", main)
