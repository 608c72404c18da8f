"""The torch reference a graph is validated against: autograd through ReLU and max-pool decisions routed
from the graph itself, so near-kink rounding cannot make two correct gradients disagree."""

from __future__ import annotations

import copy

import torch

from onnxstyle.backbones import Backbone
from onnxstyle.losses import LossWeights, objective
from onnxstyle.weights import Preprocessing


def torch_loss_and_grad(
    model: Backbone,
    preprocessing: Preprocessing,
    image: torch.Tensor,
    content_targets: dict[str, torch.Tensor],
    style_targets: dict[str, torch.Tensor],
    weights: LossWeights,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference loss and gradient by torch autograd, with the same normalisations as the graph."""
    pixels = image.detach().clone().requires_grad_(True)
    model_input = preprocessing.to_model(pixels)
    loss, _, _, _ = objective(model(model_input), model_input, content_targets, style_targets, weights)
    (grad,) = torch.autograd.grad(loss, pixels)
    return loss.detach(), grad


class _RoutedMaxPoolFunction(torch.autograd.Function):
    """Max pool whose backward follows given per-offset choices instead of its own argmax."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, choices: torch.Tensor, kernel: int, stride: int, ceil: bool) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(choices)
        ctx.geometry = (x.shape, kernel, stride)  # type: ignore[attr-defined]
        return torch.nn.functional.max_pool2d(x, kernel, stride, ceil_mode=ceil)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (choices,) = ctx.saved_tensors  # type: ignore[attr-defined]
        shape, kernel, stride = ctx.geometry  # type: ignore[attr-defined]
        batch, channels, rows, cols = grad.shape
        columns = (choices.to(grad.dtype) * grad.unsqueeze(2)).reshape(batch, channels * kernel * kernel, rows * cols)
        span = ((rows - 1) * stride + kernel, (cols - 1) * stride + kernel)
        placed = torch.nn.functional.fold(columns, span, kernel_size=kernel, stride=stride)
        placed = torch.nn.functional.pad(placed, (0, max(0, shape[3] - span[1]), 0, max(0, shape[2] - span[0])))
        return placed[:, :, : shape[2], : shape[3]], None, None, None, None


class _MaskedMaxPoolFunction(torch.autograd.Function):
    """Max pool (kernel == stride) whose backward sends the gradient to a given full-resolution mask."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, mask: torch.Tensor, kernel: int) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(mask)
        ctx.kernel = kernel  # type: ignore[attr-defined]
        return torch.nn.functional.max_pool2d(x, kernel, kernel)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (mask,) = ctx.saved_tensors  # type: ignore[attr-defined]
        kernel = ctx.kernel  # type: ignore[attr-defined]
        spread = grad.repeat_interleave(kernel, dim=2).repeat_interleave(kernel, dim=3)
        spread = torch.nn.functional.pad(spread, (0, mask.shape[3] - spread.shape[3], 0, mask.shape[2] - spread.shape[2]))
        return spread * mask.to(grad.dtype), None, None


class _RoutedMaxPool(torch.nn.Module):
    """Per-offset choices (overlapping pools) or one full-resolution mask (tiling pools)."""

    def __init__(self, pool: torch.nn.MaxPool2d, choices: torch.Tensor, full_mask: bool = False) -> None:
        super().__init__()
        self.pool, self.choices, self.full_mask = pool, choices, full_mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.full_mask:
            return _MaskedMaxPoolFunction.apply(x, self.choices, self.pool.kernel_size)
        return _RoutedMaxPoolFunction.apply(x, self.choices, self.pool.kernel_size, self.pool.stride, self.pool.ceil_mode)


class _RoutedReluFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(mask)
        return torch.relu(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (mask,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * mask.to(grad.dtype), None


class _RoutedRelu(torch.nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _RoutedReluFunction.apply(x, self.mask)


def with_decisions(
    model: Backbone,
    pool_choices: dict[str, torch.Tensor],
    relu_masks: dict[str, torch.Tensor],
    pool_masks: dict[str, torch.Tensor] | None = None,
) -> Backbone:
    """A copy of ``model`` whose ReLUs and max pools route gradients as the ONNX graph decided.

    These gradients jump where a pre-activation is near 0 or two window values nearly tie, and
    fp32 rounding in two runtimes can decide such kinks differently (torch fp32 disagrees with
    torch fp64 in the same way, by up to 1e-2). Sharing the decisions isolates what validation
    must check: the adjoint arithmetic.
    """
    routed = copy.copy(model)
    routed._modules = dict(model._modules)
    routed.body = torch.nn.ModuleDict(dict(model.body.items()))
    for layer, choice in pool_choices.items():
        routed.body[layer] = _RoutedMaxPool(model.body[layer], choice)  # type: ignore[arg-type]
    for layer, mask in (pool_masks or {}).items():
        routed.body[layer] = _RoutedMaxPool(model.body[layer], mask, full_mask=True)  # type: ignore[arg-type]
    for layer, mask in relu_masks.items():
        routed.body[layer] = _RoutedRelu(mask)
    return routed
