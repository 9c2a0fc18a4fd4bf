"""ProsPr (Alizadeh et al., ICLR 2022): score a weight by how much the loss *after a few training
steps* depends on keeping it.

The mask is a multiplier c on theta0 (c = 1: all kept). K plain SGD steps train every parameter
from ``theta0 * c`` (BatchNorm included, as in the official mil-ad/prospr ``prune()``), and the
score is ``|dL(theta_K)/dc|`` at c = 1: the meta-gradient through the unrolled steps. The steps run
through ``torch.func.functional_call`` on tensors of their own, so the model's parameters and
buffers are never written (BatchNorm's running statistics update clones). docs/METHODS.md
"ProsPr" lists where this follows the paper or the official code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from pruning_lightning.pruning.batches import split_batch, to_device
from pruning_lightning.pruning.masks import prunable_parameters
from pruning_lightning.pruning.network import LossFn, module_modes

if TYPE_CHECKING:
    from pruning_lightning.pruning.criteria import ScoreContext
    from pruning_lightning.pruning.progressive import ScoreFn

#: The official command line's defaults (mil-ad/prospr cli.py): K inner steps, lr, momentum.
INNER_STEPS = 3
INNER_LR = 0.1
INNER_MOMENTUM = 0.0

Batch = tuple[Tensor, Tensor]


def meta_gradient(
    model: nn.Module,
    prunable: Mapping[str, nn.Parameter],
    inner_batches: Sequence[Sequence[Batch]],
    meta_batches: Sequence[Batch],
    *,
    lr: float = INNER_LR,
    momentum: float = INNER_MOMENTUM,
    first_order: bool = False,
    loss_fn: LossFn | None = None,
) -> list[Tensor]:
    """``dL(theta_K)/dc`` at c = 1 for each prunable tensor (signed), the model untouched.

    ``inner_batches[i]`` are the batches of inner step i (K = their number; the loss of a step is
    the mean over its batches), ``meta_batches`` those of the final loss. Every parameter takes
    the SGD steps; the prunable ones start at ``theta0 * c``. ``first_order``: the inner
    gradients are constants (no second-order terms), so the result is ``theta0 * dL/dtheta`` at
    theta_K. Call it with the modules in the mode wanted (train: BatchNorm on batch statistics).
    """
    loss_fn = loss_fn or F.cross_entropy
    names = list(prunable)
    chosen = {id(p) for p in prunable.values()}
    theta0 = [p.detach() for p in prunable.values()]
    c = [torch.ones_like(t, requires_grad=True) for t in theta0]
    # every parameter is trained: the others enter as leaves of their own (the model's are
    # never given to autograd), the prunable ones as theta0 * c
    fast = {
        n: p.detach().clone().requires_grad_(True)
        for n, p in model.named_parameters()
        if id(p) not in chosen
    }
    fast.update({n: t * ci for n, t, ci in zip(names, theta0, c, strict=True)})
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    velocity: dict[str, Tensor] = {}

    def loss(params: dict[str, Tensor], batches: Sequence[Batch]) -> Tensor:
        total = sum(
            loss_fn(functional_call(model, {**params, **buffers}, (x,)), y) for x, y in batches
        )
        return total / len(batches)

    for batches in inner_batches:
        keys = list(fast)
        grads = torch.autograd.grad(
            loss(fast, batches), [fast[k] for k in keys], create_graph=not first_order,
            allow_unused=True,
        )  # fmt: skip
        for key, g in zip(keys, grads, strict=True):
            if g is None:  # a parameter the loss does not use stays where it is
                continue
            if momentum:
                g = g if key not in velocity else velocity[key].mul(momentum).add(g)
                velocity[key] = g
            # add(alpha=) as torch.optim.SGD and the official code: float32 results stay
            # bit-comparable with theirs (a separate lr * g rounds differently)
            fast[key] = fast[key].add(g, alpha=-lr)
    grads = torch.autograd.grad(loss(fast, meta_batches), c, allow_unused=True)
    return [torch.zeros_like(ci) if g is None else g for ci, g in zip(c, grads, strict=True)]


def prospr_score(ctx: ScoreContext) -> ScoreFn:
    """ProsPr: ``|dL(theta_K)/dc|`` at c = 1, K = :data:`INNER_STEPS` SGD steps of lr
    :data:`INNER_LR`; one meta batch for every step, or fresh ones (``prospr_new_batches``)."""
    config = ctx.config
    loss_fn = ctx.net.loss_fn if ctx.net is not None else None

    def step(t: int, prev: list[Tensor] | None, views: list[Tensor]) -> None:
        first = list(ctx.batches())
        if config.prospr_new_batches:  # as the official code: a new batch per step, then one more
            inner = [first, *(list(ctx.batches()) for _ in range(INNER_STEPS - 1))]
            meta = list(ctx.batches())
        else:
            inner, meta = [first] * INNER_STEPS, first
        grads = meta_gradient(
            ctx.model, ctx.prunable, inner, meta, first_order=config.prospr_first_order,
            loss_fn=loss_fn,
        )  # fmt: skip
        if ctx.grad_reduce is not None:  # DDP: the mean of the ranks' meta-gradients
            ctx.grad_reduce(grads)
        with torch.no_grad():
            for v, g in zip(views, grads, strict=True):
                v.copy_(g).abs_()

    return step


def prospr_scores(
    model: nn.Module,
    batches: Sequence[object],
    *,
    inner_steps: int = INNER_STEPS,
    lr: float = INNER_LR,
    momentum: float = INNER_MOMENTUM,
    first_order: bool = False,
    new_batches: bool = False,
    loss_fn: LossFn | None = None,
    **select,
) -> dict[str, Tensor]:
    """ProsPr's score per prunable tensor (train mode), for analysis and tests.

    ``batches``: one meta batch ``(x, y)`` used for every step; with ``new_batches`` the
    ``inner_steps + 1`` batches of the steps and of the final loss, in order.
    """
    prunable = prunable_parameters(model, **select)
    device = next(iter(prunable.values())).device
    data = [to_device(split_batch(b), device) for b in batches]
    if new_batches:
        if len(data) != inner_steps + 1:
            raise ValueError(f"new_batches needs inner_steps + 1 = {inner_steps + 1} batches")
        inner, meta = [[b] for b in data[:-1]], [data[-1]]
    else:
        inner, meta = [data[:1]] * inner_steps, data[:1]
    with torch.enable_grad(), module_modes(model, True):
        grads = meta_gradient(
            model, prunable, inner, meta, lr=lr, momentum=momentum, first_order=first_order,
            loss_fn=loss_fn,
        )  # fmt: skip
    return {n: g.abs() for n, g in zip(prunable, grads, strict=True)}
