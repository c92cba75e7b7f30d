"""Faster CPU training where convolutions run on tiny feature maps (ResNet18 at 32 px).

oneDNN's weight gradient for a 3x3 convolution whose output is 1x1 or 2x2 runs far below the
CPU's speed: on an AVX2 AMD EPYC (2 cores), ResNet18's layer4 at 32 px took 69 ms per 512x512
kernel at batch 128, against 7 ms as one matrix product of the unfolded input; forward and the
input gradient are fast. :func:`use_gemm_weight_grad` routes those layers' weight gradients
through that product, and a 1x1 map with "same" padding, where only the kernel's centre meets
data, through a linear layer on the centre taps (``benchmarks/train_speed.py`` measures the
step). Larger maps keep oneDNN, which is faster there. It applies in training mode on the CPU,
to float32 without autocast, with grad enabled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MAX_OUTPUT_POSITIONS = 4  # output maps of at most 2x2: measured faster up to here, not at 4x4


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
    where its output has at most ``MAX_OUTPUT_POSITIONS`` positions and the conditions hold."""

    def _routes(self, images: torch.Tensor) -> bool:
        if not (self.training and torch.is_grad_enabled() and self.weight.requires_grad
                and images.device.type == "cpu" and images.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu")):
            return False
        positions = 1
        for size, k, s, p in zip(images.shape[2:], self.kernel_size, self.stride, self.padding):
            positions *= (size + 2 * p - k) // s + 1
        return positions <= MAX_OUTPUT_POSITIONS

    def _centre_only(self, images: torch.Tensor) -> bool:
        """A 1x1 map, stride 1, "same" padding: every tap but the centre sees zero padding."""
        return (tuple(images.shape[2:]) == (1, 1) and self.stride == (1, 1)
                and all(k % 2 == 1 and p == k // 2 for k, p in zip(self.kernel_size, self.padding)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
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
