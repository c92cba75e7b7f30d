"""evaluate_vae: reconstruction and ELBO on the test split, and sample quality judged by the
project's own classifier (no downloaded weights); writes metrics/vae.json and image plots.

``elbo_per_pixel`` is always under the Gaussian (``mse``) likelihood with beta = 1, so it compares
across ``vae.loss`` and ``vae.beta`` settings; the reconstructions that ``mse``, ``psnr`` and
``ssim`` score decode the posterior mean, while the ELBO uses one seeded posterior sample.
"""

from pathlib import Path

import torch
from torchvision.transforms.v2.functional import resize

from flowerlab import paths
from flowerlab.cli import run_stage
from flowerlab.config import load_params
from flowerlab.data.split import load_split
from flowerlab.data.store import load_prepared
from flowerlab.data.transforms import vae_transform
from flowerlab.export import ClassifierMeta, VaeMeta, load_model
from flowerlab.files import write_json
from flowerlab.imaging import image_grid, paired_grid, to_uint8
from flowerlab.inference import predict_batches, run_batches
from flowerlab.vae.metrics import (
    classifier_scores,
    frechet_distance,
    high_frequency_energy,
    negative_elbo_per_pixel,
    reconstruction_metrics,
)
from flowerlab.vae.network import ConvVAE, kl_divergence

MAX_SAMPLES = 2048  # samples scored by the classifier: as many as test images, capped


def as_classifier_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """Float images in [0, 1] as 8-bit images (like a saved PNG) at the classifier's size."""
    return resize(to_uint8(images), [size, size], antialias=True)


def main() -> None:
    params = load_params(paths.PARAMS)
    batch_size = params.evaluate.batch_size
    encoder, meta = load_model(paths.VAE_ENCODER, VaeMeta)
    decoder, _ = load_model(paths.VAE_DECODER, VaeMeta)
    classifier, classifier_meta = load_model(paths.CLASSIFIER, ClassifierMeta)
    data = load_prepared(paths.PREPARED_DIR)
    images, _ = data.tensors(load_split(paths.SPLIT_FILE)["test"])
    if len(images) < 2:
        raise ValueError("the test split needs at least two images for the Fréchet distance")
    inputs = vae_transform(meta.image_size)(images)
    generator = torch.Generator().manual_seed(params.seed)

    mu, logvar = run_batches(encoder, inputs, batch_size)
    recons = run_batches(decoder, mu, batch_size)
    z = ConvVAE.reparameterize(mu, logvar, generator)
    sse = (run_batches(decoder, z, batch_size) - inputs).square().flatten(1).sum(dim=1)
    kl = kl_divergence(mu, logvar)
    noise = torch.randn(min(len(images), MAX_SAMPLES), meta.latent_dim, generator=generator)
    samples = run_batches(decoder, noise, batch_size)

    real_energy = high_frequency_energy(inputs)
    size = classifier_meta.image_size
    _, real_features = predict_batches(classifier, resize(images, [size, size], antialias=True),
                                       batch_size)
    _, recon_features = predict_batches(classifier, as_classifier_input(recons, size), batch_size)
    sample_logits, sample_features = predict_batches(classifier, as_classifier_input(samples, size),
                                                     batch_size)
    metrics = {**reconstruction_metrics(inputs, recons), "kl": float(kl.mean()),
               "elbo_per_pixel": negative_elbo_per_pixel(sse, kl, inputs[0].numel()),
               **classifier_scores(sample_logits),
               "fd_classifier": frechet_distance(real_features, sample_features),
               "fd_classifier_reconstructions": frechet_distance(real_features, recon_features),
               "sharpness_samples": high_frequency_energy(samples) / real_energy,
               "sharpness_reconstructions": high_frequency_energy(recons) / real_energy,
               "samples": len(samples), "test_images": len(images)}
    write_json(paths.VAE_METRICS, metrics)

    images_dir = Path(paths.VAE_PLOTS) / "plots" / "images"  # where dvclive's log_image would put them
    images_dir.mkdir(parents=True, exist_ok=True)
    image_grid(samples[:64]).save(images_dir / "samples.png")
    paired_grid(inputs[:32], recons[:32]).save(images_dir / "reconstructions.png")
    print(", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))


if __name__ == "__main__":
    run_stage("evaluate_vae", main)
