"""Metrics and figures for the VAE: reconstruction quality, ELBO, and classifier-based sample scores."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.image import PeakSignalNoiseRatio
from torchmetrics.image import StructuralSimilarityIndexMeasure as SSIM

# Imported from its module: torchmetrics.image exports it only when torch-fidelity is installed,
# which only its built-in Inception extractor needs.
from torchmetrics.image.fid import FrechetInceptionDistance


class PrecomputedFeatures(nn.Module):
    """Identity "feature extractor" so torchmetrics' FID runs on features we already have."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) and (M, D).

    ``|mu_r - mu_f|^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2))``, computed in float64 by torchmetrics'
    FrechetInceptionDistance with the features passed straight through (no Inception weights).
    """
    metric = FrechetInceptionDistance(feature=PrecomputedFeatures(real.shape[1]), normalize=True)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def reconstruction_metrics(images: torch.Tensor, recons: torch.Tensor) -> dict[str, float]:
    """Mean squared error per pixel, PSNR (dB) and SSIM of reconstructions, all for range [0, 1]."""
    return {"mse": float((recons - images).square().mean()),
            "psnr": float(PeakSignalNoiseRatio(data_range=1.0)(recons, images)),
            "ssim": float(SSIM(data_range=1.0)(recons, images))}


def high_frequency_energy(images: torch.Tensor) -> float:
    """Mean squared response of a 3x3 Laplacian on the luma of images in [0, 1]: how much fine
    detail (edges, texture) they hold. Blur lowers it; the ratio of samples' to real images' energy
    says how blurry samples are without any network's opinion."""
    luma = (images * images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    kernel = images.new_tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    return float(torch.nn.functional.conv2d(luma, kernel).square().mean())


def negative_elbo_per_pixel(recon_sse: torch.Tensor, kl: torch.Tensor, dims: int) -> float:
    """Mean negative ELBO (nats) per image dimension (3·H·W values): ``(SSE + KL) / dims``.

    The likelihood is the training one for ``loss: mse`` and ``beta = 1``: a Gaussian decoder with
    fixed variance 1/2, whose constant 0.5·log(pi) ≈ 0.572 nats per dimension is dropped.
    """
    return float((recon_sse + kl).mean() / dims)


def classifier_scores(logits: torch.Tensor) -> dict[str, float]:
    """How the classifier sees samples: mean top-1 probability, fraction of classes predicted."""
    probs = logits.softmax(dim=1)
    return {"classifier_confidence": float(probs.max(dim=1).values.mean()),
            "class_coverage": probs.argmax(dim=1).unique().numel() / logits.shape[1]}
