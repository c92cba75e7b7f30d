"""The VAE: shapes, loss terms, learning, seeded sampling, export, metrics, and both stages."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from flowerlab.data.transforms import vae_transform
from flowerlab.export import VaeMeta, export_program, load_model, load_program
from flowerlab.imaging import paired_grid
from flowerlab.vae.metrics import (
    classifier_scores,
    frechet_distance,
    high_frequency_energy,
    negative_elbo_per_pixel,
    reconstruction_metrics,
)
from flowerlab.vae.network import ConvVAE, VaeDecoder, VaeEncoder, kl_divergence, reconstruction_loss
from tests.builders import classifier_meta, vae_meta
from tests.datasets import run_stages, write_params

TINY = {"data.samples_per_class": 3, "data.image_size": 16, "vae.image_size": 16,
        "vae.epochs": 1, "vae.batch_size": 32, "vae.width": 8, "vae.latent_dim": 4}


def tiny_vae(loss: str = "mse", beta: float = 1.0, image_size: int = 16) -> ConvVAE:
    torch.manual_seed(0)
    return ConvVAE(latent_dim=4, width=4, image_size=image_size, beta=beta, loss=loss)


def test_shapes_and_ranges() -> None:
    vae = tiny_vae().eval()
    images = torch.rand(2, 3, 16, 16)
    mu, logvar = vae.encode(images)
    assert mu.shape == logvar.shape == (2, 4)
    decoded = vae.decode(torch.randn(5, 4))
    assert decoded.shape == (5, 3, 16, 16)
    assert decoded.min() >= 0 and decoded.max() <= 1  # Sigmoid output matches [0, 1] targets
    assert vae.generate(images).shape == (2, 3, 16, 16)
    assert vae.sample(7).shape == (7, 3, 16, 16)
    recons, mu, logvar = vae(images)
    assert recons.shape == (2, 3, 16, 16) and mu.shape == (2, 4)


def test_flatten_size_is_derived_from_image_size() -> None:
    vae = tiny_vae(image_size=24)  # 24 / 8 = 3: a 3x3 bottleneck of 4 * width channels
    assert vae.fc_mu.in_features == 16 * 3 * 3
    assert vae.generate(torch.rand(1, 3, 24, 24)).shape == (1, 3, 24, 24)
    with pytest.raises(ValueError, match="multiple of 8"):
        ConvVAE(image_size=20)


def test_loss_terms_add_up_with_beta() -> None:
    vae = tiny_vae(beta=0.25)
    images = torch.rand(3, 3, 16, 16)
    recons, mu, logvar = vae(images)
    terms = vae.loss_function(recons, images, mu, logvar)
    assert set(terms) == {"loss", "recon", "kl"}
    assert torch.allclose(terms["loss"], terms["recon"] + 0.25 * terms["kl"])
    sse = (recons - images).square().sum() / 3  # per-image sum, batch mean
    assert torch.allclose(terms["recon"], sse)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere() -> None:
    zeros = torch.zeros(2, 4)
    assert torch.equal(kl_divergence(zeros, zeros), torch.zeros(2))
    # mu = 1, var = 1: 0.5 * mu^2 per dim; var = 2, mu = 0: 0.5 * (2 - 1 - log 2) per dim
    assert torch.allclose(kl_divergence(torch.ones(2, 4), zeros), torch.full((2,), 2.0))
    expected = 4 * 0.5 * (2 - 1 - math.log(2))
    assert torch.allclose(kl_divergence(zeros, torch.full((2, 4), math.log(2))),
                          torch.full((2,), expected))
    assert (kl_divergence(zeros, torch.full((2, 4), -1.0)) > 0).all()


def test_a_few_optimizer_steps_lower_the_loss() -> None:
    vae = tiny_vae()
    images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2)

    def loss() -> torch.Tensor:
        torch.manual_seed(2)  # the same posterior noise every time
        recons, mu, logvar = vae(images)
        return vae.loss_function(recons, images, mu, logvar)["loss"]

    before = loss().item()
    for _ in range(10):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss().item() < 0.9 * before


def test_sampling_is_deterministic_for_a_seed() -> None:
    vae = tiny_vae().eval()
    first = vae.sample(6, torch.Generator().manual_seed(1))
    again = vae.sample(6, torch.Generator().manual_seed(1))
    other = vae.sample(6, torch.Generator().manual_seed(2))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_ssim_loss_adds_structure_term() -> None:
    vae = tiny_vae(loss="ssim")
    images = torch.rand(2, 3, 16, 16)
    assert torch.allclose(reconstruction_loss(images, images, "ssim"), torch.zeros(2), atol=1e-4)
    recons, mu, logvar = vae(images)
    terms = vae.loss_function(recons, images, mu, logvar)
    sse = reconstruction_loss(recons, images, "mse").mean()
    assert terms["recon"] > sse + 100  # 768 pixels * (1 - SSIM) of an untrained model
    terms["loss"].backward()
    assert vae.fc_mu.weight.grad is not None and vae.fc_mu.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown VAE loss"):
        reconstruction_loss(images, images, "l1")


def test_exported_halves_reproduce_the_module(tmp_path) -> None:
    vae = tiny_vae().eval()
    export_program(VaeDecoder(vae), torch.randn(2, 4), tmp_path / "dec.pt2", vae_meta("vae_decoder"))
    export_program(VaeEncoder(vae), torch.rand(2, 3, 16, 16), tmp_path / "enc.pt2", vae_meta("vae_encoder"))
    decoder, meta = load_model(tmp_path / "dec.pt2", VaeMeta)
    encoder, _ = load_program(tmp_path / "enc.pt2")
    z = torch.randn(5, 4)  # another batch size than the example: the batch dim is dynamic
    assert meta == vae_meta("vae_decoder")
    with torch.no_grad():
        assert torch.allclose(decoder(z), vae.decode(z), atol=1e-6)
        images = torch.rand(3, 3, 16, 16)
        for exported, eager in zip(encoder(images), vae.encode(images)):
            assert torch.allclose(exported, eager, atol=1e-6)


def test_frechet_distance_of_known_sets() -> None:
    features = torch.randn(400, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    features -= features.mean(dim=0)
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(features, features + 2.0) == pytest.approx(6 * 4.0, rel=1e-6)
    # Same mean, covariance times 4: Tr(S + 4S - 2 * 2S) = Tr(S)
    trace = torch.cov(features.T).trace().item()
    assert frechet_distance(features, 2 * features) == pytest.approx(trace, rel=1e-6)


def test_reconstruction_and_elbo_metrics() -> None:
    images = torch.full((4, 3, 16, 16), 0.5)
    metrics = reconstruction_metrics(images, images + 0.1)
    assert metrics["mse"] == pytest.approx(0.01, rel=1e-4)
    assert metrics["psnr"] == pytest.approx(20.0, rel=1e-4)
    assert reconstruction_metrics(images, images)["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert negative_elbo_per_pixel(torch.tensor([3.0, 5.0]), torch.tensor([1.0, 1.0]), 2) == 2.5


def test_classifier_scores() -> None:
    logits = torch.full((4, 4), -20.0)
    logits[0, 1] = logits[1, 1] = logits[2, 3] = logits[3, 3] = 20.0
    scores = classifier_scores(logits)
    assert scores["classifier_confidence"] == pytest.approx(1.0, abs=1e-6)
    assert scores["class_coverage"] == 0.5
    assert classifier_scores(torch.zeros(3, 5))["classifier_confidence"] == pytest.approx(0.2)


def test_high_frequency_energy_of_known_images() -> None:
    assert high_frequency_energy(torch.full((2, 3, 8, 8), 0.7)) == pytest.approx(0.0, abs=1e-12)
    # A grey 0/1 checkerboard: every inner pixel's Laplacian is +-4, so the energy is 16.
    board = ((torch.arange(8).view(-1, 1) + torch.arange(8)) % 2).float().expand(1, 3, 8, 8)
    assert high_frequency_energy(board) == pytest.approx(16.0, rel=1e-6)
    noise = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    blurred = torch.nn.functional.avg_pool2d(noise, 3, stride=1, padding=1, count_include_pad=False)
    assert high_frequency_energy(blurred) < 0.2 * high_frequency_energy(noise)


def test_transform_and_grids() -> None:
    images = torch.full((10, 3, 32, 32), 255, dtype=torch.uint8)
    resized = vae_transform(16)(images)
    assert resized.shape == (10, 3, 16, 16) and resized.dtype == torch.float32
    assert torch.allclose(resized, torch.ones_like(resized))
    grid = paired_grid(resized, resized, nrow=4)  # two whole rows of 4: inputs, recons, ...
    assert grid.size == (4 * 17 + 1, 4 * 17 + 1)


@pytest.mark.slow
def test_stages_on_tiny_data(tmp_path, monkeypatch) -> None:
    from flowerlab.classifier.network import ExportedClassifier, ImageClassifier
    from stages import evaluate_vae

    write_params(tmp_path, {**TINY, "vae.image_size": 24})  # above the prepared 16 px
    result = run_stages(tmp_path, "prepare", "split", "train_vae")
    assert result.returncode == 0, result.stderr
    assert ("train_vae: image_size 24 px, from 16-px prepared images: upsampled, set data.image_size "
            "to at least vae.image_size") in result.stdout
    torch.manual_seed(0)  # an untrained stand-in for the train stage's classifier
    meta = classifier_meta().model_copy(update={"image_size": 16, "classes": [str(c) for c in range(102)]})
    export_program(ExportedClassifier(ImageClassifier(102)), torch.rand(2, 3, 16, 16),
                   tmp_path / "models/classifier.pt2", meta)
    decoder, meta = load_program(tmp_path / "models/vae_decoder.pt2")
    assert (meta["kind"], meta["latent_dim"], meta["image_size"], meta["num_classes"]) == \
        ("vae_decoder", 4, 24, 102)
    assert decoder(torch.zeros(3, 4)).shape == (3, 3, 24, 24)
    assert load_program(tmp_path / "models/vae_encoder.pt2")[1]["outputs"] == ["mu", "logvar"]
    assert (tmp_path / "models/checkpoints/vae/best.ckpt").is_file()
    logged = tmp_path / "metrics/train_vae/plots"
    for name in ("metrics/train/recon.tsv", "metrics/val/kl.tsv", "metrics/val/loss.tsv",
                 "metrics/lr-Adam.tsv", "images/reconstructions.png", "images/samples.png"):
        assert (logged / name).is_file(), name

    monkeypatch.chdir(tmp_path)  # the stage reads and writes relative to the working directory
    outputs = []
    for _ in range(2):
        evaluate_vae.main()
        outputs.append((tmp_path / "metrics/vae.json").read_text())
    assert outputs[0] == outputs[1]  # deterministic for the same seed
    metrics = json.loads(outputs[0])
    assert {"mse", "psnr", "ssim", "kl", "elbo_per_pixel", "classifier_confidence",
            "class_coverage", "fd_classifier", "sharpness_samples",
            "sharpness_reconstructions"} <= set(metrics)
    assert metrics["sharpness_samples"] > 0 and metrics["sharpness_reconstructions"] > 0
    assert metrics["samples"] == metrics["test_images"] == 102
    assert 0 < metrics["class_coverage"] <= 1 and metrics["kl"] >= 0
    images = tmp_path / "metrics/vae/plots/images"
    assert Image.open(images / "samples.png").size == (8 * 25 + 1, 8 * 25 + 1)  # 24-px tiles, 1-px gaps
    assert Image.open(images / "reconstructions.png").size == (8 * 25 + 1, 8 * 25 + 1)
