"""Faster CPU training where convolutions run on tiny feature maps (ResNet18 at 32 px).

oneDNN's weight gradient for a 3x3 convolution whose output is 1x1 or 2x2 runs far below the
CPU's speed: on an AVX2 AMD EPYC (2 cores), ResNet18's layer4 at 32 px took 69 ms per 512x512
kernel at batch 128, against 7 ms as one matrix product of the unfolded input; forward and the
input gradient are fast. :func:`use_gemm_weight_grad` routes those layers' weight gradients
through that product, and a 1x1 map with "same" padding, where only the kernel's centre meets
data, through a linear layer on the centre taps (``benchmarks/train_speed.py`` measures the
step). Larger maps keep oneDNN, which is faster there. It applies in training mode on the CPU,
to float32 without autocast, with grad enabled.

bf16 under autocast has the same flaw at larger maps: on an AMX Xeon (2 cores), oneDNN's bf16
weight gradient of layer4 at 128 px (4x4 maps, batch 32) took 12.9 ms per 512x512 kernel, and the
input and weight gradients asked for together 19.6 ms, against 4.6 ms for the input gradient
alone and 2.4 ms for the weight gradient as one matrix product of channels_last columns (the
nine shifted views of the padded input, side by side). So for channels_last bf16 inputs whose
output has at most ``MAX_BF16_OUTPUT_POSITIONS`` positions (layer3 and layer4 at 128 px, layer4
at 224 px), the input gradient is oneDNN's alone and the weight gradient that product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MAX_OUTPUT_POSITIONS = 4  # output maps of at most 2x2: measured faster up to here, not at 4x4
MAX_BF16_OUTPUT_POSITIONS = 64  # bf16: faster or equal up to 8x8, slower at 14x14 (AMX Xeon)


class _GemmWeightGradConv2d(torch.autograd.Function):
    """conv2d (no bias, groups 1, dilation 1) whose weight gradient is one matrix product."""

    @staticmethod
    def forward(ctx, images, weight, stride, padding):
        ctx.save_for_backward(images, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(images, weight, None, stride, padding)

    @staticmethod
    def backward(ctx, grad):
        images, weight = ctx.saved_tensors
        grad_images = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_images = torch.nn.grad.conv2d_input(images.shape, weight, grad, ctx.stride, ctx.padding)
        if ctx.needs_input_grad[1]:
            columns = F.unfold(images, weight.shape[2:], padding=ctx.padding, stride=ctx.stride)
            n, out_channels = grad.shape[:2]
            grad_rows = grad.reshape(n, out_channels, -1).transpose(0, 1).reshape(out_channels, -1)
            grad_weight = (grad_rows @ columns.transpose(1, 2).reshape(-1, columns.shape[1])
                           ).view_as(weight)
        return grad_images, grad_weight, None, None


def _channels_last_columns(images: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                            padding: tuple[int, int], output: tuple[int, int]) -> torch.Tensor:
    """The im2col matrix of channels_last ``images``: one row per output position (N*H*W), and
    the kernel's taps in the order of a channels_last weight's memory (kh, kw, C)."""
    padded = F.pad(images, (padding[1], padding[1], padding[0], padding[0])).permute(0, 2, 3, 1)
    taps = [padded[:, i:i + (output[0] - 1) * stride[0] + 1:stride[0],
                   j:j + (output[1] - 1) * stride[1] + 1:stride[1], :]
            for i in range(kernel[0]) for j in range(kernel[1])]
    return torch.stack(taps, dim=3).reshape(-1, kernel[0] * kernel[1] * images.shape[1])


class _ChannelsLastGemmWeightGradConv2d(_GemmWeightGradConv2d):
    """The same conv2d, of channels_last tensors, whose backward asks oneDNN for the input
    gradient alone and takes the weight gradient as one matrix product of the channels_last
    columns; that gradient comes back channels_last, like the weight."""

    @staticmethod
    def backward(ctx, grad):
        images, weight = ctx.saved_tensors
        grad_images = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_images = torch.ops.aten.convolution_backward(
                grad, images, weight, None, list(ctx.stride), list(ctx.padding), [1, 1], False,
                [0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            out_channels, in_channels, kh, kw = weight.shape
            columns = _channels_last_columns(images, (kh, kw), ctx.stride, ctx.padding,
                                             tuple(grad.shape[2:]))
            grad_rows = grad.permute(0, 2, 3, 1).reshape(-1, out_channels)
            grad_weight = (grad_rows.t() @ columns).view(out_channels, kh, kw, in_channels
                                                         ).permute(0, 3, 1, 2)
        return grad_images, grad_weight, None, None


class _CentreConv2d(torch.autograd.Function):
    """conv2d of a 1x1 map with "same" padding: a linear layer on the kernel's centre taps. Its
    weight gradient comes back in the weight's own memory format (channels_last included), so
    autograd need not copy it into that layout."""

    @staticmethod
    def forward(ctx, images, weight):
        ctx.save_for_backward(images, weight)
        centre = weight[:, :, weight.shape[2] // 2, weight.shape[3] // 2]
        return F.linear(images.flatten(1), centre)[:, :, None, None]

    @staticmethod
    def backward(ctx, grad):
        images, weight = ctx.saved_tensors
        row, column = weight.shape[2] // 2, weight.shape[3] // 2
        grad = grad.flatten(1)
        grad_images = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_images = (grad @ weight[:, :, row, column]).view_as(images)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.zeros_like(weight)
            grad_weight[:, :, row, column] = grad.t() @ images.flatten(1)
        return grad_images, grad_weight


class SmallMapConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (same parameters and state dict) that takes the GEMM weight gradient
    where its output has at most ``MAX_OUTPUT_POSITIONS`` positions (fp32) or
    ``MAX_BF16_OUTPUT_POSITIONS`` (channels_last bf16 autocast) and the conditions hold."""

    def _output_positions(self, images: torch.Tensor) -> int:
        positions = 1
        for size, k, s, p in zip(images.shape[2:], self.kernel_size, self.stride, self.padding):
            positions *= (size + 2 * p - k) // s + 1
        return positions

    def _trains_on_cpu(self, images: torch.Tensor) -> bool:
        return (self.training and torch.is_grad_enabled() and self.weight.requires_grad
                and images.device.type == "cpu")

    def _routes(self, images: torch.Tensor) -> bool:
        """The fp32 route: tiny maps, no autocast."""
        return (self._trains_on_cpu(images) and images.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu")
                and self._output_positions(images) <= MAX_OUTPUT_POSITIONS)

    def _routes_bf16(self, images: torch.Tensor) -> bool:
        """The bf16 route: channels_last images under CPU bf16 autocast, small maps."""
        return (self._trains_on_cpu(images) and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16
                and images.dtype in (torch.float32, torch.bfloat16) and images.dim() == 4
                and images.is_contiguous(memory_format=torch.channels_last)
                and self._output_positions(images) <= MAX_BF16_OUTPUT_POSITIONS)

    def _centre_only(self, images: torch.Tensor) -> bool:
        """A 1x1 map, stride 1, "same" padding: every tap but the centre sees zero padding."""
        return (tuple(images.shape[2:]) == (1, 1) and self.stride == (1, 1)
                and all(k % 2 == 1 and p == k // 2 for k, p in zip(self.kernel_size, self.padding)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self._routes_bf16(images):
            # what autocast does for a convolution: bf16 copies of both inputs, a bf16 output
            weight = self.weight.to(torch.bfloat16)
            images = images.to(torch.bfloat16)
            with torch.autocast("cpu", enabled=False):
                return _ChannelsLastGemmWeightGradConv2d.apply(images, weight, self.stride,
                                                               self.padding)
        if not self._routes(images):
            return super().forward(images)
        if self._centre_only(images):
            return _CentreConv2d.apply(images, self.weight)
        return _GemmWeightGradConv2d.apply(images, self.weight, self.stride, self.padding)


def use_gemm_weight_grad(module: nn.Module) -> int:
    """Turns every eligible ``nn.Conv2d`` in ``module`` (no bias, groups 1, dilation 1, numeric
    padding, kernel over 1x1) into a :class:`SmallMapConv2d` in place; returns how many."""
    count = 0
    for layer in module.modules():
        if (type(layer) is nn.Conv2d and layer.bias is None and layer.groups == 1
                and layer.dilation == (1, 1) and not isinstance(layer.padding, str)
                and layer.padding_mode == "zeros" and layer.kernel_size != (1, 1)):
            layer.__class__ = SmallMapConv2d
            count += 1
    return count
