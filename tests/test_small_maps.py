"""The GEMM weight gradient for convolutions on tiny maps: same gradients, used only where it should."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from flowerlab.classifier import small_maps
from flowerlab.classifier.small_maps import SmallMapConv2d, use_gemm_weight_grad


def _gradients(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    images = images.clone().requires_grad_(True)
    model(images).square().sum().backward()
    return images.grad, {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("channels_last", [False, True])
def test_resnet18_gradients_match_the_plain_convolutions(channels_last: bool, monkeypatch) -> None:
    torch.manual_seed(0)
    plain = resnet18(num_classes=5).train()
    fast = copy.deepcopy(plain)
    assert use_gemm_weight_grad(fast) == 17  # every 3x3 and the 7x7 stem; 1x1 shortcuts stay
    images = torch.rand(6, 3, 32, 32)  # layer3 runs on 2x2 maps, layer4 on 1x1: both routed
    if channels_last:
        plain, fast = (m.to(memory_format=torch.channels_last) for m in (plain, fast))
        images = images.contiguous(memory_format=torch.channels_last)
    calls = {"gemm": 0, "centre": 0}
    for kind, function in {"gemm": small_maps._GemmWeightGradConv2d,
                           "centre": small_maps._CentreConv2d}.items():
        def counting(ctx, grad, kind=kind, original=function.backward):
            calls[kind] += 1
            return original(ctx, grad)
        monkeypatch.setattr(function, "backward", staticmethod(counting))
    fast_input, fast_grads = _gradients(fast, images)
    monkeypatch.undo()
    plain_input, plain_grads = _gradients(plain, images)
    # layer3's four 3x3 convolutions (2x2 output) and layer4's strided one (2x2 in, 1x1 out) take
    # the GEMM; layer4's other three (1x1 in and out) are their centre taps
    assert calls == {"gemm": 5, "centre": 3}
    for name, grad in {"input": plain_input, **plain_grads}.items():  # float rounding differs
        fast_grad = fast_input if name == "input" else fast_grads[name]
        torch.testing.assert_close(fast_grad, grad, rtol=1e-3, atol=1e-4 * grad.abs().max().item())


def test_strided_padded_convolution_matches() -> None:
    torch.manual_seed(1)
    plain = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
    fast = copy.deepcopy(plain)
    use_gemm_weight_grad(fast)
    images = torch.randn(4, 8, 3, 3)  # output 2x2: routed
    assert fast._routes(images)
    for model in (plain, fast):
        model(images).sum().backward()
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-5, atol=1e-5)


def test_routing_only_where_it_pays_and_applies() -> None:
    conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
    use_gemm_weight_grad(conv)
    assert isinstance(conv, SmallMapConv2d)
    small, large = torch.rand(2, 4, 2, 2), torch.rand(2, 4, 4, 4)
    assert conv._routes(small) and not conv._routes(large)  # 4x4 maps: oneDNN is faster
    with torch.no_grad():
        assert not conv._routes(small)
    assert not conv._routes(small.to(torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not conv._routes(small)
    conv.eval()
    assert not conv._routes(small)  # evaluation and export run the plain convolution


def test_layers_it_cannot_take_are_left_alone() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.Conv2d(4, 4, 3, groups=2, bias=False),
                          nn.Conv2d(4, 4, 3, dilation=2, bias=False), nn.Conv2d(4, 4, 1, bias=False),
                          nn.Conv2d(4, 4, 3, padding="same", bias=False))
    assert use_gemm_weight_grad(model) == 0
    assert all(type(layer) is nn.Conv2d for layer in model)


def test_state_dict_and_export_are_unchanged() -> None:
    torch.manual_seed(2)
    plain = resnet18(num_classes=3)
    fast = copy.deepcopy(plain)
    use_gemm_weight_grad(fast)
    assert fast.state_dict().keys() == plain.state_dict().keys()
    program = torch.export.export(fast.eval(), (torch.rand(2, 3, 32, 32),))
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(program.module()(images), plain.eval()(images))
