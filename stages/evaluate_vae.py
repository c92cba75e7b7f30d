"""evaluate_vae: reconstruction and ELBO on the test split, and sample quality judged by the
project's own classifier (no downloaded weights); writes metrics/vae.json and image plots.

``elbo_per_pixel`` is always under the Gaussian (``mse``) likelihood with beta = 1, so it compares
across ``vae.loss`` and ``vae.beta`` settings; the reconstructions that ``mse``, ``psnr`` and
``ssim`` score decode the posterior mean, while the ELBO uses one seeded posterior sample.
"""

from pathlib import Path

import torch
from dvclive import Live
from torchvision.transforms.v2.functional import resize

from flowerlab import paths
from flowerlab.cli import run_stage
from flowerlab.config import load_params
from flowerlab.evaluation import predict_batches, run_batches
from flowerlab.export import load_program
from flowerlab.split import load_split
from flowerlab.store import load_prepared, write_json
from flowerlab.transforms import vae_transform
from flowerlab.vae import kl_divergence
from flowerlab.vae_metrics import (
    classifier_scores,
    frechet_distance,
    image_grid,
    negative_elbo_per_pixel,
    paired_grid,
    reconstruction_metrics,
)

MAX_SAMPLES = 2048  # samples scored by the classifier: as many as test images, capped


def to_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Float images in [0, 1] as 8-bit images (like a saved PNG) at the classifier's size."""
    return resize((images * 255).round().to(torch.uint8), [size, size], antialias=True)


def main() -> None:
    params = load_params(paths.PARAMS)
    batch_size = params.evaluate.batch_size
    encoder, meta = load_program(paths.VAE_ENCODER)
    decoder, _ = load_program(paths.VAE_DECODER)
    classifier, classifier_meta = load_program(paths.CLASSIFIER)
    data = load_prepared(paths.PREPARED_DIR)
    images, _ = data.tensors(load_split(paths.SPLIT_FILE)["test"])
    if len(images) < 2:
        raise ValueError("the test split needs at least two images for the Fréchet distance")
    inputs = vae_transform(meta["image_size"])(images)
    generator = torch.Generator().manual_seed(params.seed)

    mu, logvar = run_batches(encoder, inputs, batch_size)
    recons = run_batches(decoder, mu, batch_size)
    z = mu + torch.randn(mu.shape, generator=generator) * (0.5 * logvar).exp()
    sse = (run_batches(decoder, z, batch_size) - inputs).square().flatten(1).sum(dim=1)
    kl = kl_divergence(mu, logvar)
    noise = torch.randn(min(len(images), MAX_SAMPLES), meta["latent_dim"], generator=generator)
    samples = run_batches(decoder, noise, batch_size)

    size = classifier_meta["image_size"]
    _, real_features = predict_batches(classifier, resize(images, [size, size], antialias=True),
                                       batch_size)
    _, recon_features = predict_batches(classifier, to_uint8(recons, size), batch_size)
    sample_logits, sample_features = predict_batches(classifier, to_uint8(samples, size), batch_size)
    metrics = {**reconstruction_metrics(inputs, recons), "kl": float(kl.mean()),
               "elbo_per_pixel": negative_elbo_per_pixel(sse, kl, inputs[0].numel()),
               **classifier_scores(sample_logits),
               "fd_classifier": frechet_distance(real_features, sample_features),
               "fd_classifier_reconstructions": frechet_distance(real_features, recon_features),
               "samples": len(samples), "test_images": len(images)}
    write_json(Path(paths.VAE_METRICS), metrics)

    with Live(paths.VAE_PLOTS, dvcyaml=False, save_dvc_exp=False) as live:
        live.log_image("samples.png", image_grid(samples[:64]))
        live.log_image("reconstructions.png", paired_grid(inputs[:32], recons[:32]))
    print(", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))


if __name__ == "__main__":
    run_stage("evaluate_vae", main)
