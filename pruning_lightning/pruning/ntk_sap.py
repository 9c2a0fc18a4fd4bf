"""NTK-SAP (Wang et al., ICLR 2023): keep the weights that most shape the network's neural tangent
kernel, measured without data on freshly drawn networks.

For one draw (weights theta re-drawn by the network's own init, Gaussian noise inputs x, a
perturbation delta ~ N(0, 1) of the prunable weights) the objective is
``sum_x ||f(x; theta * m) - f(x; (theta + eps * delta) * m)||^2``, a finite-difference estimate of
the NTK's trace; the score is ``|d/dm|`` of its sum over the draws at the current mask m. It is
iterated along the exponential schedule (20 steps), ranking only the weights still kept, as the
official YiteWang/NTK-SAP ``Pruners/pruners.py`` class ``NTKSAP`` does.

BatchNorm is in eval mode with running statistics measured on the draw's own noise batch by the
unperturbed network (a no-gradient pass in train mode with momentum 1, after a reset, as the
official code does), shared by both networks. The re-drawn weights exist only inside the
computation: the model is written for the draw and restored bit for bit at once, so training
starts from the run's own theta0. docs/METHODS.md "NTK-SAP" lists every choice.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from pruning_lightning.pruning.ablations import network_init
from pruning_lightning.pruning.criteria import example_shape
from pruning_lightning.pruning.network import module_modes

if TYPE_CHECKING:
    from pruning_lightning.pruning.criteria import ScoreContext
    from pruning_lightning.pruning.progressive import ScoreFn

#: The official defaults: the perturbation scale (``--ntksap_epsilon``), the iterations
#: (``--prune-epochs`` of its scripts), noise examples per class (``--prune-dataset-ratio``) and
#: the largest noise batch (``--prune-batch-size``).
EPSILON = 0.01
DEFAULT_STEPS = 20
EXAMPLES_PER_CLASS = 10
MAX_BATCH = 256
#: The draws are seeded with ``seed + DRAW_SEED_OFFSET``: under the run's own seed the first
#: re-draw would replay theta0 itself.
DRAW_SEED_OFFSET = 2_000_003

_BATCH_NORM = inspect.signature(F.batch_norm)


class BatchStatistics(TorchFunctionMode):
    """While active, a train-mode ``F.batch_norm`` sets the running statistics to the batch's
    own (momentum 1: the mean and the unbiased variance), whatever the module's momentum; the
    official code sets each BatchNorm's momentum to 1 for this pass. A mode reaches every
    BatchNorm without writing a module attribute."""

    def __torch_function__(
        self,
        func: Callable,
        types: Sequence[type],
        args: Sequence[object] = (),
        kwargs: dict[str, object] | None = None,
    ) -> object:
        kwargs = kwargs or {}
        if func is F.batch_norm:
            bound = _BATCH_NORM.bind(*args, **kwargs)
            if bound.arguments.get("training"):
                bound.arguments["momentum"] = 1.0
            return func(*bound.args, **bound.kwargs)
        return func(*args, **kwargs)


def ntk_sap_gradient(
    model: nn.Module,
    params: Mapping[str, Tensor],
    masks: Sequence[Tensor],
    names: Sequence[str],
    x: Tensor,
    deltas: Sequence[Tensor],
    epsilon: float = EPSILON,
) -> list[Tensor]:
    """``d/dm ||f(x; theta * m) - f(x; (theta + eps * delta) * m)||^2`` (summed over the batch)
    at ``masks`` (float, in the order of ``names``), for one draw.

    ``params``: every parameter of the draw by name (the prunable ones are theta); BatchNorm is
    calibrated on ``x`` by the unperturbed network first (:class:`BatchStatistics`), then both
    networks run in eval mode on those statistics. The model is not written.
    """
    m = [mask.detach().clone().requires_grad_(True) for mask in masks]
    chosen = set(names)
    fixed = {n: p.detach() for n, p in params.items() if n not in chosen}
    theta = [params[n].detach() for n in names]
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}

    def weights(tensors: Sequence[Tensor], mask: Sequence[Tensor]) -> dict[str, Tensor]:
        return {n: t * mi for n, t, mi in zip(names, tensors, mask, strict=True)}

    with torch.no_grad(), module_modes(model, True), BatchStatistics():
        functional_call(model, {**fixed, **buffers, **weights(theta, masks)}, (x,))
    perturbed = [t + epsilon * d for t, d in zip(theta, deltas, strict=True)]
    with module_modes(model, False):
        out = functional_call(model, {**fixed, **buffers, **weights(theta, m)}, (x,))
        out_mod = functional_call(model, {**fixed, **buffers, **weights(perturbed, m)}, (x,))
    # the official expression (the same value as a sum of squares, rounded as theirs)
    objective = (torch.norm(out - out_mod, dim=-1) ** 2).sum()
    grads = torch.autograd.grad(objective, m, allow_unused=True)
    return [torch.zeros_like(mi) if g is None else g for mi, g in zip(m, grads, strict=True)]


class Redraw:
    """Fresh draws of the network's own init, the model restored bit for bit after each.

    The init is :func:`~pruning_lightning.pruning.ablations.network_init`'s (the project's
    Kaiming init for its backbones, else each module's ``reset_parameters``), from the global
    RNG, which the caller seeds.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.init = network_init(model)
        self.saved = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}

    def __call__(self) -> dict[str, Tensor]:
        """A new draw of every parameter, by name."""
        with torch.no_grad():
            try:
                self.init(self.model)
                return {n: p.detach().clone() for n, p in self.model.named_parameters()}
            finally:
                for name, tensor in self.model.state_dict(keep_vars=True).items():
                    tensor.detach().copy_(self.saved[name])


