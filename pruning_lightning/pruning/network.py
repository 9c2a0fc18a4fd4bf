"""The network evaluated at masked weights, without touching the model.

Every data-driven criterion evaluates the loss at effective weights ``w = theta0 * m`` (``theta0``
= the model's current prunable weights). :class:`MaskedNetwork` does that with
``torch.func.functional_call``: the effective weights are fresh leaf tensors, the buffers are
clones (BatchNorm statistics update the clones), the other parameters are passed detached, and
gradients come from ``torch.autograd.grad``. So the model's parameters, buffers, ``.grad`` fields
and ``requires_grad`` flags are never written, and no copy of the model is made.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

LossFn = Callable[[Tensor, Tensor], Tensor]


@contextlib.contextmanager
def module_modes(model: nn.Module, training: bool):
    """Put every module in train (or eval) mode; restore each module's own flag afterwards."""
    saved = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield
    finally:
        for m, mode in saved:
            m.training = mode


class MaskedNetwork:
    """The model evaluated at ``w = theta0 * m``; gradients w.r.t. ``w``, the model untouched."""

    def __init__(
        self,
        model: nn.Module,
        prunable: Mapping[str, nn.Parameter],
        *,
        loss_fn: LossFn | None = None,
        amp_dtype: torch.dtype | None = None,
        flat: bool = False,
    ):
        """``flat``: keep the effective weights in one flat float32 buffer, :attr:`flat`, which
        the caller may overwrite between passes (the progressive loop ranks its scores there,
        saving a weight-sized buffer). Ignored unless every prunable tensor is float32."""
        self.model = model
        self.names = list(prunable)
        self.theta0 = [p.detach() for p in prunable.values()]
        self.device = self.theta0[0].device
        chosen = {id(p) for p in prunable.values()}
        self.fixed = {n: p.detach() for n, p in model.named_parameters() if id(p) not in chosen}
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        self.flat: Tensor | None = None
        if flat and all(t.dtype == torch.float32 for t in self.theta0):
            self.flat = torch.empty(sum(t.numel() for t in self.theta0), device=self.device)
            self.weights = list(torch.split(self.flat, [t.numel() for t in self.theta0]))
            self.weights = [w.view(t.shape) for w, t in zip(self.weights, self.theta0, strict=True)]
        else:
            self.weights = [torch.empty_like(t) for t in self.theta0]
        self.loss_fn = loss_fn or F.cross_entropy
        self.amp_dtype = amp_dtype

    def load(self, masks: Sequence[Tensor] | None) -> None:
        """Set ``w = theta0 * m`` (``masks`` in the order of the names; None = all kept)."""
        load_masked(self.weights, self.theta0, masks)

    def loss(self, x: Tensor, y: Tensor, temperature: float = 1.0) -> Tensor:
        params = {**self.fixed, **self.buffers, **dict(zip(self.names, self.weights, strict=True))}
        amp = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with amp:
            out = functional_call(self.model, params, (x,))
            if temperature != 1.0:
                out = out / temperature
            loss = self.loss_fn(out, y)
        return loss.float()

    def gradients(
        self, batches: Iterable[tuple[Tensor, Tensor]], temperature: float = 1.0
    ) -> list[Tensor]:
        """dL/dw averaged over ``batches`` (one backward per batch, so memory stays flat)."""
        return batch_mean(self._gradient(x, y, temperature) for x, y in batches)

    def _gradient(self, x: Tensor, y: Tensor, temperature: float) -> list[Tensor]:
        # backward(inputs=...) into .grad, not autograd.grad: the same result, and on the CPU
        # measured ~4% faster on a VGG-19 pass (as fast as a plain training backward)
        self.loss(x, y, temperature).backward(inputs=self.weights)  # .grad is None before
        # a weight the loss does not use has a zero gradient
        grads = [torch.zeros_like(w) if w.grad is None else w.grad for w in self.weights]
        for w in self.weights:
            w.grad = None
        return grads


def load_masked(
    weights: Sequence[Tensor], theta0: Sequence[Tensor], masks: Sequence[Tensor] | None
) -> None:
    """``weights[i] = theta0[i] * masks[i]`` in place (None = all kept), then mark them as leaves
    that need a gradient: the one place effective weights are built."""
    with torch.no_grad():
        for i, (w, t) in enumerate(zip(weights, theta0, strict=True)):
            if masks is None:
                w.copy_(t)
            else:  # bool -> float copy, then multiply: ~3x faster than where/mul on bool
                w.copy_(masks[i]).mul_(t)
    for w in weights:
        w.requires_grad_(True)


def batch_mean(per_batch: Iterable[Sequence[Tensor]]) -> list[Tensor]:
    """Element-wise mean of per-batch tensor lists, accumulated in place as they come."""
    total: list[Tensor] | None = None
    count = 0
    for tensors in per_batch:
        count += 1
        if total is None:
            total = list(tensors)
        else:
            for acc, t in zip(total, tensors, strict=True):
                acc.add_(t)
    if total is None:
        raise ValueError("batch_mean needs at least one batch")
    if count > 1:
        for acc in total:
            acc.div_(count)
    return total
