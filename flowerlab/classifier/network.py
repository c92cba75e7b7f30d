"""The classifier network: torchvision's ResNet18 with a new head and built-in normalisation."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from flowerlab.errors import WeightsError
from flowerlab.files import load_failure

# ImageNet statistics; they travel inside the model, so no consumer needs to know them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_imagenet_state(weights_path: str | None) -> dict[str, torch.Tensor]:
    """ImageNet ResNet18 weights from a local file, else through torchvision's download."""
    weights = ResNet18_Weights.IMAGENET1K_V1
    if weights_path:
        path = Path(weights_path)
        if not path.is_file():
            raise WeightsError(f"model.weights_path: file not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for a bad file
            raise WeightsError(f"model.weights_path: cannot read {path}: {load_failure(error)}") from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict) or "conv1.weight" not in state:
            raise WeightsError(f"model.weights_path: {path} is not a ResNet18 state dict")
        return state
    try:
        return weights.get_state_dict(progress=False)
    except (urllib.error.URLError, OSError) as error:
        raise WeightsError(
            f"cannot download ImageNet weights ({error}). On an air-gapped machine, fetch "
            f"{weights.url} elsewhere and set model.weights_path to the file, or set "
            "model.pretrained: false.") from None


class ImageClassifier(nn.Module):
    """Takes float RGB images in [0, 1] of shape (N, 3, H, W) and returns class logits."""

    def __init__(self, num_classes: int, pretrained: bool = False, weights_path: str | None = None):
        super().__init__()
        backbone = resnet18(weights=None)
        if pretrained:
            missing, unexpected = backbone.load_state_dict(load_imagenet_state(weights_path),
                                                           strict=False)
            if missing or [k for k in unexpected if not k.startswith("fc.")]:
                raise WeightsError(f"weights do not fit ResNet18: missing {missing[:3]}, "
                                   f"unexpected {unexpected[:3]}")
        backbone.fc = nn.Identity()
        self.backbone = backbone
        self.head = nn.Linear(512, num_classes)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (N, 512)."""
        return self.backbone((images - self.mean) / self.std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class ExportedClassifier(nn.Module):
    """What the service and evaluation run: logits and penultimate features in one pass."""

    def __init__(self, classifier: ImageClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.classifier.features(images)
        return self.classifier.head(features), features


def network_of(program: nn.Module, num_classes: int) -> ImageClassifier:
    """The eager network inside a loaded exported classifier program (``export.load_model``), with
    the program's own weights: FX quantization and tracing need modules, and the weights must be
    the ones ``train`` exported, whichever epoch's they are."""
    prefix = "classifier."
    state = {name.removeprefix(prefix): value for name, value in program.state_dict().items()}
    net = ImageClassifier(num_classes)
    net.load_state_dict(state, strict=True)
    return net.eval()
