"""train_vae: train the convolutional VAE with Lightning, log with dvclive, export its two halves."""

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from flowerlab import paths
from flowerlab.cli import run_stage
from flowerlab.config import load_params
from flowerlab.data.datamodule import FlowerData
from flowerlab.data.transforms import vae_transform
from flowerlab.export import VaeMeta, export_program, image_input
from flowerlab.trainer import diverged, make_trainer, require_finite
from flowerlab.vae.module import VaeModule
from flowerlab.vae.network import ConvVAE, VaeDecoder, VaeEncoder


def main() -> None:
    params = load_params(paths.PARAMS)
    vae = params.vae
    L.seed_everything(params.seed, workers=True)
    transform = vae_transform(vae.image_size)
    data = FlowerData(paths.PREPARED_DIR, paths.SPLIT_FILE, vae.batch_size,
                      train_transform=transform, val_transform=transform)
    data.setup()
    network = ConvVAE(vae.latent_dim, vae.width, vae.image_size, vae.beta, vae.loss.value)
    model = VaeModule(network, vae.lr, plateau_patience=max(1, vae.patience // 2), seed=params.seed)
    checkpoint = ModelCheckpoint(dirpath=paths.VAE_CHECKPOINTS, filename="best", monitor="val/loss",
                                 mode="min", save_top_k=1, enable_version_counter=False,
                                 save_weights_only=True)
    stored = data.data.image_size
    upsampled = ": upsampled, set data.image_size to at least vae.image_size for their full detail"
    trainer = make_trainer(params.train, vae.epochs, paths.VAE_TRAIN_LOG_DIR,
                           [checkpoint, EarlyStopping("val/loss", mode="min", patience=vae.patience)],
                           name="train_vae", image_size=vae.image_size,
                           choices={"image_size": f"{vae.image_size} px, from {stored}-px prepared images"
                                                  f"{upsampled if vae.image_size > stored else ''}"})
    trainer.fit(model, datamodule=data)

    if trainer.is_global_zero:
        if not checkpoint.best_model_path:  # no finite val/loss in any epoch
            raise diverged("no epoch had a finite val/loss", "train_vae", "vae.lr")
        best = VaeModule.load_from_checkpoint(
            checkpoint.best_model_path, map_location="cpu",
            vae=ConvVAE(vae.latent_dim, vae.width, vae.image_size, vae.beta, vae.loss.value)).vae
        require_finite(best, "train_vae", "vae.lr")
        size, latent = vae.image_size, vae.latent_dim
        meta = dict(architecture="conv-vae", latent_dim=latent, width=vae.width, image_size=size,
                    beta=vae.beta, loss=vae.loss.value, num_classes=len(data.data.classes),
                    source=data.data.source, best_val_loss=float(checkpoint.best_model_score))
        export_program(VaeEncoder(best), torch.rand(2, 3, size, size), paths.VAE_ENCODER,
                       VaeMeta(kind="vae_encoder", input=image_input(size), outputs=["mu", "logvar"], **meta))
        export_program(VaeDecoder(best), torch.randn(2, latent), paths.VAE_DECODER,
                       VaeMeta(kind="vae_decoder", input=f"float32 latents, shape (N, {latent})",
                               output=image_input(size), **meta))
        print(f"exported {paths.VAE_ENCODER} and {paths.VAE_DECODER} "
              f"(best val/loss {meta['best_val_loss']:.2f})")


if __name__ == "__main__":
    run_stage("train_vae", main)
