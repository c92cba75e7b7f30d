"""A small convolutional VAE with the PyTorch-VAE interface, and its two exported halves.

Images are float RGB in [0, 1]; the decoder ends in a Sigmoid so its output has the same range.

Loss scale: every term is a per-image *sum* (over pixels for the reconstruction, over latent
dimensions for the KL), then averaged over the batch. With the ``mse`` loss the reconstruction
term is the sum of squared errors, i.e. the negative log-likelihood of a Gaussian decoder with
fixed variance 1/2 (constant dropped), so ``beta = 1`` is the plain ELBO.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

LOSSES = ("mse", "ssim")


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per image, summed over latent dims (>= 0)."""
    return 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(dim=1)


def reconstruction_loss(recons: torch.Tensor, images: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-image reconstruction loss, summed over pixels: shape (N,).

    ``mse``: sum of squared errors. ``ssim``: each pixel costs its squared error plus
    ``1 - SSIM`` of the image, so the per-image sum is ``SSE + pixels * (1 - SSIM)``; the SSIM
    part keeps edges and texture that MSE alone blurs, and the sum keeps the KL scale.
    """
    sse = (recons - images).square().flatten(1).sum(dim=1)
    if kind == "mse":
        return sse
    if kind == "ssim":
        ssim = structural_similarity_index_measure(recons, images, data_range=1.0, reduction="none")
        return sse + images[0].numel() * (1 - ssim)
    raise ValueError(f"unknown VAE loss {kind!r}; expected one of {LOSSES}")


def _block(conv: nn.Module, channels: int) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(channels), nn.LeakyReLU(0.2)]


class ConvVAE(nn.Module):
    """Three stride-2 conv blocks (width, 2·width, 4·width) down to image_size/8, and mirrored back up."""

    def __init__(self, latent_dim: int = 32, width: int = 32, image_size: int = 32,
                 beta: float = 1.0, loss: str = "mse", channels: int = 3):
        super().__init__()
        if image_size % 8:
            raise ValueError(f"VAE image_size must be a multiple of 8, got {image_size}")
        if loss not in LOSSES:
            raise ValueError(f"unknown VAE loss {loss!r}; expected one of {LOSSES}")
        self.latent_dim, self.image_size, self.beta, self.loss = latent_dim, image_size, beta, loss
        widths = [width, 2 * width, 4 * width]
        self.grid = image_size // 8  # side of the smallest feature map
        flat = widths[-1] * self.grid ** 2
        down, c_in = [], channels
        for c_out in widths:
            down += _block(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), c_out)
            c_in = c_out
        self.encoder = nn.Sequential(*down, nn.Flatten())
        self.fc_mu = nn.Linear(flat, latent_dim)
        self.fc_logvar = nn.Linear(flat, latent_dim)
        self.decoder_input = nn.Linear(latent_dim, flat)
        up = [nn.Unflatten(1, (widths[-1], self.grid, self.grid))]  # keeps the batch dim dynamic
        for c_in, c_out in zip(widths[:0:-1], widths[-2::-1]):
            up += _block(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), c_out)
        # Straight to RGB at full resolution: a hidden full-resolution layer would cost more than the rest.
        self.decoder = nn.Sequential(*up, nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1),
                                     nn.Sigmoid())

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N, 3, S, S) in [0, 1] -> posterior mean and log-variance, each (N, latent_dim)."""
        hidden = self.encoder(images)
        return self.fc_mu(hidden), self.fc_logvar(hidden)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, latent_dim) -> images (N, 3, S, S) in [0, 1]."""
        return self.decoder(self.decoder_input(z))

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + noise * (0.5 * logvar).exp()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One posterior sample per image: (reconstructions, mu, logvar)."""
        mu, logvar = self.encode(images)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar

    def loss_function(self, recons: torch.Tensor, images: torch.Tensor, mu: torch.Tensor,
                      logvar: torch.Tensor) -> dict[str, torch.Tensor]:
        """Batch means of the per-image terms: ``loss = recon + beta * kl``."""
        recon = reconstruction_loss(recons, images, self.loss).mean()
        kl = kl_divergence(mu, logvar).mean()
        return {"loss": recon + self.beta * kl, "recon": recon, "kl": kl}

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode ``num_samples`` draws from the prior N(0, I); seeded by ``generator``."""
        device = self.decoder_input.weight.device
        z = torch.randn(num_samples, self.latent_dim, generator=generator,
                        device=generator.device if generator else device)
        return self.decode(z.to(device))

    def generate(self, images: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction: decode the posterior mean."""
        return self.decode(self.encode(images)[0])


class VaeEncoder(nn.Module):
    """Exported encoder: images (N, 3, S, S) in [0, 1] -> (mu, logvar)."""

    def __init__(self, vae: ConvVAE):
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vae.encode(images)


class VaeDecoder(nn.Module):
    """Exported decoder: latents (N, latent_dim) -> images (N, 3, S, S) in [0, 1]."""

    def __init__(self, vae: ConvVAE):
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z)
