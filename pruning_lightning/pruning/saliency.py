"""The FORCE saliency of a mask, S(m): the paper's analysis quantity, computed once, here."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning.batches import split_batch, to_device
from pruning_lightning.pruning.masks import check_masks, prunable_parameters
from pruning_lightning.pruning.network import LossFn, MaskedNetwork, module_modes

SALIENCY_VIEWS = ("pruning", "sparsification")


def force_saliency(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    view: str = "pruning",
    loss_fn: LossFn | None = None,
) -> float:
    """FORCE saliency S(m) of ``masks`` at ``w = theta0 * m``, theta0 = the model's weights.

    ``"pruning"``: sum over the kept weights of ``|theta0 * dL/dw|`` (removed weights cut from the
    graph). ``"sparsification"``: removed weights keep their gradient and the sum runs over all
    weights. The gradient is averaged over all ``batches``; the model is in train mode for the
    pass, as for the criteria. Prunable tensors without a mask count as fully kept. theta0 must be
    the dense weights: on a model whose pruned weights are already zero both views are equal.
    """
    if view not in SALIENCY_VIEWS:
        raise ConfigError(
            f"Unknown saliency view '{view}'. Choose one of: pruning, sparsification."
        )
    return force_saliency_views(model, masks, batches, loss_fn=loss_fn)[view]


def force_saliency_views(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    loss_fn: LossFn | None = None,
    grad_reduce: Callable[[list[Tensor]], None] | None = None,
) -> dict[str, float]:
    """Both views of :func:`force_saliency` from ONE gradient pass (the gradient is the same).

    ``grad_reduce`` all-reduces the gradient in place (DDP), so every rank gets the same numbers
    and every rank must call this.
    """
    check_masks(model, masks, complete=False)
    net = MaskedNetwork(model, prunable_parameters(model), loss_fn=loss_fn)
    device_masks = [
        masks[n].to(net.device) if n in masks else torch.ones_like(t, dtype=torch.bool)
        for n, t in zip(net.names, net.theta0, strict=True)
    ]
    stream = [to_device(split_batch(b), net.device) for b in batches]
    if not stream:
        raise ConfigError("force_saliency needs at least one (inputs, targets) batch; got none.")
    with module_modes(model, True):
        return saliency_views(net, stream, device_masks, grad_reduce)


def saliency_views(
    net: MaskedNetwork,
    batches: Iterable[tuple[Tensor, Tensor]],
    masks: Sequence[Tensor],
    grad_reduce: Callable[[list[Tensor]], None] | None = None,
) -> dict[str, float]:
    """The FORCE saliency of ``masks`` (per tensor, in ``net``'s order), both views: the gradient
    at ``theta0 * m`` on ``batches`` (all-reduced by ``grad_reduce``), then the sums of
    ``|theta0 * g|`` over the kept weights ("pruning") and over all ("sparsification")."""
    net.load(masks)
    grads = net.gradients(batches)
    if grad_reduce is not None:
        grad_reduce(grads)
    with torch.no_grad():
        every = sum(float((t * g).abs_().sum()) for t, g in zip(net.theta0, grads, strict=True))
    return {"pruning": effective_saliency_(net.weights, grads), "sparsification": every}


def effective_saliency_(weights: Sequence[Tensor], grads: Sequence[Tensor]) -> float:
    """The FORCE saliency S(m) ("pruning" view) from the effective weights ``w = theta0 * m`` and
    the gradient there: the sum of ``|w * dL/dw|``, which runs over the kept weights only since
    ``w`` is zero where pruned. Computed in place in ``weights`` (overwritten: reload before the
    next pass), so it needs no weight-sized temporary; float32 sums per tensor (pairwise, relative
    error around 1e-6 even for tens of millions of weights)."""
    with torch.no_grad():
        return sum(float(w.mul_(g).abs_().sum()) for w, g in zip(weights, grads, strict=True))
