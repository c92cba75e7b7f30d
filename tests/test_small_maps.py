"""The GEMM weight gradient for convolutions on tiny maps: same gradients, used only where it should."""

from __future__ import annotations

import copy
from types import SimpleNamespace

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


def test_bf16_routing_only_under_autocast_on_channels_last_small_maps() -> None:
    conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
    use_gemm_weight_grad(conv)
    cl = torch.channels_last
    small = torch.rand(2, 4, 8, 8).contiguous(memory_format=cl)  # 64 output positions
    large = torch.rand(2, 4, 9, 9).contiguous(memory_format=cl)  # 81
    assert not conv._routes_bf16(small)  # no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv._routes_bf16(small) and conv._routes_bf16(small.to(torch.bfloat16))
        assert not conv._routes_bf16(large)
        assert not conv._routes_bf16(torch.rand(2, 4, 8, 8))  # contiguous: oneDNN's own path
        with torch.no_grad():
            assert not conv._routes_bf16(small)
        conv.eval()
        assert not conv._routes_bf16(small)
    with torch.autocast("cpu", dtype=torch.float16):
        conv.train()
        assert not conv._routes_bf16(small)


def _bf16_gradients(model: nn.Module, images: torch.Tensor):
    images = images.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(images)
    output.float().square().sum().backward()
    return output, images.grad, model.weight.grad


@pytest.mark.parametrize("stride, size", [(1, 4), (1, 7), (2, 8), (2, 14)])
def test_bf16_convolution_matches_autocast(stride: int, size: int, monkeypatch) -> None:
    torch.manual_seed(3)
    plain = nn.Conv2d(16, 32, 3, stride=stride, padding=1, bias=False)
    fast = copy.deepcopy(plain)
    use_gemm_weight_grad(fast)
    plain, fast = (m.to(memory_format=torch.channels_last) for m in (plain, fast))
    images = torch.randn(5, 16, size, size).contiguous(memory_format=torch.channels_last)
    calls = []
    original = small_maps._ChannelsLastGemmWeightGradConv2d.backward
    monkeypatch.setattr(small_maps._ChannelsLastGemmWeightGradConv2d, "backward",
                        staticmethod(lambda ctx, grad: calls.append(1) or original(ctx, grad)))
    fast_out, fast_input, fast_weight = _bf16_gradients(fast, images)
    monkeypatch.undo()
    plain_out, plain_input, plain_weight = _bf16_gradients(plain, images)
    assert calls == [1]
    assert fast_out.dtype == torch.bfloat16 and fast_weight.dtype == torch.float32
    assert fast_weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast_out, plain_out)  # the forward is the same oneDNN call
    torch.testing.assert_close(fast_input, plain_input)  # and so is the input gradient
    # the weight gradient sums 5 x size^2 bf16 products in another order: bf16 rounding
    error = (fast_weight - plain_weight).norm() / plain_weight.norm()
    assert error < 1e-2, error


def test_bf16_resnet18_training_step_matches_autocast() -> None:
    torch.manual_seed(4)
    plain = resnet18(num_classes=5).train().to(memory_format=torch.channels_last)
    fast = copy.deepcopy(plain)
    use_gemm_weight_grad(fast)
    images = torch.rand(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    grads = []
    for model in (plain, fast):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(images).float().logsumexp(1).sum()
        loss.backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    for name, grad in grads[0].items():  # layer2's 8x8 maps to layer4: routed
        error = (grads[1][name] - grad).norm() / grad.norm()
        assert error < 5e-2, (name, error)


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


@pytest.mark.parametrize("channels, size, stride", [(64, 4, 1), (32, 8, 2), (32, 8, 1)])
def test_bf16_weight_gradient_is_as_accurate_as_onednns(channels: int, size: int, stride: int) -> None:
    """Against a float64 reference from the same bf16 inputs, the GEMM's weight gradient is as
    close as oneDNN's: both round a float32 sum to bf16 once."""
    torch.manual_seed(5)
    cl = torch.channels_last
    images = torch.randn(8, channels, size, size).relu().to(torch.bfloat16).contiguous(memory_format=cl)
    weight = (0.05 * torch.randn(channels, channels, 3, 3)).to(torch.bfloat16).contiguous(memory_format=cl)
    output_size = (size + 2 - 3) // stride + 1
    grad = (1e-3 * torch.randn(8, channels, output_size, output_size)).to(torch.bfloat16).contiguous(
        memory_format=cl)

    def weight_grad(dtype: torch.dtype) -> torch.Tensor:
        return torch.ops.aten.convolution_backward(
            grad.to(dtype), images.to(dtype), weight.to(dtype), None, [stride] * 2, [1, 1], [1, 1],
            False, [0, 0], 1, [False, True, False])[1]

    reference, onednn = weight_grad(torch.float64), weight_grad(torch.bfloat16)
    ctx = SimpleNamespace(saved_tensors=(images, weight), stride=(stride, stride), padding=(1, 1),
                          needs_input_grad=(False, True))
    gemm = small_maps._ChannelsLastGemmWeightGradConv2d.backward(ctx, grad)[1]

    def error(value: torch.Tensor) -> float:
        return ((value.double() - reference).norm() / reference.norm()).item()

    assert error(gemm) <= 1.5 * error(onednn) + 1e-6, (error(gemm), error(onednn))
    assert error(onednn) < 5e-3  # bf16 rounding, about 2e-3
