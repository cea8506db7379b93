"""Data-parallel helpers that the losses need: a gather across processes that keeps gradients."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(world_size, rank)`` of the default process group, or ``(1, 0)`` outside a multi-process run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every process's gradient of the gathered tensor (all-reduce) and
    returns this process's slice: the exact gradient of a loss that every process computes on the whole batch."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        world_size, rank = world()
        ctx.rank, ctx.rows = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # sum: other processes' losses depend on these rows too
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every process's rows of ``tensor`` (same shape on every process), concatenated in rank order, and the offset of
    this process's rows in it. Gradients flow back to the process that owns each row. Outside a multi-process run:
    ``(tensor, 0)``."""
    world_size, rank = world()
    if world_size == 1:
        return tensor, 0
    return _AllGatherWithGrad.apply(tensor), rank * tensor.shape[0]