def noise_batch_sizes(num_classes: int) -> list[int]:
    """The official pruning set: ``EXAMPLES_PER_CLASS`` examples per class in batches of at most
    ``MAX_BATCH`` (CIFAR-10: one batch of 100)."""
    total = EXAMPLES_PER_CLASS * num_classes
    return [MAX_BATCH] * (total // MAX_BATCH) + ([total % MAX_BATCH] if total % MAX_BATCH else [])


def ntk_sap_score(ctx: ScoreContext) -> ScoreFn:
    """NTK-SAP: ``|d/dm|`` of the objective summed over ``num_batches`` rounds (R) of draws at
    ``m_{t-1}``; data-free (the input shape comes from ``input_shape`` or one data batch)."""
    config = ctx.config
    input_shape = example_shape(ctx, "ntk_sap")
    model, names = ctx.model, list(ctx.prunable)
    theta0 = ctx.theta0
    device, dtype = theta0[0].device, theta0[0].dtype
    sizes = noise_batch_sizes(_num_outputs(model, input_shape, device, dtype))
    redraw = Redraw(model)
    # the draws depend on the seed only (not on whether data was read for the shape)
    torch.random.default_generator.manual_seed(config.seed + DRAW_SEED_OFFSET)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(config.seed + DRAW_SEED_OFFSET)

    def step(t: int, prev: list[Tensor] | None, views: list[Tensor]) -> None:
        masks = (
            [torch.ones_like(th) for th in theta0] if prev is None else [p.to(dtype) for p in prev]
        )
        total = [torch.zeros_like(th) for th in theta0]
        for _ in range(config.num_batches):  # the official R rounds over its pruning set
            for size in sizes:
                # the official order of draws: the init, the noise (on the host), the deltas
                params = redraw()
                x = torch.randn(size, *input_shape, dtype=dtype).to(device)
                deltas = [torch.randn_like(params[n]) for n in names]
                grads = ntk_sap_gradient(model, params, masks, names, x, deltas)
                for acc, g in zip(total, grads, strict=True):
                    acc.add_(g)
        with torch.no_grad():
            for v, g in zip(views, total, strict=True):
                v.copy_(g).abs_()

    return step


def _num_outputs(
    model: nn.Module, input_shape: Sequence[int], device: torch.device, dtype: torch.dtype
) -> int:
    """The model's number of outputs (classes), from one zero input in eval mode."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    probe = torch.zeros(1, *input_shape, dtype=dtype, device=device)
    with torch.no_grad(), module_modes(model, False):
        out = functional_call(model, {**params, **buffers}, (probe,))
    return int(out[0].numel())
