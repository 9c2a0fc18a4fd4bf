"""Scores of the one-shot criteria: random, magnitude, SNIP, GRASP, and SynFlow's per-step score.

Convention: a larger score = more worth keeping, except GRASP, whose paper score ``-theta0 * Hg``
keeps the k SMALLEST (:func:`grasp_scores` returns the paper's score; the engine ranks its
negation). The public ``*_scores`` functions return ``name -> tensor`` for analysis and tests; the
engine uses the same building blocks and writes straight into its flat score buffer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning.masks import prunable_parameters
from pruning_lightning.pruning.saliency import (
    LossFn,
    MaskedNetwork,
    _split_batch,
    _to_device,
    batch_mean,
    module_modes,
)

GradReduce = Callable[[list[Tensor]], None]


def random_scores(numel: int, seed: int) -> Tensor:
    """i.i.d. uniform scores from a seeded CPU generator: the same mask on any device."""
    return torch.rand(numel, generator=torch.Generator().manual_seed(seed))


def grasp_hessian_gradient(
    net: MaskedNetwork,
    batches: Sequence[tuple[Tensor, Tensor]],
    temperature: float,
    grad_reduce: GradReduce | None = None,
) -> list[Tensor]:
    """Hg at theta0 for GRASP, g = dL/dw of the temperature-scaled loss, averaged over batches.

    Hg comes from a second backward of ``g_detached . dL/dw`` (g fixed, the gradient built with
    ``create_graph``), one batch at a time, averaged. ``grad_reduce`` sees g, then Hg.
    """
    net.load(None)
    g = net.gradients(batches, temperature)
    if grad_reduce is not None:
        grad_reduce(g)

    def hessian_gradient(x: Tensor, y: Tensor) -> tuple[Tensor, ...]:
        grads = torch.autograd.grad(net.loss(x, y, temperature), net.weights, create_graph=True)
        dot = sum((a * b).sum() for a, b in zip(g, grads, strict=True))
        return torch.autograd.grad(dot, net.weights)

    hg = batch_mean(hessian_gradient(x, y) for x, y in batches)
    if grad_reduce is not None:
        grad_reduce(hg)
    return hg


class SynFlowNetwork:
    """SynFlow's linearised network: |parameters| in float64, eval mode, an all-ones input.

    As in Tanaka et al.'s reference code every floating parameter and buffer is replaced by its
    absolute value (so no sign cancels, R > 0); the prunable weights are ``|theta0| * m``.
    """

    def __init__(
        self, model: nn.Module, prunable: Mapping[str, nn.Parameter], input_shape: Sequence[int]
    ):
        self.model = model
        self.names = list(prunable)
        self.theta = [p.detach().abs().double() for p in prunable.values()]
        device = self.theta[0].device
        chosen = {id(p) for p in prunable.values()}

        def lin(t: Tensor) -> Tensor:
            return t.detach().abs().double() if t.is_floating_point() else t.detach().clone()

        self.fixed = {n: lin(p) for n, p in model.named_parameters() if id(p) not in chosen}
        self.fixed.update({n: lin(b) for n, b in model.named_buffers()})
        self.weights = [torch.empty_like(t) for t in self.theta]
        self.x = torch.ones((1, *input_shape), dtype=torch.float64, device=device)

    def scores(self, masks: Sequence[Tensor] | None) -> list[Tensor]:
        """``|w * dR/dw|`` at ``w = |theta0| * m`` (None = all kept), R = sum of the outputs."""
        with torch.no_grad():
            for i, (w, t) in enumerate(zip(self.weights, self.theta, strict=True)):
                if masks is None:
                    w.copy_(t)
                else:
                    w.copy_(masks[i]).mul_(t)
        for w in self.weights:
            w.requires_grad_(True)
        params = {**self.fixed, **dict(zip(self.names, self.weights, strict=True))}
        with module_modes(self.model, False):
            r = functional_call(self.model, params, (self.x,)).sum()
        grads = torch.autograd.grad(r, self.weights)
        with torch.no_grad():
            return [(w * g).abs_() for w, g in zip(self.weights, grads, strict=True)]


# --- public name -> score helpers (analysis, tests) -------------------------------------------


def _batches(data: Iterable, device: torch.device) -> list[tuple[Tensor, Tensor]]:
    out = [_to_device(_split_batch(b), device) for b in data]
    if not out:
        raise ConfigError("batches is empty: pass at least one (inputs, targets) batch.")
    return out


def magnitude_scores(model: nn.Module, **select) -> dict[str, Tensor]:
    """``|theta|`` per prunable tensor (``select``: include/exclude patterns)."""
    return {n: p.detach().abs() for n, p in prunable_parameters(model, **select).items()}


def snip_scores(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    loss_fn: LossFn | None = None,
    amp_dtype: torch.dtype | None = None,
    **select,
) -> dict[str, Tensor]:
    """SNIP: ``|theta0 * dL/dtheta|`` at theta0, gradient averaged over ``batches``, train mode."""
    prunable = prunable_parameters(model, **select)
    net = MaskedNetwork(model, prunable, loss_fn=loss_fn, amp_dtype=amp_dtype)
    with torch.enable_grad(), module_modes(model, True):
        net.load(None)
        grads = net.gradients(_batches(batches, net.device))
    return {n: (t * g).abs_() for n, t, g in zip(net.names, net.theta0, grads, strict=True)}


def grasp_scores(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    temperature: float = 200.0,
    loss_fn: LossFn | None = None,
    amp_dtype: torch.dtype | None = None,
    **select,
) -> dict[str, Tensor]:
    """GRASP's score ``-theta0 * Hg`` (the k SMALLEST are kept), train mode."""
    prunable = prunable_parameters(model, **select)
    net = MaskedNetwork(model, prunable, loss_fn=loss_fn, amp_dtype=amp_dtype)
    with torch.enable_grad(), module_modes(model, True):
        hg = grasp_hessian_gradient(net, _batches(batches, net.device), temperature)
    return {n: -t * h for n, t, h in zip(net.names, net.theta0, hg, strict=True)}


def synflow_scores(
    model: nn.Module,
    input_shape: Sequence[int],
    masks: Mapping[str, Tensor] | None = None,
    **select,
) -> dict[str, Tensor]:
    """One SynFlow score ``|w * dR/dw|`` (float64) at ``w = |theta0| * m`` (default: all kept)."""
    prunable = prunable_parameters(model, **select)
    net = SynFlowNetwork(model, prunable, input_shape)
    mask_list = None if masks is None else [masks[n].to(net.x.device) for n in net.names]
    with torch.enable_grad():
        scores = net.scores(mask_list)
    return dict(zip(net.names, scores, strict=True))
